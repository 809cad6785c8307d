#!/usr/bin/env bash
# moestream's CUDA backend next to llama.cpp's, on the GPU machine (no Rust, no network):
# the 8-layer Qwen3-30B-A3B cut (moestream synth, MLX 4-bit g64) and the same shapes in
# GGUF Q4_0 (scripts/peers/make_gguf_qwen3moe.py), prompt PROMPT then GEN greedy tokens.
#
#   scripts/gpu/bench.sh STAGE_DIR OUT_DIR
#
# STAGE_DIR (scripts/gpu/stage.sh + scripts/device/stage_cpu_bench.sh): moestream,
# gguf-py/, and either llama-bench-cuda or llama-src.tar.xz (then built here first, by
# scripts/device/build_llamacpp_cuda.sh). Environment: PROMPT (512), GEN (128), REPS (3),
# LAYERS (8), WORK (/tmp/moestream-gpu-bench), NO_PEER=1 (moestream only: no llama.cpp
# build or run), PROFILE=1 (then also moestream's per-op CUDA profile of a prefill-heavy
# and a decode-heavy run, MOESTREAM_CUDA_PROFILE).
set -euo pipefail
STAGE="$(cd "$1" && pwd)"; OUT="$2"
PROMPT="${PROMPT:-512}"; GEN="${GEN:-128}"; REPS="${REPS:-3}"; LAYERS="${LAYERS:-8}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${WORK:-/tmp/moestream-gpu-bench}"
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

echo "== writing the models ($LAYERS layers)"
cut="$WORK/cut-$LAYERS"
[[ -d "$cut" ]] || "$STAGE/moestream" synth --preset qwen3-30b-a3b --layers "$LAYERS" --out "$cut" >/dev/null
[[ -f "$cut.gguf" ]] || PYTHONPATH="$STAGE/gguf-py" python3 "$HERE/../peers/make_gguf_qwen3moe.py" \
    --layers "$LAYERS" "$cut.gguf" >/dev/null
du -sh "$cut" "$cut.gguf"

echo "== moestream --device cuda"
"$STAGE/moestream" bench --device cuda --model "$cut" --prompt-tokens "$PROMPT" \
    --gen-tokens "$GEN" --json >"$OUT/moestream-cuda-$LAYERS.json"
python3 - "$OUT/moestream-cuda-$LAYERS.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
print(f"  prefill {f['prefill_tok_s']:.1f} tok/s, decode {f['decode_tok_s']:.2f} tok/s")
PY

if [[ "${PROFILE:-0}" == 1 ]]; then
    for shape in "$PROMPT 1" "8 $GEN"; do
        read -r p g <<<"$shape"
        echo "== moestream --device cuda, per-op profile: prompt $p, $g generated"
        MOESTREAM_CUDA_PROFILE=1 "$STAGE/moestream" bench --device cuda --model "$cut" \
            --prompt-tokens "$p" --gen-tokens "$g" 2>&1 | grep -A40 "CUDA op profile" | head -30
    done
fi
[[ "${NO_PEER:-0}" == 1 ]] && exit 0
bench="$STAGE/llama-bench-cuda"
if [[ ! -x "$bench" ]]; then
    echo "== building llama.cpp (CUDA)"
    bench="$("$HERE/../device/build_llamacpp_cuda.sh" "$STAGE/llama-src.tar.xz" "$WORK/llama-cuda" \
        2>"$WORK/llama-build.log" | tail -n1)" || { tail -30 "$WORK/llama-build.log"; exit 1; }
fi
echo "== llama.cpp CUDA"
for fa in 0 1; do
    "$bench" -m "$cut.gguf" -ngl 99 -fa "$fa" -p "$PROMPT" -n "$GEN" -r "$REPS" -o json \
        >"$OUT/llamacpp-cuda-$LAYERS-fa$fa.json" 2>"$WORK/llamacpp.log" || { tail -20 "$WORK/llamacpp.log"; continue; }
    python3 - "$OUT/llamacpp-cuda-$LAYERS-fa$fa.json" "$fa" <<'PY'
import json, sys
for t in json.load(open(sys.argv[1])):
    kind = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
    print(f"  fa={sys.argv[2]} {kind}: {t['avg_ts']:.2f} +- {t['stddev_ts']:.2f} tok/s  ({t['gpu_info']})")
PY
done
