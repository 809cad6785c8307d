//! What each GGUF tensor becomes: the loader's tensor(s) it stands for, and how to undo what
//! llama.cpp's converter did to its values on the way in.
//!
//! The converter (`convert_hf_to_gguf.py` and its `conversion/*.py` classes) changes values,
//! not only names, for some architectures:
//! * llama: q/k rows permuted for the interleaved RoPE (`LlamaModel.permute`);
//! * Qwen3-Next / Qwen3.5 (`Qwen3NextModel.modify_tensors`): `A_log` stored as
//!   `ssm_a = -exp(A_log)`; `conv1d` squeezed from `[C, 1, K]` to `[C, K]`; the fused
//!   `in_proj_qkvz` re-laid as `attn_qkv` (`[q | k | v]`) + `attn_gate` (`z`) — the split
//!   layout the engine runs for Qwen3.5, so only `ssm_ba` is split here;
//! * Qwen3.5 with fewer key than value heads (`_LinearAttentionVReorderBase`): value heads
//!   re-tiled from grouped order (`h = g r + j`) to `j Hk + g` in every tensor indexed by
//!   value head: rows of `attn_qkv`'s v part, `attn_gate`, `ssm_beta`, `ssm_alpha`, the
//!   conv channels, `ssm_a`, `ssm_dt`, and the columns of `ssm_out`.
//!
//! Row moves act on the stored rows, whatever their type (rows are whole blocks); column
//! moves act on the affine re-lay (whole groups), since a K-quant super-block can span two
//! heads.

use super::arch::{self, Arch};

/// One tensor for the loader, made from one GGUF tensor.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// The HF name (`None`: kept under its GGUF name, reported as unused).
    pub hf: Option<String>,
    /// Row `i` of the result is stored row `rows[i]` (elements, for a vector).
    pub rows: Option<Vec<usize>>,
    /// Column blocks of the result: block `j` is stored block `order[j]`.
    pub col_blocks: Option<ColBlocks>,
    /// `ln(-x)`: `A_log` back from `ssm_a`.
    pub log_neg: bool,
    /// The loader's shape where it differs from the file's (`conv1d`'s trailing 1).
    pub shape: Option<Vec<usize>>,
}

#[derive(Clone, Debug)]
pub struct ColBlocks {
    /// Columns per block.
    pub width: usize,
    pub order: Vec<usize>,
}

/// The model dimensions the moves depend on (from the config the metadata made).
#[derive(Clone, Copy, Debug, Default)]
pub struct Dims {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Gated DeltaNet key heads, value heads and their sizes (hybrids only).
    pub hk: usize,
    pub hv: usize,
    pub dk: usize,
    pub dv: usize,
}

impl Dims {
    pub fn from_config(raw: &serde_json::Value) -> Dims {
        let get = |k: &str| raw.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        Dims {
            layers: get("num_hidden_layers"),
            heads: get("num_attention_heads"),
            kv_heads: get("num_key_value_heads"),
            hk: get("linear_num_key_heads"),
            hv: get("linear_num_value_heads"),
            dk: get("linear_key_head_dim"),
            dv: get("linear_value_head_dim"),
        }
    }

    /// The stored slot of value head `h` when Qwen3.5's converter re-tiled them.
    fn tiled_slot(&self, h: usize) -> usize {
        let r = self.hv / self.hk;
        (h % r) * self.hk + h / r
    }

    /// Whether value heads were re-tiled (Qwen3.5 with fewer key than value heads).
    fn retiled(&self, arch: &Arch) -> bool {
        arch.gguf == "qwen35moe" && self.hk > 0 && self.hv != self.hk
    }

    /// Rows `offset..offset + hv * d` in grouped order, taken from tiled storage.
    fn untile(&self, offset: usize, d: usize, total: usize) -> Vec<usize> {
        let mut rows: Vec<usize> = (0..total).collect();
        for h in 0..self.hv {
            let from = offset + self.tiled_slot(h) * d;
            for e in 0..d {
                rows[offset + h * d + e] = from + e;
            }
        }
        rows
    }
}

