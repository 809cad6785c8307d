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

// out[out_idx[t], r] = x[x_idx[t], :] . W[r, :] + bias[r] for t < n (an index array of 0
// means the identity). One warp per output row r, all n rows of x.
extern "C" __global__ void gather_matmul(const float* x, const u32* x_idx, int n, Mat w,
                                         float* out, const u32* out_idx) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= w.rows) return;
    for (int t = 0; t < n; t++) {
        const float* xr = x + (size_t)(x_idx ? x_idx[t] : t) * w.cols;
        float acc = 0.f;
        for (int c = lane; c < w.cols; c += 32) acc += xr[c] * weight(w, r, c);
        acc = warp_sum(acc);
        if (lane == 0) {
            if (w.bias) acc += ((const float*)w.bias)[r];
            out[(size_t)(out_idx ? out_idx[t] : t) * w.rows + r] = acc;
        }
    }
}

// x[i, :] = W[ids[i], :] (the embedding gather).
extern "C" __global__ void embed_rows(Mat w, const u32* ids, int n, float* x) {
    int i = blockIdx.x;
    if (i >= n) return;
    for (int c = threadIdx.x; c < w.cols; c += blockDim.x)
        x[(size_t)i * w.cols + c] = weight(w, ids[i], c);
}

__device__ __forceinline__ float silu(float v) { return v / (1.f + expf(-v)); }

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

// Per head [q | gate] (2 * hd each) of qg into q (hd) and gate (hd).
extern "C" __global__ void split_query_gate(const float* qg, float* q, float* gate, int hd,
                                            int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int head = i / hd, d = i % hd;
    q[i] = qg[(size_t)head * 2 * hd + d];
    gate[i] = qg[(size_t)head * 2 * hd + hd + d];
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
    for (int p = threadIdx.x; p < half; p += blockDim.x) {
        float s, c;
        sincosf(pos * inv_freq[p], &s, &c);
        int ia = traditional ? 2 * p : p, ib = traditional ? 2 * p + 1 : p + half;
        float a = x[ia], b = x[ib];
        if (mscale != 1.f) {
            a *= mscale;
            b *= mscale;
        }
        x[ia] = a * c - b * s;
        x[ib] = b * c + a * s;
    }
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

// Causal attention, one warp per (query row, head): query i of this call sees positions
// 0..t - l + i; online softmax over them in order; each lane owns head_dim / 32 outputs.
extern "C" __global__ void attention(const float* q, int row0, int l, int t, int nh, int nkv,
                                     int hd, float scale, const float* kc, const float* vc,
                                     int cap, float* out) {
    int warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (warp >= l * nh) return;
    int i = warp / nh, h = warp % nh, kvh = h / (nh / nkv);
    const float* qr = q + ((size_t)(row0 + i) * nh + h) * hd;
    const float* ks = kc + (size_t)kvh * cap * hd;
    const float* vs = vc + (size_t)kvh * cap * hd;
    const int per = 8;  // head_dim <= 256
    float acc[per], qv[per];
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        qv[j] = d < hd ? qr[d] : 0.f;
        acc[j] = 0.f;
    }
    float m = -__int_as_float(0x7f800000), s = 0.f;  // -inf (NVRTC has no math.h)
    int visible = t - l + i + 1;
    for (int p = 0; p < visible; p++) {
        float dot = 0.f;
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d < hd) dot += qv[j] * ks[(size_t)p * hd + d];
        }
        float score = warp_sum(dot) * scale;
        float m2 = fmaxf(m, score);
        float corr = expf(m - m2), e = expf(score - m2);
        s = s * corr + e;
        for (int j = 0; j < per; j++) {
            int d = lane + 32 * j;
            if (d < hd) acc[j] = acc[j] * corr + e * vs[(size_t)p * hd + d];
        }
        m = m2;
    }
    float* o = out + ((size_t)(row0 + i) * nh + h) * hd;
    for (int j = 0; j < per; j++) {
        int d = lane + 32 * j;
        if (d < hd) o[d] = visible > 0 ? acc[j] / s : 0.f;
    }
}
