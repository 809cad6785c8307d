//! Splitting tensors into shard files and the `model.safetensors.index.json` that maps them,
//! as mlx-lm's `save_model` does.

use super::plan::{Plan, TensorSpec};
use super::writer::{file_size, Entry};
use serde_json::{json, Map, Value};

/// mlx-lm's `MAX_FILE_SIZE_GB` (5 << 30 bytes of tensor data per shard).
pub const MAX_SHARD_BYTES: u64 = 5 << 30;

/// Safetensors metadata mlx writes into every shard.
pub const METADATA: &[(&str, &str)] = &[("format", "mlx")];

/// One output file: its name and its tensors (indices into the plan) in data order.
#[derive(Clone, Debug)]
pub struct Shard {
    pub file: String,
    pub tensors: Vec<usize>,
    /// Size of the whole file, header included.
    pub file_bytes: u64,
}

/// Cuts `plan.tensors` (in save order) into shards of at most `max` data bytes, starting a
/// new shard when the next tensor would not fit (a tensor never spans shards). Names are
/// `model.safetensors` for one shard, `model-0000i-of-0000N.safetensors` otherwise.
pub fn split(plan: &Plan, max: u64) -> Vec<Shard> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, t) in plan.tensors.iter().enumerate() {
        let b = t.bytes();
        match groups.last_mut() {
            Some(g) if size + b <= max => g.push(i),
            _ => {
                groups.push(vec![i]);
                size = 0;
            }
        }
        size += b;
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, mut tensors)| {
            data_order(&plan.tensors, &mut tensors);
            let entries = entries(&plan.tensors, &tensors);
            Shard {
                file: if n == 1 {
                    "model.safetensors".to_string()
                } else {
                    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
                },
                file_bytes: file_size(&entries, METADATA),
                tensors,
            }
        })
        .collect()
}

/// Orders a shard's data: 4-byte dtypes first, then 2-byte ones, by name within each, so
/// every tensor starts aligned for its dtype (the header is padded to 8 bytes).
fn data_order(all: &[TensorSpec], idx: &mut [usize]) {
    idx.sort_by(|&a, &b| {
        let (ta, tb) = (&all[a], &all[b]);
        tb.dtype
            .size()
            .cmp(&ta.dtype.size())
            .then_with(|| ta.name.cmp(&tb.name))
    });
}

/// Header entries of a shard's tensors, in data order.
pub fn entries<'a>(all: &'a [TensorSpec], idx: &[usize]) -> Vec<Entry<'a>> {
    idx.iter()
        .map(|&i| Entry {
            name: &all[i].name,
            dtype: all[i].dtype,
            shape: &all[i].shape,
        })
        .collect()
}

/// `model.safetensors.index.json`: total tensor bytes, parameter count and a sorted
/// weight map.
pub fn index_json(plan: &Plan, shards: &[Shard]) -> Value {
    let mut names: Vec<(&str, &str)> = shards
        .iter()
        .flat_map(|s| {
            s.tensors
                .iter()
                .map(move |&i| (plan.tensors[i].name.as_str(), s.file.as_str()))
        })
        .collect();
    names.sort();
    let map: Map<String, Value> = names
        .into_iter()
        .map(|(n, f)| (n.to_string(), Value::from(f)))
        .collect();
    json!({
        "metadata": {
            "total_size": plan.total_bytes(),
            "total_parameters": plan.parameters,
        },
        "weight_map": map,
    })
}
