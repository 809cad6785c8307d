#!/usr/bin/env bash
# The CUDA backend's tests on a machine with an NVIDIA GPU (the device machine: no Rust
# there, so the test binary is built here by scripts/gpu/stage.sh and carried):
# every fixture the backend runs against the CPU --exact path (logits, 32 greedy tokens),
# the refused models' errors, and the no-GPU error.
#
#   scripts/gpu/stage.sh                    # here: build target/device-stage/cuda-test
#   scripts/gpu/test.sh [STAGE_DIR]         # there, from the repository root
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STAGE="${1:-$ROOT/target/device-stage}"
# NVRTC comes with the toolkit; the driver library with the driver.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
    [[ -d $d ]] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
nvidia-smi -L || true
MOESTREAM_REPO_ROOT="$ROOT" "$STAGE/cuda-test" --nocapture --test-threads 1
