#!/usr/bin/env bash
# Creates (once) a Python virtual environment with the `gguf` writer package and numpy, for
# the tests that turn a synthetic MLX model into a GGUF file with
# scripts/peers/mlx_to_gguf.py. Prints the venv's python.
set -euo pipefail
dir="${1:?usage: gguf-py-venv.sh DIR}"
gguf_version=0.19.0
if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -m pip show gguf 2>/dev/null | grep -qx "Version: $gguf_version"; then
    python3 -m venv "$dir" >&2
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "gguf==$gguf_version" "numpy<3" >&2
fi
echo "$dir/bin/python"
