#!/usr/bin/env bash
# Creates (once) a Python virtual environment with the pinned `openai` client, for the server
# tests that drive `moestream serve` through the real client. Prints the interpreter's path.
set -euo pipefail
dir="${1:?usage: openai-venv.sh DIR}"
if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$(dirname "$0")/requirements-openai.txt" >&2
fi
echo "$dir/bin/python"
