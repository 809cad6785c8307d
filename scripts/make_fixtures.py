#!/usr/bin/env python3
"""Regenerate every moestream test fixture and the embedded tiny model.

Run from the repository root, after `pip install -r scripts/requirements-fixtures.txt`:

    python3 scripts/make_fixtures.py
    python3 scripts/make_fixtures.py --only olmoe,mixtral   # just these model families

Everything is deterministic (fixed seeds, single-threaded tokenizer training) and is
built with mlx-lm's own model classes, quantizer and save functions, so the output
directories look exactly like mlx-community conversions:

  fixtures/models/<name>/   tiny random-weight models + expected.json (mlx-lm outputs)
  fixtures/quant/           mx.quantize / dequantize / quantized_matmul reference cases
  models/tiny-qwen3-moe/    the project's default demo model (random weights, 4-bit)

Only the directories listed above are deleted and rewritten; the hand-written README
files next to them are left alone.
"""

import os

# Tokenizer training must be single-threaded to be reproducible.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path

import mlx_lm
import safetensors
import tokenizers
import transformers
from mlx_lm.generate import generate_step
from mlx_lm.utils import _get_classes, load as mlx_load, quantize_model, save_config, save_model
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

EXPECTED_VERSIONS = {"mlx": "0.32.4", "mlx_lm": "0.32.2"}

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
FIXTURES = REPO / "fixtures"
MODELS_OUT = FIXTURES / "models"
QUANT_OUT = FIXTURES / "quant"
TINY_OUT = REPO / "models" / "tiny-qwen3-moe"

# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

TOKENIZER_VOCAB = 480  # total, including the added tokens below
# (content, special): like Qwen3, only the ChatML control tokens are "special"
# (skipped by decode(skip_special_tokens=True)); the tag tokens are plain added tokens.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
]

CORPUS = """\
The river town woke slowly on market days. Before the sun had cleared the hills, the
bakers were already pulling bread from their ovens, and the smell of warm crust drifted
down the narrow streets toward the water. Fishermen checked their nets, children ran
between the stalls, and an old man with a wooden cart sold apples, pears and small
yellow plums that he picked from the orchard behind his house.

In the library at the top of the hill, the keeper opened the heavy doors at eight
o'clock exactly. She had kept the same routine for thirty years: first the windows,
then the lamps, then the long table where students would spread their books and maps.
Nobody remembered a morning when the library had opened late, and nobody could imagine
the town without her quiet footsteps between the shelves.

A machine that reads text does not see words the way people do. It sees a stream of
small pieces, and it must learn which pieces tend to follow which. Given enough
examples, it can guess the next piece with surprising skill, but it has no idea what a
river, a loaf of bread or a library really is. It only knows the patterns that the
writers of its examples left behind.

When the weather turned cold, the town changed its rhythm. The boats stayed in the
harbor, the market moved under the stone arches of the old hall, and people spoke more
softly, as if the fog had settled into their voices as well. In the evenings, families
gathered around the fire to tell stories about storms, lost ships and the strange
lights that were sometimes seen over the marshes at night.

Every question deserves a careful answer. If you do not know something, say so, and
then try to find out. Write down what you learn, check it against what others have
written, and change your mind when the evidence is strong. This is how knowledge
grows: slowly, with patience, one small step after another.

The engineers tested the new bridge for three weeks before they let the first cars
cross it. They measured how much the steel moved in the wind, how the concrete held up
under heavy loads, and whether the joints stayed tight when the temperature dropped
below freezing. Only when every number matched their predictions did they sign the
report and open the road to the public.

What is the weather like today? It is sunny and warm, with a light breeze from the
west. Could you tell me the time? It is half past four in the afternoon. Thank you
for your help. You are welcome; let me know if there is anything else I can do.
"""

# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------

PROMPT_TEXT = "The keeper opened the library at eight. Café 東京 🙂!"
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather like in Zürich today? 🌤️"},
]
GREEDY_TOKENS = 24

# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def f32(v):
    """A float32 value as the shortest decimal that round-trips through float32."""
    return float(str(np.float32(v)))


def f32_list(a):
    return [f32(v) for v in np.asarray(a, dtype=np.float32).ravel()]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def versions():
    return {
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def reset_dir(path: Path):
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def dir_size(path: Path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------
# Tokenizer construction
# --------------------------------------------------------------------------------------


def build_tokenizer() -> Tokenizer:
    n_added = len(ADDED_TOKENS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB - n_added,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    base = tok.get_vocab_size()
    if base != TOKENIZER_VOCAB - n_added:
        raise SystemExit(f"BPE training produced {base} tokens, wanted {TOKENIZER_VOCAB - n_added}")
    for content, special in ADDED_TOKENS:
        t = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])
    if tok.get_vocab_size() != TOKENIZER_VOCAB:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {TOKENIZER_VOCAB}")
    return tok


class TokenizerFiles:
    """Serialized tokenizer files shared by every model directory."""

    def __init__(self):
        self.tok = build_tokenizer()
        self.ids = {c: self.tok.token_to_id(c) for c, _ in ADDED_TOKENS}
        self.eos_id = self.ids["<|im_end|>"]
        self.eot_id = self.ids["<|endoftext|>"]
        chat_template = (SCRIPTS / "fixture_chat_template.jinja").read_text(encoding="utf-8")

        self.tokenizer_json = json.loads(self.tok.to_str())

        def token_entry(content, special):
            return {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }

        self.tokenizer_config = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(self.ids[c]): token_entry(c, s) for c, s in ADDED_TOKENS
            },
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 4096,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        }

        def map_entry(content):
            e = token_entry(content, True)
            del e["special"]
            return e

        self.special_tokens_map = {
            "additional_special_tokens": [map_entry("<|im_start|>"), map_entry("<|im_end|>")],
            "eos_token": map_entry("<|im_end|>"),
            "pad_token": map_entry("<|endoftext|>"),
        }
        self.generation_config = {
            "bos_token_id": self.eot_id,
            "eos_token_id": [self.eos_id, self.eot_id],
            "pad_token_id": self.eot_id,
        }

    def write(self, path: Path):
        write_json(path / "tokenizer.json", self.tokenizer_json)
        write_json(path / "tokenizer_config.json", self.tokenizer_config)
        write_json(path / "special_tokens_map.json", self.special_tokens_map)
        write_json(path / "generation_config.json", self.generation_config)


