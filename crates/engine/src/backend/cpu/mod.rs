//! The CPU backend: host vectors, the kernels of `moestream-kernels` on a thread pool, and
//! the host loops of `moves.rs` for the data movement between them.

pub(super) mod moves;

use super::memory::Host;
use super::weights::HostWeights;
use super::{Backend, DeltaRule, Rope, WeightLayout};
use crate::cache::{DeltaState, KvCache, MoeDispatch};
use crate::error::RunError;
use crate::experts::ExpertStore;
use crate::weights::{Floats, Linear};
use moestream_kernels::activation::{sigmoid, silu};
use moestream_kernels::attention::{attention, AttnShape};
use moestream_kernels::delta::{
    conv1d_causal_silu, delta_gates, gated_delta, gated_rms_norm, l2norm, DeltaShape,
};
use moestream_kernels::matmul::{
    gather_matmul, gather_swiglu, gather_swiglu_unfused, matmul, GatherGroup, GatherPair,
};
use moestream_kernels::mla::{mla_attention, per_head_matmul, MlaShape};
use moestream_kernels::norm::{add_rms_norm, rms_norm, rms_norm_inplace};
use moestream_kernels::router::{router_topk, RouterKind};
use moestream_kernels::{Matrix, Precision, ThreadPool};
use std::ops::Range;
use std::sync::Arc;

/// The CPU: its thread pool runs every parallel kernel.
#[derive(Clone)]
pub struct Cpu {
    pub pool: Arc<ThreadPool>,
}

impl Cpu {
    pub fn new(pool: Arc<ThreadPool>) -> Self {
        Cpu { pool }
    }
}

/// `v` sized to `n` values (new ones zero), as a slice.
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    v
}

/// The values of token rows `rows` of a buffer of rows `width` wide.
fn row_range(rows: &Range<usize>, width: usize) -> Range<usize> {
    rows.start * width..rows.end * width
}

/// Adds `lin`'s bias (if any) to every row of `out`.
fn add_bias(lin: &Linear, out: &mut [f32]) {
    if let Some(b) = &lin.bias {
        let b = b.view();
        for row in out.chunks_exact_mut(lin.rows) {
            for (i, v) in row.iter_mut().enumerate() {
                *v += b.get(i);
            }
        }
    }
}

