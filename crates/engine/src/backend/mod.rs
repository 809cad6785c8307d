//! The backend seam: everything a block of the model asks a device to do.
//!
//! Blocks (`models/attention.rs`, `mla.rs`, `delta_net.rs`, `ffn.rs`, `lookahead.rs`) and the
//! decoder (`models/transformer.rs`) are generic over a [`Backend`]: they hold no numbers of
//! their own, only buffers of the backend's [`Memory`] family (activations, caches, recurrent
//! states, dispatch tables), and between two ops they loop over nothing but the sequences of
//! a batch. Every computation, including the data movement a host loop would otherwise do
//! (gathers, splits, the expert dispatch and combine, RoPE with the cache append), is an op
//! here, so a device runs a forward pass without the host touching an activation; the host
//! gets numbers back only where it has to act on them: the logits (sampling) and the routed
//! expert ids of a layer (which experts to read, for a streamed store).
//!
//! [`cpu::Cpu`] is the first implementation (the kernels of `moestream-kernels` over host
//! memory). A new device goes in a module beside it: its memory family, its ops, and the
//! preparation of weights at load (the CPU decides its 16-row interleave in
//! [`Backend::weight_layout`]).

pub mod cpu;
pub mod cuda;
pub mod memory;
pub mod weights;

pub use cpu::Cpu;
pub use memory::{Host, Memory};
pub use weights::{HostWeights, WeightSet};

use crate::cache::{DeltaState, KvCache, MoeDispatch};
use crate::error::RunError;
use crate::experts::ExpertSource;
use moestream_kernels::attention::AttnShape;
use moestream_kernels::delta::DeltaShape;
use moestream_kernels::mla::MlaShape;
use moestream_kernels::router::RouterKind;
use moestream_kernels::Precision;
use std::ops::Range;

/// A backend's f32 buffer type.
pub type F32<B> = <<B as Backend>::Mem as Memory>::F32;
/// A backend's u32 buffer type.
pub type U32<B> = <<B as Backend>::Mem as Memory>::U32;
/// A backend's weight matrix.
pub type Mat<B> = <<B as Backend>::Weights as WeightSet>::Matrix;
/// A backend's norm weight vector.
pub type Vector<B> = <<B as Backend>::Weights as WeightSet>::Vector;
/// A backend's f32 weight values.
pub type Values<B> = <<B as Backend>::Weights as WeightSet>::Values;

/// Rotary embedding parameters of one attention kind.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    /// Width of a head (the rotated features are its first `2 * inv_freq.len()`).
    pub head_dim: usize,
    /// Inverse frequencies of the rotated feature pairs.
    pub inv_freq: &'a [f32],
    /// Rotate adjacent pairs (GPT-J style) instead of the two halves.
    pub traditional: bool,
    /// Factor on the rotated features before rotating them (YaRN's `mscale`; else 1).
    pub mscale: f32,
}

/// The shapes and weights of a Gated DeltaNet recurrence (one layer).
pub struct DeltaRule<'a, B: Backend + ?Sized> {
    pub shape: DeltaShape,
    /// Conv window length.
    pub kernel: usize,
    /// Conv weight `[kernel, C]`.
    pub conv_w: &'a Values<B>,
}

/// The weight preparation a backend asks of the loader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightLayout {
    /// Re-lay resident 4-bit matrices into the kernels' interleaved row order at load.
    pub interleave_resident: bool,
    /// Re-lay streamed experts the same way as they land in their slots.
    pub interleave_slots: bool,
}

/// A device the model runs on: its memory, and the op vocabulary of the blocks.
///
/// Shapes: a buffer of `rows` rows holds `rows * width` values, row-major. `rows` (a range of
/// token rows) selects one sequence's share of a batched buffer. Ops that write a buffer size
/// it (callers never pre-size an output), keeping its capacity: the buffers of a warm decode
/// step are never reallocated.
pub trait Backend: Send + Sync {
    /// The buffer types of this device.
    type Mem: Memory;
    /// The weight types of this device.
    type Weights: WeightSet;
    /// Where this device's routed experts come from: resident, or streamed into slots it
    /// owns (the reads themselves are `experts/io.rs`'s, into memory the store hands it).
    type Experts: ?Sized + ExpertSource;

    /// The device's name in summaries and `bench` JSON (`cpu`).
    fn name(&self) -> &'static str;

    /// The first failure of an op since the last call (a device reports errors at its sync
    /// points; the ops themselves cannot fail on the CPU), which the decoder turns into the
    /// forward pass's error.
    fn check(&self) -> Result<(), RunError> {
        Ok(())
    }

    /// How the loader prepares weights for this device's kernels in arithmetic `p`.
    fn weight_layout(&self, p: Precision) -> WeightLayout;

    // ---- Buffers ----

    /// `n` zeros.
    fn zeros(&self, n: usize) -> F32<Self>;
    /// Sizes `b` to `n` values (new values are zero).
    fn resize(&self, b: &mut F32<Self>, n: usize);
    /// Sets every value of `b`.
    fn fill(&self, b: &mut F32<Self>, v: f32);
    /// Copies `src`'s `rows` (rows of `width`) onto the end of `dst`.
    fn append_rows(&self, dst: &mut F32<Self>, src: &F32<Self>, rows: Range<usize>, width: usize);
    /// `b`'s values on the host.
    fn ids_to_host(&self, b: &U32<Self>, out: &mut Vec<u32>);