def check_tokenizer(path: Path, toks: TokenizerFiles):
    """Load the written files with transformers and check round trips."""
    hf = AutoTokenizer.from_pretrained(str(path))
    assert len(hf) == TOKENIZER_VOCAB, len(hf)
    assert hf.eos_token == "<|im_end|>" and hf.eos_token_id == toks.eos_id
    assert hf.pad_token_id == toks.eot_id and hf.bos_token is None
    samples = [
        PROMPT_TEXT,
        "Hello, world!",
        "  leading spaces and\ttabs\nnew lines\r\n",
        "emoji 👩‍👩‍👧‍👦 🚀 and CJK 中文字符 日本語 한국어",
        "accents: naïve façade Ångström ß",
        "<|im_start|>user\nhi<|im_end|>\n<think>\nhmm\n</think>\n\n<tool_call>{}</tool_call>",
    ]
    for s in samples:
        ids = hf.encode(s, add_special_tokens=False)
        assert ids == toks.tok.encode(s, add_special_tokens=False).ids, s
        assert hf.decode(ids) == s, (s, hf.decode(ids))
    for content, _ in ADDED_TOKENS:
        assert hf.encode(content, add_special_tokens=False) == [toks.ids[content]], content
    return hf


# --------------------------------------------------------------------------------------
# Model configurations (HF-style config.json contents)
# --------------------------------------------------------------------------------------


def qwen3_moe_config(toks, **over):
    cfg = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "decoder_sparse_step": 1,
        "eos_token_id": toks.eos_id,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "max_window_layers": 3,
        "mlp_only_layers": [1],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": 64,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 512,
    }
    cfg.update(over)
    return cfg


def qwen3_config(toks):
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "eos_token_id": toks.eos_id,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "max_window_layers": 3,
        "model_type": "qwen3",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 512,
    }


def llama_config(toks):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "eos_token_id": toks.eos_id,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 512,
    }


# --------------------------------------------------------------------------------------
# Random models
# --------------------------------------------------------------------------------------

# Rescaling applied on top of mlx-lm's default init (uniform +-1/sqrt(in) for Linear,
# N(0, 1/dims) for Embedding, ones for RMSNorm):
#  * embeddings x4 and residual-writing projections (o_proj, down_proj) x0.5 keep the
#    residual stream token-specific, so the routers keep spreading tokens over experts;
#  * lm_head x4 (and the x4 embedding when tied) give logits with std ~2-4 instead of
#    ~0.6, so greedy choices and top-k log-probs are well separated;
#  * routers x2 widen the gap between the k-th and (k+1)-th expert probability;
#  * RMSNorm weights become U(0.8, 1.2) instead of all ones, so a loader that ignores
#    a norm weight is caught by the expected logits.
# Tied embeddings need other factors: with a tied head the residual stream's own input
# embedding dominates the logits and greedy decoding just repeats the last token, so
# the tied model uses a small embedding (x0.5), strong residual writers (x4) and a
# final norm weight x5 to bring the logits back to a useful scale.
EMBED_SCALE = 4.0
# Seed of the qwen3_moe fixture family, picked (from 1..15) because the gap between the
# 4th and 5th router probability stays >= 5e-5 over prompt + greedy tokens in the f32
# model and every f32-scale quantized variant, so a correct f32 implementation cannot
# flip an expert choice through rounding alone.
QWEN3_MOE_SEED = 15
RESIDUAL_OUT_SCALE = 0.5
LM_HEAD_SCALE = 4.0
ROUTER_SCALE = 2.0


def build_model(config: dict, seed: int, embed_scale=EMBED_SCALE, residual_scale=RESIDUAL_OUT_SCALE,
                lm_head_scale=LM_HEAD_SCALE, router_scale=ROUTER_SCALE, final_norm_scale=1.0):
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    norm_key = mx.random.key(seed + 7919)
    bias_key = mx.random.key(seed + 104729)
    counter = [0]
    bias_counter = [0]

    def rescale(path, v):
        if path.endswith("embed_tokens.weight"):
            return v * embed_scale
        if path.endswith(("o_proj.weight", "down_proj.weight", "linear_attn.out_proj.weight")):
            return v * residual_scale
        if path == "lm_head.weight" or path == "language_model.lm_head.weight":
            return v * lm_head_scale
        if path.endswith("mlp.gate.weight"):
            if not mx.any(v).item():
                # GLM's MoEGate weight starts at zero (a raw parameter): draw it like a
                # Linear's default init, U(-1/sqrt(in), 1/sqrt(in)).
                bias_counter[0] += 1
                k = mx.random.split(bias_key, 1 + bias_counter[0])[-1]
                lim = v.shape[-1] ** -0.5
                v = mx.random.uniform(-lim, lim, v.shape, key=k)
            return v * router_scale
        if path.endswith("e_score_correction_bias"):
            # GLM's selection bias starts at zero; give it values that move the selection.
            bias_counter[0] += 1
            k = mx.random.split(bias_key, 1 + bias_counter[0])[-1]
            return mx.random.uniform(-0.1, 0.1, v.shape, key=k)
        if "norm" in path and v.ndim == 1:
            counter[0] += 1
            k = mx.random.split(norm_key, 1 + counter[0])[-1]
            w = mx.random.uniform(0.8, 1.2, v.shape, key=k)
            return w * final_norm_scale if path == "model.norm.weight" else w
        return v

    # tree_map_with_path visits parameters in a fixed (sorted) order.
    model.update(tree_map_with_path(rescale, model.parameters()))
    mx.eval(model.parameters())
    return model


