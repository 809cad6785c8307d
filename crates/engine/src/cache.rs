//! Per-sequence state: the KV cache of every attention layer plus preallocated scratch.
//!
//! Every type here is generic over where its numbers live (a backend's [`Memory`] family,
//! host vectors by default). What only the host can do with them (growing a cache by copy,
//! checkpoints, prefix copies for the prompt cache) is implemented for [`Host`]; on another
//! device those are its backend's ops.

use crate::backend::memory::{Host, Memory};

/// Keys and values of one attention layer, head-major `[n_kv, cap, head_dim]` (values
/// `[n_kv, cap, v_dim]`) so attention reads each head's keys contiguously. Capacity grows in
/// steps of [`KvCache::STEP`] tokens. An MLA layer keeps its compressed cache here as one
/// "head": the normalised latent (`kv_lora_rank` wide) as the key and the rotary key
/// (`qk_rope_head_dim` wide) as the value.
#[derive(Clone, Debug, Default)]
pub struct KvCache<M: Memory = Host> {
    pub k: M::F32,
    pub v: M::F32,
    pub cap: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Width of a value row (`head_dim` for standard attention).
    pub v_dim: usize,
}

impl<M: Memory> KvCache<M> {
    pub const STEP: usize = 256;

    pub fn new(n_kv: usize, head_dim: usize) -> Self {
        Self::with_widths(n_kv, head_dim, head_dim)
    }

    /// A cache whose key and value rows differ in width.
    pub fn with_widths(n_kv: usize, head_dim: usize, v_dim: usize) -> Self {
        KvCache {
            k: Default::default(),
            v: Default::default(),
            cap: 0,
            n_kv,
            head_dim,
            v_dim,
        }
    }

    /// The capacity `reserve` grows to for `len` tokens.
    pub fn grown_cap(&self, len: usize) -> usize {
        len.div_ceil(Self::STEP) * Self::STEP
    }

    pub fn bytes(&self) -> usize {
        self.n_kv * self.cap * (self.head_dim + self.v_dim) * 4
    }
}

impl KvCache {
    /// Makes room for `len` tokens, keeping the first `keep`.
    pub fn reserve(&mut self, len: usize, keep: usize) {
        if len <= self.cap {
            return;
        }
        let new_cap = self.grown_cap(len);
        for (buf, w) in [(&mut self.k, self.head_dim), (&mut self.v, self.v_dim)] {
            let mut grown = vec![0f32; self.n_kv * new_cap * w];
            for h in 0..self.n_kv {
                let src = &buf[h * self.cap * w..][..keep * w];
                grown[h * new_cap * w..][..keep * w].copy_from_slice(src);
            }
            *buf = grown;
        }
        self.cap = new_cap;
    }

