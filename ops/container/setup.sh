#!/usr/bin/env bash
# Makes this machine build and run Pylon's container image offline, as the image test
# (pylon/tests/container.rs) does: Debian's podman with runc, a containers.conf for a
# machine without systemd, and the base image docker.io/library/debian:bookworm-slim made
# locally (no image registry is reachable here; Debian's package mirror is). Run as root;
# idempotent, and quick once done (every step checks first).
#
#   bash ops/container/setup.sh
#
# Then: podman build --pull=never --format docker -t pylon .
# (--format docker keeps HEALTHCHECK, which the OCI image format has no field for.)
set -euo pipefail

BASE_IMAGE=docker.io/library/debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CONF=/etc/containers/containers.conf
MARKER="# Written by Pylon's ops/container/setup.sh"

say() { printf 'container setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "ops/container/setup.sh: run as root (it installs packages and configures podman)" >&2
  exit 1
fi

# --- Packages ---------------------------------------------------------------------------
# podman and runc (Debian 12's podman 4.3); CNI's plugins for its networks (named, not
# left to apt's choice of a network stack: netavark would need aardvark-dns too);
# debootstrap for the base image; uidmap, slirp4netns and fuse-overlayfs for rootless use;
# iptables for published ports (CNI's portmap); catatonit for the pause container of
# `podman kube play`.
missing=()
for pkg in podman runc containernetworking-plugins debootstrap uidmap slirp4netns fuse-overlayfs \
  iptables catatonit; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian's ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- containers.conf --------------------------------------------------------------------
# No systemd here: cgroupfs and a file for events. runc rather than crun (Debian's podman
# picks crun first when both are present). The container's open-file limit may not exceed
# this machine's hard limit, or runc fails to start any container (podman's default asks
# for 1048576); the same for processes, which runc here also refuses above the kernel's
# pid_max (podman asks for 4194304).
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; then
  nofile=1048576
fi
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then
  nproc=$pid_max
fi
wanted=$(cat <<EOF
$MARKER; edit freely (the script leaves a file without
# this first line alone, and rewrites its own when the settings change).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
)
if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARKER"; then
  say "$CONF is not ours: left as it is (it needs runtime = \"runc\", cgroup_manager = \"cgroupfs\", events_logger = \"file\", default_ulimits nofile <= $nofile and nproc <= $nproc)"
elif [ "$(cat "$CONF" 2>/dev/null)" != "$wanted" ]; then
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$wanted" >"$CONF"
  say "wrote $CONF (nofile $nofile, nproc $nproc)"
fi

# --- Storage driver ---------------------------------------------------------------------
# overlay (Debian's default) where the kernel and the backing file system allow it, else
# vfs (slower and bigger, but it works everywhere, overlayfs-on-overlayfs included).
if ! info_err=$(podman info --format '{{.Store.GraphDriverName}}' 2>&1 >/dev/null); then
  if [ -e /etc/containers/storage.conf ]; then
    echo "podman info fails and /etc/containers/storage.conf exists; not touching it:" >&2
    echo "$info_err" >&2
    exit 1
  fi
  say "overlay storage does not work here ($info_err); using vfs"
  cat >/etc/containers/storage.conf <<EOF
$MARKER
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
  podman info --format '{{.Store.GraphDriverName}}' >/dev/null
fi
say "podman $(podman version --format '{{.Client.Version}}'), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), storage $(podman info --format '{{.Store.GraphDriverName}}')"

# --- The base image ---------------------------------------------------------------------
# A minimal Debian 12 root file system from Debian's own packages (debootstrap minbase:
# the Essential and required packages and apt), trimmed as Docker's official -slim image
# is (no documentation, man pages or locales; dpkg told to keep them out), imported under
# the official image's name so the Dockerfile's FROM resolves with --pull=never.
# A container from it must start: that proves the runtime, cgroups and limits above.
smoke() {
  if ! out=$(podman run --rm --network none "$BASE_IMAGE" true 2>&1); then
    echo "podman cannot run a container from $BASE_IMAGE: $out" >&2
    exit 1
  fi
}
if podman image exists "$BASE_IMAGE"; then
  smoke
  say "$BASE_IMAGE present, runs"
  exit 0
fi
root=$(mktemp -d /var/tmp/pylon-rootfs.XXXXXX)
cleanup() {
  # debootstrap mounts proc and sys inside while it works: never delete through a mount.
  findmnt -rn -o TARGET | grep -F "$root/" | sort -r | xargs -r -n1 umount -l || true
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
say "debootstrapping Debian bookworm (minbase) from $MIRROR"
started=$(date +%s)
# Packages are unpacked without their docs from the start: the exclusions -slim uses.
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# As in Docker's debian:*-slim images: no documentation, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
if ! debootstrap --variant=minbase --arch="$(dpkg --print-architecture)" \
  --components=main bookworm "$root" "$MIRROR" >"$root.log" 2>&1; then
  tail -n 30 "$root.log" >&2
  echo "debootstrap failed (full log: $root.log)" >&2
  exit 1
fi
rm -f "$root.log"
# What only the build needed: package caches and lists, logs, the machine id.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
  "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/usr/share/doc/*/changelog* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
: >"$root/etc/machine-id"
# The runtime provides /dev, /proc and /sys; the image carries only the empty directories.
tar --numeric-owner --xattrs -C "$root" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -c . |
  podman import --quiet --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm ($MIRROR)" \
    - "$BASE_IMAGE" >/dev/null
say "imported $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes) in $(($(date +%s) - started)) s"
smoke
