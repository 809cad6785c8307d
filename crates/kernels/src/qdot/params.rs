//! How the 4-bit kernels reach a matrix's scales and biases: as raw pointers of a dtype
//! fixed at compile time, so each kernel widens them in registers (bf16 is a shift, f16 a
//! conversion, f32 a load) instead of copying them to f32 first.

/// The dtype of a matrix's scales and biases, as a const parameter of the kernels.
pub const BF16: u8 = 0;
pub const F16: u8 = 1;
pub const F32: u8 = 2;

/// Bytes per scale or bias of dtype `DT`.
#[inline(always)]
pub const fn size_of<const DT: u8>() -> usize {
    if DT == F32 {
        4
    } else {
        2
    }
}

/// Runs `$call` with the scale/bias dtype as a const `$dt` and byte pointers `$s`/`$b` at
/// item `$first` of `$w`'s scales and biases (`$len` items are used). Mixed dtypes (MLX
/// never writes them) go through f32 copies.
macro_rules! with_params {
    ($w:expr, $first:expr, $len:expr, |$dt:ident, $s:ident, $b:ident| $call:expr) => {{
        use $crate::matrix::FloatSlice;
        let first = $first;
        match ($w.scales, $w.biases) {
            (FloatSlice::Bf16(s), FloatSlice::Bf16(b)) => {
                const $dt: u8 = $crate::qdot::params::BF16;
                let ($s, $b) = (
                    s[first..].as_ptr() as *const u8,
                    b[first..].as_ptr() as *const u8,
                );
                $call
            }
            (FloatSlice::F16(s), FloatSlice::F16(b)) => {
                const $dt: u8 = $crate::qdot::params::F16;
                let ($s, $b) = (
                    s[first..].as_ptr() as *const u8,
                    b[first..].as_ptr() as *const u8,
                );
                $call
            }
            (FloatSlice::F32(s), FloatSlice::F32(b)) => {
                const $dt: u8 = $crate::qdot::params::F32;
                let ($s, $b) = (
                    s[first..].as_ptr() as *const u8,
                    b[first..].as_ptr() as *const u8,
                );
                $call
            }
            (s, b) => {
                const $dt: u8 = $crate::qdot::params::F32;
                let (mut sf, mut bf) = (vec![0f32; $len], vec![0f32; $len]);
                s.read_into(first, &mut sf);
                b.read_into(first, &mut bf);
                let ($s, $b) = (sf.as_ptr() as *const u8, bf.as_ptr() as *const u8);
                $call
            }
        }
    }};
}
pub(crate) use with_params;

/// Declares `pub unsafe fn $name<N, DT>`, a row-group kernel entry point compiled under
/// `$features` that runs `$body::<N, DT, $flag>`: families sharing one kernel body (AVX2 and
/// AVX-VNNI; NEON and dotprod) differ only in the target features their entry points enable.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! row_group_entry {
    ($(#[$doc:meta])* $name:ident, $features:literal, $body:ident::<$flag:literal>) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const N: usize, const DT: u8>(
            w: &$crate::matrix::QuantMatrix,
            rg: usize,
            scales: *const u8,
            biases: *const u8,
            x: [&$crate::qdot::QuantizedRow; N],
            k: usize,
        ) -> [[f32; 16]; N] {
            $body::<N, DT, $flag>(w, rg, scales, biases, x, k)
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use row_group_entry;

/// Declares `pub unsafe fn $name`, an 8-bit row kernel entry point compiled under
/// `$features` that runs `$body::<$flag>` (see [`row_group_entry`]).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! dot_q8_entry {
    ($(#[$doc:meta])* $name:ident, $features:literal, $body:ident::<$flag:literal>) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(row: &[u32], qx: &[i8], qsum: &[i32], s: &[f32], d: &[f32]) -> f32 {
            $body::<$flag>(row, qx, qsum, s, d)
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use dot_q8_entry;
