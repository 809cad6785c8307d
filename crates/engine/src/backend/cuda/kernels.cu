// The CUDA backend's kernels, compiled at run time by NVRTC for the GPU in use.
//
// Layouts follow the CPU backend (crates/engine/src/backend/cpu): activations are row-major
// f32; a KV cache is head-major [n_kv, cap, head_dim]; a quantized matrix is MLX's affine
// format, row-major: `rows * cols * bits / 32` code words (least significant bits first),
// and one f32 scale and bias per `group` values of a row (widened from bf16/f16 at upload).
// This first version favours being plainly right over being fast: one warp per output row,
// sequential online softmax per (token, head).

typedef unsigned int u32;
typedef unsigned long long u64;

// A weight matrix: affine-quantized (kind 0, 4 or 8 bits) or dense f32 (kind 1). `bias` is
// 0 when the matrix has none.
struct Mat {
    u64 codes, scales, biases, dense, bias;
    int kind, rows, cols, bits, group;
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float weight(const Mat& m, int r, int c) {
    if (m.kind == 1) return ((const float*)m.dense)[(size_t)r * m.cols + c];
    const u32* row = (const u32*)m.codes + (size_t)r * (m.cols * m.bits / 32);
    int per = 32 / m.bits;
    u32 q = (row[c / per] >> ((c % per) * m.bits)) & ((1u << m.bits) - 1u);
    size_t g = (size_t)r * (m.cols / m.group) + c / m.group;
    return ((const float*)m.scales)[g] * (float)q + ((const float*)m.biases)[g];
}

// One code word's values (32 / BITS of them, from column c0) against x: s * sum(q_i x_i) +
// b * sum(x_i) with the word's group scale and bias.
template <int BITS>
__device__ __forceinline__ float word_dot(u32 q, const float* x, float s, float b) {
    const int per = 32 / BITS;
    const u32 mask = (1u << BITS) - 1u;
    float qx = 0.f, xs = 0.f;
#pragma unroll
    for (int i = 0; i < per; i += 4) {
        float4 xv = *(const float4*)(x + i);
        qx += (float)((q >> (i * BITS)) & mask) * xv.x;
        qx += (float)((q >> ((i + 1) * BITS)) & mask) * xv.y;
        qx += (float)((q >> ((i + 2) * BITS)) & mask) * xv.z;
        qx += (float)((q >> ((i + 3) * BITS)) & mask) * xv.w;
        xs += (xv.x + xv.y) + (xv.z + xv.w);
    }
    return s * qx + b * xs;
}

// Lane `lane`'s part of row r of an affine matrix dotted with x. Lanes take consecutive
// 16-byte chunks (4 code words) so each load instruction of the warp reads 512 contiguous
// bytes; a word never straddles groups (groups are >= 16 values, words <= 8). Rows whose
// word count is not a multiple of 4 go a word at a time.
template <int BITS>
__device__ __forceinline__ float row_dot_affine(const Mat& m, int r, const float* x, int lane) {
    const int per = 32 / BITS;
    int words = m.cols / per, groups = m.cols / m.group;
    const u32* row = (const u32*)m.codes + (size_t)r * words;
    const float* sc = (const float*)m.scales + (size_t)r * groups;
    const float* bi = (const float*)m.biases + (size_t)r * groups;
    float acc = 0.f;
    if (words % 4 == 0) {
        for (int w4 = lane; w4 < words / 4; w4 += 32) {
            uint4 q = *(const uint4*)(row + 4 * w4);
            u32 qs[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int c0 = (4 * w4 + j) * per, g = c0 / m.group;
                acc += word_dot<BITS>(qs[j], x + c0, sc[g], bi[g]);
            }
        }
    } else {
        for (int w = lane; w < words; w += 32) {
            int c0 = w * per, g = c0 / m.group;
            acc += word_dot<BITS>(row[w], x + c0, sc[g], bi[g]);
        }
    }
    return acc;
}

// Row r of m dotted with x (the whole warp; every lane gets the sum), plus the row's bias.
__device__ __forceinline__ float row_dot(const Mat& m, int r, const float* x, int lane) {
    float acc = 0.f;
    if (m.kind == 1) {
        const float* wr = (const float*)m.dense + (size_t)r * m.cols;
        for (int c = lane; c < m.cols; c += 32) acc += wr[c] * x[c];
    } else if (m.bits == 4) {
        acc = row_dot_affine<4>(m, r, x, lane);
    } else {
        acc = row_dot_affine<8>(m, r, x, lane);
    }
    acc = warp_sum(acc);
    if (m.bias) acc += ((const float*)m.bias)[r];
    return acc;
}

// out[out_idx[t], r] = x[x_idx[t], :] . W[r, :] + bias[r] for t < n (an index array of 0
// means the identity). One warp per output row r, all n rows of x.
extern "C" __global__ void gather_matmul(const float* x, const u32* x_idx, int n, Mat w,
                                         float* out, const u32* out_idx) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= w.rows) return;
    for (int t = 0; t < n; t++) {
        const float* xr = x + (size_t)(x_idx ? x_idx[t] : t) * w.cols;
        float acc = row_dot(w, r, xr, lane);
        if (lane == 0) out[(size_t)(out_idx ? out_idx[t] : t) * w.rows + r] = acc;
    }
}

