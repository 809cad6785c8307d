#!/usr/bin/env python3
"""Write a GGUF file shaped like Qwen3-30B-A3B ("qwen3moe"), with random Q4_0 weights.

For benchmarking llama.cpp against moestream on the same shapes; the model's text is
noise. Needs the `gguf` package (pinned in build_llamacpp.sh's venv) and numpy:

    python make_gguf_qwen3moe.py qwen3-30b-a3b-q4_0.gguf
    python make_gguf_qwen3moe.py --layers 2 tiny.gguf # quick loader check

What is written, following llama.cpp's qwen3moe loader (src/models/qwen3moe.cpp) and what
convert_hf_to_gguf.py + `llama-quantize --pure Q4_0` would produce for the real model:
  * every 2-D/3-D matrix in Q4_0: token_embd, attn_q/k/v/output, ffn_{gate,up,down}_exps
    (stacked over experts) and output (untied lm_head);
  * the router ffn_gate_inp in F32 (convert keeps FFN_GATE_INP in F32, and so does
    llama-quantize);
  * norms in F32, all ones (attn_norm, ffn_norm, attn_q_norm, attn_k_norm, output_norm);
  * a byte-level BPE ("gpt2" model, "qwen2" pre-tokenizer) vocabulary of 151936 entries with
    Qwen3's special-token ids (bos/pad <|endoftext|> 151643, eos <|im_end|> 151645). Its
    ordinary tokens are synthetic: the 256 byte symbols, all 65536 pairs of them, then
    triples, each with the merge that builds it, so any text tokenizes.

Weights: each Q4_0 block is 32 random 4-bit codes (uniform 0..15, dequantized as
d * (q - 8)) and an f16 scale d of random sign and magnitude within +-25% of a per-tensor
base, chosen so the dequantized entries have the standard deviation below. The gains follow
moestream's synthetic models (crates/engine/src/synth/derive.rs) so that routing stays
spread out instead of collapsing onto a few experts:
  * embedding: std 1.0 (the residual stream starts at RMS ~1);
  * projections reading the normalised stream (q/k/v, expert gate/up, router, output):
    std 1/sqrt(fan_in), outputs of RMS ~1;
  * projections writing into the residual stream (attn_output, expert down):
    std 0.1/sqrt(fan_in), outputs of RMS ~0.1.

Tensors are generated and written one at a time (the largest, token_embd/output, is
~175 MB), so memory stays small whatever the file size. The bytes are a deterministic
function of --seed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

try:
    import numpy as np

    import gguf
except ImportError:
    # Fall back to the venv that build_llamacpp.sh makes (it pins gguf and numpy).
    _peers = os.environ.get("MOESTREAM_PEERS_DIR") or os.path.expanduser("~/.cache/moestream-peers")
    _venv = os.path.join(_peers, "venv")
    _py = os.path.join(_venv, "bin", "python")
    if os.path.exists(_py) and os.path.realpath(sys.prefix) != os.path.realpath(_venv):
        os.execv(_py, [_py, *sys.argv])
    sys.exit("needs numpy and gguf==0.19.0: run scripts/peers/build_llamacpp.sh "
             "(it makes a venv with them) or pip install gguf==0.19.0")

ARCH = "qwen3moe"

# Qwen3-30B-A3B (config.json of the Hugging Face release).
HIDDEN = 2048
LAYERS = 48
HEADS = 32
KV_HEADS = 4
HEAD_DIM = 128
EXPERTS = 128
EXPERTS_USED = 8
EXPERT_FFN = 768
DENSE_FFN = 6144  # intermediate_size: unused by qwen3moe, but convert writes it
VOCAB = 151936
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6
CONTEXT = 40960

# Qwen3's added tokens: (id, text). <|...|> ones are control tokens; the rest user-defined.
SPECIAL_TOKENS = [
    (151643, "<|endoftext|>"),
    (151644, "<|im_start|>"),
    (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"),
    (151647, "<|object_ref_end|>"),
    (151648, "<|box_start|>"),
    (151649, "<|box_end|>"),
    (151650, "<|quad_start|>"),
    (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"),
    (151653, "<|vision_end|>"),
    (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"),
    (151656, "<|video_pad|>"),
    (151657, "<tool_call>"),
    (151658, "</tool_call>"),
    (151659, "<|fim_prefix|>"),
    (151660, "<|fim_middle|>"),
    (151661, "<|fim_suffix|>"),
    (151662, "<|fim_pad|>"),
    (151663, "<|repo_name|>"),
    (151664, "<|file_sep|>"),
    (151665, "<tool_response>"),
    (151666, "</tool_response>"),
    (151667, "<think>"),
    (151668, "</think>"),
]
BOS_ID = 151643
EOS_ID = 151645
PAD_ID = 151643

Q4_0 = gguf.GGMLQuantizationType.Q4_0
F32 = gguf.GGMLQuantizationType.F32
QK4_0 = 32
Q4_0_BLOCK_BYTES = 18
# Std of (q - 8) for q uniform on 0..15 with a random-sign scale: sqrt(E[(q-8)^2]).
Q4_0_CODE_RMS = math.sqrt(21.5)


# ---------------------------------------------------------------------------- vocabulary

def byte_symbols() -> list[str]:
    """The printable stand-in for each byte used by byte-level BPE (GPT-2's mapping):
    printable Latin-1 bytes stand for themselves, the others take code points from 256 up."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    keep_set = set(keep)
    symbols = {}
    extra = 0
    for b in range(256):
        if b in keep_set:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges for a 151936-entry byte-level BPE vocabulary."""
    first_special = SPECIAL_TOKENS[0][0]
    syms = byte_symbols()
    tokens: list[str] = list(syms)
    merges: list[str] = []
    # All pairs of byte symbols.
    for a in syms:
        for b in syms:
            if len(tokens) == first_special:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    # Then pair + byte until the ordinary range is full.
    pairs = tokens[256:]
    done = len(tokens) >= first_special
    for ab in pairs:
        if done:
            break
        for c in syms:
            if len(tokens) == first_special:
                done = True
                break
            tokens.append(ab + c)
            merges.append(f"{ab} {c}")
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for tid, text in SPECIAL_TOKENS:
        assert tid == len(tokens), (tid, len(tokens))
        tokens.append(text)
        control = text.startswith("<|") and text.endswith("|>")
        types.append(int(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED))
    while len(tokens) < VOCAB:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(int(gguf.TokenType.UNUSED))
    assert len(set(tokens)) == VOCAB
    return tokens, types, merges


# ---------------------------------------------------------------------------- tensors

class Spec:
    """One tensor: GGUF name, shape in numpy order (outermost first; GGUF stores it
    reversed, so ggml's ne[0] is the last entry here), type and fill."""

    def __init__(self, name: str, shape: tuple[int, ...], qtype, std: float | None = None,
                 ones: bool = False):
        self.name = name
        self.shape = shape
        self.qtype = qtype
        self.std = std
        self.ones = ones

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.qtype == Q4_0:
            assert self.shape[-1] % QK4_0 == 0, self.name
            return self.n_elements // QK4_0 * Q4_0_BLOCK_BYTES
        return self.n_elements * 4


def tensor_specs(layers: int) -> list[Spec]:
    read = lambda fan_in: 1.0 / math.sqrt(fan_in)  # noqa: E731
    write = lambda fan_in: 0.1 / math.sqrt(fan_in)  # noqa: E731
    q_dim = HEADS * HEAD_DIM
    kv_dim = KV_HEADS * HEAD_DIM
    specs = [Spec("token_embd.weight", (VOCAB, HIDDEN), Q4_0, std=1.0)]
    for i in range(layers):
        p = f"blk.{i}."
        specs += [
            Spec(p + "attn_norm.weight", (HIDDEN,), F32, ones=True),
            Spec(p + "attn_q.weight", (q_dim, HIDDEN), Q4_0, std=read(HIDDEN)),
            Spec(p + "attn_k.weight", (kv_dim, HIDDEN), Q4_0, std=read(HIDDEN)),
            Spec(p + "attn_v.weight", (kv_dim, HIDDEN), Q4_0, std=read(HIDDEN)),
            Spec(p + "attn_output.weight", (HIDDEN, q_dim), Q4_0, std=write(q_dim)),
            Spec(p + "attn_q_norm.weight", (HEAD_DIM,), F32, ones=True),
            Spec(p + "attn_k_norm.weight", (HEAD_DIM,), F32, ones=True),
            Spec(p + "ffn_norm.weight", (HIDDEN,), F32, ones=True),
            Spec(p + "ffn_gate_inp.weight", (EXPERTS, HIDDEN), F32, std=read(HIDDEN)),
            Spec(p + "ffn_gate_exps.weight", (EXPERTS, EXPERT_FFN, HIDDEN), Q4_0,
                 std=read(HIDDEN)),
            Spec(p + "ffn_up_exps.weight", (EXPERTS, EXPERT_FFN, HIDDEN), Q4_0,
                 std=read(HIDDEN)),
            Spec(p + "ffn_down_exps.weight", (EXPERTS, HIDDEN, EXPERT_FFN), Q4_0,
                 std=write(EXPERT_FFN)),
        ]
    specs += [
        Spec("output_norm.weight", (HIDDEN,), F32, ones=True),
        Spec("output.weight", (VOCAB, HIDDEN), Q4_0, std=read(HIDDEN)),
    ]
    return specs


def make_data(spec: Spec, seed: int, index: int) -> np.ndarray:
    """The tensor's bytes (uint8, 1-D), a deterministic function of (seed, index)."""
    rng = np.random.Generator(np.random.SFC64([seed, index]))
    if spec.ones:
        return np.ones(spec.n_elements, dtype=np.float32).view(np.uint8)
    if spec.qtype == F32:
        return rng.standard_normal(spec.n_elements, dtype=np.float32).__imul__(
            np.float32(spec.std)).view(np.uint8)
    assert spec.qtype == Q4_0
    n_blocks = spec.n_elements // QK4_0
    words = (spec.nbytes + 7) // 8
    raw = rng.bit_generator.random_raw(words).view(np.uint8)[: spec.nbytes]
    blocks = raw.reshape(n_blocks, Q4_0_BLOCK_BYTES)
    base = spec.std / Q4_0_CODE_RMS
    mag = rng.uniform(0.75 * base, 1.25 * base, n_blocks).astype(np.float32)
    sign = np.where(rng.integers(0, 2, n_blocks, dtype=np.uint8) == 0, 1.0, -1.0)
    scales = (mag * sign).astype("<f2")
    blocks[:, 0:2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


# ---------------------------------------------------------------------------- file

def write_metadata(w: gguf.GGUFWriter, layers: int) -> None:
    w.add_name("Qwen3-30B-A3B-shaped random Q4_0 (moestream benchmark)")
    w.add_block_count(layers)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(DENSE_FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_expert_count(EXPERTS)
    w.add_expert_used_count(EXPERTS_USED)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_expert_feed_forward_length(EXPERT_FFN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges = build_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--layers", type=int, default=LAYERS, help="decoder layers (default 48)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = ap.parse_args()

    if os.path.exists(args.out) and not args.force:
        print(f"{args.out} exists (--force to overwrite)", file=sys.stderr)
        return 1
    specs = tensor_specs(args.layers)
    total = sum(s.nbytes for s in specs)
    free = os.statvfs(os.path.dirname(os.path.abspath(args.out)))
    free_bytes = free.f_bavail * free.f_frsize
    if free_bytes < total + (1 << 30):
        print(f"not enough disk space: need ~{total / 1e9:.1f} GB, have {free_bytes / 1e9:.1f} GB",
              file=sys.stderr)
        return 1

    tmp = args.out + ".part"
    w = gguf.GGUFWriter(tmp, ARCH)
    write_metadata(w, args.layers)
    for s in specs:
        w.add_tensor_info(s.name, s.shape, np.dtype(np.float32), s.nbytes, raw_dtype=s.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    t0 = time.time()
    done = 0
    for i, s in enumerate(specs):
        w.write_tensor_data(make_data(s, args.seed, i))
        done += s.nbytes
        if s.nbytes > (50 << 20) or i == len(specs) - 1:
            el = time.time() - t0
            print(f"\r{done / 1e9:6.2f}/{total / 1e9:.2f} GB  {el:5.0f} s  {s.name:28s}",
                  end="", file=sys.stderr, flush=True)
    w.close()
    os.replace(tmp, args.out)
    print(file=sys.stderr)
    print(f"wrote {args.out}: {len(specs)} tensors, {os.path.getsize(args.out)} bytes "
          f"({total / 1e9:.2f} GB of tensor data) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
