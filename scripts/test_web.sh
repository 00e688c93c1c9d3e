#!/usr/bin/env bash
# Browser tests: wgconv built for wasm32-unknown-unknown and its tests/web.rs run in headless
# Chromium through WebGPU (wasm-bindgen-test), on a fresh Debian 12 machine or again on one that
# ran it before. Idempotent: the toolchain lives in a Debian sid chroot under the cache folder
# ($WGCONV_WEB_CACHE, default ~/.cache/wgconv-web), reused with its cargo registry and the build
# in target/web when present. Prints cargo's `test result:` lines; exits non-zero on a failure.
#
# Why a chroot: rustup cannot fetch the wasm32 target here, and the host's rustc has no wasm32
# std; sid has rustc with libstd-rust-dev-wasm32 and lld (Debian's rustc has no rust-lld, so
# .cargo/config.toml links with wasm-ld). wgpu 30 on the web needs wasm-bindgen >= 0.2.127,
# newer than Debian's CLI, so wasm-bindgen-cli 0.2.130 is built from crates.io (the version the
# wasm-bindgen dev-dependency pins). Chromium and chromedriver are the host's Debian packages;
# WebGPU needs --enable-unsafe-webgpu (webdriver.json), and runs on Chromium's SwiftShader.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${WGCONV_WEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wgconv-web}
sid=$cache/sid
wbg_version=0.2.130
start=$(date +%s)
say() { echo "test_web: $* ($(( $(date +%s) - start )) s)"; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# 1. The host's packages: debootstrap, Chromium and its driver.
if ! command -v debootstrap >/dev/null || ! command -v chromedriver >/dev/null \
    || [ ! -x /usr/bin/chromium ]; then
    say "installing debootstrap, chromium, chromium-driver"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap chromium \
        chromium-driver >/dev/null
fi

# 2. The sid chroot with Rust, the wasm32 std and lld.
mkdir -p "$cache"
if [ ! -f "$sid/.wgconv-base" ]; then
    say "debootstrap sid into $sid"
    $SUDO rm -rf "$sid"
    $SUDO debootstrap --variant=minbase sid "$sid" http://deb.debian.org/debian >/dev/null
    touch "$sid/.wgconv-base"
fi
# The host's name service and certificates (cargo and apt inside reach the registries through
# the same proxies as the host), refreshed every run.
$SUDO cp -L /etc/resolv.conf "$sid/etc/resolv.conf"
$SUDO mkdir -p "$sid/usr/local/share/ca-certificates" "$sid/etc/ssl/certs"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    $SUDO cp -L /usr/local/share/ca-certificates/*.crt "$sid/usr/local/share/ca-certificates/"
fi
if [ ! -f "$sid/.wgconv-rust" ]; then
    say "installing rustc, cargo, libstd-rust-dev-wasm32 and lld in the chroot"
    # sid's Release file may be past its Valid-Until date.
    $SUDO chroot "$sid" sh -c 'apt-get -o Acquire::Check-Valid-Until=false update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            rustc cargo libstd-rust-dev-wasm32 lld ca-certificates >/dev/null'
    touch "$sid/.wgconv-rust"
fi
$SUDO chroot "$sid" update-ca-certificates >/dev/null 2>&1
if ! $SUDO chroot "$sid" /opt/wbg/bin/wasm-bindgen-test-runner --version 2>/dev/null \
    | grep -q "$wbg_version"; then
    say "building wasm-bindgen-cli $wbg_version in the chroot (about 3 minutes)"
    $SUDO chroot "$sid" cargo install -q wasm-bindgen-cli --version "=$wbg_version" --root /opt/wbg
fi

# 3. The project inside the chroot, and chromedriver on a free local port; both undone on exit.
mkdir -p "$sid/src"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
driver=""
cleanup() {
    [ -n "$driver" ] && kill "$driver" 2>/dev/null || true
    if mountpoint -q "$sid/src"; then $SUDO umount "$sid/src"; fi
}
trap cleanup EXIT
if mountpoint -q "$sid/src"; then $SUDO umount "$sid/src"; fi
$SUDO mount --bind "$root" "$sid/src"
chromedriver --port="$port" >/dev/null 2>&1 &
driver=$!

# 4. The tests: built for wasm32 (without the benchmark's command-line crates), served to
# Chromium by wasm-bindgen-test-runner, which reads webdriver.json (the browser's flags).
say "running the browser tests (chromedriver on port $port)"
set +e
$SUDO chroot "$sid" sh -c "cd /src && PATH=/opt/wbg/bin:\$PATH \
    CHROMEDRIVER_REMOTE=http://127.0.0.1:$port WASM_BINDGEN_TEST_TIMEOUT=900 \
    CARGO_TARGET_DIR=/src/target/web \
    timeout 1800 cargo test --release --target wasm32-unknown-unknown --no-default-features \
        --test web -- --nocapture" 2>&1 | grep -v '^\s*at \|^ *[0-9]*: <unknown>'
status=${PIPESTATUS[0]}
set -e
say "done, exit status $status"
exit "$status"
