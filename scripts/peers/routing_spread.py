#!/usr/bin/env python3
"""Measure how a qwen3moe GGUF routes a batch of random tokens, layer by layer.

    python routing_spread.py qwen3-30b-a3b-q4_0.gguf [--tokens 64] [--layers N]

A plain numpy forward pass (float32, dequantizing Q4_0 as ggml does, only the experts that
are hit) over --tokens random ordinary token ids as one causal sequence. Per layer it prints
how many of the experts at least one token reached, the share of the busiest expert, and
the residual stream's RMS. A random model whose routing collapses (every token to the same
few experts) makes prefill look unrepresentatively cheap; a healthy one reaches most experts
(64 tokens x 8 choices spread uniformly over 128 experts would reach ~126).

Reads only the GGUF (no llama.cpp needed); with 64 tokens it dequantizes roughly every
expert once, about a minute or two per 10 layers on 2 cores.
"""

from __future__ import annotations

import argparse
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

Q4_0 = gguf.GGMLQuantizationType.Q4_0
F32 = gguf.GGMLQuantizationType.F32


# Byte -> (low nibble - 8, high nibble - 8) as float32.
_NIBBLES = np.stack([(np.arange(256) & 0x0F) - 8, (np.arange(256) >> 4) - 8], -1).astype(np.float32)


def dequant_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 bytes (..., n_blocks*18) -> float32 (..., n_blocks*32); ggml's layout: element j
    of a block is the low nibble of byte j, element j+16 the high nibble, minus 8, times d."""
    lead = raw.shape[:-1]
    blocks = np.ascontiguousarray(raw).reshape(-1, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1)
    q = _NIBBLES[blocks[:, 2:]]  # (n, 16, 2)
    out = q.transpose(0, 2, 1).reshape(-1, 32) * d
    return out.reshape(*lead, -1)


class Model:
    def __init__(self, path: str):
        self.r = gguf.GGUFReader(path, "r")
        self.t = {t.name: t for t in self.r.tensors}
        f = self.r.fields

        def val(key):
            return f[key].contents()

        self.n_layer = int(val("qwen3moe.block_count"))
        self.hidden = int(val("qwen3moe.embedding_length"))
        self.n_head = int(val("qwen3moe.attention.head_count"))
        self.n_kv = int(val("qwen3moe.attention.head_count_kv"))
        self.head_dim = int(val("qwen3moe.attention.key_length"))
        self.n_exp = int(val("qwen3moe.expert_count"))
        self.k = int(val("qwen3moe.expert_used_count"))
        self.theta = float(val("qwen3moe.rope.freq_base"))
        self.eps = float(val("qwen3moe.attention.layer_norm_rms_epsilon"))

    def mat(self, name: str) -> np.ndarray:
        t = self.t[name]
        if t.tensor_type == F32:
            return np.asarray(t.data, dtype=np.float32)
        assert t.tensor_type == Q4_0, (name, t.tensor_type)
        return dequant_q4_0(np.asarray(t.data))

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        t = self.t[name]
        assert t.tensor_type == Q4_0
        return dequant_q4_0(np.asarray(t.data)[ids])

    def expert(self, name: str, e: int) -> np.ndarray:
        t = self.t[name]
        return dequant_q4_0(np.asarray(t.data[e]))


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_neox(x: np.ndarray, theta: float) -> np.ndarray:
    """x: (T, heads, D); rotates pairs (i, i + D/2) by position * theta^(-2i/D)."""
    t, _, d = x.shape
    half = d // 2
    inv = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / d)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def attention(m: Model, il: int, x: np.ndarray) -> np.ndarray:
    p = f"blk.{il}."
    t = x.shape[0]
    hd = m.head_dim
    q = (x @ m.mat(p + "attn_q.weight").T).reshape(t, m.n_head, hd)
    k = (x @ m.mat(p + "attn_k.weight").T).reshape(t, m.n_kv, hd)
    v = (x @ m.mat(p + "attn_v.weight").T).reshape(t, m.n_kv, hd)
    q = rope_neox(rms_norm(q, m.mat(p + "attn_q_norm.weight"), m.eps), m.theta)
    k = rope_neox(rms_norm(k, m.mat(p + "attn_k_norm.weight"), m.eps), m.theta)
    group = m.n_head // m.n_kv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    s = s + np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = np.einsum("hqk,khd->qhd", s, v).reshape(t, m.n_head * hd)
    return o @ m.mat(p + "attn_output.weight").T


def moe(m: Model, il: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = f"blk.{il}."
    logits = x @ m.mat(p + "ffn_gate_inp.weight").T  # (T, E)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[:, : m.k]  # (T, k)
    w = np.take_along_axis(probs, top, -1)
    w /= w.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for e in np.unique(top):
        tok, slot = np.nonzero(top == e)
        xe = x[tok]
        g = xe @ m.expert(p + "ffn_gate_exps.weight", e).T
        u = xe @ m.expert(p + "ffn_up_exps.weight", e).T
        h = g / (1.0 + np.exp(-g)) * u
        y = h @ m.expert(p + "ffn_down_exps.weight", e).T
        out[tok] += w[tok, slot][:, None] * y
    return out, top


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=0, help="stop after this many layers (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vocab-limit", type=int, default=151643,
                    help="draw token ids below this (default: the ordinary tokens)")
    args = ap.parse_args()

    m = Model(args.model)
    n_layers = m.n_layer if args.layers <= 0 else min(args.layers, m.n_layer)
    rng = np.random.default_rng(args.seed)
    ids = rng.choice(args.vocab_limit, size=args.tokens, replace=False)
    x = m.rows("token_embd.weight", ids)
    t0 = time.time()
    reached = []
    print(f"{args.tokens} random tokens, {m.n_exp} experts, top-{m.k}; "
          f"uniform routing would reach ~{m.n_exp * (1 - (1 - m.k / m.n_exp) ** args.tokens):.0f}")
    print(f"{'layer':>5} {'experts hit':>11} {'busiest':>8} {'resid rms':>9} {'s':>5}")
    for il in range(n_layers):
        p = f"blk.{il}."
        x = x + attention(m, il, rms_norm(x, m.mat(p + "attn_norm.weight"), m.eps))
        y, top = moe(m, il, rms_norm(x, m.mat(p + "ffn_norm.weight"), m.eps))
        x = x + y
        counts = np.bincount(top.ravel(), minlength=m.n_exp)
        hit = int((counts > 0).sum())
        reached.append(hit)
        print(f"{il:>5} {hit:>11} {counts.max() / args.tokens:>8.2f} "
              f"{float(np.sqrt((x * x).mean())):>9.3f} {time.time() - t0:>5.0f}", flush=True)
    r = np.array(reached)
    print(f"experts hit per layer: min {r.min()}, mean {r.mean():.1f}, max {r.max()} "
          f"(of {m.n_exp}; {args.tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