/// The loader tensors GGUF tensor `name` (of numpy-order `shape`) becomes; none for the
/// multi-token-prediction layers past the decoder. `has` tells whether the file holds a
/// tensor.
pub fn targets(
    arch: &Arch,
    dims: &Dims,
    name: &str,
    shape: &[usize],
    has: &dyn Fn(&str) -> bool,
) -> Vec<Target> {
    if arch::layer_of(name).is_some_and(|l| l >= dims.layers) {
        return Vec::new();
    }
    let hf = arch::hf_name(arch, name);
    let mut t = Target {
        hf: hf.clone(),
        ..Default::default()
    };
    let rows = shape.first().copied().unwrap_or(0);
    // A layer tensor's name after `blk.N.`.
    let suffix = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map_or(name, |(_, s)| s);
    // llama.cpp runs a tied head off `token_embd`; these loaders always read a head.
    if name == "token_embd.weight" && arch.untied_head && !has("output.weight") {
        let head = Target {
            hf: Some(format!("{}.weight", arch.lm_head)),
            ..Default::default()
        };
        return vec![t, head];
    }
    if arch.permuted_qk {
        if suffix.starts_with("attn_q.") {
            t.rows = Some(unpermuted_rows(rows, dims.heads));
        } else if suffix.starts_with("attn_k.") {
            t.rows = Some(unpermuted_rows(rows, dims.kv_heads));
        }
    }
    let retiled = dims.retiled(arch);
    let (kd2, vd) = (2 * dims.hk * dims.dk, dims.hv * dims.dv);
    match suffix {
        // Files from before the converter split `in_proj_qkvz` keep the fused `in_proj_ba`.
        "ssm_ba.weight" if !has(&name.replace("ssm_ba", "ssm_in")) => {
            // Per key head `[b (r rows) | a (r rows)]`, value head `g r + j` at row j of its
            // group: split into the grouped `in_proj_b` and `in_proj_a`.
            let r = dims.hv / dims.hk.max(1);
            let part = |a: usize| {
                (0..dims.hv)
                    .map(|h| (h / r) * 2 * r + a * r + h % r)
                    .collect()
            };
            let module = |m: &str| hf.as_ref().map(|n| n.replace("in_proj_ba", m));
            return vec![
                Target {
                    hf: module("in_proj_b"),
                    rows: Some(part(0)),
                    ..Default::default()
                },
                Target {
                    hf: module("in_proj_a"),
                    rows: Some(part(1)),
                    ..Default::default()
                },
            ];
        }
        "ssm_conv1d.weight" => {
            t.shape = Some([shape, &[1]].concat());
            if retiled {
                t.rows = Some(dims.untile(kd2, dims.dv, rows));
            }
        }
        "ssm_a" => {
            t.log_neg = true;
            if retiled {
                t.rows = Some(dims.untile(0, 1, dims.hv));
            }
        }
        "ssm_dt.bias" | "ssm_beta.weight" | "ssm_alpha.weight" if retiled => {
            t.rows = Some(dims.untile(0, 1, dims.hv));
        }
        "attn_gate.weight" if retiled => t.rows = Some(dims.untile(0, dims.dv, vd)),
        "attn_qkv.weight" if retiled => t.rows = Some(dims.untile(kd2, dims.dv, kd2 + vd)),
        "ssm_out.weight" if retiled => {
            t.col_blocks = Some(ColBlocks {
                width: dims.dv,
                order: (0..dims.hv).map(|h| dims.tiled_slot(h)).collect(),
            });
        }
        _ => {}
    }
    vec![t]
}