__device__ __forceinline__ float silu(float v) { return v / (1.f + expf(-v)); }

// Row r of slot s's SwiGLU: h[s, r] = silu(gate[r] . x[s / k]) * (up[r] . x[s / k]) (the
// whole warp; lane 0 writes).
__device__ __forceinline__ void gate_up_row(const float* x, u32 s, int k, const Mat& gate,
                                            const Mat& up, int r, int lane, int inter,
                                            float* h) {
    const float* xr = x + (size_t)(s / k) * gate.cols;
    float g = row_dot(gate, r, xr, lane);
    float u = row_dot(up, r, xr, lane);
    if (lane == 0) h[(size_t)s * inter + r] = silu(g) * u;
}

// Row r of slot s's down projection: y[s, r] = down[r] . h[s].
__device__ __forceinline__ void down_row(const float* h, u32 s, const Mat& down, int r, int lane,
                                         int width, float* y) {
    float v = row_dot(down, r, h + (size_t)s * down.cols, lane);
    if (lane == 0) y[(size_t)s * width + r] = v;
}


// ---- Routed experts grouped by expert on the device (prompts) ----

// Groups the `slots` routed slots of ids (slot t k + j: token t's j-th expert) by expert with
// a counting sort in one block: offsets[e .. e + 1] bound expert e's run in order (slot
// numbers; within a run in no particular order: each slot's result is its own).
// E <= 1024 (checked by the host).
extern "C" __global__ void moe_group(const u32* ids, int slots, int E, u32* offsets,
                                     u32* order) {
    __shared__ u32 count[1024], fill[1024];
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0u;
    __syncthreads();
    for (int s = threadIdx.x; s < slots; s += blockDim.x) atomicAdd(&count[ids[s]], 1u);
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 at = 0;
        for (int e = 0; e < E; e++) {
            offsets[e] = at;
            fill[e] = at;
            at += count[e];
        }
        offsets[E] = at;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < slots; s += blockDim.x) order[atomicAdd(&fill[ids[s]], 1u)] = s;
}

// h[s, r] = silu(gate_e[r] . x[s / k]) * (up_e[r] . x[s / k]) for every slot s of expert
// e = blockIdx.y (its run of order); one warp per output row r, looping over the run, so
// the row's codes are read from memory once and then from cache. Counts each expert with a
// run once in usage[e] (the CPU counts each active expert once per call).
extern "C" __global__ void moe_gate_up_grouped(const float* x, const u32* offsets,
                                               const u32* order, int k, const Mat* mats,
                                               int inter, float* h, u32* usage) {
    int e = blockIdx.y, r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    u32 a = offsets[e], b = offsets[e + 1];
    if (a == b || r >= inter) return;
    if (usage && r == 0 && lane == 0) usage[e] += 1u;
    const Mat& gate = mats[3 * e];
    const Mat& up = mats[3 * e + 1];
    for (u32 i = a; i < b; i++) gate_up_row(x, order[i], k, gate, up, r, lane, inter, h);
}

// y[s, r] = down_e[r] . h[s] for every slot s of expert e = blockIdx.y (as above).
extern "C" __global__ void moe_down_grouped(const float* h, const u32* offsets, const u32* order,
                                            const Mat* mats, int width, float* y) {
    int e = blockIdx.y, r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    u32 a = offsets[e], b = offsets[e + 1];
    if (a == b || r >= width) return;
    const Mat& m = mats[3 * e + 2];
    for (u32 i = a; i < b; i++) down_row(h, order[i], m, r, lane, width, y);
}

