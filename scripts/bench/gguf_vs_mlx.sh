#!/usr/bin/env bash
# moestream on a GGUF file against moestream on the MLX model of the same shapes, alternating
# the two ROUNDS times (the dev machine is noisy: a single pair proves nothing), each run a
# fresh process: decode after a short prompt, and prefill of PROMPT tokens.
#
#   scripts/bench/gguf_vs_mlx.sh MLX_MODEL_DIR GGUF_FILE [OUT_DIR]
#
# Inputs: scripts/peers/gguf_moe_reference.sh makes both (the 8-layer qwen3moe cut).
# Environment: THREADS (2), PROMPT (512), GEN (128), ROUNDS (3), BIN (target/release/moestream).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
MLX="$1"; GGUF="$2"; OUT="${3:-bench-gguf-vs-mlx}"
THREADS="${THREADS:-2}"; PROMPT="${PROMPT:-512}"; GEN="${GEN:-128}"; ROUNDS="${ROUNDS:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${BIN:-$ROOT/target/release/moestream}"
mkdir -p "$OUT"
echo "== $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    for kind in mlx gguf; do
        model="$MLX"; [[ $kind == gguf ]] && model="$GGUF"
        MOESTREAM_THREADS="$THREADS" "$BIN" bench --model "$model" --prompt-tokens "$PROMPT" \
            --gen-tokens "$GEN" --out "$OUT/$kind-$r.json" 2>&1 | grep -E '^prefill' | sed "s/^/round $r $kind: /"
    done
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
