//! ggml's tensor types: ids as stored in GGUF, block sizes, and which ones moestream runs.

/// A tensor type of a GGUF file. Ids and block layouts: llama.cpp `ggml/include/ggml.h`
/// (`enum ggml_type`) and `ggml/src/ggml-common.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// A type this crate knows by name but does not run (IQ*, TQ*, Q8_1, Q8_K, MXFP4, the
    /// integer types): loading it is an error naming the tensor and the type.
    Unsupported(u32),
}

impl GgmlType {
    /// Every type moestream runs: the float types, then the block types.
    pub const RUNNABLE: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => GgmlType::Unsupported(other),
        }
    }

    /// llama.cpp's name of the type (`ggml_type_name`).
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Bf16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Unsupported(id) => match UNSUPPORTED_NAMES.iter().find(|(i, _)| *i == id) {
                Some((_, n)) => (*n).into(),
                None => format!("unknown type {id}"),
            },
        }
    }

    /// (elements per block, bytes per block); `None` for types that cannot be sized.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Unsupported(id) => {
                return UNSUPPORTED_SIZES
                    .iter()
                    .find(|(i, _, _)| *i == id)
                    .map(|&(_, e, b)| (e, b))
            }
        })
    }

    /// Bytes of `n` elements (`None` if `n` is not whole blocks or the type has no size).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (elems, bytes) = self.block()?;
        n.is_multiple_of(elems as u64)
            .then(|| n / elems as u64 * bytes as u64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
    }
}

/// Names of the types that are recognised but not run (`ggml.h`).
const UNSUPPORTED_NAMES: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// Block sizes of the unsupported types, so a file holding them can still be validated
/// (the tensor's extent checked) before the type is refused by name.
const UNSUPPORTED_SIZES: &[(u32, usize, usize)] = &[
    (9, 32, 36),
    (15, 256, 292),
    (16, 256, 66),
    (17, 256, 74),
    (18, 256, 98),
    (19, 256, 50),
    (20, 32, 18),
    (21, 256, 110),
    (22, 256, 82),
    (23, 256, 136),
    (24, 1, 1),
    (25, 1, 2),
    (26, 1, 4),
    (27, 1, 8),
    (28, 1, 8),
    (29, 256, 56),
    (34, 256, 54),
    (35, 256, 66),
    (39, 32, 17),
];