// Routed experts of a few tokens without grouping them on the host (decode): slot s is
// token s / k's (s % k)-th choice, expert ids[s], whose matrices are mats[3 e .. 3 e + 2]
// (gate, up, down). One warp per (output row, slot): grid (ceil(rows / warps), slots).
//
// h[s, r] = silu(gate_e[r] . x[s / k]) * (up_e[r] . x[s / k]); the first warp of each slot
// also counts the expert in usage[e] unless an earlier slot of this call chose it too (the
// CPU counts each active expert once per call).
extern "C" __global__ void moe_gate_up(const float* x, const u32* ids, int slots, int k,
                                       const Mat* mats, int inter, float* h, u32* usage) {
    int s = blockIdx.y, r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (s >= slots || r >= inter) return;
    u32 e = ids[s];
    gate_up_row(x, s, k, mats[3 * e], mats[3 * e + 1], r, lane, inter, h);
    if (usage && r == 0 && lane == 0) {
        bool first = true;
        for (int j = 0; j < s; j++) first = first && ids[j] != e;
        if (first) atomicAdd(usage + e, 1u);
    }
}

// y[s, r] = down_e[r] . h[s] for slot s's expert e = ids[s] (as moe_gate_up).
extern "C" __global__ void moe_down(const float* h, const u32* ids, int slots, const Mat* mats,
                                    int width, float* y) {
    int s = blockIdx.y, r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (s >= slots || r >= width) return;
    down_row(h, s, mats[3 * ids[s] + 2], r, lane, width, y);
}

// x[i, :] = W[ids[i], :] (the embedding gather).
extern "C" __global__ void embed_rows(Mat w, const u32* ids, int n, float* x) {
    int i = blockIdx.x;
    if (i >= n) return;
    for (int c = threadIdx.x; c < w.cols; c += blockDim.x)
        x[(size_t)i * w.cols + c] = weight(w, ids[i], c);
}

// h = silu(h) * u, elementwise.
extern "C" __global__ void silu_mul(float* h, const float* u, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) h[i] = silu(h[i]) * u[i];
}

__device__ float block_sum(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) / 32;
    v = threadIdx.x < warps ? part[threadIdx.x] : 0.f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
    __syncthreads();
    v = part[0];
    __syncthreads();
    return v;
}

// One row per block: the first `width` values of row i (rows `stride` apart) of x, plus
// delta's row when given (then written back to x: the residual add), RMS-normalised with
// weight w into out (which may be x).
extern "C" __global__ void rms_norm(float* x, const float* delta, const float* w, float eps,
                                    int width, int stride, float* out) {
    float* xr = x + (size_t)blockIdx.x * stride;
    float* orow = out + (size_t)blockIdx.x * stride;
    float ss = 0.f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float v = xr[c];
        if (delta) {
            v += delta[(size_t)blockIdx.x * stride + c];
            xr[c] = v;
        }
        ss += v * v;
    }
    float inv = 1.f / sqrtf(block_sum(ss) / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) orow[c] = w[c] * (xr[c] * inv);
}

// out[j, :] = x[rows[j], :] + delta[rows[j], :].
extern "C" __global__ void residual_rows(const float* x, const float* delta, const u32* rows,
                                         int width, float* out) {
    size_t src = (size_t)rows[blockIdx.x] * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        out[(size_t)blockIdx.x * width + c] = x[src + c] + delta[src + c];
}

extern "C" __global__ void fill(float* x, float v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

extern "C" __global__ void sigmoid_inplace(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = 1.f / (1.f + expf(-x[i]));
}

extern "C" __global__ void sigmoid_gate(float* out, const float* gate, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] *= 1.f / (1.f + expf(-gate[i]));
}

// delta[t, c] += w[t] * y[t, c].
extern "C" __global__ void scaled_add_rows(const float* w, const float* y, float* delta,
                                           int width, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) delta[i] += w[i / width] * y[i];
}

