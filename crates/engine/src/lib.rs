//! The moestream engine: weights, the expert store, models, sampling and generation.
//!
//! Layers (dependencies point down): `generate` -> `models` -> `experts` -> `weights`, with
//! every numeric op coming from `moestream-kernels`.

pub mod backend;
pub mod cache;
pub mod config;
pub mod error;
pub mod experts;
pub mod gguf;
pub mod models;
pub mod weights;

pub use error::{LoadError, RunError};
pub mod loader;

pub use loader::{load_model, LoadOptions, LoadProgress, Loaded};
pub mod generate;
pub mod pipeline;
pub mod sampling;
pub mod session;
pub mod spec_stats;
pub mod speculative;
pub mod synth;

pub use pipeline::{Engine, TextEvent, TextLoop, TextOutcome, TextParams, TextStep};