/// Undoes `LlamaModel.permute` of llama.cpp's converter, which stores each head's rows in
/// rotary-pair order: stored row `2i + a` of a head is HF row `a d/2 + i` (`d` rows per
/// head). Empty when `rows` is not `heads` heads of pairs (the conversion then says so).
pub fn unpermuted_rows(rows: usize, heads: usize) -> Vec<usize> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Vec::new();
    }
    let d = rows / heads;
    let mut out = vec![0; rows];
    for h in 0..heads {
        for a in 0..2 {
            for i in 0..d / 2 {
                out[h * d + a * d / 2 + i] = h * d + 2 * i + a;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(g: &str) -> &'static Arch {
        arch::ARCHES.iter().find(|a| a.gguf == g).unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpps_permutation() {
        // convert_hf_to_gguf's permute: reshape(heads, 2, d/2, ...).swapaxes(1, 2).
        let (heads, d) = (3, 8);
        let hf: Vec<usize> = (0..heads * d).collect();
        let mut stored = vec![0; heads * d];
        for h in 0..heads {
            for i in 0..d / 2 {
                for a in 0..2 {
                    stored[h * d + 2 * i + a] = hf[h * d + a * d / 2 + i];
                }
            }
        }
        let rows = unpermuted_rows(heads * d, heads);
        let back: Vec<usize> = rows.iter().map(|&r| stored[r]).collect();
        assert_eq!(back, hf);
    }

    #[test]
    fn qwen35_value_heads_untile() {
        // 2 key heads, 6 value heads (r = 3): stored slot j*2 + g holds HF head g*3 + j.
        let dims = Dims {
            layers: 1,
            hk: 2,
            hv: 6,
            dk: 1,
            dv: 2,
            ..Default::default()
        };
        let stored_head = |slot: usize| (slot % 2) * 3 + slot / 2;
        let rows = dims.untile(0, 2, 12);
        for h in 0..6 {
            for e in 0..2 {
                assert_eq!(stored_head(rows[h * 2 + e] / 2), h);
                assert_eq!(rows[h * 2 + e] % 2, e);
            }
        }
        let t = targets(
            arch("qwen35moe"),
            &dims,
            "blk.0.ssm_out.weight",
            &[4, 12],
            &|_| false,
        );
        let order = &t[0].col_blocks.as_ref().unwrap().order;
        assert!(order.iter().enumerate().all(|(h, &s)| stored_head(s) == h));
    }

    #[test]
    fn qwen3next_ba_splits_per_key_head() {
        let dims = Dims {
            layers: 1,
            hk: 2,
            hv: 4,
            ..Default::default()
        };
        let t = targets(
            arch("qwen3next"),
            &dims,
            "blk.0.ssm_ba.weight",
            &[8, 16],
            &|_| false,
        );
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0].hf.as_deref(),
            Some("model.layers.0.linear_attn.in_proj_b.weight")
        );
        // Key head 0: rows [b0 b1 a0 a1], key head 1: [b2 b3 a2 a3].
        assert_eq!(t[0].rows.as_deref(), Some(&[0, 1, 4, 5][..]));
        assert_eq!(t[1].rows.as_deref(), Some(&[2, 3, 6, 7][..]));
        // A file with the old fused `ssm_in` keeps the fused `in_proj_ba`.
        let t = targets(
            arch("qwen3next"),
            &dims,
            "blk.0.ssm_ba.weight",
            &[8, 16],
            &|n| n == "blk.0.ssm_in.weight",
        );
        assert_eq!(
            t[0].hf.as_deref(),
            Some("model.layers.0.linear_attn.in_proj_ba.weight")
        );
    }

    #[test]
    fn prediction_layers_are_dropped() {
        let dims = Dims {
            layers: 2,
            ..Default::default()
        };
        let glm = arch("glm4moe");
        assert!(targets(glm, &dims, "blk.2.nextn.eh_proj.weight", &[4, 8], &|_| true).is_empty());
        assert_eq!(
            targets(glm, &dims, "blk.1.attn_q.weight", &[4, 8], &|_| true).len(),
            1
        );
    }
}
