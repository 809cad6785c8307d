//! The CPU's data-movement ops, over host slices: gathers, splits, the expert dispatch and
//! combine, RoPE with the cache append, gates (a device backend has kernels of its own for
//! each).

use crate::backend::Rope;
use crate::cache::{KvCache, MoeDispatch};
use moestream_kernels::activation::sigmoid;
use moestream_kernels::delta::DeltaShape;
use moestream_kernels::rope::rope;
use moestream_kernels::{simd, Matrix};

/// `x[i] = embedding row tokens[i]`.
pub fn embed_rows<'t>(
    embed: &Matrix,
    tokens: impl Iterator<Item = &'t u32>,
    hsz: usize,
    x: &mut [f32],
) {
    for (row, &id) in x.chunks_exact_mut(hsz).zip(tokens) {
        embed.row_into(id as usize, row);
    }
}

/// `out[j] = x[rows[j]] + delta[rows[j]]` (rows of `hsz`): the residual stream of the rows
/// whose logits are wanted (none, for a pass that only feeds prompt tokens).
pub fn residual_rows(x: &[f32], delta: &[f32], rows: &[usize], hsz: usize, out: &mut [f32]) {
    for (dst, &r) in out.chunks_exact_mut(hsz).zip(rows) {
        let src = r * hsz..(r + 1) * hsz;
        for ((d, x), dx) in dst.iter_mut().zip(&x[src.clone()]).zip(&delta[src]) {
            *d = x + dx;
        }
    }
}

/// Qwen3-Next's `q_proj` output `[l, nh, 2 * hd]` (per head `[q | gate]`) split in place:
/// the queries packed into the first `l * nh * hd` values, the gates into `gate`.
pub fn split_query_gate(qg: &mut [f32], gate: &mut [f32], hd: usize) {
    let heads = gate.len() / hd;
    for i in 0..heads {
        gate[i * hd..(i + 1) * hd].copy_from_slice(&qg[(2 * i + 1) * hd..(2 * i + 2) * hd]);
        // Moving row i down to i never overwrites a row still to be read (rows 2j > i).
        qg.copy_within(2 * i * hd..(2 * i + 1) * hd, i * hd);
    }
}

/// `out *= sigmoid(gate)`, elementwise (the gated attention's output gate).
pub fn sigmoid_gate(out: &mut [f32], gate: &[f32]) {
    for (o, g) in out.iter_mut().zip(gate) {
        *o *= sigmoid(*g);
    }
}

/// RoPE (`rope`) at positions `offset..offset + n` on the `n` rows of `q` and `k` (heads of
/// `rope.head_dim`), then the keys and `v` appended to `kv`.
pub fn rope_append(
    kv: &mut KvCache,
    (q, k, v): (&mut [f32], &mut [f32], &[f32]),
    n: usize,
    offset: usize,
    rope: Rope,
) {
    let (qd, kd) = (q.len() / n, k.len() / n);
    kv.reserve(offset + n, offset);
    for i in 0..n {
        let (qi, ki) = (&mut q[i * qd..(i + 1) * qd], &mut k[i * kd..(i + 1) * kd]);
        rotate(qi, offset + i, rope);
        rotate(ki, offset + i, rope);
        kv.write(offset + i, ki, &v[i * kd..(i + 1) * kd]);
    }
}

/// RoPE of every head of one token's row `x` at `pos`, after YaRN's scaling of the rotated
/// features (mlx-lm's `YarnRoPE`: `x[..., :dims] *= mscale`, then `fast.rope`).
fn rotate(x: &mut [f32], pos: usize, r: Rope) {
    if r.mscale != 1.0 {
        let rot = 2 * r.inv_freq.len();
        for head in x.chunks_exact_mut(r.head_dim) {
            head[..rot].iter_mut().for_each(|v| *v *= r.mscale);
        }
    }
    rope(x, r.head_dim, pos, r.inv_freq, r.traditional);
}

/// MLA's cache append: RoPE (`rope`, heads of `dr`) at positions `offset..offset + n` on the
/// `n` rows of `q_pe` and on the rotary key at the end of each `ckv` row
/// (`[latent (r) | k_pe (dr)]`), then latent and key appended to `kv`.
pub fn rope_append_latent(
    kv: &mut KvCache,
    q_pe: &mut [f32],
    ckv: &mut [f32],
    n: usize,
    offset: usize,
    (r, dr): (usize, usize),
    rope: Rope,
) {
    let qw = q_pe.len() / n;
    kv.reserve(offset + n, offset);
    for i in 0..n {
        rotate(&mut q_pe[i * qw..(i + 1) * qw], offset + i, rope);
        let c = &mut ckv[i * (r + dr)..(i + 1) * (r + dr)];
        rotate(&mut c[r..], offset + i, rope);
        kv.write(offset + i, &c[..r], &c[r..]);
    }
}

