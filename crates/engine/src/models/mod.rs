//! Architectures. Each file maps one `model_type`'s config and weight names onto the shared
//! decoder in [`transformer`]; the table below is the only place that lists them.

pub mod attention;
pub mod common;
pub mod delta_net;
pub mod exec;
pub mod ffn;
pub mod glm4_moe;
pub mod glm4_moe_lite;
pub mod glm_moe;
pub mod llama;
pub mod lookahead;
pub mod mixtral;
pub mod mla;
pub mod olmoe;
pub mod qwen3;
pub mod qwen3_5_moe;
pub mod qwen3_moe;
pub mod qwen3_next;
pub mod transformer;

use crate::backend::Cpu;
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::experts::streamed::{BudgetPlan, StreamOptions, StreamedExperts};
use crate::experts::{ExpertStore, ExpertWeights, ResidentExperts};
use crate::weights::WeightLoader;
pub use exec::{LogitRows, SeqStep};
pub use transformer::{ModelInfo, Transformer};

/// What an architecture loader needs besides config and weights.
pub struct BuildContext {
    /// The device the model will run on.
    pub dev: Cpu,
    /// Stream routed experts from disk (`None`: keep them resident in the mapping).
    pub stream: Option<StreamOptions>,
    /// How streaming spent the memory budget (set once, by `expert_store`).
    pub plan: std::sync::OnceLock<BudgetPlan>,
}

/// Bytes of cache one more token adds, f32, summed over the layers (keys and values of
/// attention layers, the latent and rotary key of MLA layers, nothing for recurrent ones).
pub fn kv_bytes_per_token(layers: &[transformer::Layer], attn: &attention::AttnConfig) -> u64 {
    let floats: usize = layers
        .iter()
        .map(|l| l.attn.cache_floats_per_token(attn))
        .sum();
    (floats * 4) as u64
}

/// Tokens of KV cache the memory budget reserves room for.
pub const KV_RESERVE_TOKENS: u64 = 8192;

impl BuildContext {
    /// The expert store for the routed experts of every layer (`None` for dense layers).
    /// Streaming fits its slots into the memory budget, counting the dense weights `w` has
    /// made resident and a KV reserve of `kv_bytes_per_token` x [`KV_RESERVE_TOKENS`].
    pub fn expert_store(
        &self,
        experts: Vec<Option<Vec<ExpertWeights>>>,
        w: &WeightLoader,
        kv_bytes_per_token: u64,
    ) -> Result<Box<dyn ExpertStore>, LoadError> {
        Ok(match self.stream {
            Some(opts) => {
                let per_slot = StreamedExperts::bytes_per_slot(&experts, opts.direct_io);
                let plan = opts
                    .plan(
                        w.owned_bytes() as u64,
                        kv_bytes_per_token * KV_RESERVE_TOKENS,
                        per_slot,
                    )
                    .map_err(LoadError::Budget)?;
                // A second store of the same build keeps the first plan (there is none).
                let _ = self.plan.set(plan);
                Box::new(StreamedExperts::new(
                    experts,
                    StreamOptions {
                        cache_slots: plan.slots,
                        ..opts
                    },
                ))
            }
            None => Box::new(ResidentExperts::new(experts)),
        })
    }
}

/// What an architecture file loads; [`BuildContext::assemble`] adds what every model shares
/// (the expert store, the device, default precision and fused SwiGLU).
pub struct DecoderParts {
    pub trunk: Trunk,
    pub layers: Vec<LayerParts>,
    pub attn: attention::AttnConfig,
    pub max_context: usize,
    pub eps: f32,
}

/// The parts of a decoder around its layers (see `common::trunk`).
pub struct Trunk {
    pub embed: crate::weights::Linear,
    pub norm: crate::weights::Floats,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<crate::weights::Linear>,
}

/// A decoder layer as an architecture file loads it: the layer, and the routed experts of
/// its MoE block (`None` for a dense one), which the model's expert store takes over.
pub struct LayerParts {
    pub layer: transformer::Layer,
    pub experts: Option<Vec<ExpertWeights>>,
}

impl BuildContext {
    pub fn assemble(
        &self,
        cfg: &ModelConfig,
        p: DecoderParts,
        w: &WeightLoader,
    ) -> Result<Transformer, LoadError> {
        let (layers, experts): (Vec<_>, Vec<_>) =
            p.layers.into_iter().map(|l| (l.layer, l.experts)).unzip();
        let kv = kv_bytes_per_token(&layers, &p.attn);
        Ok(Transformer {
            info: ModelInfo {
                model_type: cfg.model_type.clone(),
                vocab_size: p.trunk.embed.rows,
                hidden_size: p.trunk.embed.cols,
                n_layers: layers.len(),
                max_context: p.max_context,
                bytes_per_token: 0,
            },
            embed: p.trunk.embed,
            layers,
            norm: p.trunk.norm,
            lm_head: p.trunk.lm_head,
            eps: p.eps,
            attn: p.attn,
            experts: self.expert_store(experts, w, kv)?,
            dev: self.dev.clone(),
            precision: Default::default(),
            fused_swiglu: true,
            moe_top_k: None,
            scratch: Default::default(),
        })
    }
}

type Loader = fn(&ModelConfig, &WeightLoader, &BuildContext) -> Result<Transformer, LoadError>;

/// `model_type` -> loader.
const ARCHITECTURES: &[(&str, Loader)] = &[
    ("qwen3_moe", qwen3_moe::load),
    ("qwen3", qwen3::load),
    ("llama", llama::load),
    ("olmoe", olmoe::load),
    ("mixtral", mixtral::load),
    ("qwen3_next", qwen3_next::load),
    ("qwen3_5_moe", qwen3_5_moe::load),
    ("glm4_moe_lite", glm4_moe_lite::load),
    ("glm4_moe", glm4_moe::load),
];