def install_cpu_bf16_gather_mm_shim():
    """mlx's CPU backend has no bf16/f16 `gather_mm` ("[GatherMM::eval] Currently only
    supports float32"), so an unquantized bf16 MoE cannot run on CPU as is. For non-f32
    inputs, SwitchLinear is computed as a float32 gather_mm of the (exactly upcast)
    bf16 values, rounded back to bf16: f32 accumulation, like mlx's GPU kernels and like
    mlx's own CPU bf16 `matmul`. float32 models never take this path."""
    from mlx_lm.models import switch_layers

    cls = switch_layers.SwitchLinear
    if getattr(cls, "_moestream_shim", False):
        return
    orig = cls.__call__

    def call(self, x, indices, sorted_indices=False):
        if x.dtype == mx.float32 and self["weight"].dtype == mx.float32:
            return orig(self, x, indices, sorted_indices)
        y = mx.gather_mm(
            x.astype(mx.float32),
            self["weight"].astype(mx.float32).swapaxes(-1, -2),
            rhs_indices=indices,
            sorted_indices=sorted_indices,
        ).astype(x.dtype)
        if "bias" in self:
            y = y + mx.expand_dims(self["bias"][indices], -2)
        return y

    cls.__call__ = call
    cls._moestream_shim = True


class F32AccumulationQuantizedMatmul:
    """Context manager: quantized Linear / SwitchLinear layers with non-f32 scales compute
    `round_to_activation_dtype(x_f32 @ (scales_f32 * q + biases_f32).T)`, i.e. float32
    dequantization and float32 accumulation, rounded once at the output (what mlx's GPU
    kernels do, up to summation order). mlx's CPU kernel instead accumulates bf16 inputs
    sequentially in bf16, which moves logits by ~0.1 on these fixtures. Embedding lookups
    are left as mlx does them (rows dequantized in the storage dtype)."""

    def __enter__(self):
        from mlx_lm.models import switch_layers

        self.lin = nn.QuantizedLinear
        self.sw = switch_layers.QuantizedSwitchLinear
        self.orig_lin = self.lin.__call__
        self.orig_sw = self.sw.__call__
        orig_lin, orig_sw = self.orig_lin, self.orig_sw

        def dequant_f32(layer):
            return mx.dequantize(
                layer["weight"], layer["scales"].astype(mx.float32), layer["biases"].astype(mx.float32),
                group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
            )

        def lin_call(layer, x):
            if layer["scales"].dtype == mx.float32:
                return orig_lin(layer, x)
            y = (x.astype(mx.float32) @ dequant_f32(layer).T).astype(x.dtype)
            return y + layer["bias"] if "bias" in layer else y

        def sw_call(layer, x, indices, sorted_indices=False):
            if layer["scales"].dtype == mx.float32:
                return orig_sw(layer, x, indices, sorted_indices)
            y = mx.gather_mm(
                x.astype(mx.float32), dequant_f32(layer).swapaxes(-1, -2),
                rhs_indices=indices, sorted_indices=sorted_indices,
            ).astype(x.dtype)
            if "bias" in layer:
                y = y + mx.expand_dims(layer["bias"][indices], -2)
            return y

        self.lin.__call__ = lin_call
        self.sw.__call__ = sw_call
        return self

    def __exit__(self, *exc):
        self.lin.__call__ = self.orig_lin
        self.sw.__call__ = self.orig_sw


def clone_model(config: dict, weights: dict):
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


def cast_model(model, dtype):
    """What `mlx_lm.convert --dtype` does: cast float params (respecting cast_predicate)."""
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(k, v):
        if cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    model.update(tree_map_with_path(set_dtype, model.parameters()))
    mx.eval(model.parameters())


# --------------------------------------------------------------------------------------
# Reference outputs
# --------------------------------------------------------------------------------------


def moe_block(layer):
    """The routed-expert block of a decoder layer (`mlp` or Mixtral's `block_sparse_moe`)."""
    for name in ("mlp", "block_sparse_moe"):
        block = getattr(layer, name, None) if name in layer else None
        if block is not None and "switch_mlp" in block:
            return block
    return None


class RouterRecorder:
    """Temporarily wraps the MoE block classes' __call__ to record the router's softmax
    over all experts and the top-k sets (the top-k by probability equals the top-k by logit,
    so this also covers Mixtral's top-k-then-softmax router)."""

    def __init__(self, classes):
        self.classes = list(dict.fromkeys(classes))
        self.records = []
        self.orig = {}

    def __enter__(self):
        records = self.records
        for cls in self.classes:
            orig = cls.__call__
            self.orig[cls] = orig

            def wrapped(block, x, _orig=orig):
                k = getattr(block, "top_k", None) or block.num_experts_per_tok
                if hasattr(block.gate, "e_score_correction_bias"):
                    # GLM: the selection scores (sigmoid + bias, weak groups zeroed) and
                    # mlx-lm's own choice.
                    inds, _ = block.gate(x)
                    records.append((k, glm_selection_scores(block.gate, x), inds))
                    return _orig(block, x)
                probs = mx.softmax(block.gate(x), axis=-1, precise=True)
                inds = mx.argpartition(probs, kth=-k, axis=-1)[..., -k:]
                records.append((k, probs.astype(mx.float32), inds))
                return _orig(block, x)

            cls.__call__ = wrapped
        return self

    def __exit__(self, *exc):
        for cls, orig in self.orig.items():
            cls.__call__ = orig


