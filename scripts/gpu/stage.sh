#!/usr/bin/env bash
# Builds what scripts/gpu/test.sh runs on a GPU machine that has no Rust: the CUDA test
# binary (crates/engine/tests/cuda.rs, release, stripped) into target/device-stage/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STAGE="$ROOT/target/device-stage"
mkdir -p "$STAGE"
bin="$(cargo test --release -p moestream-engine --test cuda --no-run --manifest-path "$ROOT/Cargo.toml" \
    --message-format json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')"
strip -o "$STAGE/cuda-test" "$bin"
du -sh "$STAGE/cuda-test"
