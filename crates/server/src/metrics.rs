//! Server counters, rendered in Prometheus' text format at `GET /metrics`.

use moestream_engine::experts::StoreStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (route, HTTP status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub prompt_cache_hits: AtomicU64,
    pub prompt_cache_misses: AtomicU64,
    pub prompt_cache_entries: AtomicU64,
    pub prompt_cache_bytes: AtomicU64,
    /// Sequences being prefilled or decoded right now.
    pub active_sequences: AtomicU64,
    /// Requests accepted and waiting for a batch slot.
    pub queue_depth: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    /// Forward passes and the tokens they carried.
    pub forward_passes: AtomicU64,
    pub forward_tokens: AtomicU64,
    /// Sum over forward passes of the sequences in each (batch occupancy).
    pub forward_sequences: AtomicU64,
    /// Wall time spent in forward passes, in microseconds.
    pub busy_micros: AtomicU64,
    /// Speculative decoding (`--draft-model`): verification passes, drafted tokens, accepted
    /// drafts, tokens the rounds produced.
    pub spec_rounds: AtomicU64,
    pub spec_drafted: AtomicU64,
    pub spec_accepted: AtomicU64,
    pub spec_emitted: AtomicU64,
    /// Connections open right now, and those refused at the connection cap.
    pub open_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    /// Connections closed for a timeout: headers too slow (or none on a new connection),
    /// a body too slow, idle between requests, or a client that stopped reading.
    pub header_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub send_timeouts: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_default() += 1;
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    /// Adds one sequence's speculative counters (when it finishes).
    pub fn add_speculative(&self, s: &moestream_engine::speculative::SpecStats) {
        Metrics::add(&self.spec_rounds, s.rounds);
        Metrics::add(&self.spec_drafted, s.drafted);
        Metrics::add(&self.spec_accepted, s.accepted);
        Metrics::add(&self.spec_emitted, s.emitted);
    }

    /// Prometheus text exposition; `experts` are the expert store's counters.
    pub fn render(&self, experts: &StoreStats) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Relaxed) as f64;
        let busy_s = get(&self.busy_micros) / 1e6;
        let completion = get(&self.completion_tokens);
        metric(
            "moestream_prompt_tokens_total",
            "counter",
            "Prompt tokens of admitted requests.",
            get(&self.prompt_tokens),
        );
        metric(
            "moestream_completion_tokens_total",
            "counter",
            "Generated tokens.",
            completion,
        );
        metric(
            "moestream_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens served from the prompt cache.",
            get(&self.cached_prompt_tokens),
        );
        metric(
            "moestream_prompt_cache_hits_total",
            "counter",
            "Requests that reused a cached prefix.",
            get(&self.prompt_cache_hits),
        );
        metric(
            "moestream_prompt_cache_misses_total",
            "counter",
            "Requests that found no cached prefix.",
            get(&self.prompt_cache_misses),
        );
        metric(
            "moestream_prompt_cache_entries",
            "gauge",
            "Entries in the prompt cache.",
            get(&self.prompt_cache_entries),
        );
        metric(
            "moestream_prompt_cache_bytes",
            "gauge",
            "Bytes of KV state held by the prompt cache.",
            get(&self.prompt_cache_bytes),
        );
        metric(
            "moestream_active_sequences",
            "gauge",
            "Sequences being prefilled or decoded.",
            get(&self.active_sequences),
        );
        metric(
            "moestream_queue_depth",
            "gauge",
            "Requests waiting for a batch slot.",
            get(&self.queue_depth),
        );
        metric(
            "moestream_rejected_busy_total",
            "counter",
            "Requests refused because the queue was full.",
            get(&self.rejected_busy),
        );
        metric(
            "moestream_open_connections",
            "gauge",
            "Client connections open.",
            get(&self.open_connections),
        );
        metric(
            "moestream_rejected_connections_total",
            "counter",
            "Connections refused (503 and close) because --max-connections were open.",
            get(&self.rejected_connections),
        );
        metric(
            "moestream_cancelled_total",
            "counter",
            "Generations stopped because the client went away.",
            get(&self.cancelled),
        );
        metric(
            "moestream_failed_total",
            "counter",
            "Generations that failed (e.g. a failed expert read).",
            get(&self.failed),
        );
        metric(
            "moestream_forward_passes_total",
            "counter",
            "Batched forward passes.",
            get(&self.forward_passes),
        );
        metric(
            "moestream_forward_tokens_total",
            "counter",
            "Tokens carried by forward passes.",
            get(&self.forward_tokens),
        );
        metric(
            "moestream_forward_sequences_total",
            "counter",
            "Sequences carried by forward passes (sum of batch sizes).",
            get(&self.forward_sequences),
        );
        metric(
            "moestream_busy_seconds_total",
            "counter",
            "Seconds spent in forward passes.",
            busy_s,
        );
        metric(
            "moestream_generation_tokens_per_second",
            "gauge",
            "Generated tokens per second of busy time.",
            if busy_s > 0.0 {
                completion / busy_s
            } else {
                0.0
            },
        );
        let (drafted, rounds) = (get(&self.spec_drafted), get(&self.spec_rounds));
        metric(
            "moestream_speculative_verification_steps_total",
            "counter",
            "Speculative rounds: main-model passes verifying a draft (--draft-model).",
            rounds,
        );
        metric(
            "moestream_speculative_drafted_tokens_total",
            "counter",
            "Tokens proposed by the draft model.",
            drafted,
        );
        metric(
            "moestream_speculative_accepted_tokens_total",
            "counter",
            "Drafted tokens the main model accepted.",
            get(&self.spec_accepted),
        );
        metric(
            "moestream_speculative_acceptance_rate",
            "gauge",
            "Accepted over drafted tokens since start.",
            if drafted > 0.0 {
                get(&self.spec_accepted) / drafted
            } else {
                0.0
            },
        );
        metric(
            "moestream_speculative_tokens_per_step",
            "gauge",
            "Tokens produced per verification step since start.",
            if rounds > 0.0 {
                get(&self.spec_emitted) / rounds
            } else {
                0.0
            },
        );
        metric(
            "moestream_expert_hits_total",
            "counter",
            "Expert slot cache hits (--stream-experts).",
            experts.hits as f64,
        );
        metric(
            "moestream_expert_misses_total",
            "counter",
            "Expert slot cache misses (--stream-experts).",
            experts.misses as f64,
        );
        metric(
            "moestream_expert_bytes_read_total",
            "counter",
            "Bytes of expert weights read from disk.",
            experts.bytes_read as f64,
        );
        metric(
            "moestream_expert_read_seconds_total",
            "counter",
            "Seconds stalled on expert reads.",
            experts.read_secs,
        );
        let _ = writeln!(
            out,
            "# HELP moestream_connection_timeouts_total Connections closed for a timeout, by what was late.\n# TYPE moestream_connection_timeouts_total counter"
        );
        for (kind, c) in [
            ("header", &self.header_timeouts),
            ("body", &self.body_timeouts),
            ("idle", &self.idle_timeouts),
            ("send", &self.send_timeouts),
        ] {
            let _ = writeln!(
                out,
                "moestream_connection_timeouts_total{{kind=\"{kind}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP moestream_requests_total HTTP requests by route and status.\n# TYPE moestream_requests_total counter"
        );
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "moestream_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