// delta[t, c] = sum_j w[t k + j] * y[t k + j, c] (in j order, as the CPU sums).
extern "C" __global__ void moe_combine(const float* w, const float* y, float* delta, int k,
                                       int width, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int t = i / width, c = i % width;
    float acc = 0.f;
    for (int j = 0; j < k; j++) acc += w[t * k + j] * y[(size_t)(t * k + j) * width + c];
    delta[i] = acc;
}

// Rotates pair p of one head x at position pos (mlx fast.rope: adjacent pairs when
// traditional, else p and p + half), after YaRN's factor mscale on both features.
__device__ __forceinline__ void rotate_pair(float* x, int p, int half, int traditional,
                                            float mscale, float pos, const float* inv_freq) {
    float s, c;
    sincosf(pos * inv_freq[p], &s, &c);
    int ia = traditional ? 2 * p : p, ib = traditional ? 2 * p + 1 : p + half;
    float a = x[ia] * mscale, b = x[ib] * mscale;
    x[ia] = a * c - b * s;
    x[ib] = b * c + a * s;
}

// RoPE (mlx fast.rope: `half` rotated pairs, adjacent or split halves, after YaRN's factor
// `mscale` on the rotated features) of every head of the token rows [row0, row0 + n) of q
// (nq heads) and k (nk heads), at positions offset + i; then those keys and the values
// appended to the cache (head-major, capacity cap).
extern "C" __global__ void rope_append(float* q, float* k, const float* v, int row0, int n,
                                       int nq, int nk, int hd, const float* inv_freq,
                                       int half, int traditional, float mscale, int offset,
                                       float* kc, float* vc, int cap) {
    int i = blockIdx.x, head = blockIdx.y;
    if (i >= n || head >= nq + nk) return;
    int row = row0 + i;
    float* x = head < nq ? q + ((size_t)row * nq + head) * hd
                         : k + ((size_t)row * nk + (head - nq)) * hd;
    float pos = (float)(offset + i);
    for (int p = threadIdx.x; p < half; p += blockDim.x)
        rotate_pair(x, p, half, traditional, mscale, pos, inv_freq);
    if (head < nq) return;
    __syncthreads();
    int kh = head - nq;
    size_t dst = ((size_t)kh * cap + offset + i) * hd;
    const float* vs = v + ((size_t)row * nk + kh) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        kc[dst + d] = x[d];
        vc[dst + d] = vs[d];
    }
}

// Copies a head-major cache [heads, old_cap, w] into one of capacity new_cap (first `keep`
// positions of each head).
extern "C" __global__ void grow_cache(const float* src, float* dst, int old_cap, int new_cap,
                                      int keep, int w) {
    int head = blockIdx.y;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)keep * w;
         i += (size_t)gridDim.x * blockDim.x)
        dst[(size_t)head * new_cap * w + i] = src[(size_t)head * old_cap * w + i];
}

// Causal attention, one block of ATT_WARPS warps per (query row, head): query i of this call
// sees positions 0..t - l + i. Each warp takes every ATT_WARPS-th run of 4 positions (their
// loads independent, so they overlap), keeps an online softmax over them, and the block
// merges the warps' partial sums at the end (split-K over the positions); each lane owns
// head_dim / 32 outputs (head_dim <= 256).
#define ATT_WARPS 8
extern "C" __global__ void attention(const float* q, int row0, int l, int t, int nh, int nkv,
                                     int hd, float scale, const float* kc, const float* vc,
                                     int cap, float* out) {
    __shared__ float part_m[ATT_WARPS], part_s[ATT_WARPS], part_acc[ATT_WARPS][256];
    int qh = blockIdx.x;
    if (qh >= l * nh) return;
    int i = qh / nh, h = qh % nh, kvh = h / (nh / nkv);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float* qr = q + ((size_t)(row0 + i) * nh + h) * hd;
    const float* ks = kc + (size_t)kvh * cap * hd;
    const float* vs = vc + (size_t)kvh * cap * hd;
    const int per = 8;
    const float ninf = -__int_as_float(0x7f800000);  // NVRTC has no math.h
    float acc[per], qv[per];
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        qv[j] = d < hd ? qr[d] : 0.f;
        acc[j] = 0.f;
    }
    float m = ninf, s = 0.f;
    int visible = t - l + i + 1;
    for (int p0 = 4 * warp; p0 < visible; p0 += 4 * ATT_WARPS) {
        float sc[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int p = p0 + u;
            float dot = 0.f;
            if (p < visible)
                for (int j = 0; j < per; j++) {
                    int d = lane + 32 * j;
                    if (d < hd) dot += qv[j] * ks[(size_t)p * hd + d];
                }
            dot = warp_sum(dot);
            sc[u] = p < visible ? dot * scale : ninf;
        }
        float m2 = fmaxf(fmaxf(m, fmaxf(sc[0], sc[1])), fmaxf(sc[2], sc[3]));
        float corr = expf(m - m2), e[4];
#pragma unroll
        for (int u = 0; u < 4; u++) e[u] = expf(sc[u] - m2);
        s = s * corr + ((e[0] + e[1]) + (e[2] + e[3]));
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d >= hd) continue;
            float a = acc[j] * corr;
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (p0 + u < visible) a += e[u] * vs[(size_t)(p0 + u) * hd + d];
            acc[j] = a;
        }
        m = m2;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_s[warp] = s;
    }
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        if (d < hd) part_acc[warp][d] = acc[j];
    }
    __syncthreads();
    if (warp != 0) return;
    float big = ninf;
    for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, part_m[w]);
    float total = 0.f, f[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = part_m[w] == ninf ? 0.f : expf(part_m[w] - big);  // a warp with no positions
        total += part_s[w] * f[w];
    }
    float* o = out + ((size_t)(row0 + i) * nh + h) * hd;
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        if (d >= hd) continue;
        float a = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) a += part_acc[w][d] * f[w];
        o[d] = visible > 0 ? a / total : 0.f;
    }
}

