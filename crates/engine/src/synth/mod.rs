//! `synth`: random-weight models in the exact mlx-community format, at real shapes.
//!
//! What a run writes is what mlx-lm's `save_model` writes for the same architecture:
//! `config.json` with `quantization` and an identical `quantization_config` (including the
//! per-module 8-bit router overrides of the model's quant_predicate), tensors under their
//! MLX names (U32 packed codes with scales/biases in the chosen float type, float norms,
//! float32 where mlx-lm's cast_predicate keeps it), shards of at most 5 GiB of tensor data
//! (`model.safetensors` when one suffices, else `model-0000i-of-0000N.safetensors`) with
//! safetensors metadata `{"format": "mlx"}`, and `model.safetensors.index.json`. Plus the
//! repository's small test tokenizer and a README saying the weights are random.
//!
//! Nothing is held in memory: each shard's header is written first (all shapes are known),
//! then every tensor's bytes are generated and written in chunks.
//!
//! `quant: None` writes an unquantized model (weights in the float type, no quantization
//! block), like `mlx_lm.convert` without `-q`.

mod assets;
mod config_json;
mod derive;
mod disk;
mod error;
mod fill;
mod overlap;
mod plan;
mod presets;
mod shards;
mod writer;

#[cfg(test)]
mod tests;

pub use derive::MODEL_TYPES;
pub use error::SynthError;
pub use plan::{Fill, FloatType, Plan, Quant, TensorSpec};
pub use presets::{Preset, PRESETS};
pub use shards::{Shard, MAX_SHARD_BYTES};

use fill::Filler;
use serde_json::Value;
use std::path::{Path, PathBuf};
use writer::StreamWriter;

/// Where the model's config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// One of [`PRESETS`], by name.
    Preset(String),
    /// Any supported config.json (its old quantization block is dropped).
    Config { label: String, config: Value },
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub source: Source,
    /// `None` writes float weights.
    pub quant: Option<Quant>,
    pub float: FloatType,
    /// Overrides `num_hidden_layers` (quick runs at real layer shapes).
    pub layers: Option<usize>,
    pub seed: u64,
    /// Most tensor bytes per shard (mlx-lm: 5 GiB).
    pub max_shard_bytes: u64,
}

impl SynthOptions {
    /// mlx-community's usual format: 4-bit affine, group 64, bfloat16; seed 0.
    pub fn new(source: Source) -> Self {
        SynthOptions {
            source,
            quant: Some(Quant {
                bits: 4,
                group_size: 64,
            }),
            float: FloatType::Bf16,
            layers: None,
            seed: 0,
            max_shard_bytes: MAX_SHARD_BYTES,
        }
    }
}

/// A model ready to be written: its config.json, tensors and files.
#[derive(Clone, Debug)]
pub struct SynthModel {
    pub label: String,
    pub config: Value,
    pub plan: Plan,
    pub shards: Vec<Shard>,
    pub seed: u64,
}

impl SynthModel {
    pub fn model_type(&self) -> &str {
        self.config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Bytes of tensor data (`metadata.total_size` of the index).
    pub fn tensor_bytes(&self) -> u64 {
        self.plan.total_bytes()
    }

    /// Bytes of all shard files, headers included.
    pub fn shard_file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file_bytes).sum()
    }

    fn quant_summary(&self) -> String {
        match self.plan.quant {
            Some(q) => format!(
                "affine {}-bit, group {}, {} scales/biases{}",
                q.bits,
                q.group_size,
                self.plan.float.torch_name(),
                if self.plan.overrides.is_empty() {
                    ""
                } else {
                    "; routers 8-bit group 64"
                }
            ),
            None => format!("none ({})", self.plan.float.torch_name()),
        }
    }
}

/// Resolves the config and lays out every tensor and shard; writes nothing.
pub fn build(opts: &SynthOptions) -> Result<SynthModel, SynthError> {
    if let Some(q) = opts.quant {
        if ![2, 3, 4, 5, 6, 8].contains(&q.bits) {
            return Err(SynthError::BadOption(format!(
                "--bits {} is not an MLX affine width (2, 3, 4, 5, 6, 8; 0 = unquantized)",
                q.bits
            )));
        }
        if ![32, 64, 128].contains(&q.group_size) {
            return Err(SynthError::BadOption(format!(
                "--group-size {} is not one MLX supports (32, 64, 128)",
                q.group_size
            )));
        }
    }
    if opts.max_shard_bytes == 0 {
        return Err(SynthError::BadOption("shard size limit is 0".into()));
    }
    let (label, mut config) = match &opts.source {
        Source::Preset(name) => {
            let p = presets::find(name)
                .ok_or_else(|| SynthError::UnknownPreset(name.clone(), presets::names()))?;
            (p.name.to_string(), (p.config)())
        }
        Source::Config { label, config } => (label.clone(), config.clone()),
    };
    config_json::strip(&mut config);
    if let Some(n) = opts.layers {
        config_json::set_layers(&mut config, n)?;
    }
    let mut plan = Plan::new(opts.quant, opts.float);
    derive::plan(&config, &mut plan)?;
    let config = config_json::finish(config, &plan);
    let shards = shards::split(&plan, opts.max_shard_bytes);
    Ok(SynthModel {
        label,
        config,
        plan,
        shards,
        seed: opts.seed,
    })
}

