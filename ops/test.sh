#!/usr/bin/env bash
# Pylon's one test command: installs what the tests need on a fresh machine, checks
# formatting and lints, then runs every test (unit, host, binary, interop with real
# rust-libp2p and js-libp2p peers, the web dashboard in a headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
# Each step header shows the space left where the build goes: a full disk shows up as
# a linker killed by SIGBUS, so the log must say how much room there was.
free_gib() { df -P --block-size=1G "$target_dir" | awk 'NR == 2 { print $4 }'; }
step() { printf '\n==> %s   [%s GiB free for %s]\n' "$*" "$(free_gib)" "$target_dir"; }

step "prerequisites"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm missing: installing Debian's nodejs and npm"
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
# The storage tests mount a tmpfs and a loop-mounted ext4 image and freeze it (root).
if ! command -v mkfs.ext4 >/dev/null 2>&1 || ! command -v fsfreeze >/dev/null 2>&1; then
  echo "mkfs.ext4/fsfreeze missing: installing Debian's e2fsprogs and util-linux"
  apt-get update -qq && apt-get install -y -qq e2fsprogs util-linux mount
fi
# The NAT test beds (testkit's netns, the hole-punching interop tests) build network
# namespaces with ip and nft (root).
if ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "nft/ip missing: installing Debian's nftables and iproute2"
  apt-get update -qq && apt-get install -y -qq nftables iproute2
fi
# The web dashboard's browser test (pylon/tests/dashboard_ui.rs) drives Debian's headless
# Chromium through playwright-core.
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium missing: installing Debian's chromium"
  apt-get update -qq && apt-get install -y -qq chromium
fi
# The systemd unit's check (pylon/tests/examples.rs) runs systemd-analyze verify.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze missing: installing Debian's systemd"
  apt-get update -qq && apt-get install -y -qq systemd
fi
echo "node $(node --version), npm $(npm --version), $(cargo --version)"
# A fresh run's target dir peaked at 7.7 GiB (debug test build 6.0, release 0.6, MSRV
# check 0.6, chart venv 0.4); the registry, npm packages and images add about 1.
need_gib=12
if [ "$(free_gib)" -lt "$need_gib" ]; then
  echo "warning: $(free_gib) GiB free for $target_dir; a fresh run needs about $need_gib GiB." >&2
  echo "warning: the build may fail with a linker killed by SIGBUS (disk full)." >&2
fi

step "js-libp2p peer (npm ci --prefix interop/js)"
npm ci --prefix interop/js --no-audit --no-fund --loglevel=error

step "playwright-core for the dashboard's browser test (npm ci --prefix dashboard/e2e)"
npm ci --prefix dashboard/e2e --no-audit --no-fund --loglevel=error

step "container engine: podman, runc and the base image, offline (ops/container/setup.sh)"
# The image test (pylon/tests/container.rs) builds the Dockerfile and runs it with podman;
# no registry is reachable, so the base image is debootstrapped from Debian's mirror once.
bash ops/container/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo deny (licenses, bans, sources)"
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "cargo-deny missing: installing it from crates.io (a few minutes, once per machine)"
  cargo install cargo-deny --locked --version 0.20.2 --quiet
fi
# Advisories are left out: the RustSec database lives on GitHub, out of reach here.
cargo deny --log-level error check licenses bans sources

step "the libp2p stack is our own: no libp2p crate but libp2p-identity under pylon"
if cargo tree -p pylon -e normal,build --prefix none --locked | grep -E '^libp2p' | grep -v '^libp2p-identity '; then
  echo "the crates above must be dev-dependencies only" >&2
  exit 1
fi

step "the declared MSRV builds the product (rust-version in Cargo.toml)"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
case "$msrv" in *.*.*) ;; *) msrv="$msrv.0" ;; esac
if rustup_log=$(rustup toolchain install "$msrv" --profile minimal 2>&1); then
  # Its own target dir: a second toolchain's artefacts would evict the main build's.
  CARGO_TARGET_DIR="$target_dir/msrv" \
    rustup run "$msrv" cargo check --locked --quiet -p pylon -p pylon-node -p pylon-roles
  echo "rust $msrv builds pylon, pylon-node and pylon-roles"
else
  # Only rustup's download can fail here, never the check itself (set -e covers it).
  echo "$rustup_log" | tail -5 >&2
  echo "WARNING: could not install Rust $msrv with rustup; the MSRV is NOT checked in this run" >&2
fi

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Grafana dashboards (ops/grafana) match their generator"
python3 ops/grafana/build.py --check

step "Terraform: fmt, then validate and test the provider-free values module"
if ! command -v terraform >/dev/null 2>&1; then
  echo "terraform missing: this machine kind ships it in /usr/local/bin" >&2
  exit 1
fi
# Offline: no provider can be downloaded, so the root module (helm_release) is only
# formatted; its logic lives in terraform/modules/values, which needs no provider.
export TF_IN_AUTOMATION=1 TF_CLI_CONFIG_FILE=/dev/null
terraform fmt -check -recursive terraform
(
  cd terraform/modules/values
  terraform init -backend=false -input=false -no-color >/dev/null
  terraform validate -no-color
  terraform test -no-color
)

step "Helm chart: lint, render, kubernetes-validate --strict, values schema, each rendered config read by the binary"
# The tests' build, which `cargo test` below reuses, makes the pylon binary the check feeds.
cargo test --workspace --locked --no-run --quiet
# Debian's python3 needs python3-venv for `python3 -m venv`.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  echo "python3-venv missing: installing Debian's python3-venv"
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
helm_venv="$target_dir/helm-venv"
if ! cmp -s helm/tests/requirements.txt "$helm_venv/requirements.txt"; then
  rm -rf "$helm_venv"
  python3 -m venv "$helm_venv"
  "$helm_venv/bin/pip" install --quiet --disable-pip-version-check -r helm/tests/requirements.txt
  cp helm/tests/requirements.txt "$helm_venv/requirements.txt"
fi
"$helm_venv/bin/python" helm/tests/chart.py --pylon "$target_dir/debug/pylon"

step "Terraform's computed values are accepted by the chart (apply of the provider-free module, then render)"
tf_state=$(mktemp -d)
tf_sets=(
  ""
  "-var=replicas=2 -var=service_type=NodePort -var=node_ports=[30001,30002] -var=roles=[\"relay\",\"bootstrap\"] -var=role_settings={relay={max_circuits=256}}"
  "-var=exposure=hostNetwork -var=profile=minimal -var=roles=[] -var=monitoring={service_monitor=true,prometheus_rule=true,dashboards=true}"
  "-var=replicas=3 -var=load_balancer_ips=[\"203.0.113.1\",\"203.0.113.2\",\"203.0.113.3\"] -var=roles=[\"autonat\"]"
)
for set in "${tf_sets[@]}"; do
  # shellcheck disable=SC2086 # each set is several -var arguments
  terraform -chdir=terraform/modules/values apply -auto-approve -input=false -no-color \
    -state="$tf_state/values.tfstate" $set >/dev/null
  terraform -chdir=terraform/modules/values output -state="$tf_state/values.tfstate" -raw values_yaml \
    >"$tf_state/values.yaml"
  "$helm_venv/bin/python" helm/tests/chart.py render --values "$tf_state/values.yaml" >/dev/null
  echo "terraform ${set:-(defaults)}: the chart renders its values"
done
rm -rf "$tf_state"

step "the booster simulation at full size: up to 5,000 DHT nodes (release; cargo test runs it smaller)"
cargo test --release --locked -p pylon-testkit --test booster_sim -- --nocapture

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one result line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