// ---- MLA (multi-head latent attention, absorbed form; crates/kernels/src/mla.rs) ----

// Splits each [a | b] head of x (heads = n / (a + b)) into left [heads, a] and right
// [heads, b].
extern "C" __global__ void split_heads(const float* x, float* left, float* right, int a, int b,
                                       int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int head = i / (a + b), d = i % (a + b);
    if (d < a)
        left[(size_t)head * a + d] = x[i];
    else
        right[(size_t)head * b + d - a] = x[i];
}

// MLA's cache append for token rows [row0, row0 + n): RoPE at positions offset + i on the
// nh rotary query heads (dr wide) of q_pe and on the rotary key that ends each ckv row
// ([latent (r) | k_pe (dr)]), then the latent to lat[offset + i] and the key to kpe.
// Grid (n, nh + 1): head nh is the key.
extern "C" __global__ void rope_append_latent(float* q_pe, float* ckv, int row0, int n, int nh,
                                              int r, int dr, const float* inv_freq, int half,
                                              int traditional, float mscale, int offset,
                                              float* lat, float* kpe) {
    int i = blockIdx.x, head = blockIdx.y;
    if (i >= n || head > nh) return;
    int row = row0 + i;
    float pos = (float)(offset + i);
    float* x = head < nh ? q_pe + ((size_t)row * nh + head) * dr
                         : ckv + (size_t)row * (r + dr) + r;
    for (int p = threadIdx.x; p < half; p += blockDim.x)
        rotate_pair(x, p, half, traditional, mscale, pos, inv_freq);
    if (head < nh) return;
    __syncthreads();
    const float* c = ckv + (size_t)row * (r + dr);
    for (int d = threadIdx.x; d < r; d += blockDim.x) lat[(size_t)(offset + i) * r + d] = c[d];
    for (int d = threadIdx.x; d < dr; d += blockDim.x)
        kpe[(size_t)(offset + i) * dr + d] = c[r + d];
}

