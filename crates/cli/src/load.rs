//! Loading a model for any subcommand: the embedded default, warm-up policy, progress bar.

use crate::progress::LoadBar;
use crate::sys;
use anyhow::{bail, Context, Result};
use moestream_engine::backend::cuda::{to_cuda, Cuda};
use moestream_engine::experts::io::IoEngine;
use moestream_engine::experts::streamed::StreamOptions;
use moestream_engine::experts::Prefetch;
use moestream_engine::models::Transformer;
use moestream_engine::{Engine, LoadOptions};
use moestream_kernels::Precision;
use std::path::{Path, PathBuf};

/// The model the repository ships (random weights: its text is noise).
pub const EMBEDDED_MODEL: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-qwen3-moe");

/// Flags every model-running subcommand shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF file (`FILE.gguf`, or any part of a split `NAME-00001-of-0000N.gguf`) or
    /// a directory (mlx-community or Hugging Face safetensors). Default: the tiny
    /// random-weight model embedded in the repository.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// f32 activations in quantized matmuls (slower; reproduces mlx's float32 arithmetic).
    /// The default quantizes activations to int8 where a fast kernel exists.
    #[arg(long)]
    pub exact: bool,
    /// Kernel threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep 4-bit weights in the files' row-major layout. By default resident 4-bit weights
    /// are copied at load into a 16-row interleaved layout that the decode kernel reads at
    /// memory speed (same values; float summation order differs under the default int8
    /// activations). --exact always keeps the row-major layout.
    #[arg(long)]
    pub row_major_weights: bool,
    /// Keep dense weights resident and read routed experts from disk on demand, through a
    /// per-layer slot cache (for models larger than RAM).
    #[arg(long)]
    pub stream_experts: bool,
    /// Expert slots per MoE layer when streaming.
    #[arg(long, default_value_t = StreamOptions::default().cache_slots, requires = "stream_experts")]
    pub cache_slots: usize,
    /// Cap on what the engine holds when streaming (resident dense weights + expert slots +
    /// a KV reserve), e.g. 8G or 1500M; slots are reduced to fit. Default: 60% of RAM.
    #[arg(long, value_parser = parse_size, requires = "stream_experts")]
    pub memory_budget: Option<u64>,
    /// Expert reads in flight at once when streaming.
    #[arg(long, default_value_t = StreamOptions::default().io_depth, requires = "stream_experts")]
    pub io_depth: usize,
    /// Expert prefetch when streaming: none; prev (re-read the experts the previous token
    /// used in the next layer if they left the slots); lookahead (apply the next layer's
    /// router to this layer's hidden state and read its picks while this layer computes).
    /// Output is identical under every policy. Default chosen by measurement.
    #[arg(long, default_value = "lookahead", value_parser = parse_prefetch, requires = "stream_experts")]
    pub prefetch: Prefetch,
    /// Read experts with O_DIRECT: on, off, or auto (the default: on when the weights do
    /// not fit in the memory left to this process, counting a cgroup limit, so the page
    /// cache could only thrash; measured 1.6x faster decode than buffered reads in that
    /// case, while a model that fits is better served from the page cache). `--direct-io`
    /// alone means on.
    #[arg(long, default_value = "auto", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["auto", "on", "off"], requires = "stream_experts")]
    pub direct_io: String,
    /// I/O engine for expert reads: pread (a pool of --io-depth reader threads; measured
    /// fastest here), io-uring or auto (io_uring if the startup probe works; both fall back
    /// to the pread pool and say why when io_uring is unavailable).
    #[arg(long, default_value = "pread", value_parser = parse_io_engine, requires = "stream_experts")]
    pub io_engine: IoEngine,
    /// Draft model for speculative decoding (resident; must share the main model's
    /// tokenizer). The draft proposes --num-draft-tokens tokens, the model verifies them in
    /// one pass: the same output (greedy: the same tokens), faster when the draft is cheap
    /// and often right. With --stream-experts it usually loses (see BENCHMARKS.md).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Tokens the draft proposes per verification pass.
    #[arg(long, default_value_t = 4, requires = "draft_model")]
    pub num_draft_tokens: usize,
    /// Experts per token for every MoE layer instead of the config's num_experts_per_tok
    /// (fewer: faster, and the output changes; `validate --moe-top-k K` reports how much).
    #[arg(long)]
    pub moe_top_k: Option<usize>,
    /// Where the model runs: cpu, or cuda[:N] (NVIDIA GPU N, default 0; the CUDA libraries
    /// are loaded at run time). On the GPU every weight and routed expert is in its memory
    /// and the arithmetic is f32 (--exact's); streamed experts and a draft model are
    /// CPU-only for now.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceArg,
}

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<DeviceArg, String> {
    match s {
        "cpu" => Ok(DeviceArg::Cpu),
        "cuda" => Ok(DeviceArg::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
            _ => Err(format!("{s:?}: expected cpu, cuda or cuda:N")),
        },
    }
}