    /// Stores token `pos`'s keys/values from `k[n_kv, head_dim]`, `v[n_kv, v_dim]`.
    pub fn write(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        let (hd, vd) = (self.head_dim, self.v_dim);
        for h in 0..self.n_kv {
            let (kd, vdst) = ((h * self.cap + pos) * hd, (h * self.cap + pos) * vd);
            self.k[kd..kd + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.v[vdst..vdst + vd].copy_from_slice(&v[h * vd..(h + 1) * vd]);
        }
    }

    /// A copy of the first `len` positions only (a prompt cache hands out prefixes of what it
    /// holds without copying the rest).
    pub fn clone_prefix(&self, len: usize) -> KvCache {
        let mut out = KvCache::with_widths(self.n_kv, self.head_dim, self.v_dim);
        out.reserve(len, 0);
        for (src_buf, dst_buf, w) in [
            (&self.k, &mut out.k, self.head_dim),
            (&self.v, &mut out.v, self.v_dim),
        ] {
            for h in 0..self.n_kv {
                let (src, dst) = (h * self.cap * w, h * out.cap * w);
                dst_buf[dst..dst + len * w].copy_from_slice(&src_buf[src..src + len * w]);
            }
        }
        out
    }
}

/// Scratch buffers of a forward pass, kept across calls (by the caller of
/// `Transformer::forward_batch`, or per thread for `Transformer::forward`) so their memory is
/// allocated once. Each is resized (never shrunk) to the call's token count.
#[derive(Clone, Debug, Default)]
pub struct Scratch<M: Memory = Host> {
    pub x: M::F32,
    pub xn: M::F32,
    pub delta: M::F32,
    pub q: M::F32,
    pub k: M::F32,
    pub v: M::F32,
    pub attn: M::F32,
    pub mlp_h: M::F32,
    pub swiglu_u: M::F32,
    /// Row indices of a dense (gathered) matmul over a whole batch.
    pub identity: M::U32,
    pub router: M::F32,
    pub expert_ids: M::U32,
    pub expert_w: M::F32,
    pub moe_h: M::F32,
    pub moe_y: M::F32,
    pub dispatch: MoeDispatch<M>,
    pub last_rows: M::F32,
    /// Rows whose logits a batched call wants.
    pub wanted_rows: Vec<usize>,
    /// The router lookahead's routing of the next MoE layer, and the experts it predicts
    /// (on the host: they go to the expert store).
    pub predicted_ids: M::U32,
    pub predicted_w: M::F32,
    pub predicted: Vec<u32>,
    /// Attention output gate `[l, nh * hd]` (gated attention).
    pub gate: M::F32,
    /// Shared expert output and its sigmoid gate logits.
    pub shared_y: M::F32,
    pub shared_gate: M::F32,
    pub delta_net: DeltaScratch<M>,
    pub mla: MlaScratch<M>,
}

/// A MoE layer's routed slots (`t * k + j`: token `t`'s `j`-th expert) grouped by expert
/// with a counting sort: `counts[e..e + 1]` bounds expert `e`'s run in `slots` (the slot
/// numbers) and `tokens` (their tokens); `active` lists the experts with a run, on the host,
/// where the expert store reads them.
///
/// `on_device: Some(k)` (a device backend's dispatch, never the CPU's): nothing came back to
/// the host (`active` stays empty); `slots` holds the `rows * k` expert ids in slot order,
/// and, for many slots, `counts` and `tokens` hold them grouped by expert (run offsets and
/// slot numbers), all read there by the expert kernels.
#[derive(Clone, Debug, Default)]
pub struct MoeDispatch<M: Memory = Host> {
    pub counts: M::U32,
    pub fill: M::U32,
    pub slots: M::U32,
    pub tokens: M::U32,
    pub active: Vec<u32>,
    pub on_device: Option<usize>,
}

/// Scratch of a multi-head latent attention layer (see `models::mla`).
#[derive(Clone, Debug, Default)]
pub struct MlaScratch<M: Memory = Host> {
    /// `q_a_proj` output (low-rank queries), then the full queries `[l, nh, dn + dr]`.
    pub q_a: M::F32,
    pub q: M::F32,
    /// The queries split per head: `[l, nh, dn]` and `[l, nh, dr]`.
    pub q_nope: M::F32,
    pub q_pe: M::F32,
    /// `kv_a_proj_with_mqa` output `[l, R + dr]` (latent normalised in place).
    pub ckv: M::F32,
    /// Absorbed queries and attended latents `[l, nh, R]`, head outputs `[l, nh, dv]`.
    pub q_lat: M::F32,
    pub o_lat: M::F32,
    pub out: M::F32,
    /// Row indices of the per-head projections.
    pub rows: M::U32,
}

/// Scratch of a Gated DeltaNet layer (see `models::delta_net`).
#[derive(Clone, Debug, Default)]
pub struct DeltaScratch<M: Memory = Host> {
    /// Fused projections (qwen3_next layout) before they are rearranged.
    pub qkvz: M::F32,
    pub ba: M::F32,
    /// `[l, C]` mixed q/k/v, then the conv output.
    pub qkv: M::F32,
    pub conv: M::F32,
    pub z: M::F32,
    pub b: M::F32,
    pub a: M::F32,
    pub g: M::F32,
    pub beta: M::F32,
    pub y: M::F32,
}

/// Recurrent state of one Gated DeltaNet layer: the conv window (the last `kernel - 1`
/// pre-conv inputs, `[kernel - 1, C]`) and the delta-rule state `[Hv, Dv, Dk]`, both f32.
/// Both are overwritten in place at every token, so unlike a KV cache they cannot be
/// trimmed: going back needs a [`Checkpoint`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaState<M: Memory = Host> {
    pub conv: M::F32,
    pub state: M::F32,
}

impl DeltaState {
    pub fn zeros(conv: usize, state: usize) -> Self {
        DeltaState {
            conv: vec![0.0; conv],
            state: vec![0.0; state],
        }
    }

    pub fn bytes(&self) -> usize {
        (self.conv.len() + self.state.len()) * 4
    }
}

/// What [`SeqCache::restore`] needs to return a sequence to an earlier point: the position,
/// and a copy of every recurrent layer's state (KV caches roll back by position alone).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint<M: Memory = Host> {
    pub offset: usize,
    pub recurrent: Vec<Option<DeltaState<M>>>,
}

/// Everything a sequence carries between forward calls.
#[derive(Clone, Debug, Default)]
pub struct SeqCache<M: Memory = Host> {
    /// Tokens already in the cache (the position of the next token).
    pub offset: usize,
    pub layers: Vec<KvCache<M>>,
    /// Per layer: the recurrent state of a Gated DeltaNet layer (`None` for attention).
    pub recurrent: Vec<Option<DeltaState<M>>>,
    /// While active, the recurrent layers' inputs since a checkpoint (speculative decoding
    /// rolls back to a point between the checkpoint and now by replaying them).
    pub log: RecurrentLog<M>,
}

