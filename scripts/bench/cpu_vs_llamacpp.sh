#!/usr/bin/env bash
# Side by side, in one run, on the same shapes and thread count: moestream and llama.cpp on a
# random-weight Qwen3-30B-A3B-shaped model (moestream: mlx format, 4-bit group 64, bf16
# scales; llama.cpp: GGUF Q4_0, the same 4.5 bits per weight), and moestream on the GGUF
# file itself (its blocks re-laid as affine rows at load).
#
#   scripts/bench/cpu_vs_llamacpp.sh MLX_MODEL_DIR GGUF_FILE [OUT_DIR]
#
# Make the inputs with:
#   moestream synth --preset qwen3-30b-a3b --out MLX_MODEL_DIR
#   scripts/peers/make_gguf_qwen3moe.py GGUF_FILE      (see scripts/peers/README.md)
# Environment: THREADS (default 2), PROMPT (512), GEN (128), REPS (llama-bench, 3),
# LLAMA_BENCH (a llama-bench binary, e.g. the NO_AMX=1 build), LLAMA_ARGS (e.g. "--repack 1,0").
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
MLX="$1"; GGUF="$2"; OUT="${3:-bench-results}"
THREADS="${THREADS:-2}"; PROMPT="${PROMPT:-512}"; GEN="${GEN:-128}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$OUT"
cargo build --release -p moestream --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/moestream"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== moestream (threads $THREADS)"
MOESTREAM_THREADS="$THREADS" "$BIN" bench --model "$MLX" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
    --out "$OUT/moestream.json"
# llama-bench's tg test decodes from an empty context; this run decodes after 8 tokens, the
# same condition (the run above decodes after the whole prompt).
echo "== moestream on the GGUF file (threads $THREADS)"
MOESTREAM_THREADS="$THREADS" "$BIN" bench --model "$GGUF" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
    --out "$OUT/moestream-gguf.json"
echo "== moestream, decode from a short context (threads $THREADS)"
MOESTREAM_THREADS="$THREADS" "$BIN" bench --model "$MLX" --prompt-tokens 8 --gen-tokens "$GEN" \
    --out "$OUT/moestream-short.json"
echo "== moestream on the GGUF file, decode from a short context (threads $THREADS)"
MOESTREAM_THREADS="$THREADS" "$BIN" bench --model "$GGUF" --prompt-tokens 8 --gen-tokens "$GEN" \
    --out "$OUT/moestream-gguf-short.json"
echo "== llama.cpp (threads $THREADS) ${LLAMA_ARGS:-}"
# shellcheck disable=SC2086  # LLAMA_ARGS holds several llama-bench options
THREADS="$THREADS" PROMPT="$PROMPT" GEN="$GEN" "$ROOT/scripts/peers/bench_llamacpp.sh" "$GGUF" ${LLAMA_ARGS:-} \
    | tee "$OUT/llamacpp.txt"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