fn parse_prefetch(s: &str) -> Result<Prefetch, String> {
    s.parse()
}

fn parse_io_engine(s: &str) -> Result<IoEngine, String> {
    s.parse()
}

impl ModelArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        match &self.model {
            Some(d) => Ok(d.clone()),
            None => {
                let d = PathBuf::from(EMBEDDED_MODEL);
                if !d.is_dir() {
                    bail!("no --model given and the embedded model is not at {} (the binary was moved?)", d.display());
                }
                eprintln!("note: using the embedded tiny model (random weights: its text is noise); pass --model DIR for a real one");
                Ok(d)
            }
        }
    }

    /// The GPU `--device` names, opened before anything is loaded so that a machine without
    /// one fails at once (`None` for the CPU).
    pub fn gpu(&self) -> Result<Option<Cuda>> {
        let DeviceArg::Cuda(n) = self.device else {
            return Ok(None);
        };
        if self.stream_experts {
            bail!("--stream-experts is not supported with --device cuda yet");
        }
        if self.draft_model.is_some() {
            bail!("--draft-model is not supported with --device cuda yet");
        }
        Cuda::new(n)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--device cuda:{n}: {e}"))
    }

    /// The loaded CPU model moved onto `gpu`.
    pub fn to_gpu(engine: &Engine, gpu: Cuda) -> Result<Transformer<Cuda>> {
        let name = gpu.device_name().to_string();
        let model =
            to_cuda(engine.model(), gpu).map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
        eprintln!("device: {name} (weights and experts in GPU memory, f32 arithmetic)");
        Ok(model)
    }

    pub fn precision(&self) -> Precision {
        // The GPU computes in f32 and reads the files' row-major layout.
        if self.exact || self.device != DeviceArg::Cpu {
            Precision::Exact
        } else {
            Precision::Fast
        }
    }

    /// Loads the model, reading its weights into memory first when they fit comfortably.
    pub fn load(&self) -> Result<Engine> {
        let dir = self.dir()?;
        let weights_on_disk = dir_weight_bytes(&dir);
        // Reading every page up front only pays when everything fits; a streamed model's
        // experts must not be read through the mapping at all.
        let warm = !self.stream_experts
            && sys::mem_available_bytes().is_some_and(|avail| weights_on_disk < avail / 2);
        let (budget, budget_note) = match (self.memory_budget, sys::mem_total_bytes()) {
            (Some(b), _) => (Some(b), "given"),
            (None, Some(total)) => (Some(total / 10 * 6), "default: 60% of RAM"),
            (None, None) => (None, "none: RAM size unknown"),
        };
        let stream = self.stream_experts.then_some(StreamOptions {
            cache_slots: self.cache_slots,
            io_depth: self.io_depth,
            memory_budget: budget,
            prefetch: self.prefetch,
            direct_io: match self.direct_io.as_str() {
                "on" => true,
                "off" => false,
                _ => mem_limit_bytes().is_some_and(|limit| weights_on_disk > limit),
            },
            io_engine: self.io_engine,
            // Decided by the loader, which knows the kernels and the weight layout.
            interleave_slots: false,
        });
        if self.cache_slots == 0 || self.io_depth == 0 {
            bail!("--cache-slots and --io-depth must be at least 1");
        }
        let mut bar = LoadBar::new();
        let opts = LoadOptions {
            threads: self.threads,
            warm,
            precision: self.precision(),
            stream,
            row_major_weights: self.row_major_weights || self.device != DeviceArg::Cpu,
        };
        let mut engine = Engine::load(&dir, &opts, &mut |p| bar.update(p))
            .with_context(|| format!("loading {}", dir.display()))?;
        bar.finish();
        if let Some(k) = self.moe_top_k {
            engine
                .loaded
                .model
                .set_moe_top_k(Some(k))
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "MoE top-k: {k} experts per token (config: {})",
                engine.model().default_top_k().unwrap_or(k)
            );
        }
        if let Some(draft_dir) = &self.draft_model {
            self.load_draft(&mut engine, &dir, draft_dir)?;
        }
        if let Some(p) = engine.loaded.budget_plan {
            let gb = |b: u64| b as f64 / 1e9;
            eprintln!(
                "streaming experts: memory budget {} ({budget_note}): dense {:.2} GB + KV reserve {:.2} GB + {} slots/layer x {:.2} GB = {:.2} GB{}",
                p.budget.map_or("none".into(), |b| format!("{:.2} GB", gb(b))),
                gb(p.dense_bytes),
                gb(p.kv_reserve),
                p.slots,
                gb(p.bytes_per_slot),
                gb(p.total()),
                if p.slots < p.slots_requested {
                    format!(" (slots lowered from {} to fit)", p.slots_requested)
                } else {
                    String::new()
                }
            );
        }
        if self.stream_experts {
            if let Some(d) = engine.model().experts.describe() {
                eprintln!("streaming experts: {d}");
            }
        }
        if let Some(first) = engine.loaded.unused_tensors.first() {
            eprintln!(
                "warning: {} tensors in the model files are not used (first: {first})",
                engine.loaded.unused_tensors.len()
            );
        }
        Ok(engine)
    }
}