pub fn supported() -> String {
    ARCHITECTURES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the model named by `cfg.model_type` from the weights.
pub fn build(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let (_, load) = ARCHITECTURES
        .iter()
        .find(|(n, _)| *n == cfg.model_type)
        .ok_or_else(|| LoadError::UnknownArchitecture(cfg.model_type.clone(), supported()))?;
    let mut model = load(cfg, w, ctx)?;
    model.info.bytes_per_token = bytes_per_token(&model);
    Ok(model)
}

/// The routed experts of the MoE block at `module` (e.g. `model.layers.3.mlp`): MLX's stacked
/// `switch_mlp.{gate,up,down}_proj`, or Hugging Face's per-expert `experts.{e}.*_proj` (what
/// mlx-lm's sanitize stacks; here each expert stays a view of its own tensors, no copy).
pub fn load_experts(
    w: &WeightLoader,
    module: &str,
    n: usize,
    hidden: usize,
    inter: usize,
) -> Result<Vec<ExpertWeights>, LoadError> {
    w.experts(|| experts_at(w, module, n, hidden, inter, HF_EXPERT_NAMES))
}

/// Per-expert Hugging Face projection names `[gate, up, down]` of most MoE checkpoints.
pub const HF_EXPERT_NAMES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// [`load_experts`] for checkpoints whose per-expert projections have other names (Mixtral's
/// `w1`/`w3`/`w2`, given as `[gate, up, down]`).
pub fn load_experts_named(
    w: &WeightLoader,
    module: &str,
    n: usize,
    hidden: usize,
    inter: usize,
    hf_names: [&str; 3],
) -> Result<Vec<ExpertWeights>, LoadError> {
    w.experts(|| experts_at(w, module, n, hidden, inter, hf_names))
}

fn experts_at(
    w: &WeightLoader,
    module: &str,
    n: usize,
    hidden: usize,
    inter: usize,
    [hf_gate, hf_up, hf_down]: [&str; 3],
) -> Result<Vec<ExpertWeights>, LoadError> {
    let stacked = format!("{module}.switch_mlp");
    if w.has(&format!("{stacked}.gate_proj")) || !w.has(&format!("{module}.experts.0.{hf_gate}")) {
        let gate = w.stacked(&format!("{stacked}.gate_proj"), n, inter, hidden)?;
        let up = w.stacked(&format!("{stacked}.up_proj"), n, inter, hidden)?;
        let down = w.stacked(&format!("{stacked}.down_proj"), n, hidden, inter)?;
        return Ok(gate
            .into_iter()
            .zip(up)
            .zip(down)
            .map(|((gate, up), down)| ExpertWeights { gate, up, down })
            .collect());
    }
    (0..n)
        .map(|e| {
            let p = format!("{module}.experts.{e}");
            Ok(ExpertWeights {
                gate: w.linear(&format!("{p}.{hf_gate}"), inter, hidden, false)?,
                up: w.linear(&format!("{p}.{hf_up}"), inter, hidden, false)?,
                down: w.linear(&format!("{p}.{hf_down}"), hidden, inter, false)?,
            })
        })
        .collect()
}

impl Transformer {
    /// Routes every token of every MoE layer to `k` experts (`None`: the config's
    /// `num_experts_per_tok`). Fewer experts read fewer bytes and change the output.
    pub fn set_moe_top_k(&mut self, k: Option<usize>) -> Result<(), String> {
        if let Some(k) = k {
            let most = self
                .layers
                .iter()
                .filter_map(|l| match &l.ffn {
                    ffn::FeedForward::Moe(m) => Some(m.n_experts),
                    ffn::FeedForward::Dense(_) => None,
                })
                .min()
                .ok_or("--moe-top-k: the model has no MoE layers")?;
            if k == 0 || k > most {
                return Err(format!(
                    "--moe-top-k {k} must be between 1 and the number of experts per layer ({most})"
                ));
            }
        }
        self.moe_top_k = k;
        self.info.bytes_per_token = bytes_per_token(self);
        Ok(())
    }

    /// The config's experts per token of the first MoE layer (`None` for a dense model).
    pub fn default_top_k(&self) -> Option<usize> {
        self.layers.iter().find_map(|l| match &l.ffn {
            ffn::FeedForward::Moe(m) => Some(m.top_k),
            ffn::FeedForward::Dense(_) => None,
        })
    }
}

/// Weight bytes one decoded token reads: every dense weight, `top_k` experts per MoE layer,
/// and one embedding row.
fn bytes_per_token(m: &Transformer) -> usize {
    use ffn::FeedForward;
    let mut total = m.head().bytes() + m.norm.bytes.len();
    use transformer::Mixer;
    let mlp = |d: &ffn::DenseMlp| d.gate_proj.bytes() + d.up_proj.bytes() + d.down_proj.bytes();
    for (i, l) in m.layers.iter().enumerate() {
        total += match &l.attn {
            Mixer::Attention(a) => [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
                .iter()
                .map(|p| p.bytes())
                .sum::<usize>(),
            Mixer::Mla(m) => m.bytes(),
            Mixer::DeltaNet(d) => d.bytes(),
        };
        total += l.input_norm.bytes.len() + l.post_norm.bytes.len();
        total += match &l.ffn {
            FeedForward::Dense(d) => mlp(d),
            FeedForward::Moe(moe) => {
                let shared = moe.shared.as_ref().map_or(0, |s| {
                    mlp(&s.mlp) + s.gate.as_ref().map_or(0, |g| g.bytes())
                });
                moe.router.bytes() + m.top_k(moe) * m.experts.expert_bytes(i) + shared
            }
        };
    }
    total + m.embed.bytes() / m.info.vocab_size.max(1)
}