/// What a finished run wrote.
#[derive(Clone, Debug)]
pub struct SynthReport {
    /// Every file written, config.json last.
    pub files: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
}

/// Bytes generated and written per step; a multiple of 8, so packed words never straddle
/// two chunks.
const CHUNK: usize = 8 << 20;

/// Space left untouched on the target filesystem beyond what the model needs.
const FREE_MARGIN: u64 = 64 << 20;

/// Writes `model` into `out` (created if missing). Refuses a directory that already holds
/// a config.json unless `force`; under `force`, weight files of the old model that this run
/// does not overwrite are removed. `progress(done, total)` counts tensor bytes.
/// config.json is written last, so an interrupted run never looks like a complete model.
pub fn write(
    model: &SynthModel,
    out: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SynthReport, SynthError> {
    disk::check_target(out, force)?;
    let config = config_json::pretty(&model.config);
    let index = config_json::pretty(&shards::index_json(&model.plan, &model.shards));
    let readme = assets::readme(&assets::ReadmeFacts {
        source: &model.label,
        model_type: model.model_type(),
        quantization: model.quant_summary(),
        seed: model.seed,
        total_bytes: model.tensor_bytes(),
        parameters: model.plan.parameters,
    });
    let mut names: Vec<&str> = model.shards.iter().map(|s| s.file.as_str()).collect();
    names.push("model.safetensors.index.json");
    let stale = disk::stale_weight_files(out, &names);
    let mut ours: Vec<&str> = names.clone();
    ours.push("config.json");
    ours.push("README.md");
    ours.extend(assets::TOKENIZER_FILES.iter().map(|(n, _)| *n));
    let replaced: Vec<PathBuf> = ours.iter().map(|n| out.join(n)).collect();
    let reclaimed = disk::existing_bytes(replaced.iter().chain(&stale).map(PathBuf::as_path));
    let need = model.shard_file_bytes()
        + index.len() as u64
        + config.len() as u64
        + assets::bytes(&readme);
    let free = disk::free_bytes(out).map_err(|e| SynthError::io(out, e))?;
    if need.saturating_sub(reclaimed) + FREE_MARGIN > free {
        return Err(SynthError::NoSpace {
            path: out.to_path_buf(),
            need,
            have: free,
        });
    }

    std::fs::create_dir_all(out).map_err(|e| SynthError::io(out, e))?;
    let old_config = out.join("config.json");
    if old_config.exists() {
        std::fs::remove_file(&old_config).map_err(|e| SynthError::io(&old_config, e))?;
    }
    for p in &stale {
        std::fs::remove_file(p).map_err(|e| SynthError::io(p, e))?;
    }
    let mut files = assets::write(out, &readme)?;
    let total = model.tensor_bytes();
    let mut done = 0u64;
    for shard in &model.shards {
        let path = out.join(&shard.file);
        write_shard(model, shard, &path, &mut |n| {
            done += n;
            progress(done, total);
        })?;
        files.push(path);
    }
    for (name, bytes) in [
        ("model.safetensors.index.json", &index),
        ("config.json", &config),
    ] {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| SynthError::io(&p, e))?;
        files.push(p);
    }
    Ok(SynthReport { files, bytes: need })
}

/// Streams one shard: header, then each tensor generated chunk by chunk on a helper
/// thread while this one writes.
fn write_shard(
    model: &SynthModel,
    shard: &Shard,
    path: &Path,
    advanced: &mut dyn FnMut(u64),
) -> Result<(), SynthError> {
    let io = |e: std::io::Error| SynthError::io(path, e);
    let tensors = &model.plan.tensors;
    let entries = shards::entries(tensors, &shard.tensors);
    let mut w = StreamWriter::create(path, &entries, shards::METADATA).map_err(io)?;
    let mut order = shard.tensors.iter().map(|&i| &tensors[i]);
    // The tensor being generated and its bytes still to come; each chunk holds bytes of
    // one tensor only.
    let mut current: Option<(Filler, u64)> = None;
    let produce = |buf: &mut [u8]| loop {
        match &mut current {
            Some((filler, left)) if *left > 0 => {
                let n = (*left).min(buf.len() as u64) as usize;
                filler.fill(&mut buf[..n]);
                *left -= n as u64;
                return Some(n);
            }
            _ => {
                let t = order.next()?;
                current = Some((Filler::new(t, model.seed), t.bytes()));
            }
        }
    };
    overlap::overlapped(CHUNK, produce, |data| {
        w.write(data).map_err(io)?;
        advanced(data.len() as u64);
        Ok(())
    })?;
    w.finish().map_err(io)
}
