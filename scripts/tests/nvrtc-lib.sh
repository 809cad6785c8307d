#!/usr/bin/env bash
# Installs (once) NVIDIA's runtime compiler, NVRTC, from its PyPI wheel into DIR, for the test
# that compiles the CUDA backend's kernels on a machine without CUDA (CI). Prints the
# directory holding libnvrtc.so (a link to the wheel's versioned library, the name the
# backend's loader looks for).
set -euo pipefail
dir="${1:?usage: nvrtc-lib.sh DIR}"
lib="$dir/nvidia/cuda_nvrtc/lib"
if [ ! -e "$lib/libnvrtc.so" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
        "nvidia-cuda-nvrtc-cu12==12.9.86" >&2
    ln -sf libnvrtc.so.12 "$lib/libnvrtc.so"
fi
echo "$lib"