impl ModelArgs {
    /// Loads the draft model (resident, warmed when it fits) and checks its tokenizer.
    fn load_draft(&self, engine: &mut Engine, dir: &Path, draft_dir: &Path) -> Result<()> {
        let warm =
            sys::mem_available_bytes().is_some_and(|avail| dir_weight_bytes(draft_dir) < avail / 4);
        let opts = LoadOptions {
            threads: self.threads,
            warm,
            precision: self.precision(),
            stream: None,
            row_major_weights: self.row_major_weights,
        };
        let mut bar = LoadBar::new();
        engine
            .load_draft(dir, draft_dir, self.num_draft_tokens, &opts, &mut |p| {
                bar.update(p)
            })
            .with_context(|| format!("loading the draft model {}", draft_dir.display()))?;
        bar.finish();
        eprintln!(
            "speculative decoding: draft {} ({}), {} tokens per round",
            draft_dir.display(),
            engine
                .draft
                .as_ref()
                .map_or("", |d| d.model.info.model_type.as_str()),
            self.num_draft_tokens
        );
        if self.stream_experts {
            eprintln!(
                "warning: speculative decoding with --stream-experts: each verified position routes to its own experts, so a round reads the union of their experts from disk; measured slower than decoding without a draft (BENCHMARKS.md)"
            );
        }
        Ok(())
    }
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024; `B`/`iB` allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 8G, 1500M or 1073741824"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("{s:?} must be a positive size"));
    }
    Ok((v * mult as f64) as u64)
}

/// Bytes of `*.safetensors` files in `dir`, or of the file for a GGUF model (0 if
/// unreadable: the loader reports that).
fn dir_weight_bytes(dir: &Path) -> u64 {
    if dir.is_file() {
        return std::fs::metadata(dir).map_or(0, |m| m.len());
    }
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Memory this process may use: `MemAvailable`, or less under a cgroup memory limit (v1
/// `memory.limit_in_bytes` or v2 `memory.max` of the process's cgroup, page cache included,
/// minus what the cgroup already uses).
fn mem_limit_bytes() -> Option<u64> {
    let avail = sys::mem_available_bytes()?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let left = cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        let (root, limit, usage) = match ctrl {
            "memory" => (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            ),
            "" => ("/sys/fs/cgroup", "memory.max", "memory.current"),
            _ => return None,
        };
        let dir = Path::new(root).join(path.trim_start_matches('/'));
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(read(limit)?.saturating_sub(read(usage).unwrap_or(0)))
    });
    Some(left.map_or(avail, |l| l.min(avail)))
}