def glm_selection_scores(gate, x):
    """What GLM's noaux_tc router ranks: sigmoid(x W^T) + e_score_correction_bias, with the
    (n_group - topk_group) groups of lowest top-2 sum set to 0 (mlx-lm's
    group_expert_select), as a [tokens, E] float32 array."""
    sc = mx.sigmoid((x @ gate.weight.T).astype(mx.float32)) + gate.e_score_correction_bias
    sel = np.array(sc.astype(mx.float32)).reshape(-1, sc.shape[-1])
    if gate.n_group > 1:
        grouped = sel.reshape(sel.shape[0], gate.n_group, -1)
        top2 = -np.sort(-grouped, axis=-1)[..., :2].sum(-1)
        drop = np.argsort(top2, axis=-1, kind="stable")[:, : gate.n_group - gate.topk_group]
        for t in range(sel.shape[0]):
            grouped[t, drop[t]] = 0.0
        sel = grouped.reshape(sel.shape)
    return sel


def record_routing(model, ids):
    blocks = [(i, moe_block(l)) for i, l in enumerate(model.layers)]
    blocks = [(i, b) for i, b in blocks if b is not None]
    with RouterRecorder(type(b) for _, b in blocks) as rec:
        mx.eval(model(mx.array(ids)[None]))
    out = {}
    for (layer, _), (k, probs, inds) in zip(blocks, rec.records):
        p = np.array(probs).reshape(-1, probs.shape[-1])
        sets = [sorted(int(e) for e in row) for row in np.array(inds).reshape(-1, k)]
        srt = -np.sort(-p, axis=-1)
        out[layer] = (sets, float((srt[:, k - 1] - srt[:, k]).min()))
    return out


def routing_summary(model, prompt_ids, greedy_ids):
    """Per MoE layer: distinct experts reached by the prompt, the prompt tokens' expert
    sets, and the smallest gap between the k-th and (k+1)-th router probability over the
    prompt and over prompt + greedy continuation (one forward over the whole sequence)."""
    if not any(moe_block(l) is not None for l in model.layers):
        return None
    on_prompt = record_routing(model, prompt_ids)
    on_all = record_routing(model, list(prompt_ids) + list(greedy_ids))
    out = {}
    for layer, (sets, margin) in on_prompt.items():
        out[str(layer)] = {
            "distinct_experts": len({e for s in sets for e in s}),
            "min_topk_margin": f32(margin),
            "min_topk_margin_with_greedy": f32(on_all[layer][1]),
            "experts_per_token": sets,
        }
    return out


def reference_outputs(model, prompt_ids):
    prompt = mx.array(prompt_ids)
    logits = model(prompt[None])[0, -1]
    mx.eval(logits)
    logits32 = np.array(logits.astype(mx.float32))
    lp = logits32.astype(np.float64)
    lp = lp - (lp.max() + np.log(np.exp(lp - lp.max()).sum()))
    order = sorted(range(len(lp)), key=lambda i: (-lp[i], i))[:10]
    top = [[int(i), f32(lp[i])] for i in order]

    step_max = []

    def capture(tokens, step_logits):
        step_max.append(mx.max(step_logits.astype(mx.float32)))
        return step_logits

    greedy = []
    for tok, _ in generate_step(prompt, model, max_tokens=GREEDY_TOKENS, logits_processors=[capture]):
        greedy.append(int(tok))
    mx.eval(step_max)
    return {
        "logits_last": f32_list(logits32),
        "top_logprobs": top,
        "greedy_ids": greedy,
        "greedy_logits_max": [f32(np.array(m)) for m in step_max[: len(greedy)]],
    }


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --------------------------------------------------------------------------------------
# Writing model directories
# --------------------------------------------------------------------------------------


def quant_block(config):
    q = config.get("quantization")
    if q is None:
        return None
    return {k: q[k] for k in ("group_size", "bits", "mode") if k in q}


def text_config(config):
    """The text model's fields (Qwen3.5 nests them under `text_config`)."""
    return config.get("text_config", config)


# Long-prompt check of the newer architectures: a fixed pseudo-random id sequence, its
# last-position logits from one mlx forward (prefill) over all of it.
LONG_PROMPT_LEN = 300


def long_prompt_reference(model):
    rng = np.random.default_rng(1234)
    ids = [int(i) for i in rng.integers(0, TOKENIZER_VOCAB, LONG_PROMPT_LEN)]
    logits = model(mx.array(ids)[None])[0, -1].astype(mx.float32)
    mx.eval(logits)
    return {"ids": ids, "logits_last": f32_list(np.array(logits))}