/// Splits each `[a | b]` head of `x` (`a + b` wide) into the rows of `left` and `right`.
pub fn split_heads(x: &[f32], left: &mut [f32], right: &mut [f32], a: usize, b: usize) {
    for (i, head) in x.chunks_exact(a + b).enumerate() {
        left[i * a..(i + 1) * a].copy_from_slice(&head[..a]);
        right[i * b..(i + 1) * b].copy_from_slice(&head[a..]);
    }
}

/// Groups the routed slots (`t * k + j`) of `ids` by expert with a counting sort (see
/// [`MoeDispatch`]).
pub fn moe_dispatch(ids: &[u32], e: usize, k: usize, d: &mut MoeDispatch) {
    d.counts.clear();
    d.counts.resize(e + 1, 0);
    for &id in ids {
        d.counts[id as usize + 1] += 1;
    }
    for i in 0..e {
        d.counts[i + 1] += d.counts[i];
    }
    d.active.clear();
    d.active
        .extend((0..e as u32).filter(|&i| d.counts[i as usize + 1] > d.counts[i as usize]));
    d.slots.resize(ids.len(), 0);
    d.tokens.resize(ids.len(), 0);
    d.fill.clear();
    d.fill.extend_from_slice(&d.counts[..e]);
    for (slot, &id) in ids.iter().enumerate() {
        let p = &mut d.fill[id as usize];
        d.slots[*p as usize] = slot as u32;
        d.tokens[*p as usize] = (slot / k) as u32;
        *p += 1;
    }
}

/// `delta[t] = Σ_j w[t k + j] y[t k + j]`: each token's expert outputs (rows of `hsz`),
/// weighted.
pub fn moe_combine(w: &[f32], y: &[f32], delta: &mut [f32], k: usize, hsz: usize) {
    delta.fill(0.0);
    for (t, d) in delta.chunks_exact_mut(hsz).enumerate() {
        for j in 0..k {
            let slot = t * k + j;
            simd::axpy(w[slot], &y[slot * hsz..(slot + 1) * hsz], d);
        }
    }
}

/// `delta[t] += w[t] y[t]` for every row `t` of `hsz` (the shared expert, scaled by its
/// gate).
pub fn scaled_add_rows(w: &[f32], y: &[f32], delta: &mut [f32], hsz: usize) {
    for (t, &wt) in w.iter().enumerate() {
        simd::axpy(
            wt,
            &y[t * hsz..(t + 1) * hsz],
            &mut delta[t * hsz..(t + 1) * hsz],
        );
    }
}

/// Qwen3-Next's fused Gated DeltaNet projections, per token and key head group `g`
/// `qkvz = [q | k | v (r heads) | z (r heads)]` and `ba = [b (r) | a (r)]`, laid out as the
/// split projections are: `qkv = [q.. | k.. | v..]`, `z`, `b`, `a` (`r = Hv / Hk`).
pub fn unfuse_delta_inputs(
    fused: &[f32],
    nba: &[f32],
    shape: DeltaShape,
    l: usize,
    [qkv, z, b, a]: [&mut [f32]; 4],
) {
    let DeltaShape { hk, dk, hv, dv } = shape;
    let (kd, vd, c) = (shape.key_dim(), shape.value_dim(), shape.channels());
    let r = hv / hk;
    let group = 2 * dk + 2 * r * dv;
    for t in 0..l {
        let src = &fused[t * hk * group..(t + 1) * hk * group];
        let dst = &mut qkv[t * c..(t + 1) * c];
        let zt = &mut z[t * vd..(t + 1) * vd];
        for (g, gs) in src.chunks_exact(group).enumerate() {
            dst[g * dk..(g + 1) * dk].copy_from_slice(&gs[..dk]);
            dst[kd + g * dk..kd + (g + 1) * dk].copy_from_slice(&gs[dk..2 * dk]);
            let rv = r * dv;
            dst[2 * kd + g * rv..2 * kd + (g + 1) * rv].copy_from_slice(&gs[2 * dk..2 * dk + rv]);
            zt[g * rv..(g + 1) * rv].copy_from_slice(&gs[2 * dk + rv..]);
        }
        for g in 0..hk {
            let n = &nba[(t * hk + g) * 2 * r..(t * hk + g + 1) * 2 * r];
            b[t * hv + g * r..t * hv + (g + 1) * r].copy_from_slice(&n[..r]);
            a[t * hv + g * r..t * hv + (g + 1) * r].copy_from_slice(&n[r..]);
        }
    }
}