// Absorbed MLA attention, one warp per (query row, head): scores
// scale * (q_lat . lat_j + q_pe . kpe_j) over the visible positions, online softmax, the
// attended latent into out[row, head, :r]. r <= 512, dr <= 128 (checked by the host).
extern "C" __global__ void mla_attention(const float* q_lat, const float* q_pe, int row0, int l,
                                         int t, int nh, int r, int dr, float scale,
                                         const float* lat, const float* kpe, float* out) {
    int warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (warp >= l * nh) return;
    int i = warp / nh, h = warp % nh;
    size_t row = (size_t)(row0 + i) * nh + h;
    const int per = 16, per_pe = 4;
    float q[per], qp[per_pe], acc[per];
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        q[j] = d < r ? q_lat[row * r + d] : 0.f;
        acc[j] = 0.f;
    }
    for (int j = 0; j < per_pe; j++) {
        int d = lane + 32 * j;
        qp[j] = d < dr ? q_pe[row * dr + d] : 0.f;
    }
    float m = -__int_as_float(0x7f800000), s = 0.f;
    int visible = t - l + i + 1;
    for (int p = 0; p < visible; p++) {
        float dot = 0.f;
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d < r) dot += q[j] * lat[(size_t)p * r + d];
        }
        for (int j = 0; j < per_pe; j++) {
            int d = lane + 32 * j;
            if (d < dr) dot += qp[j] * kpe[(size_t)p * dr + d];
        }
        float score = warp_sum(dot) * scale;
        float m2 = fmaxf(m, score);
        float corr = expf(m - m2), e = expf(score - m2);
        s = s * corr + e;
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d < r) acc[j] = acc[j] * corr + e * lat[(size_t)p * r + d];
        }
        m = m2;
    }
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        if (d < r) out[row * r + d] = visible > 0 ? acc[j] / s : 0.f;
    }
}

// ---- Gated DeltaNet (crates/kernels/src/delta.rs; layouts there) ----

// qwen3_next's fused projections to [qkv | z | b | a] (see moves::unfuse_delta_inputs):
// per token, per key head g, the fused row holds [q (dk) | k (dk) | v (rr dv) | z (rr dv)]
// and the ba row [b (rr) | a (rr)], rr = hv / hk. One thread per fused value.
extern "C" __global__ void unfuse_delta(const float* fused, const float* ba, int l, int hk,
                                        int dk, int hv, int dv, float* qkv, float* z, float* b,
                                        float* a) {
    int rr = hv / hk, group = 2 * dk + 2 * rr * dv;
    int kd = hk * dk, vd = hv * dv, c = 2 * kd + vd;
    size_t n = (size_t)l * hk * group, i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        int t = i / (hk * group), g = (i / group) % hk, j = i % group;
        float v = fused[i];
        if (j < dk)
            qkv[(size_t)t * c + g * dk + j] = v;
        else if (j < 2 * dk)
            qkv[(size_t)t * c + kd + g * dk + j - dk] = v;
        else if (j < 2 * dk + rr * dv)
            qkv[(size_t)t * c + 2 * kd + g * rr * dv + j - 2 * dk] = v;
        else
            z[(size_t)t * vd + g * rr * dv + j - 2 * dk - rr * dv] = v;
    }
    size_t nb = (size_t)l * hk * 2 * rr;
    if (i < nb) {
        int t = i / (hk * 2 * rr), g = (i / (2 * rr)) % hk, j = i % (2 * rr);
        if (j < rr)
            b[(size_t)t * hv + g * rr + j] = ba[i];
        else
            a[(size_t)t * hv + g * rr + j - rr] = ba[i];
    }
}

// g = exp(-a_exp[h] softplus(a + dt_bias[h])), beta = sigmoid(b), per (token, value head).
extern "C" __global__ void delta_gates(const float* a, const float* b, const float* a_exp,
                                       const float* dt_bias, int hv, float* g, float* beta,
                                       int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int h = i % hv;
    float x = a[i] + dt_bias[h];
    float softplus = fmaxf(x, 0.f) + log1pf(expf(-fabsf(x)));
    g[i] = expf(-a_exp[h] * softplus);
    beta[i] = 1.f / (1.f + expf(-b[i]));
}

// The causal depthwise conv + SiLU over the n token rows [row0, row0 + n) of qkv (c
// channels), after the window (kernel - 1 previous inputs), into the same rows of out;
// then the window rolls to the last kernel - 1 inputs. One thread per channel.
extern "C" __global__ void conv_silu(float* window, const float* qkv, int row0, int n, int c,
                                     const float* w, int kernel, float* out) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    int keep = kernel - 1;
    for (int t = 0; t < n; t++) {
        float acc = 0.f;
        for (int j = 0; j < kernel; j++) {
            int r = t + j;  // row of concat(window, x)
            float in = r < keep ? window[(size_t)r * c + ch]
                                : qkv[(size_t)(row0 + r - keep) * c + ch];
            acc += w[(size_t)j * c + ch] * in;
        }
        out[(size_t)(row0 + t) * c + ch] = silu(acc);
    }
    // The last `keep` rows of concat(window, x), in order (reading ahead of writing).
    for (int r = 0; r < keep; r++) {
        int src = n + r;  // row of concat(window, x)
        window[(size_t)r * c + ch] =
            src < keep ? window[(size_t)src * c + ch] : qkv[(size_t)(row0 + src - keep) * c + ch];
    }
}