/// The inputs of every recurrent layer for the tokens fed since [`RecurrentLog::start`], in
/// order: enough to recompute the state after any prefix of those tokens from the
/// checkpoint, without running the rest of the model again. Buffers are kept across rounds.
#[derive(Clone, Debug, Default)]
pub struct RecurrentLog<M: Memory = Host> {
    pub active: bool,
    /// Per layer (empty for attention layers).
    pub layers: Vec<LayerLog<M>>,
}

/// One recurrent layer's logged inputs, one row per token: the pre-conv `q|k|v` channels
/// (`[C]`), and the decay and write gates (`[Hv]` each).
#[derive(Clone, Debug, Default)]
pub struct LayerLog<M: Memory = Host> {
    pub qkv: M::F32,
    pub g: M::F32,
    pub beta: M::F32,
}

impl<M: Memory> RecurrentLog<M> {
    /// Starts logging from now, forgetting what was logged before (`clear` empties a
    /// buffer, keeping its memory).
    pub fn start(&mut self, layers: usize, clear: impl Fn(&mut M::F32)) {
        self.active = true;
        self.layers.resize_with(layers, LayerLog::default);
        for l in &mut self.layers {
            clear(&mut l.qkv);
            clear(&mut l.g);
            clear(&mut l.beta);
        }
    }

    pub fn stop(&mut self) {
        self.active = false;
    }

    /// Where layer `layer` appends its inputs, while logging.
    pub fn recording(&mut self, layer: usize) -> Option<&mut LayerLog<M>> {
        self.layers.get_mut(layer).filter(|_| self.active)
    }
}

impl<M: Memory> SeqCache<M> {
    /// Forgets tokens past `len` (KV data is simply overwritten later). Only valid when
    /// [`SeqCache::is_trimmable`]; recurrent layers go back with [`SeqCache::restore`].
    pub fn truncate(&mut self, len: usize) {
        debug_assert!(self.is_trimmable() || len >= self.offset);
        self.offset = self.offset.min(len);
    }

    /// Whether [`SeqCache::truncate`] can roll back: no layer holds a recurrent state.
    pub fn is_trimmable(&self) -> bool {
        self.recurrent.iter().all(Option::is_none)
    }

    /// Whether [`SeqCache::clone_prefix`] can give the state after `len` tokens: any prefix
    /// of a pure KV cache, only the whole sequence when recurrent layers are present.
    pub fn can_clone_prefix(&self, len: usize) -> bool {
        len <= self.offset && (self.is_trimmable() || len == self.offset)
    }

    /// A copy of what it takes to come back to this point later (position and recurrent
    /// states; a few MB per sequence for a real hybrid model, nothing for a pure KV model).
    pub fn checkpoint(&self) -> Checkpoint<M> {
        Checkpoint {
            offset: self.offset,
            recurrent: self.recurrent.clone(),
        }
    }
}

impl SeqCache {
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().map(KvCache::bytes).sum::<usize>()
            + self
                .recurrent
                .iter()
                .flatten()
                .map(DeltaState::bytes)
                .sum::<usize>()
    }

    /// The state after the first `len` tokens (`len <= offset`).
    /// With recurrent layers only `len == offset` is possible (see
    /// [`SeqCache::can_clone_prefix`]); callers must check.
    pub fn clone_prefix(&self, len: usize) -> SeqCache {
        let len = len.min(self.offset);
        debug_assert!(self.can_clone_prefix(len));
        SeqCache {
            offset: len,
            layers: self.layers.iter().map(|l| l.clone_prefix(len)).collect(),
            recurrent: self.recurrent.clone(),
            log: RecurrentLog::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and values of different widths (the MLA latent cache) survive growth and
    /// prefix copies.
    #[test]
    fn unequal_key_and_value_widths_grow_and_clone() {
        let mut c = KvCache::with_widths(1, 5, 3);
        let row = |p: usize, w: usize| (0..w).map(|i| (p * 10 + i) as f32).collect::<Vec<_>>();
        for p in 0..300 {
            c.reserve(p + 1, p);
            c.write(p, &row(p, 5), &row(p, 3));
        }
        let pre = c.clone_prefix(260);
        for (cache, n) in [(&c, 300), (&pre, 260)] {
            for p in 0..n {
                assert_eq!(&cache.k[p * 5..p * 5 + 5], &row(p, 5)[..]);
                assert_eq!(&cache.v[p * 3..p * 3 + 3], &row(p, 3)[..]);
            }
        }
        assert_eq!(pre.bytes(), 512 * (5 + 3) * 4);
    }
}
