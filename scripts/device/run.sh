#!/usr/bin/env bash
# One device-machine call: the phases named, in order, each bounded in time, results under
# OUT (the device tool's $OUT). Run from the repository root there:
#
#   scripts/device/run.sh OUT PHASE...
#
# Phases:
#   gpu-test    the CUDA backend's tests (scripts/gpu/test.sh over target/gpu-stage)
#   gpu-bench   moestream --device cuda next to llama.cpp CUDA (scripts/gpu/bench.sh); builds
#               llama.cpp from target/gpu-stage/llama-src.tar.xz first when needed
#               (environment: bench.sh's, e.g. NO_PEER=1 PROFILE=1)
#   cpu-bench   the host CPU side by side with llama.cpp (scripts/device/cpu_vs_llamacpp.sh),
#               from target/device-cpu (xz-compressed llama-bench builds, membw)
#
# Staged here by: scripts/gpu/stage.sh, then target/gpu-stage (cuda-test, moestream,
# gguf-py/, llama-src.tar.xz) and target/device-cpu (llama-bench-{avx512,avx2}.xz,
# membw-{avx512,avx2}); see scripts/device/stage_cpu_bench.sh.
set -uo pipefail
OUT="$1"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GPU="$ROOT/target/gpu-stage"
mkdir -p "$OUT"
for phase in "$@"; do
    echo "== $phase (at ${SECONDS}s)"
    case "$phase" in
        gpu-test)
            timeout 240 "$ROOT/scripts/gpu/test.sh" "$GPU" >"$OUT/gpu-test.log" 2>&1
            echo "tests rc=$?"
            grep -E "^test |test result|panicked|skipped| max " "$OUT/gpu-test.log" | head -70
            ;;
        gpu-bench)
            timeout 400 "$ROOT/scripts/gpu/bench.sh" "$GPU" "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
            ;;
        cpu-bench)
            cpu=/tmp/moestream-cpu-stage
            mkdir -p "$cpu"
            for f in "$ROOT"/target/device-cpu/*.xz; do xz -dc "$f" >"$cpu/$(basename "$f" .xz)"; done
            cp "$ROOT"/target/device-cpu/membw-* "$GPU/moestream" "$cpu/"
            cp -r "$GPU/gguf-py" "$cpu/"
            chmod +x "$cpu"/*
            timeout 300 "$ROOT/scripts/device/cpu_vs_llamacpp.sh" "$cpu" "$OUT/cpu" 2>&1 |
                tee "$OUT/cpu-bench.log"
            ;;
        *) echo "unknown phase $phase" >&2 ;;
    esac
done
echo "== done at ${SECONDS}s"
