//! Repro capsules: a JSON record of what was measured, on what, with which build and flags,
//! so a figure in BENCHMARKS.md can be traced and re-run.

use serde_json::{json, Value};
use std::path::Path;

/// CPU flags our kernels dispatch on.
const KERNEL_FLAGS: [&str; 10] = [
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    // aarch64 (/proc/cpuinfo "Features"): dot product and int8 matrix multiply.
    "asimddp",
];

/// The machine: CPU model and the flags that matter to our kernels, cores, RAM.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k) || (k == "flags" && l.starts_with("Features")))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let flags: Vec<String> = field("flags")
        .map(|f| {
            f.split_whitespace()
                .filter(|x| KERNEL_FLAGS.contains(x))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    json!({
        "cpu": field("model name"),
        "cpu_flags": flags,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "ram_bytes": crate::sys::mem_total_bytes(),
        "kernel_isa": format!("{:?}", moestream_kernels::simd::isa()),
        "int8_kernel": moestream_kernels::isa::int8().name(),
        "prefetch_bytes": moestream_kernels::qdot::prefetch_bytes(),
    })
}

/// The build: commit (with `-dirty` if the tree had changes) and version.
pub fn build() -> Value {
    json!({"commit": env!("MOESTREAM_COMMIT"), "version": env!("CARGO_PKG_VERSION")})
}

/// Writes `capsule` to `path` (pretty-printed).
pub fn write(path: &Path, capsule: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(capsule)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
