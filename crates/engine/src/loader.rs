//! Opening a model directory: config, weight files, architecture, checks.

use crate::backend::{Backend, Cpu, WeightLayout};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::experts::streamed::{BudgetPlan, StreamOptions};
use crate::models::{self, Transformer};
use crate::weights::{WeightLoader, WeightStore};
use moestream_kernels::Precision;
use moestream_kernels::ThreadPool;
use std::path::Path;
use std::sync::Arc;

/// What the loader reports while it works (for progress bars).
#[derive(Clone, Copy, Debug)]
pub enum LoadProgress {
    /// Weight files mapped and their headers checked: (done, total) files.
    Mapping(usize, usize),
    /// Pages read into memory: (done, total) bytes.
    Warming(usize, usize),
    /// GGUF tensors renamed and re-laid: (done, total) tensors.
    Converting(usize, usize),
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Threads for the kernels (default: all available cores).
    pub threads: Option<usize>,
    /// Read every weight page before the first token (predictable first-token latency).
    pub warm: bool,
    /// Arithmetic of the quantized matmuls.
    pub precision: Precision,
    /// Stream routed experts from disk instead of keeping them mapped.
    pub stream: Option<StreamOptions>,
    /// Keep 4-bit weights in the files' row-major layout instead of re-laying resident ones
    /// into the interleaved layout the int8 decode kernel is fastest on (a resident copy).
    /// `Precision::Exact` always keeps the row-major layout.
    pub row_major_weights: bool,
}

/// A loaded model plus what the loader noticed.
pub struct Loaded {
    pub model: Transformer,
    pub config: ModelConfig,
    /// Tensors in the files that the architecture does not use (reported, not fatal).
    pub unused_tensors: Vec<String>,
    pub weight_bytes: usize,
    /// With streaming: how the memory budget was spent.
    pub budget_plan: Option<BudgetPlan>,
    /// Bytes of 4-bit weights copied into the interleaved layout at load.
    pub interleaved_bytes: usize,
}

pub fn load_model(
    dir: &Path,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Loaded, LoadError> {
    let gguf = if crate::gguf::is_gguf(dir) {
        Some(crate::gguf::open(
            dir,
            opts.stream.is_some(),
            &mut |d, t| progress(LoadProgress::Converting(d, t)),
        )?)
    } else if !dir.is_dir() {
        return Err(LoadError::NoModelDir(dir.to_path_buf()));
    } else {
        None
    };
    let (config, store, gguf_names) = match gguf {
        Some(g) => (g.config, g.store, Some(g.names)),
        None => (
            ModelConfig::load(dir)?,
            WeightStore::open(dir, &mut |d, t| progress(LoadProgress::Mapping(d, t)))?,
            None,
        ),
    };
    let dev = Cpu::new(Arc::new(match opts.threads {
        Some(n) => ThreadPool::new(n),
        None => ThreadPool::with_default_threads(),
    }));
    // The backend says how it wants the weights laid out; `--row-major-weights` keeps the
    // files' layout whatever it says.
    let layout = match opts.row_major_weights {
        true => WeightLayout::default(),
        false => dev.weight_layout(opts.precision),
    };
    let loader = WeightLoader::new(&store, &config.quant)
        .owning_dense(opts.stream.is_some())
        .interleaving(layout.interleave_resident);
    let stream = opts.stream.map(|s| StreamOptions {
        interleave_slots: layout.interleave_slots,
        ..s
    });
    let ctx = models::BuildContext {
        dev,
        stream,
        plan: Default::default(),
    };
    let mut model = models::build(&config, &loader, &ctx).map_err(|e| match &gguf_names {
        Some(names) => names.explain(dir, e),
        None => e,
    })?;
    let budget_plan = ctx.plan.get().copied();
    model.precision = opts.precision;
    let unused_tensors = loader.unused();
    let interleaved_bytes = loader.interleaved_bytes();
    if opts.warm {
        store.warm(&mut |d, t| progress(LoadProgress::Warming(d, t)));
    }
    Ok(Loaded {
        model,
        config,
        unused_tensors,
        weight_bytes: store.total_bytes(),
        budget_plan,
        interleaved_bytes,
    })
}

/// The weights `config`'s architecture loader asks for (see [`WeightLoader::recording`]):
/// what a checkpoint of that config must hold, in the loader's own words.
pub fn requested_weights(
    config: &ModelConfig,
) -> Result<Vec<crate::weights::linear::Request>, LoadError> {
    let store = WeightStore::from_tensors(Default::default());
    let loader = WeightLoader::recording(&store, &config.quant);
    let ctx = models::BuildContext {
        dev: Cpu::new(Arc::new(ThreadPool::new(1))),
        stream: None,
        plan: Default::default(),
    };
    models::build(config, &loader, &ctx)?;
    Ok(loader.requests())
}
