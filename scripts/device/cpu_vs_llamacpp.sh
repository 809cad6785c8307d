#!/usr/bin/env bash
# The CPU side-by-side of scripts/bench/cpu_vs_llamacpp.sh, on a machine with no Rust and no
# network (the device machine's host CPU, an AVX-512 server part): everything it runs is
# carried in, prepared here by scripts/device/stage_cpu_bench.sh.
#
#   scripts/device/cpu_vs_llamacpp.sh STAGE_DIR OUT_DIR
#
# STAGE_DIR holds: moestream (release, stripped), llama-bench-avx512, llama-bench-avx2,
# membw-avx512, membw-avx2 (llama.cpp and its bandwidth probe, built by
# scripts/peers/build_llamacpp.sh with ISA=avx512 / ISA=avx2), gguf-py/ (llama.cpp's Python
# GGUF writer). The script writes the 8-layer Qwen3-30B-A3B cut in both formats (moestream
# synth; scripts/peers/make_gguf_qwen3moe.py, Q4_0), then, pinned to two cores with
# THREADS=2 for both engines (the dev machine's size):
#   - moestream bench on each ISA it has (native and MOESTREAM_ISA=avx2), decode after the
#     prompt and from a short context (llama-bench's tg condition);
#   - llama-bench built for AVX-512 (no AMX) and for AVX2, pp512 and tg128;
# and copies every JSON result and the machine's lscpu into OUT_DIR.
# Environment: THREADS (2), CORES (the taskset list, default 2,3), PROMPT (512), GEN (128),
# REPS (3, llama-bench's repetitions), PREFETCH_SWEEP (a list of MOESTREAM_PREFETCH_BYTES
# values: then the empty-context decode again at each, native ISA, e.g. "0 4096 16384 65536").
set -euo pipefail
STAGE="$(cd "$1" && pwd)"; OUT="$2"
THREADS="${THREADS:-2}"; CORES="${CORES:-2,3}"; PROMPT="${PROMPT:-512}"; GEN="${GEN:-128}"
REPS="${REPS:-3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${WORK:-/tmp/moestream-cpu-bench}"
mkdir -p "$OUT" "$WORK"
lscpu >"$OUT/lscpu.txt"
grep -m1 "model name" /proc/cpuinfo
pin=(taskset -c "$CORES")

echo "== writing the models"
[[ -d "$WORK/cut" ]] || "$STAGE/moestream" synth --preset qwen3-30b-a3b --layers 8 --out "$WORK/cut" >/dev/null
[[ -f "$WORK/cut.gguf" ]] || PYTHONPATH="$STAGE/gguf-py" python3 "$HERE/../peers/make_gguf_qwen3moe.py" \
    --layers 8 "$WORK/cut.gguf" >/dev/null
ls -la "$WORK/cut.gguf"

echo "== memory bandwidth (llama.cpp's probe, $THREADS threads)"
for isa in avx512 avx2; do
    OMP_NUM_THREADS="$THREADS" "${pin[@]}" "$STAGE/membw-$isa" | tee "$OUT/membw-$isa.txt" || true
done

bench() { # NAME ISA_CAP MODEL PROMPT_TOKENS
    local name=$1 cap=$2 model=$3 prompt=$4
    echo "== moestream $name"
    MOESTREAM_ISA="$cap" MOESTREAM_THREADS="$THREADS" "${pin[@]}" "$STAGE/moestream" bench \
        --model "$model" --prompt-tokens "$prompt" --gen-tokens "$GEN" --json >"$OUT/moestream-$name.json"
    python3 - "$OUT/moestream-$name.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
f, m = d["figures"], d["machine"]
print(f"  isa {m['kernel_isa']} int8 {m['int8_kernel']}: prefill {f['prefill_tok_s']:.1f} tok/s, "
      f"decode {f['decode_tok_s']:.2f} tok/s, {100 * f['decode_fraction_of_roofline']:.0f}% of "
      f"roofline ({f['memory_bandwidth_bytes_s'] / 1e9:.1f} GB/s probe)")
PY
}
for cap in "" avx2; do
    tag=${cap:-native}
    bench "$tag" "$cap" "$WORK/cut" "$PROMPT"
    bench "$tag-short" "$cap" "$WORK/cut" 8
    bench "$tag-gguf-short" "$cap" "$WORK/cut.gguf" 8
done

for bytes in ${PREFETCH_SWEEP:-}; do
    MOESTREAM_PREFETCH_BYTES="$bytes" bench "native-short-prefetch-$bytes" "" "$WORK/cut" 8
done

for isa in avx512 avx2; do
    echo "== llama.cpp $isa"
    "${pin[@]}" "$STAGE/llama-bench-$isa" -m "$WORK/cut.gguf" -t "$THREADS" -p "$PROMPT" -n "$GEN" \
        -r "$REPS" -o json >"$OUT/llamacpp-$isa.json" 2>"$WORK/llamacpp-$isa.log" || {
        tail -20 "$WORK/llamacpp-$isa.log"; continue; }
    python3 - "$OUT/llamacpp-$isa.json" <<'PY'
import json, sys
for t in json.load(open(sys.argv[1])):
    kind = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
    print(f"  {kind}: {t['avg_ts']:.2f} +- {t['stddev_ts']:.2f} tok/s  ({t['cpu_info']})")
PY
done