// mlx's normalize_qk on conv rows [row0, row0 + n): every dk-wide q head scaled to
// dk^-0.5 / |q|, every k head to 1 / |k| (eps 1e-6 inside the root). One warp per head.
extern "C" __global__ void l2norm_qk(float* conv, int row0, int n, int hk, int dk, int c) {
    int warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (warp >= n * 2 * hk) return;
    int t = warp / (2 * hk), head = warp % (2 * hk);  // q heads, then k heads
    float* x = conv + (size_t)(row0 + t) * c + (size_t)head * dk;
    float ss = 0.f;
    for (int d = lane; d < dk; d += 32) ss += x[d] * x[d];
    ss = warp_sum(ss);
    float scale = head < hk ? rsqrtf((float)dk) : 1.f;
    float inv = scale / sqrtf(ss + 1e-6f);
    for (int d = lane; d < dk; d += 32) x[d] *= inv;
}

// The gated delta rule over token rows [row0, row0 + n) for each state row S_h[i, :]
// (dk wide, in the warp's registers: dk <= 256): per token s *= g; delta = (v - s.k) beta;
// s += delta k; y = s.q. One warp per state row (hv * dv of them).
extern "C" __global__ void gated_delta(const float* conv, const float* g, const float* beta,
                                       int row0, int n, int hk, int dk, int hv, int dv,
                                       float* state, float* y) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= hv * dv) return;
    int h = row / dv, i = row % dv, kh = h / (hv / hk);
    int kd = hk * dk, c = 2 * kd + hv * dv;
    const int per = 8;
    float s[per];
    float* sp = state + (size_t)row * dk;
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        s[j] = d < dk ? sp[d] : 0.f;
    }
    for (int t = row0; t < row0 + n; t++) {
        const float* base = conv + (size_t)t * c;
        const float* q = base + kh * dk;
        const float* k = base + kd + kh * dk;
        float v = base[2 * kd + h * dv + i];
        float gt = g[(size_t)t * hv + h], bt = beta[(size_t)t * hv + h];
        float kv = 0.f;
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d < dk) {
                s[j] *= gt;
                kv += s[j] * k[d];
            }
        }
        float delta = (v - warp_sum(kv)) * bt;
        float out = 0.f;
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d < dk) {
                s[j] += delta * k[d];
                out += s[j] * q[d];
            }
        }
        out = warp_sum(out);
        if (lane == 0) y[((size_t)t * hv + h) * dv + i] = out;
    }
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        if (d < dk) sp[d] = s[j];
    }
}

// y = silu(z) * (w * rms_norm(y)) per row of `width` (one block per row).
extern "C" __global__ void gated_rms_norm(float* y, const float* z, const float* w, float eps,
                                          int width) {
    float* yr = y + (size_t)blockIdx.x * width;
    const float* zr = z + (size_t)blockIdx.x * width;
    float ss = 0.f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) ss += yr[c] * yr[c];
    float inv = 1.f / sqrtf(block_sum(ss) / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        yr[c] = w[c] * (yr[c] * inv) * silu(zr[c]);
}