    // ---- Embedding, matmuls, the head ----

    /// `x[i] = table row tokens[i]` for the `rows` token ids (from the host).
    fn embed<'t>(
        &self,
        table: &Mat<Self>,
        tokens: impl Iterator<Item = &'t u32>,
        rows: usize,
        x: &mut F32<Self>,
    );
    /// `out = x W^T + b` over `rows` rows of `x`.
    fn linear(&self, p: Precision, x: &F32<Self>, rows: usize, w: &Mat<Self>, out: &mut F32<Self>);
    /// The LM head: `out = x W^T + b` over `rows` rows, written to host memory (the logits
    /// the sampler reads).
    fn logits(&self, p: Precision, x: &F32<Self>, rows: usize, w: &Mat<Self>, out: &mut Vec<f32>);
    /// `out[h] = x[h] W_h^T` per head `h` of `x[rows, heads, in]` (MLA's absorbed
    /// projections). `idx` is the op's scratch.
    fn per_head_linear(
        &self,
        p: Precision,
        x: &F32<Self>,
        rows: usize,
        heads: &[Mat<Self>],
        idx: &mut U32<Self>,
        out: &mut F32<Self>,
    );
    /// `h = silu(x G^T) * (x U^T)` over `rows` rows: in one pass over gate and up when
    /// `fused`, else as two matmuls then the activation (the baseline `validate` compares
    /// with). `scratch` (indices, values) is the op's.
    #[allow(clippy::too_many_arguments)]
    fn swiglu(
        &self,
        p: Precision,
        fused: bool,
        x: &F32<Self>,
        rows: usize,
        gate_up: (&Mat<Self>, &Mat<Self>),
        h: &mut F32<Self>,
        scratch: (&mut U32<Self>, &mut F32<Self>),
    );

    // ---- Norms and elementwise ----

    /// `x += delta; xn = rms_norm(x)` (rows of `w.len()`).
    fn add_rms_norm(
        &self,
        x: &mut F32<Self>,
        delta: &F32<Self>,
        w: &Vector<Self>,
        eps: f32,
        xn: &mut F32<Self>,
    );
    /// RMSNorm in place of every row (rows of `w.len()`).
    fn rms_norm_rows(&self, x: &mut F32<Self>, w: &Vector<Self>, eps: f32);
    /// RMSNorm in place of the first `w.len()` values of every row of `stride` values.
    fn rms_norm_prefix(&self, x: &mut F32<Self>, w: &Vector<Self>, eps: f32, stride: usize);
    /// `out = rms_norm(x)` (rows of `w.len()`).
    fn rms_norm(&self, x: &F32<Self>, w: &Vector<Self>, eps: f32, out: &mut F32<Self>);
    /// `out[j] = x[rows[j]] + delta[rows[j]]` (rows of `width`; row indices from the host).
    fn residual_rows(
        &self,
        x: &F32<Self>,
        delta: &F32<Self>,
        rows: &[usize],
        width: usize,
        out: &mut F32<Self>,
    );
    /// `x = sigmoid(x)`, elementwise.
    fn sigmoid(&self, x: &mut F32<Self>);
    /// `out *= sigmoid(gate)`, elementwise.
    fn sigmoid_gate(&self, out: &mut F32<Self>, gate: &F32<Self>);
    /// `delta[t] += w[t] y[t]` for every row `t` of `width`.
    fn scaled_add_rows(&self, w: &F32<Self>, y: &F32<Self>, delta: &mut F32<Self>, width: usize);

    // ---- Attention ----

    /// Splits a gated query projection `[rows, heads, 2 * head_dim]` (per head `[q | gate]`):
    /// the queries stay in `qg` (now `[rows, heads, head_dim]`), the gates go to `gate`.
    fn split_query_gate(&self, qg: &mut F32<Self>, gate: &mut F32<Self>, head_dim: usize);
    /// Splits each `[a | b]` head of `x` into the rows of `left` and `right`.
    fn split_heads(
        &self,
        x: &F32<Self>,
        left: &mut F32<Self>,
        right: &mut F32<Self>,
        a: usize,
        b: usize,
    );
    /// RoPE at positions `offset..` on the token `rows` of `q` and `k`, then those keys and
    /// values appended to the cache (which grows as needed).
    #[allow(clippy::too_many_arguments)]
    fn rope_append(
        &self,
        kv: &mut KvCache<Self::Mem>,
        q: &mut F32<Self>,
        k: &mut F32<Self>,
        v: &F32<Self>,
        rows: Range<usize>,
        offset: usize,
        rope: Rope,
    );
    /// Causal attention of the token `rows` of `q` over the cache (`shape.l == rows.len()`),
    /// into the same rows of `out` (sized by the caller to the batch).
    fn attention(
        &self,
        q: &F32<Self>,
        rows: Range<usize>,
        kv: &KvCache<Self::Mem>,
        shape: AttnShape,
        out: &mut F32<Self>,
    );
    /// MLA's cache append: RoPE (`rope`: traditional, heads of `dr`) at positions `offset..`
    /// on the token `rows` of `q_pe` and on the rotary key ending each `ckv` row
    /// (`[latent (r) | k_pe (dr)]`), then latent and key appended to the cache.
    #[allow(clippy::too_many_arguments)]
    fn rope_append_latent(
        &self,
        kv: &mut KvCache<Self::Mem>,
        q_pe: &mut F32<Self>,
        ckv: &mut F32<Self>,
        rows: Range<usize>,
        offset: usize,
        r_dr: (usize, usize),
        rope: Rope,
    );
    /// Absorbed MLA attention of the token `rows` of the `queries` (`q_lat`, `q_pe`) over the
    /// latent cache, into the same rows of `out`.
    fn mla_attention(
        &self,
        queries: (&F32<Self>, &F32<Self>),
        rows: Range<usize>,
        kv: &KvCache<Self::Mem>,
        shape: MlaShape,
        out: &mut F32<Self>,
    );

    // ---- Gated DeltaNet ----

    /// Qwen3-Next's fused projections (`qkvz`, `ba`, per key-head group) laid out as the
    /// split ones: `[qkv, z, b, a]`.
    fn unfuse_delta_inputs(
        &self,
        fused: &F32<Self>,
        ba: &F32<Self>,
        shape: DeltaShape,
        rows: usize,
        out: [&mut F32<Self>; 4],
    );
    /// The decay and write gates from `a` and `b` (`[rows, Hv]`): `g = exp(-a_exp
    /// softplus(a + dt_bias))`, `beta = sigmoid(b)`.
    #[allow(clippy::too_many_arguments)]
    fn delta_gates(
        &self,
        a: &F32<Self>,
        b: &F32<Self>,
        a_exp: &Values<Self>,
        dt_bias: &Values<Self>,
        g: &mut F32<Self>,
        beta: &mut F32<Self>,
    );
    /// Advances a recurrent state over the token `rows` of its `inputs`: `qkv` (pre-conv
    /// `[C]` rows) and the gates (`[Hv]` rows of `g`, `beta`): the conv window and SiLU (into the same rows
    /// of `conv`), q/k normalisation, then the delta rule (into the same rows of `y`).
    #[allow(clippy::too_many_arguments)]
    fn delta_advance(
        &self,
        rule: DeltaRule<Self>,
        st: &mut DeltaState<Self::Mem>,
        inputs: (&F32<Self>, &F32<Self>, &F32<Self>),
        rows: Range<usize>,
        conv: &mut F32<Self>,
        y: &mut F32<Self>,
    );
    /// `y = silu(z) * (w * rms_norm(y))` (rows of `w.len()`).
    fn gated_rms_norm(&self, y: &mut F32<Self>, z: &F32<Self>, w: &Vector<Self>, eps: f32);
    /// `dst = src` for a recurrent state of the same shape (checkpoints).
    fn copy_state(&self, dst: &mut DeltaState<Self::Mem>, src: &DeltaState<Self::Mem>);

    // ---- Mixture of experts ----

    /// Routes each of the `rows` rows of `logits` (`[rows, experts]`, overwritten as scratch)
    /// to `k` experts: `ids` and combine weights `w` (`[rows, k]`). `bias` only affects
    /// selection.
    #[allow(clippy::too_many_arguments)]
    fn router_topk(
        &self,
        kind: &RouterKind,
        logits: &mut F32<Self>,
        experts: usize,
        bias: Option<&Values<Self>>,
        k: usize,
        ids: &mut U32<Self>,
        w: &mut F32<Self>,
    );
    /// Groups the `rows * k` routed slots of `ids` by expert (see [`MoeDispatch`]); the
    /// active experts' list comes back to the host for the expert store.
    fn moe_dispatch(
        &self,
        ids: &U32<Self>,
        experts: usize,
        k: usize,
        d: &mut MoeDispatch<Self::Mem>,
    );
    /// The routed experts of `layer` over the dispatched slots, in the arithmetic `arith`
    /// (precision, fused SwiGLU): gathered SwiGLU into `out.0` (`[slots, inter]`), gathered
    /// down projection into `out.1` (`[slots, width]`), with `shapes = (inter, width)`. The
    /// weights come from `store` (resident, or read into its slots); `out.2` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        arith: (Precision, bool),
        store: &Self::Experts,
        layer: usize,
        x: &F32<Self>,
        d: &MoeDispatch<Self::Mem>,
        shapes: (usize, usize),
        out: (&mut F32<Self>, &mut F32<Self>, &mut F32<Self>),
    ) -> Result<(), RunError>;
    /// `delta[t] = Σ_j w[t k + j] y[t k + j]`: each token's `k` expert outputs, weighted.
    fn moe_combine(
        &self,
        w: &F32<Self>,
        y: &F32<Self>,
        delta: &mut F32<Self>,
        k: usize,
        width: usize,
    );
}