impl Backend for Cpu {
    type Mem = Host;
    type Weights = HostWeights;
    type Experts = dyn ExpertStore;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn weight_layout(&self, p: Precision) -> WeightLayout {
        // The interleaved layout serves the int8-activation kernels; f32 activations
        // dequantize whole rows, which the row-major layout gives faster.
        let interleave = p == Precision::Fast && moestream_kernels::qdot::prefers_interleaved();
        WeightLayout {
            interleave_resident: interleave,
            interleave_slots: interleave && moestream_kernels::qdot::needs_interleaved_4bit(),
        }
    }

    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }

    fn resize(&self, b: &mut Vec<f32>, n: usize) {
        b.resize(n, 0.0);
    }

    fn fill(&self, b: &mut Vec<f32>, v: f32) {
        b.fill(v);
    }

    fn append_rows(&self, dst: &mut Vec<f32>, src: &Vec<f32>, rows: Range<usize>, width: usize) {
        dst.extend_from_slice(&src[row_range(&rows, width)]);
    }

    fn ids_to_host(&self, b: &Vec<u32>, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(b);
    }

    fn embed<'t>(
        &self,
        table: &Linear,
        tokens: impl Iterator<Item = &'t u32>,
        rows: usize,
        x: &mut Vec<f32>,
    ) {
        let x = sized(x, rows * table.cols);
        moves::embed_rows(&table.matrix(), tokens, table.cols, x);
    }

    fn linear(&self, p: Precision, x: &Vec<f32>, rows: usize, w: &Linear, out: &mut Vec<f32>) {
        let out = sized(out, rows * w.rows);
        matmul(&self.pool, p, x, rows, &w.matrix(), out);
        add_bias(w, out);
    }

    fn logits(&self, p: Precision, x: &Vec<f32>, rows: usize, w: &Linear, out: &mut Vec<f32>) {
        let out = sized(out, rows * w.rows);
        if rows > 0 {
            matmul(&self.pool, p, x, rows, &w.matrix(), out);
            add_bias(w, out);
        }
    }

    fn per_head_linear(
        &self,
        p: Precision,
        x: &Vec<f32>,
        rows: usize,
        heads: &[Linear],
        idx: &mut Vec<u32>,
        out: &mut Vec<f32>,
    ) {
        let width = heads.first().map_or(0, |h| h.rows);
        let out = sized(out, rows * heads.len() * width);
        let mats: Vec<Matrix> = heads.iter().map(Linear::matrix).collect();
        per_head_matmul(&self.pool, p, x, rows, &mats, idx, out);
    }

    fn swiglu(
        &self,
        p: Precision,
        fused: bool,
        x: &Vec<f32>,
        rows: usize,
        (gate, up): (&Linear, &Linear),
        h: &mut Vec<f32>,
        (idx, u): (&mut Vec<u32>, &mut Vec<f32>),
    ) {
        if gate.bias.is_some() || up.bias.is_some() {
            // MLPs with biases (llama's `mlp_bias`): the gathered kernels take bare
            // matrices, so gate and up run as linears, then the activation.
            self.linear(p, x, rows, gate, h);
            self.linear(p, x, rows, up, u);
            h.iter_mut()
                .zip(u.iter())
                .for_each(|(h, u)| *h = silu(*h) * u);
            return;
        }
        if idx.len() < rows {
            *idx = (0..rows as u32).collect();
        }
        let pair = GatherPair {
            gate: gate.matrix(),
            up: up.matrix(),
            x_rows: &idx[..rows],
            out_rows: &idx[..rows],
        };
        let h = sized(h, rows * gate.rows);
        if fused {
            gather_swiglu(&self.pool, p, x, &[pair], h);
        } else {
            gather_swiglu_unfused(&self.pool, p, x, &[pair], h, u);
        }
    }

    fn add_rms_norm(
        &self,
        x: &mut Vec<f32>,
        delta: &Vec<f32>,
        w: &Floats,
        eps: f32,
        xn: &mut Vec<f32>,
    ) {
        let xn = sized(xn, x.len());
        add_rms_norm(x, delta, &w.view(), eps, xn);
    }

    fn rms_norm_rows(&self, x: &mut Vec<f32>, w: &Floats, eps: f32) {
        rms_norm_inplace(x, &w.view(), eps);
    }

    fn rms_norm_prefix(&self, x: &mut Vec<f32>, w: &Floats, eps: f32, stride: usize) {
        let view = w.view();
        let n = view.len();
        for row in x.chunks_exact_mut(stride) {
            rms_norm_inplace(&mut row[..n], &view, eps);
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &Floats, eps: f32, out: &mut Vec<f32>) {
        let out = sized(out, x.len());
        rms_norm(x, &w.view(), eps, out);
    }

    fn residual_rows(
        &self,
        x: &Vec<f32>,
        delta: &Vec<f32>,
        rows: &[usize],
        width: usize,
        out: &mut Vec<f32>,
    ) {
        let out = sized(out, rows.len() * width);
        moves::residual_rows(x, delta, rows, width, out);
    }

    fn sigmoid(&self, x: &mut Vec<f32>) {
        x.iter_mut().for_each(|v| *v = sigmoid(*v));
    }

    fn sigmoid_gate(&self, out: &mut Vec<f32>, gate: &Vec<f32>) {
        moves::sigmoid_gate(out, gate);
    }

    fn scaled_add_rows(&self, w: &Vec<f32>, y: &Vec<f32>, delta: &mut Vec<f32>, width: usize) {
        moves::scaled_add_rows(w, y, delta, width);
    }

    fn split_query_gate(&self, qg: &mut Vec<f32>, gate: &mut Vec<f32>, head_dim: usize) {
        let half = qg.len() / 2;
        moves::split_query_gate(qg, sized(gate, half), head_dim);
        qg.truncate(half);
    }

    fn split_heads(
        &self,
        x: &Vec<f32>,
        left: &mut Vec<f32>,
        right: &mut Vec<f32>,
        a: usize,
        b: usize,
    ) {
        let heads = x.len() / (a + b);
        let (left, right) = (sized(left, heads * a), sized(right, heads * b));
        moves::split_heads(x, left, right, a, b);
    }

    fn rope_append(
        &self,
        kv: &mut KvCache,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &Vec<f32>,
        rows: Range<usize>,
        offset: usize,
        rope: Rope,
    ) {
        let kd = kv.n_kv * kv.head_dim;
        let qd = q.len() / (k.len() / kd);
        let n = rows.len();
        let rows_of = (
            &mut q[row_range(&rows, qd)],
            &mut k[row_range(&rows, kd)],
            &v[row_range(&rows, kd)],
        );
        moves::rope_append(kv, rows_of, n, offset, rope);
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        rows: Range<usize>,
        kv: &KvCache,
        shape: AttnShape,
        out: &mut Vec<f32>,
    ) {
        let qd = shape.n_heads * shape.head_dim;
        let r = row_range(&rows, qd);
        attention(&self.pool, &q[r.clone()], &kv.k, &kv.v, shape, &mut out[r]);
    }

    fn rope_append_latent(
        &self,
        kv: &mut KvCache,
        q_pe: &mut Vec<f32>,
        ckv: &mut Vec<f32>,
        rows: Range<usize>,
        offset: usize,
        (r, dr): (usize, usize),
        rope: Rope,
    ) {
        let qw = q_pe.len() / (ckv.len() / (r + dr));
        let n = rows.len();
        moves::rope_append_latent(
            kv,
            &mut q_pe[row_range(&rows, qw)],
            &mut ckv[row_range(&rows, r + dr)],
            n,
            offset,
            (r, dr),
            rope,
        );
    }

    fn mla_attention(
        &self,
        (q_lat, q_pe): (&Vec<f32>, &Vec<f32>),
        rows: Range<usize>,
        kv: &KvCache,
        shape: MlaShape,
        out: &mut Vec<f32>,
    ) {
        let lat = row_range(&rows, shape.n_heads * shape.rank);
        let pe = row_range(&rows, shape.n_heads * shape.rope_dim);
        mla_attention(
            &self.pool,
            &q_lat[lat.clone()],
            &q_pe[pe],
            &kv.k,
            &kv.v,
            shape,
            &mut out[lat],
        );
    }

    fn unfuse_delta_inputs(
        &self,
        fused: &Vec<f32>,
        ba: &Vec<f32>,
        shape: DeltaShape,
        rows: usize,
        [qkv, z, b, a]: [&mut Vec<f32>; 4],
    ) {
        let (c, vd, hv) = (shape.channels(), shape.value_dim(), shape.hv);
        let out = [
            sized(qkv, rows * c),
            sized(z, rows * vd),
            sized(b, rows * hv),
            sized(a, rows * hv),
        ];
        moves::unfuse_delta_inputs(fused, ba, shape, rows, out);
    }

    fn delta_gates(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        a_exp: &Vec<f32>,
        dt_bias: &Vec<f32>,
        g: &mut Vec<f32>,
        beta: &mut Vec<f32>,
    ) {
        let (g, beta) = (sized(g, a.len()), sized(beta, a.len()));
        delta_gates(a, b, a_exp, dt_bias, g, beta);
    }

    fn delta_advance(
        &self,
        rule: DeltaRule<Self>,
        st: &mut DeltaState,
        (qkv, g, beta): (&Vec<f32>, &Vec<f32>, &Vec<f32>),
        rows: Range<usize>,
        conv: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        let shape = rule.shape;
        let (dk, kd, c) = (shape.dk, shape.key_dim(), shape.channels());
        let (hv, vd) = (shape.hv, shape.value_dim());
        let conv = &mut conv[row_range(&rows, c)];
        let qkv = &qkv[row_range(&rows, c)];
        conv1d_causal_silu(&mut st.conv, qkv, c, rule.conv_w, rule.kernel, conv);
        for r in conv.chunks_exact_mut(c) {
            // mlx's normalize_qk: l2norm with eps 1e-6, q further scaled by Dk^-0.5.
            l2norm(&mut r[..kd], dk, 1e-6, (dk as f32).powf(-0.5));
            l2norm(&mut r[kd..2 * kd], dk, 1e-6, 1.0);
        }
        let gates = row_range(&rows, hv);
        gated_delta(
            &self.pool,
            conv,
            &g[gates.clone()],
            &beta[gates],
            shape,
            &mut st.state,
            &mut y[row_range(&rows, vd)],
        );
    }

    fn gated_rms_norm(&self, y: &mut Vec<f32>, z: &Vec<f32>, w: &Floats, eps: f32) {
        gated_rms_norm(y, z, &w.view(), eps);
    }

    fn copy_state(&self, dst: &mut DeltaState, src: &DeltaState) {
        dst.conv.copy_from_slice(&src.conv);
        dst.state.copy_from_slice(&src.state);
    }

    fn router_topk(
        &self,
        kind: &RouterKind,
        logits: &mut Vec<f32>,
        experts: usize,
        bias: Option<&Vec<f32>>,
        k: usize,
        ids: &mut Vec<u32>,
        w: &mut Vec<f32>,
    ) {
        let rows = logits.len() / experts;
        ids.resize(rows * k, 0);
        let w = sized(w, rows * k);
        for ((l, ids), w) in logits
            .chunks_exact_mut(experts)
            .zip(ids.chunks_exact_mut(k))
            .zip(w.chunks_exact_mut(k))
        {
            router_topk(kind, l, bias.map(Vec::as_slice), ids, w);
        }
    }

    fn moe_dispatch(&self, ids: &Vec<u32>, experts: usize, k: usize, d: &mut MoeDispatch) {
        moves::moe_dispatch(ids, experts, k, d);
    }

    fn moe_experts(
        &self,
        (p, fused): (Precision, bool),
        store: &dyn ExpertStore,
        layer: usize,
        x: &Vec<f32>,
        d: &MoeDispatch,
        (inter, width): (usize, usize),
        (h, y, u): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    ) -> Result<(), RunError> {
        let slots = d.slots.len();
        let h = sized(h, slots * inter);
        let y = sized(y, slots * width);
        let (counts, by_slot, by_token) = (&d.counts, &d.slots, &d.tokens);
        let range = |id: u32| counts[id as usize] as usize..counts[id as usize + 1] as usize;
        store.with_experts(layer, &d.active, &mut |batch, mats| {
            let pairs: Vec<GatherPair> = batch
                .iter()
                .zip(mats)
                .map(|(&id, m)| GatherPair {
                    gate: m.gate,
                    up: m.up,
                    x_rows: &by_token[range(id)],
                    out_rows: &by_slot[range(id)],
                })
                .collect();
            if fused {
                gather_swiglu(&self.pool, p, x, &pairs, h);
            } else {
                gather_swiglu_unfused(&self.pool, p, x, &pairs, h, u);
            }
            let downs: Vec<GatherGroup> = batch
                .iter()
                .zip(mats)
                .map(|(&id, m)| GatherGroup {
                    w: m.down,
                    x_rows: &by_slot[range(id)],
                    out_rows: &by_slot[range(id)],
                })
                .collect();
            gather_matmul(&self.pool, p, h, &downs, y);
        })
    }

    fn moe_combine(
        &self,
        w: &Vec<f32>,
        y: &Vec<f32>,
        delta: &mut Vec<f32>,
        k: usize,
        width: usize,
    ) {
        let delta = sized(delta, w.len() / k * width);
        moves::moe_combine(w, y, delta, k, width);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::bytes::Bytes;
    use crate::weights::linear::WeightData;
    use crate::weights::safetensors::Dtype;

    fn floats(v: &[f32]) -> Floats {
        Floats {
            dtype: Dtype::F32,
            bytes: Bytes::copied(bytemuck::cast_slice(v)),
        }
    }

    fn dense(rows: usize, cols: usize, seed: f32, bias: bool) -> Linear {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 + seed) * 0.37).sin())
            .collect();
        let b: Vec<f32> = (0..rows).map(|i| (i as f32 * 0.5 + seed).cos()).collect();
        Linear {
            data: WeightData::Dense(floats(&w)),
            rows,
            cols,
            bias: bias.then(|| floats(&b)),
        }
    }

    /// `h = silu(x G^T + b_g) * (x U^T + b_u)`: the biases of gate and up count (llama's
    /// `mlp_bias`), fused or not.
    #[test]
    fn swiglu_adds_the_gate_and_up_biases() {
        let cpu = Cpu::new(Arc::new(ThreadPool::new(2)));
        let (rows, cols, inter) = (3, 32, 8);
        let (gate, up) = (dense(inter, cols, 1.0, true), dense(inter, cols, 2.0, true));
        let x: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let lin = |m: &Linear, t: usize, r: usize| {
            let (w, b) = (m.matrix(), m.bias.as_ref().unwrap().to_vec());
            let mut row = vec![0f32; cols];
            w.row_into(r, &mut row);
            row.iter()
                .zip(&x[t * cols..(t + 1) * cols])
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + b[r]
        };
        for fused in [true, false] {
            let (mut h, mut idx, mut u) = (Vec::new(), Vec::new(), Vec::new());
            let p = Precision::Exact;
            cpu.swiglu(p, fused, &x, rows, (&gate, &up), &mut h, (&mut idx, &mut u));
            for t in 0..rows {
                for r in 0..inter {
                    let want = silu(lin(&gate, t, r)) * lin(&up, t, r);
                    let got = h[t * inter + r];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "fused {fused} ({t}, {r}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