#define ROUTER_MAX_EXPERTS 512
#define ROUTER_MAX_K 32
#define ROUTER_MAX_GROUPS 64

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The router of one token per block (one warp): row `blockIdx.x` of logits [rows, E] to
// ids[k] and weights w[k], as the CPU's `router_topk` (crates/kernels/src/router.rs):
//   kind 0 softmax over all experts, top-k, optional renormalisation (Qwen3-MoE, OLMoE);
//   kind 1 top-k of the logits, softmax over the chosen k (Mixtral);
//   kind 2 sigmoid scores, selection on score + bias (bias may be 0) with mlx-lm's group
//          masking when n_group > 1, optional renormalisation, times `scaling` (GLM).
// Ties pick the lower expert id. E <= ROUTER_MAX_EXPERTS, k <= ROUTER_MAX_K (checked by
// the host).
extern "C" __global__ void router_topk(const float* logits, int E, const float* bias, int k,
                                       int kind, int norm, float scaling, int n_group,
                                       int topk_group, u32* ids, float* w) {
    __shared__ float score[ROUTER_MAX_EXPERTS];  // what the weights are read from
    __shared__ float key[ROUTER_MAX_EXPERTS];    // what the experts are chosen by
    __shared__ u32 taken[ROUTER_MAX_EXPERTS / 32];
    __shared__ float chosen_w[ROUTER_MAX_K];
    const float ninf = -__int_as_float(0x7f800000);
    int row = blockIdx.x, lane = threadIdx.x;
    const float* l = logits + (size_t)row * E;
    for (int i = lane; i < ROUTER_MAX_EXPERTS / 32; i += 32) taken[i] = 0u;
    if (kind == 0) {
        float m = ninf;
        for (int e = lane; e < E; e += 32) m = fmaxf(m, l[e]);
        m = warp_max(m);
        float z = 0.f;
        for (int e = lane; e < E; e += 32) {
            float v = expf(l[e] - m);
            score[e] = v;
            z += v;
        }
        float inv = 1.f / warp_sum(z);
        for (int e = lane; e < E; e += 32) key[e] = score[e] = score[e] * inv;
    } else if (kind == 1) {
        for (int e = lane; e < E; e += 32) key[e] = score[e] = l[e];
    } else {
        for (int e = lane; e < E; e += 32) {
            float s = 1.f / (1.f + expf(-l[e]));
            score[e] = s;
            key[e] = s + (bias ? bias[e] : 0.f);
        }
    }
    __syncwarp();
    if (kind == 2 && n_group > 1 && lane == 0) {
        // mlx-lm's group_expert_select: rank groups by their two best keys; zero the keys of
        // all but the best topk_group (ties: the later group goes first).
        int size = E / n_group;
        float gs[ROUTER_MAX_GROUPS];
        for (int g = 0; g < n_group; g++) {
            float a = ninf, b = ninf;
            for (int e = g * size; e < (g + 1) * size; e++) {
                float v = key[e];
                if (v > a) {
                    b = a;
                    a = v;
                } else if (v > b) {
                    b = v;
                }
            }
            gs[g] = a + b;
        }
        const float inf = __int_as_float(0x7f800000);
        for (int drop = topk_group; drop < n_group; drop++) {
            int weakest = 0;
            float least = inf;
            for (int g = 0; g < n_group; g++)
                if (gs[g] <= least) {
                    weakest = g;
                    least = gs[g];
                }
            gs[weakest] = inf;
            for (int e = weakest * size; e < (weakest + 1) * size; e++) key[e] = 0.f;
        }
    }
    __syncwarp();
    // k rounds of a warp arg-max over the experts not yet taken.
    for (int j = 0; j < k; j++) {
        float best = ninf;
        int at = -1;
        for (int e = lane; e < E; e += 32) {
            if (taken[e / 32] & (1u << (e % 32))) continue;
            float v = key[e];
            if (at < 0 || v > best) {
                best = v;
                at = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oa = __shfl_xor_sync(0xffffffffu, at, o);
            bool better = oa >= 0 && (at < 0 || ob > best || (ob == best && oa < at));
            if (better) {
                best = ob;
                at = oa;
            }
        }
        if (lane == 0) {
            taken[at / 32] |= 1u << (at % 32);
            ids[(size_t)row * k + j] = (u32)at;
            chosen_w[j] = score[at];
        }
        __syncwarp();
    }
    if (lane != 0) return;
    float* wr = w + (size_t)row * k;
    if (kind == 1) {
        float m = ninf, z = 0.f;
        for (int j = 0; j < k; j++) m = fmaxf(m, chosen_w[j]);
        for (int j = 0; j < k; j++) {
            chosen_w[j] = expf(chosen_w[j] - m);
            z += chosen_w[j];
        }
        float inv = 1.f / z;
        for (int j = 0; j < k; j++) chosen_w[j] *= inv;
    } else if (norm && (kind == 0 || k > 1)) {
        float z = 0.f;
        for (int j = 0; j < k; j++) z += chosen_w[j];
        if (kind == 2) z += 1e-20f;
        for (int j = 0; j < k; j++) chosen_w[j] /= z;
    }
    for (int j = 0; j < k; j++) wr[j] = kind == 2 ? chosen_w[j] * scaling : chosen_w[j];
}
