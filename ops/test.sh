#!/usr/bin/env bash
# Pylon's one test command: installs what the tests need on a fresh machine, checks
# formatting and lints, then runs every test (unit, host, binary, interop with real
# rust-libp2p and js-libp2p peers, the web dashboard in a headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

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
echo "node $(node --version), npm $(npm --version), $(cargo --version)"

step "js-libp2p peer (npm ci --prefix interop/js)"
npm ci --prefix interop/js --no-audit --no-fund --loglevel=error

step "playwright-core for the dashboard's browser test (npm ci --prefix dashboard/e2e)"
npm ci --prefix dashboard/e2e --no-audit --no-fund --loglevel=error

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
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/msrv" \
    rustup run "$msrv" cargo check --locked --quiet -p pylon -p pylon-node -p pylon-roles
  echo "rust $msrv builds pylon, pylon-node and pylon-roles"
else
  # Only rustup's download can fail here, never the check itself (set -e covers it).
  echo "$rustup_log" | tail -5 >&2
  echo "WARNING: could not install Rust $msrv with rustup; the MSRV is NOT checked in this run" >&2
fi

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

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