def finish_model_dir(out: Path, config: dict, toks: TokenizerFiles, hf_tok, dtype_name, fixture,
                     in_memory_model=None, reference=None, write_expected=True, notes=(),
                     long_prompt=False):
    """Tokenizer files, reload check and expected.json for a written model directory."""
    toks.write(out)
    loaded, mlx_tok = mlx_load(str(out))
    assert mlx_tok.eos_token_id == toks.eos_id
    assert set(mlx_tok.eos_token_ids) == {toks.eos_id, toks.eot_id}, mlx_tok.eos_token_ids

    prompt_ids = hf_tok.encode(PROMPT_TEXT, add_special_tokens=False)
    ref = reference_outputs(loaded, prompt_ids)

    # The saved directory must reproduce what the in-memory model (or the reference
    # directory, for the HF-layout copy) computes.
    if in_memory_model is not None:
        mem = np.array(in_memory_model(mx.array(prompt_ids)[None])[0, -1].astype(mx.float32))
        d = max_abs_diff(mem, ref["logits_last"])
        assert d <= 1e-5, f"{fixture}: reloaded logits differ from in-memory model by {d}"
    if reference is not None:
        d = max_abs_diff(reference["logits_last"], ref["logits_last"])
        assert d <= 1e-5, f"{fixture}: logits differ from reference by {d}"
        assert reference["greedy_ids"] == ref["greedy_ids"], fixture

    rendered = hf_tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    chat_ids = hf_tok.encode(rendered, add_special_tokens=False)
    routing = routing_summary(loaded, prompt_ids, ref["greedy_ids"])
    eos_set = {toks.eos_id, toks.eot_id}
    expected = {
        "fixture": fixture,
        "model_type": config["model_type"],
        "dtype": dtype_name,
        "quantization": quant_block(config),
        "vocab_size": text_config(config)["vocab_size"],
        "prompt_text": PROMPT_TEXT,
        "prompt_ids": prompt_ids,
        "logits_last": ref["logits_last"],
        "top_logprobs": ref["top_logprobs"],
        "greedy_ids": ref["greedy_ids"],
        "greedy_logits_max": ref["greedy_logits_max"],
        "greedy_max_tokens": GREEDY_TOKENS,
        "greedy_ignores_eos": True,
        "greedy_contains_eos": any(t in eos_set for t in ref["greedy_ids"]),
        "routing": routing,
        "chat": {
            "messages": CHAT_MESSAGES,
            "add_generation_prompt": True,
            "rendered": rendered,
            "ids": chat_ids,
        },
        "notes": list(notes),
        "mlx_versions": versions(),
    }
    if long_prompt:
        expected["long_prompt"] = long_prompt_reference(loaded)
    if quant_block(config) is not None and dtype_name != "float32":
        with F32AccumulationQuantizedMatmul():
            acc = reference_outputs(loaded, prompt_ids)
        expected["reference_f32_accumulation"] = {
            "description": (
                "Same model and prompt, but every quantized Linear/SwitchLinear computed as "
                "float32 dequantization (scales*q+biases in f32) with float32 accumulation, "
                "rounded to the activation dtype once per output (mlx GPU semantics). The "
                "top-level fields are mlx's CPU kernels, which accumulate bf16 sequentially "
                "in bf16."
            ),
            "logits_last": acc["logits_last"],
            "top_logprobs": acc["top_logprobs"],
            "greedy_ids": acc["greedy_ids"],
            "greedy_logits_max": acc["greedy_logits_max"],
            "max_abs_diff_logits_last_vs_mlx_cpu": f32(max_abs_diff(acc["logits_last"], ref["logits_last"])),
        }
        expected["notes"].append(
            "mlx CPU quantized matmuls accumulate bf16 sequentially in bf16; "
            "reference_f32_accumulation holds the float32-accumulation outputs."
        )
    if write_expected:
        write_json(out / "expected.json", expected)
    summary = {k: v["distinct_experts"] for k, v in (routing or {}).items()}
    margins = {k: v["min_topk_margin_with_greedy"] for k, v in (routing or {}).items()}
    print(f"  {fixture}: {dir_size(out) / 1e6:.2f} MB, greedy {ref['greedy_ids'][:8]}..., "
          f"logit max {max(ref['logits_last']):.3f}, distinct experts/layer {summary}, "
          f"min top-k margin {margins}")
    return expected, ref


def save_mlx_dir(out: Path, model, config: dict):
    reset_dir(out)
    save_model(out, model)
    save_config(copy.deepcopy(config), config_path=out / "config.json")


def make_variant(name, base_config, base_weights, toks, hf_tok, dtype=None, bits=None, group_size=None,
                 long_prompt=False):
    config = copy.deepcopy(base_config)
    model = clone_model(config, base_weights)
    dtype_name = "float32"
    if dtype is not None:
        cast_model(model, dtype)
        dtype_name = {mx.bfloat16: "bfloat16", mx.float16: "float16", mx.float32: "float32"}[dtype]
        config["torch_dtype"] = dtype_name
    if bits is not None:
        model, config = quantize_model(model, config, group_size, bits)
    out = MODELS_OUT / name
    save_mlx_dir(out, model, config)
    notes = []
    if bits is None and dtype_name != "float32" and text_config(config).get("num_experts", 0) > 0:
        notes.append(
            "mlx CPU has no bf16 gather_mm: expert matmuls were computed as float32 gather_mm "
            "of the bf16 values, rounded to bf16 (float32 accumulation, as mlx's GPU "
            "kernels and CPU bf16 matmul do)."
        )
    return finish_model_dir(out, config, toks, hf_tok, dtype_name, name, in_memory_model=model, notes=notes,
                            long_prompt=long_prompt)


# Mixtral's Hugging Face expert names (mlx-lm's mixtral sanitize maps w1/w2/w3 to these).
MIXTRAL_HF_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def make_hf_layout(name, base_config, base_weights, toks, hf_tok, reference, notes=None, block="mlp",
                   hf_names=None):
    """Same f32 weights saved with per-expert (unstacked) Hugging Face tensor names."""
    out = MODELS_OUT / name
    reset_dir(out)
    hf_weights = {}
    for k, v in base_weights.items():
        if f".{block}.switch_mlp." in k:
            prefix, proj = k.split(f".{block}.switch_mlp.")
            proj = proj.split(".")[0]
            proj = (hf_names or {}).get(proj, proj)
            for e in range(v.shape[0]):
                hf_weights[f"{prefix}.{block}.experts.{e}.{proj}.weight"] = v[e]
        else:
            hf_weights[k] = v
    hf_weights = dict(sorted(hf_weights.items()))
    mx.save_safetensors(str(out / "model.safetensors"), hf_weights, metadata={"format": "pt"})
    config = copy.deepcopy(base_config)
    save_config(config, config_path=out / "config.json")
    notes = notes or [
        "Hugging Face tensor layout (per-expert model.layers.L.mlp.experts.E.*_proj.weight); "
        "mlx-lm stacks them in Model.sanitize at load time. Outputs equal qwen3_moe_f32's."
    ]
    return finish_model_dir(out, config, toks, hf_tok, "float32", name, reference=reference, notes=notes)


