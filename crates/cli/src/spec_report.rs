//! How speculative decoding's counters are reported (summaries, JSON, capsules).

use moestream_engine::speculative::SpecStats;
use serde_json::{json, Value};

/// The counters as JSON (`null` without a draft).
pub fn json(s: Option<&SpecStats>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "verification_steps": s.rounds,
            "drafted_tokens": s.drafted,
            "accepted_tokens": s.accepted,
            "acceptance_rate": s.acceptance_rate(),
            "tokens_per_verification_step": s.tokens_per_step(),
        }),
    }
}

/// One line for a human: acceptance and tokens per main-model pass.
pub fn line(s: &SpecStats) -> String {
    format!(
        "speculative: acceptance {:.1}% ({} of {} drafted) | {:.2} tokens per verification step ({} steps)",
        100.0 * s.acceptance_rate(),
        s.accepted,
        s.drafted,
        s.tokens_per_step(),
        s.rounds
    )
}
