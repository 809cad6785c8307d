//! The list of tensors a synthetic model holds: names, dtypes, shapes, and how each one's
//! bytes are generated. Architecture files describe modules through [`Plan`]; it decides,
//! as mlx-lm's `quantize_model` does, which modules are quantized and with what parameters.

use crate::config::QuantParams;
use crate::weights::Dtype;

/// Float type of the unquantized parameters, scales and biases (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    Bf16,
    F16,
    F32,
}

impl FloatType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Some(FloatType::Bf16),
            "f16" | "fp16" | "float16" => Some(FloatType::F16),
            "f32" | "fp32" | "float32" => Some(FloatType::F32),
            _ => None,
        }
    }

    pub fn dtype(self) -> Dtype {
        match self {
            FloatType::Bf16 => Dtype::Bf16,
            FloatType::F16 => Dtype::F16,
            FloatType::F32 => Dtype::F32,
        }
    }

    /// The name config.json's `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::Bf16 => "bfloat16",
            FloatType::F16 => "float16",
            FloatType::F32 => "float32",
        }
    }
}

/// Default affine quantization of the model (`--bits`, `--group-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quant {
    pub bits: u32,
    pub group_size: usize,
}

/// What mlx-lm's quant_predicate forces routers to: `{"group_size": 64, "bits": 8}`.
pub const ROUTER_8BIT: QuantParams = QuantParams {
    group_size: 64,
    bits: 8,
};

/// How a tensor's values are generated. Quantized weights are random codes rather than
/// quantized floats: every bit pattern is a valid code, and skipping a quantizer keeps
/// writing at disk speed.
#[derive(Clone, Debug, PartialEq)]
pub enum Fill {
    /// Uniformly random bits (packed quantized codes).
    Bits,
    /// Affine scales giving dequantized entries of standard deviation about `std`.
    Scales {
        std: f32,
        bits: u32,
    },
    /// The biases that go with the scales of tensor `scales` (regenerated from its seed):
    /// they centre each group on zero, plus a little noise.
    Biases {
        std: f32,
        bits: u32,
        scales: String,
    },
    Normal {
        mean: f32,
        std: f32,
    },
    Uniform {
        lo: f32,
        hi: f32,
    },
    /// `ln(u)` with `u` uniform in `[lo, hi)` (how Gated DeltaNet initialises `A_log`).
    LnUniform {
        lo: f32,
        hi: f32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

impl TensorSpec {
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// How a weight matrix is initialised.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Entries of std `gain / sqrt(fan_in)`: a unit-RMS input gives outputs of RMS ~`gain`.
    Gain(f32),
    /// Entries of this std (embeddings: each row is what the residual stream starts from).
    Std(f32),
}

impl Init {
    fn std(self, fan_in: usize) -> f32 {
        match self {
            Init::Gain(g) => g / (fan_in.max(1) as f32).sqrt(),
            Init::Std(s) => s,
        }
    }
}

/// Tensors of a model in the order mlx-lm would save them, plus what config.json must say
/// about their quantization.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tensors: Vec<TensorSpec>,
    /// Modules quantized with other parameters than the default, by module path.
    pub overrides: Vec<(String, QuantParams)>,
    /// Parameter count with quantized weights counted unpacked and scales/biases not
    /// counted (mlx-lm's `total_parameters`).
    pub parameters: u64,
    pub quant: Option<Quant>,
    pub float: FloatType,
}

impl Plan {
    pub fn new(quant: Option<Quant>, float: FloatType) -> Self {
        Plan {
            tensors: Vec::new(),
            overrides: Vec::new(),
            parameters: 0,
            quant,
            float,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorSpec::bytes).sum()
    }

    /// A `Linear` or `Embedding` weight `[out, fan_in]` at module path `path`.
    pub fn linear(&mut self, path: &str, out: usize, fan_in: usize, init: Init) {
        self.matrix(path, &[out], fan_in, init, None);
    }

    /// A router the model's quant_predicate keeps at 8 bits when `eight_bit`.
    pub fn router(&mut self, path: &str, out: usize, fan_in: usize, init: Init, eight_bit: bool) {
        let force = eight_bit.then_some(ROUTER_8BIT);
        self.matrix(path, &[out], fan_in, init, force);
    }

    /// A stacked weight `[lead, out, fan_in]`: `SwitchLinear` experts or an MLA `MultiLinear`.
    pub fn stacked(&mut self, path: &str, lead: usize, out: usize, fan_in: usize, init: Init) {
        self.matrix(path, &[lead, out], fan_in, init, None);
    }

    /// An RMSNorm weight (ones, as initialised; MLX files store the weight used as is).
    pub fn norm(&mut self, path: &str, len: usize) {
        let dtype = self.float.dtype();
        self.raw(
            &format!("{path}.weight"),
            dtype,
            vec![len],
            Fill::Normal {
                mean: 1.0,
                std: 0.0,
            },
        );
    }

    /// A parameter that is never quantized, with an explicit dtype and fill.
    pub fn raw(&mut self, name: &str, dtype: Dtype, shape: Vec<usize>, fill: Fill) {
        self.parameters += shape.iter().product::<usize>() as u64;
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dtype,
            shape,
            fill,
        });
    }

    /// mlx-lm quantizes a module iff its last weight dimension is divisible by the default
    /// group size; the predicate's override (if any) then chooses bits and group size.
    fn matrix(
        &mut self,
        path: &str,
        lead: &[usize],
        fan_in: usize,
        init: Init,
        force: Option<QuantParams>,
    ) {
        let std = init.std(fan_in);
        let rows: usize = lead.iter().product();
        self.parameters += (rows * fan_in) as u64;
        let float = self.float.dtype();
        let params = match self.quant {
            Some(q) if fan_in.is_multiple_of(q.group_size) => force.unwrap_or(QuantParams {
                group_size: q.group_size,
                bits: q.bits,
            }),
            _ => {
                let mut shape = lead.to_vec();
                shape.push(fan_in);
                let fill = Fill::Normal { mean: 0.0, std };
                self.push(format!("{path}.weight"), float, shape, fill);
                return;
            }
        };
        if force.is_some() {
            self.overrides.push((path.to_string(), params));
        }
        let (g, bits) = (params.group_size, params.bits);
        let with_last = |last: usize| {
            let mut s = lead.to_vec();
            s.push(last);
            s
        };
        let scales = format!("{path}.scales");
        self.push(
            format!("{path}.weight"),
            Dtype::U32,
            with_last(fan_in * bits as usize / 32),
            Fill::Bits,
        );
        self.push(
            scales.clone(),
            float,
            with_last(fan_in / g),
            Fill::Scales { std, bits },
        );
        self.push(
            format!("{path}.biases"),
            float,
            with_last(fan_in / g),
            Fill::Biases { std, bits, scales },
        );
    }

    fn push(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, fill: Fill) {
        self.tensors.push(TensorSpec {
            name,
            dtype,
            shape,
            fill,
        });
    }
}
