//! The int8 activation format: one activation row quantized in blocks of [`BLOCK`] values,
//! with the exact f32 sums the bias terms need (see the module doc of [`super`]).

/// Activation block length (divides every MLX group size: 32, 64, 128).
pub const BLOCK: usize = 32;

/// Group sizes whose per-group activation sums are precomputed (`GROUP_SIZES[k] = 32 << k`).
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// Index `k` of `group_size` in [`GROUP_SIZES`] (the rows' per-group sums to use).
pub fn group_index(group_size: usize) -> Option<usize> {
    GROUP_SIZES.iter().position(|&g| g == group_size)
}

/// One activation row quantized to int8 blocks, with the exact sums the bias terms need.
#[derive(Clone, Debug, Default)]
pub struct QuantizedRow {
    /// Values in natural order (for 8-bit weights).
    pub natural: Vec<i8>,
    /// Values reordered per 128-value chunk as [even indices | odd indices], matching the
    /// low/high nibbles of 4-bit words (for 4-bit weights).
    pub nibble_order: Vec<i8>,
    /// Block scales `d_b`.
    pub scale: Vec<f32>,
    /// Block sums of the int8 codes `Σ qx_b` (kernels that must run 8-bit weights as signed
    /// `q - 128` add `128 Σ qx_b` back, exactly, in integers).
    pub qsum: Vec<i32>,
    /// Block scales laid out as the row-major AVX-512 4-bit kernel's lanes: per 128-value
    /// chunk, 16 lanes where lanes 4j..4j+3 hold `d` of the chunk's block j.
    pub d_spread: Vec<f32>,
    /// Per group size (index k for `32 << k`): exact f32 sums of `x` over each group.
    pub group_sum: [Vec<f32>; 3],
    /// Per group size: `Σ_{b∈g} (sum_b - d_b Σ qx_b)`, what int8 rounding lost of each
    /// group's sum (see [`super::dot_reference`] for how it is used).
    pub group_resid: [Vec<f32>; 3],
}

impl QuantizedRow {
    /// Quantizes `x` (length a multiple of [`BLOCK`]) into `self` block by block with
    /// `quantize` (the dispatcher's `block_quantizer`), reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], quantize: BlockQuantizer) {
        let n = x.len();
        debug_assert_eq!(n % BLOCK, 0);
        self.natural.resize(n, 0);
        self.nibble_order.resize(n, 0);
        self.scale.resize(n / BLOCK, 0.0);
        self.qsum.resize(n / BLOCK, 0);
        for ((g, sums), resids) in GROUP_SIZES
            .iter()
            .zip(&mut self.group_sum)
            .zip(&mut self.group_resid)
        {
            sums.clear();
            sums.resize(n / g, 0.0);
            resids.clear();
            resids.resize(n / g, 0.0);
        }
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let (d, sum, qsum) = quantize(xb, &mut self.natural[b * BLOCK..(b + 1) * BLOCK]);
            self.scale[b] = d;
            self.qsum[b] = qsum;
            let resid = sum - d * qsum as f32;
            for ((gs, sums), resids) in GROUP_SIZES
                .iter()
                .zip(&mut self.group_sum)
                .zip(&mut self.group_resid)
            {
                let g = b * BLOCK / gs;
                if let (Some(s), Some(r)) = (sums.get_mut(g), resids.get_mut(g)) {
                    *s += sum;
                    *r += resid;
                }
            }
        }
        self.d_spread.clear();
        self.d_spread
            .extend(self.scale.iter().flat_map(|&d| [d; 4]));
        // Within each chunk of 128 values, even positions first, then odd ones. A tail chunk
        // shorter than 128 (n not a multiple of 128) uses the same rule over its length.
        for (src, dst) in self
            .natural
            .chunks(128)
            .zip(self.nibble_order.chunks_mut(128))
        {
            let half = src.len() / 2;
            for i in 0..half {
                dst[i] = src[2 * i];
                dst[half + i] = src[2 * i + 1];
            }
        }
    }
}

/// Quantizes one block of [`BLOCK`] values to int8; returns `(d, Σx, Σq)`.
pub type BlockQuantizer = fn(&[f32], &mut [i8]) -> (f32, f32, i32);

/// The scalar reference of block quantization: `q = round_half_even(x / d)`,
/// `d = max|x| / 127`.
pub fn quantize_block_scalar(xb: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qsum = 0i32;
    for (q, &v) in q.iter_mut().zip(xb) {
        *q = (v * inv).round_ties_even() as i8;
        qsum += *q as i32;
    }
    (d, xb.iter().sum(), qsum)
}

/// `N` activation rows as raw pointers to the arrays the interleaved kernels read (the codes
/// in nibble order, the block scales, the per-group sums and residuals for group-size index
/// `k`), taken once per pass instead of through the rows for every word.
pub(super) struct RowPtrs<const N: usize> {
    pub q: [*const i8; N],
    pub d: [*const f32; N],
    pub sum: [*const f32; N],
    pub resid: [*const f32; N],
}

impl<const N: usize> RowPtrs<N> {
    #[inline(always)]
    pub fn new(x: &[&QuantizedRow; N], k: usize) -> Self {
        RowPtrs {
            q: std::array::from_fn(|t| x[t].nibble_order.as_ptr()),
            d: std::array::from_fn(|t| x[t].scale.as_ptr()),
            sum: std::array::from_fn(|t| x[t].group_sum[k].as_ptr()),
            resid: std::array::from_fn(|t| x[t].group_resid[k].as_ptr()),
        }
    }
}
