//! A synthetic model's tensors, derived from the architecture's own loader: the loader is run
//! against a recording weight source ([`crate::loader::requested_weights`]), and each weight
//! it asks for becomes a tensor of the plan. Architectures are thus described once, in
//! `models/`; what is left here is how mlx-lm would store each tensor (quantized or not, at
//! which width, in which float type) and how to initialise it.
//!
//! Initialisation gains: with one small scale on every matrix a random MoE routes almost
//! every token to the same few experts (`scripts/peers/routing_spread.py` measures the
//! spread). What keeps routing spread is a residual stream that stays dominated by the token's
//! own embedding: embeddings of RMS ~1, projections that *read* the normalised stream sized
//! for outputs of RMS ~1, and the projections that *write* into the residual stream
//! (attention output, expert down, GDN output) sized for small outputs, so 48 layers of random
//! updates do not wash the token identity out. `synth/tests.rs` measures the resulting spread.

use super::error::SynthError;
use super::plan::{Fill, Init, Plan};
use crate::config::ModelConfig;
use crate::weights::linear::Request;
use crate::weights::Dtype;
use serde_json::Value;

/// Architectures `synth` can write (every architecture the engine loads).
pub const MODEL_TYPES: &[&str] = &[
    "qwen3_moe",
    "qwen3_next",
    "qwen3_5",
    "qwen3_5_moe",
    "glm4_moe_lite",
    "glm4_moe",
    "olmoe",
    "mixtral",
    "qwen3",
    "llama",
];

/// Std of the embedding entries: the residual stream starts at RMS ~1.
const EMBED: Init = Init::Std(1.0);
/// Projections reading the normalised residual stream (q/k/v, gate/up, in_proj, routers,
/// lm_head): outputs of RMS ~1.
const READ: Init = Init::Gain(1.0);
/// Projections writing into the residual stream (o_proj, down_proj, out_proj): outputs of
/// RMS ~0.1, small next to the embedding.
const WRITE: Init = Init::Gain(0.1);

/// Adds every tensor of the model `config` describes to `plan`, in the order its loader
/// reads them.
pub fn plan(config: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| SynthError::Config("no \"model_type\" string".into()))?;
    if !MODEL_TYPES.contains(&model_type) {
        return Err(SynthError::Config(format!(
            "model_type {model_type:?} is not supported by synth (supported: {})",
            MODEL_TYPES.join(", ")
        )));
    }
    let bad = |e: &dyn std::fmt::Display| SynthError::Config(format!("{model_type}: {e}"));
    let cfg = ModelConfig::from_value(config.clone()).map_err(|e| bad(&e))?;
    let requests = crate::loader::requested_weights(&cfg).map_err(|e| bad(&e))?;
    let store = Storage::of(model_type);
    for r in requests {
        match r {
            Request::Linear {
                module,
                lead,
                out,
                inp,
                bias,
            } => {
                store.matrix(plan, &module, &lead, out, inp);
                if bias {
                    let float = plan.float.dtype();
                    let shape = [lead.as_slice(), &[out]].concat();
                    let fill = Fill::Normal {
                        mean: 0.0,
                        std: 0.02,
                    };
                    plan.raw(&format!("{module}.bias"), float, shape, fill);
                }
            }
            Request::Floats { name, shape } => store.floats(plan, &name, shape),
        }
    }
    Ok(())
}

/// How mlx-lm stores an architecture's tensors where they differ from the rule (every
/// `Linear` quantized at the model's width, everything else in its float type).
struct Storage {
    /// The router (`mlp.gate`) and shared-expert gate are kept at 8 bits (the model's
    /// `quant_predicate`: qwen3_moe and the Qwen hybrids).
    routers_8bit: bool,
    /// The router is GLM's `MoEGate`, not an `nn.Linear`: never quantized.
    router_unquantized: bool,
    /// `A_log` stays float32 (qwen3_5's `cast_predicate`).
    a_log_f32: bool,
}

impl Storage {
    fn of(model_type: &str) -> Storage {
        Storage {
            routers_8bit: matches!(
                model_type,
                "qwen3_moe" | "qwen3_next" | "qwen3_5" | "qwen3_5_moe"
            ),
            router_unquantized: matches!(model_type, "glm4_moe" | "glm4_moe_lite"),
            a_log_f32: matches!(model_type, "qwen3_5" | "qwen3_5_moe"),
        }
    }

    /// A weight matrix `[lead.., out, inp]` at `module`.
    fn matrix(&self, plan: &mut Plan, module: &str, lead: &[usize], out: usize, inp: usize) {
        let leaf = module.rsplit('.').next().unwrap_or(module);
        let router = leaf == "shared_expert_gate" || (leaf == "gate" && is_moe_module(module));
        if router && self.router_unquantized {
            let float = plan.float.dtype();
            let fill = Fill::Normal {
                mean: 0.0,
                std: 1.0 / (inp as f32).sqrt(),
            };
            plan.raw(&format!("{module}.weight"), float, vec![out, inp], fill);
            return;
        }
        let init = match leaf {
            "embed_tokens" => EMBED,
            "o_proj" | "down_proj" | "out_proj" => WRITE,
            _ => READ,
        };
        match lead {
            [] if router => plan.router(module, out, inp, init, self.routers_8bit),
            [] => plan.linear(module, out, inp, init),
            [n] => plan.stacked(module, *n, out, inp, init),
            _ => unreachable!("loaders stack weights over one axis"),
        }
    }

    /// A float parameter `name` of `shape`.
    fn floats(&self, plan: &mut Plan, name: &str, shape: Vec<usize>) {
        let float = plan.float.dtype();
        if let Some(norm) = name.strip_suffix(".weight").filter(|n| is_norm(n)) {
            plan.norm(norm, shape.iter().product());
        } else if name.ends_with(".conv1d.weight") {
            // Depthwise causal conv, MLX layout [C, K, 1]; never quantized.
            let std = 1.0 / (shape[1].max(1) as f32).sqrt();
            plan.raw(name, float, shape, Fill::Normal { mean: 0.0, std });
        } else if name.ends_with(".A_log") {
            // Per-head decay: A = exp(A_log) with A ~ U(1, 16) as the models initialise it.
            let dtype = if self.a_log_f32 { Dtype::F32 } else { float };
            plan.raw(name, dtype, shape, Fill::LnUniform { lo: 1.0, hi: 16.0 });
        } else if name.ends_with(".dt_bias") {
            // Around the initial value 1.0, varied so that a head-indexing mistake shows.
            plan.raw(name, float, shape, Fill::Uniform { lo: 0.5, hi: 1.5 });
        } else if name.ends_with(".e_score_correction_bias") {
            // GLM's selection bias: float32, small, only steers which experts are chosen.
            let fill = Fill::Normal {
                mean: 0.0,
                std: 0.01,
            };
            plan.raw(name, Dtype::F32, shape, fill);
        } else {
            unreachable!("no initialisation rule for the float tensor {name}")
        }
    }
}

/// Whether `module` (without `.weight`) is a normalisation layer.
fn is_norm(module: &str) -> bool {
    let leaf = module.rsplit('.').next().unwrap_or(module);
    leaf == "norm" || leaf.ends_with("_norm") || leaf.ends_with("layernorm")
}

/// Whether `module` is a MoE block's router (`…mlp.gate`, Mixtral's
/// `…block_sparse_moe.gate`), not a dense MLP's `gate_proj`.
fn is_moe_module(module: &str) -> bool {
    module.ends_with(".mlp.gate") || module.ends_with(".block_sparse_moe.gate")
}
