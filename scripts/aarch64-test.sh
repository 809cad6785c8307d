#!/usr/bin/env bash
# Cross-build the workspace for aarch64 and run its tests under qemu-user, on this x86-64
# machine. Speed under qemu means nothing; correctness does: the NEON kernels (with and
# without dotprod) are held to the same scalar references as on x86.
#
#   scripts/aarch64-test.sh                    # CI's set: check the workspace, then test the
#                                              # kernels and the engine's unit tests on two
#                                              # cores: with dotprod (max) and without (cortex-a72)
#   scripts/aarch64-test.sh -p moestream-kernels --lib    # any `cargo test` arguments, on
#                                                         # QEMU_CPU (default max)
#
# Needs root the first time: it installs Debian's Rust toolchain (rustc-web ships the aarch64
# standard library, which rustup's target would have to download), the GNU cross linker,
# the arm64 C library and qemu-user, through apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=0
[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || need_install=1
command -v qemu-aarch64 >/dev/null || need_install=1
command -v aarch64-linux-gnu-gcc >/dev/null || need_install=1
[ -x /usr/bin/cargo ] || need_install=1
[ -e /lib/ld-linux-aarch64.so.1 ] || need_install=1
if [ "$need_install" = 1 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "aarch64 check skipped: needs root and apt-get to install the cross toolchain" >&2
        exit 0
    fi
    dpkg --add-architecture arm64
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rustc-web cargo-web \
        libstd-rust-web-dev:arm64 libc6:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
        qemu-user
fi

# Debian's compiler and rustdoc (their sysroot has the aarch64 standard library).
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Warnings in code only aarch64 compiles are errors, as clippy's are on x86.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-D warnings"
# `-L /`: the multiarch arm64 libc (the cross sysroot's libc hangs in pthread_create under
# this qemu).
runner() { echo "qemu-aarch64 -cpu $1 -L /"; }
cargo_a64() {
    local verb="$1"
    shift
    /usr/bin/cargo "$verb" --target aarch64-unknown-linux-gnu --target-dir target/aarch64 "$@"
}

if [ $# -gt 0 ]; then
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$(runner "${QEMU_CPU:-max}")"
    cargo_a64 test "$@"
    exit
fi

# The libraries and binaries of every crate (test code is built below for the crates whose
# tests run; the rest is target-independent and checked on x86).
echo "== aarch64: cargo check --workspace"
cargo_a64 check --workspace --quiet
for cpu in max cortex-a72; do
    echo "== aarch64 tests under qemu, -cpu $cpu"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$(runner "$cpu")"
    # The kernels' tests, and the engine's unit tests (its integration tests run whole
    # models: minutes each under emulation, and the kernels they reach are tested here).
    # (--nocapture shows which kernel families ran; the summary lines are kept, and on a
    # failure, compile errors included, the end of the whole output.)
    log="$(mktemp)"
    if ! cargo_a64 test --quiet -p moestream-kernels --lib -- --nocapture >"$log" 2>&1; then
        tail -n 60 "$log"
        rm -f "$log"
        exit 1
    fi
    grep -E "test result|int8 families|block quantizers|int8 kernel families" "$log"
    rm -f "$log"
    cargo_a64 test --quiet -p moestream-engine --lib
done