def make_qwen3_family(toks, hf_tok, summary):

    # qwen3_moe family: one f32 base model, many storage variants.
    cfg = qwen3_moe_config(toks)
    base = build_model(cfg, seed=QWEN3_MOE_SEED)
    weights = dict(tree_flatten(base.parameters()))
    exp_f32, ref_f32 = make_variant("qwen3_moe_f32", cfg, weights, toks, hf_tok)
    summary["qwen3_moe_f32"] = exp_f32["routing"]
    variants = [
        ("qwen3_moe_bf16", dict(dtype=mx.bfloat16)),
        ("qwen3_moe_q4_g32_f32", dict(bits=4, group_size=32)),
        ("qwen3_moe_q4_g64_f32", dict(bits=4, group_size=64)),
        ("qwen3_moe_q8_g64_f32", dict(bits=8, group_size=64)),
        ("qwen3_moe_q3_g32_f32", dict(bits=3, group_size=32)),
        ("qwen3_moe_q6_g64_f32", dict(bits=6, group_size=64)),
        ("qwen3_moe_q4_g64_bf16", dict(dtype=mx.bfloat16, bits=4, group_size=64)),
    ]
    for name, kw in variants:
        exp, _ = make_variant(name, cfg, weights, toks, hf_tok, **kw)
        summary[name] = exp["routing"]
    make_hf_layout("qwen3_moe_hf_f32", cfg, weights, toks, hf_tok, reference=ref_f32)

    cfg = qwen3_moe_config(toks, decoder_sparse_step=2, mlp_only_layers=[], tie_word_embeddings=True)
    m = build_model(cfg, seed=3, embed_scale=0.5, residual_scale=4.0, final_norm_scale=5.0)
    exp, _ = make_variant("qwen3_moe_sparse_step2_f32", cfg, dict(tree_flatten(m.parameters())), toks, hf_tok)
    summary["qwen3_moe_sparse_step2_f32"] = exp["routing"]

    cfg = qwen3_config(toks)
    m = build_model(cfg, seed=3)
    make_variant("qwen3_dense_f32", cfg, dict(tree_flatten(m.parameters())), toks, hf_tok)

    cfg = llama_config(toks)
    m = build_model(cfg, seed=4)
    make_variant("llama_dense_f32", cfg, dict(tree_flatten(m.parameters())), toks, hf_tok)



def olmoe_config(toks):
    return {
        "architectures": ["OlmoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "clip_qkv": None,
        "eos_token_id": toks.eos_id,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 32,
        "max_position_embeddings": 4096,
        "model_type": "olmoe",
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 512,
    }


def mixtral_config(toks):
    return {
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "eos_token_id": toks.eos_id,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 4096,
        "model_type": "mixtral",
        "num_attention_heads": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "num_local_experts": 8,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 512,
    }


# Seeds of the newer families, each picked from a handful for a clear top-k margin (the gap
# between the k-th and (k+1)-th router probability printed per fixture).
OLMOE_SEED = 21
MIXTRAL_SEED = 31


def make_family(toks, hf_tok, summary, base_name, cfg, seed, quant=((4, 32),)):
    """A float32 model and its 4-bit (float32 scales) variants, with the long-prompt check."""
    m = build_model(cfg, seed=seed)
    weights = dict(tree_flatten(m.parameters()))
    exp, ref = make_variant(f"{base_name}_f32", cfg, weights, toks, hf_tok, long_prompt=True)
    summary[f"{base_name}_f32"] = exp["routing"]
    for bits, gs in quant:
        name = f"{base_name}_q{bits}_g{gs}_f32"
        exp, _ = make_variant(name, cfg, weights, toks, hf_tok, bits=bits, group_size=gs, long_prompt=True)
        summary[name] = exp["routing"]
    return weights, ref


def make_olmoe(toks, hf_tok, summary):
    make_family(toks, hf_tok, summary, "olmoe", olmoe_config(toks), OLMOE_SEED)


def make_mixtral(toks, hf_tok, summary):
    cfg = mixtral_config(toks)
    weights, ref = make_family(toks, hf_tok, summary, "mixtral", cfg, MIXTRAL_SEED)
    make_hf_layout(
        "mixtral_hf_f32", cfg, weights, toks, hf_tok, reference=ref, block="block_sparse_moe",
        hf_names=MIXTRAL_HF_NAMES,
        notes=["Hugging Face tensor layout (per-expert model.layers.L.block_sparse_moe.experts.E."
               "w1/w2/w3.weight); mlx-lm's sanitize stacks them into switch_mlp.gate_proj/down_proj/"
               "up_proj. Outputs equal mixtral_f32's."],
    )


def qwen3_next_config(toks):
    """Hybrid: layers 0 and 2 Gated DeltaNet, 1 and 3 gated full attention
    (full_attention_interval 2); layer 2 dense (mlp_only_layers), the others MoE with a
    shared expert."""
    return {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "decoder_sparse_step": 1,
        "eos_token_id": toks.eos_id,
        "full_attention_interval": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_value_head_dim": 16,
        "max_position_embeddings": 4096,
        "mlp_only_layers": [2],
        "model_type": "qwen3_next",
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "shared_expert_intermediate_size": 64,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 512,
    }


def qwen3_5_moe_config(toks):
    """The Qwen3.5 VL wrapper around a text config (weights under `language_model.`);
    value heads narrower than key heads (Dv 8, Dk 16), partial rotary 0.25."""
    text = {
        "attention_bias": False,
        "bos_token_id": toks.eot_id,
        "eos_token_id": toks.eos_id,
        "full_attention_interval": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "layer_types": ["linear_attention", "full_attention"] * 2,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_value_head_dim": 8,
        "max_position_embeddings": 4096,
        "model_type": "qwen3_5_moe_text",
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [2, 1, 1],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000.0,
            "rope_type": "default",
        },
        "shared_expert_intermediate_size": 64,
        "tie_word_embeddings": False,
        "vocab_size": 512,
    }
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "eos_token_id": toks.eos_id,
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


QWEN3_NEXT_SEED = 44
QWEN3_5_MOE_SEED = 56


def make_qwen3_next(toks, hf_tok, summary):
    make_family(toks, hf_tok, summary, "qwen3_next", qwen3_next_config(toks), QWEN3_NEXT_SEED)


def make_qwen3_5_moe(toks, hf_tok, summary):
    make_family(toks, hf_tok, summary, "qwen3_5_moe", qwen3_5_moe_config(toks), QWEN3_5_MOE_SEED)


def glm4_moe_lite_config(toks, **over):
    """MLA with a low-rank query path (q_lora_rank 32), latent R 32, rope dims 16, nope 32,
    v 32; layer 0 dense (first_k_dense_replace 1), layers 1-2 MoE: 16 experts in 4 groups
    (topk_group 2), top-4, routed_scaling_factor 1.8, one shared expert."""
    cfg = {
        "architectures": ["Glm4MoeLiteForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "eos_token_id": toks.eos_id,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "kv_lora_rank": 32,
        "max_position_embeddings": 4096,
        "model_type": "glm4_moe_lite",
        "moe_intermediate_size": 32,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 1,
        "q_lora_rank": 32,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "routed_scaling_factor": 1.8,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "torch_dtype": "float32",
        "use_cache": True,
        "v_head_dim": 32,
        "vocab_size": 512,
    }
    cfg.update(over)
    return cfg


GLM4_MOE_LITE_SEED = 61
GLM4_MOE_LITE_QPROJ_SEED = 62


def make_glm4_moe_lite(toks, hf_tok, summary):
    make_family(toks, hf_tok, summary, "glm4_moe_lite", glm4_moe_lite_config(toks), GLM4_MOE_LITE_SEED)
    # The other options: queries straight from q_proj, ungrouped router, two dense layers,
    # two shared experts (one SwiGLU of twice moe_intermediate_size).
    cfg = glm4_moe_lite_config(toks, q_lora_rank=None, n_group=1, topk_group=1,
                               first_k_dense_replace=2, n_shared_experts=2)
    m = build_model(cfg, seed=GLM4_MOE_LITE_QPROJ_SEED)
    exp, _ = make_variant("glm4_moe_lite_qproj_f32", cfg, dict(tree_flatten(m.parameters())), toks, hf_tok,
                          long_prompt=True)
    summary["glm4_moe_lite_qproj_f32"] = exp["routing"]


def glm4_moe_config(toks):
    """GLM-4.5-style standard attention (q/k RMSNorm, q/k/v biases, partial rotary 0.5) with
    the GLM router: layer 0 dense, layers 1-2 MoE with 16 experts in 2 groups (topk_group 1),
    top-4, one shared expert."""
    return {
        "architectures": ["Glm4MoeForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "bos_token_id": toks.eot_id,
        "eos_token_id": toks.eos_id,
        "first_k_dense_replace": 1,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "model_type": "glm4_moe",
        "moe_intermediate_size": 32,
        "n_group": 2,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "num_nextn_predict_layers": 1,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "routed_scaling_factor": 2.5,
        "tie_word_embeddings": False,
        "topk_group": 1,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_qk_norm": True,
        "vocab_size": 512,
    }


GLM4_MOE_SEED = 71


def make_glm4_moe(toks, hf_tok, summary):
    make_family(toks, hf_tok, summary, "glm4_moe", glm4_moe_config(toks), GLM4_MOE_SEED)


FAMILIES = {
    "qwen3": make_qwen3_family,
    "olmoe": make_olmoe,
    "mixtral": make_mixtral,
    "qwen3_next": make_qwen3_next,
    "qwen3_5_moe": make_qwen3_5_moe,
    "glm4_moe_lite": make_glm4_moe_lite,
    "glm4_moe": make_glm4_moe,
}


def make_models(toks, hf_tok, only=None):
    MODELS_OUT.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, make in FAMILIES.items():
        if only is None or name in only:
            make(toks, hf_tok, summary)
    return summary


# --------------------------------------------------------------------------------------
# Embedded default model
# --------------------------------------------------------------------------------------

TINY_README = """\
# tiny-qwen3-moe

A miniature `qwen3_moe` model in the mlx-community format (4-bit affine quantization,
group size 64, bfloat16 scales and biases, 8-bit routers), made by
`scripts/make_fixtures.py` with mlx-lm's own model class, quantizer and save functions.

**The weights are random.** The text it generates is noise. It exists so that
`moestream generate` runs out of the box, without downloading anything, and so that
the whole pipeline (tokenizer, chat template, quantized MoE forward pass, sampling)
can be exercised on any machine in a fraction of a second.

| field | value |
|---|---|
| hidden_size | 128 |
| num_hidden_layers | 4 (all MoE) |
| num_attention_heads / num_key_value_heads / head_dim | 4 / 2 / 32 |
| num_experts / num_experts_per_tok | 32 / 4 |
| moe_intermediate_size | 128 |
| vocab_size | 512 (tokenizer: 480 tokens, byte-level BPE, ChatML) |

Regenerate with `python3 scripts/make_fixtures.py` from the repository root.
"""


def make_tiny_model(toks, hf_tok):
    cfg = qwen3_moe_config(
        toks,
        hidden_size=128,
        num_hidden_layers=4,
        max_window_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=32,
        num_experts_per_tok=4,
        moe_intermediate_size=128,
        intermediate_size=384,
        mlp_only_layers=[],
        rope_theta=1000000.0,
        max_position_embeddings=40960,
    )
    base = build_model(cfg, seed=5)
    model = clone_model(cfg, dict(tree_flatten(base.parameters())))
    cast_model(model, mx.bfloat16)
    cfg["torch_dtype"] = "bfloat16"
    model, cfg = quantize_model(model, cfg, 64, 4)
    out = TINY_OUT
    save_mlx_dir(out, model, cfg)
    (out / "README.md").write_text(TINY_README, encoding="utf-8")
    exp, _ = finish_model_dir(out, cfg, toks, hf_tok, "bfloat16", "tiny-qwen3-moe",
                              in_memory_model=model, write_expected=False)
    return exp["routing"]


# --------------------------------------------------------------------------------------
# Quantization packing fixtures
# --------------------------------------------------------------------------------------


def round_bf16(a):
    """float32 -> nearest-even bfloat16, returned as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def check_quant_case(wq, scales, biases, deq, bits, gs, dt):
    """Independent NumPy unpacking: LSB-first bit stream over the little-endian bytes of
    each row; dequant = scales * q + biases (rounded like mlx in bf16/f16)."""
    words = np.array(wq).astype("<u4")
    rows = words.shape[0]
    bitstream = np.unpackbits(words.view(np.uint8).reshape(rows, -1), axis=1, bitorder="little")
    n = bitstream.shape[1] // bits
    q = (bitstream[:, : n * bits].reshape(rows, n, bits) << np.arange(bits)).sum(-1).astype(np.float32)
    s = np.repeat(np.array(scales.astype(mx.float32)), gs, axis=1)
    b = np.repeat(np.array(biases.astype(mx.float32)), gs, axis=1)
    if dt == mx.float32:
        want = s * q + b
    elif dt == mx.float16:
        want = ((s * q).astype(np.float16) + b.astype(np.float16)).astype(np.float32)
    else:
        want = round_bf16(round_bf16(s * q) + b)
    got = np.array(deq.astype(mx.float32))
    assert np.array_equal(want, got), (bits, gs, dt, np.abs(want - got).max())


def make_quant_cases():
    QUANT_OUT.mkdir(parents=True, exist_ok=True)
    tensors = {}
    cases = [(b, g, mx.float32) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]
    cases += [(b, 64, dt) for dt in (mx.bfloat16, mx.float16) for b in (4, 8)]
    names = {mx.float32: "f32", mx.bfloat16: "bf16", mx.float16: "f16"}
    for idx, (bits, gs, dt) in enumerate(cases):
        key = mx.random.key(1000 + idx)
        kw, kx = mx.random.split(key, 2)
        w = mx.random.normal((3, 256), key=kw).astype(dt)
        x = mx.random.normal((2, 256), key=kx).astype(dt)
        wq, scales, biases = mx.quantize(w, group_size=gs, bits=bits)
        deq = mx.dequantize(wq, scales, biases, group_size=gs, bits=bits)
        qmm = mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=gs, bits=bits)
        mx.eval(wq, scales, biases, deq, qmm)
        assert wq.dtype == mx.uint32 and wq.shape == (3, 256 * bits // 32)
        assert scales.dtype == dt and scales.shape == (3, 256 // gs)
        assert deq.dtype == dt and qmm.dtype == dt
        check_quant_case(wq, scales, biases, deq, bits, gs, dt)
        if dt == mx.float32:
            ref = x @ deq.T
            assert max_abs_diff(np.array(ref), np.array(qmm)) < 1e-4
        p = f"b{bits}_g{gs}_{names[dt]}"
        tensors.update({
            f"{p}.w": w, f"{p}.weight": wq, f"{p}.scales": scales, f"{p}.biases": biases,
            f"{p}.dequant": deq, f"{p}.x": x, f"{p}.qmm": qmm,
        })
    tensors = dict(sorted(tensors.items()))
    path = QUANT_OUT / "quant_cases.safetensors"
    if path.exists():
        path.unlink()
    mx.save_safetensors(str(path), tensors, metadata={"format": "mlx"})
    print(f"  quant cases: {len(cases)} cases, {path.stat().st_size / 1e3:.1f} kB")


# --------------------------------------------------------------------------------------


def main():
    for k, want in EXPECTED_VERSIONS.items():
        have = versions()[k]
        if have != want:
            raise SystemExit(f"{k} {have} installed, fixtures are defined for {want}: "
                             "pip install -r scripts/requirements-fixtures.txt")
    mx.set_default_device(mx.cpu)
    install_cpu_bf16_gather_mm_shim()

    toks = TokenizerFiles()
    tmp = MODELS_OUT / "_tokenizer_check"
    reset_dir(tmp)
    toks.write(tmp)
    hf_tok = check_tokenizer(tmp, toks)
    shutil.rmtree(tmp)
    print(f"tokenizer: {TOKENIZER_VOCAB} tokens, added ids {toks.ids}")
    print(f"prompt: {len(hf_tok.encode(PROMPT_TEXT, add_special_tokens=False))} tokens")

    only = None
    if len(sys.argv) > 2 and sys.argv[1] == "--only":
        # e.g. `--only olmoe,mixtral`: rebuild just these model families.
        only = set(sys.argv[2].split(","))
        unknown = only - set(FAMILIES)
        if unknown:
            raise SystemExit(f"unknown families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    if only is None:
        print("quantization cases")
        make_quant_cases()
    print("models")
    routing = make_models(toks, hf_tok, only)
    if only is None:
        print("embedded model")
        routing["tiny-qwen3-moe"] = make_tiny_model(toks, hf_tok)

    print("distinct experts reached by the prompt, per MoE layer:")
    for name, r in routing.items():
        print(f"  {name}: " + ", ".join(f"layer {k}: {v['distinct_experts']}" for k, v in r.items()))
    print(f"fixtures total: {dir_size(FIXTURES) / 1e6:.2f} MB; "
          f"models/tiny-qwen3-moe: {dir_size(TINY_OUT) / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
