//! The scheduler: one thread owns the model and runs continuous batching. Each iteration
//! admits waiting requests (up to the batch size, reusing prompt-cache prefixes), then runs
//! ONE forward pass carrying every decoding sequence's next token plus a budget of prompt
//! tokens of the sequences still prefilling, then samples each sequence and sends its events.
//! The gathered expert matmuls thus serve all sequences' tokens with one read of each expert.
//!
//! Requests wait in a bounded queue; a full queue refuses new ones at once (503). A client
//! that goes away (its event receiver dropped) has its sequence stopped and its slot freed at
//! the next iteration.

use crate::metrics::Metrics;
use crate::prompt_cache::PromptCache;
use moestream_engine::cache::{Scratch, SeqCache};
use moestream_engine::generate::{FinishReason, TokenEvent};
use moestream_engine::models::{LogitRows, SeqStep, Transformer};
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::speculative::{Draft, SpecSeq};
use moestream_engine::{Engine, RunError, TextLoop, TextParams, TextStep};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences decoded together in one forward pass.
    pub max_batch: usize,
    /// Requests that may wait for a slot before new ones are refused.
    pub max_queue: usize,
    /// Prompt tokens per forward pass (shared by the sequences still prefilling).
    pub prefill_chunk: usize,
    pub prompt_cache_entries: usize,
    pub prompt_cache_bytes: usize,
}

/// One request, tokenized and checked.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub top_logprobs: usize,
    pub events: UnboundedSender<Event>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

/// What a request's handler receives, in order: tokens, then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Token {
        token: TokenEvent,
        text: String,
    },
    Done {
        tail: String,
        finish: FinishReason,
        usage: Usage,
    },
    Failed(String),
}

/// The handlers' side: submits jobs.
#[derive(Clone)]
pub struct SchedulerHandle {
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
    max_queue: usize,
}

impl SchedulerHandle {
    /// Queues `job`; `Err(waiting)` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), usize> {
        // Count first: the scheduler may take the job before try_send returns.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                self.metrics.rejected_busy.fetch_add(1, Relaxed);
                Err(self.max_queue)
            }
        }
    }
}

/// Starts the scheduler thread.
pub fn start(engine: Arc<Engine>, cfg: SchedulerConfig, metrics: Arc<Metrics>) -> SchedulerHandle {
    let (tx, rx) = sync_channel(cfg.max_queue);
    let handle = SchedulerHandle {
        jobs: tx,
        metrics: Arc::clone(&metrics),
        max_queue: cfg.max_queue,
    };
    std::thread::Builder::new()
        .name("moestream-scheduler".into())
        .spawn(move || Scheduler::new(engine, cfg, metrics).run(rx))
        .expect("spawning the scheduler thread");
    handle
}

/// A sequence in the batch.
struct Seq {
    job: Job,
    cache: SeqCache,
    /// Prompt tokens already in `cache`.
    fed: usize,
    cached_tokens: usize,
    text: TextLoop,
    /// Tokens for the next forward pass and whether it wants their logits.
    feed: Vec<u32>,
    wants_logits: bool,
    /// With a draft model: the sequence's speculative state. A decoding step then feeds the
    /// last token plus the draft's proposals and wants the logits of all of them.
    spec: Option<SpecSeq>,
}

impl Seq {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.text.tokens.stats.generated_tokens,
            cached_tokens: self.cached_tokens,
        }
    }
}

struct Scheduler {
    engine: Arc<Engine>,
    cfg: SchedulerConfig,
    metrics: Arc<Metrics>,
    active: Vec<Seq>,
    prompt_cache: PromptCache,
    scratch: Scratch,
    logits: Vec<f32>,
}

impl Scheduler {
    fn new(engine: Arc<Engine>, cfg: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        let prompt_cache = PromptCache::new(cfg.prompt_cache_entries, cfg.prompt_cache_bytes);
        Scheduler {
            engine,
            cfg,
            metrics,
            active: Vec::new(),
            prompt_cache,
            scratch: Scratch::default(),
            logits: Vec::new(),
        }
    }

    fn run(mut self, jobs: Receiver<Job>) {
        loop {
            if !self.admit(&jobs) {
                return;
            }
            // A bug must not take the server down: fail the sequences in flight instead.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.iterate())) {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown".into());
                self.fail_all(&format!("internal error: {what}"));
                self.scratch = Scratch::default();
            }
            self.metrics
                .active_sequences
                .store(self.active.len() as u64, Relaxed);
        }
    }

    /// Takes waiting jobs into the batch; blocks while there is nothing to do. `false` when
    /// the server is shutting down.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        while self.active.len() < self.cfg.max_batch {
            let job = if self.active.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return false,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            let seq = self.start(job);
            self.active.push(seq);
        }
        self.metrics
            .active_sequences
            .store(self.active.len() as u64, Relaxed);
        true
    }

    fn start(&mut self, job: Job) -> Seq {
        let (cache, cached_tokens) = match self.prompt_cache.lookup(&job.prompt) {
            Some(r) => {
                self.metrics.prompt_cache_hits.fetch_add(1, Relaxed);
                (r.cache, r.cached_tokens)
            }
            None => {
                self.metrics.prompt_cache_misses.fetch_add(1, Relaxed);
                (self.engine.model().new_cache(), 0)
            }
        };
        Metrics::add(&self.metrics.prompt_tokens, job.prompt.len());
        Metrics::add(&self.metrics.cached_prompt_tokens, cached_tokens);
        let params = TextParams {
            max_tokens: job.max_tokens,
            stop: &job.stop,
            top_logprobs: job.top_logprobs,
        };
        let sampler = Sampler::new(job.sampling.clone());
        let spec = self
            .engine
            .draft
            .as_ref()
            .map(|d| SpecSeq::new(d, &sampler));
        let text = self.engine.text_loop(&job.prompt, sampler, &params);
        Seq {
            job,
            cache,
            fed: cached_tokens,
            cached_tokens,
            text,
            feed: Vec::new(),
            wants_logits: false,
            spec,
        }
    }

    /// One forward pass over the batch, then one sampling step for each sequence that got
    /// logits.
    fn iterate(&mut self) {
        self.drop_gone_clients();
        let mut budget = self.cfg.prefill_chunk.max(1);
        for s in &mut self.active {
            s.feed.clear();
            if s.fed < s.job.prompt.len() {
                let n = (s.job.prompt.len() - s.fed).min(budget);
                budget -= n;
                s.feed.extend_from_slice(&s.job.prompt[s.fed..s.fed + n]);
                s.wants_logits = s.fed + n == s.job.prompt.len();
            } else {
                s.wants_logits = true;
                match (&mut s.spec, &self.engine.draft) {
                    (Some(spec), Some(draft)) => {
                        // The draft runs now, per sequence; its proposals join the batch.
                        let model = self.engine.model();
                        match spec.propose(draft, model, &mut s.cache, &mut s.text.tokens) {
                            Ok(feed) => s.feed.extend_from_slice(feed),
                            Err(e) => {
                                self.metrics.failed.fetch_add(1, Relaxed);
                                let _ = s.job.events.send(Event::Failed(e.to_string()));
                                s.text.cancel();
                            }
                        }
                    }
                    _ => s.feed.push(s.text.tokens.last_token()),
                }
            }
        }
        // A sequence whose draft failed is over (its client has been told).
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].text.is_finished() {
                self.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
        let mut steps: Vec<SeqStep> = self
            .active
            .iter_mut()
            .filter(|s| !s.feed.is_empty())
            .map(|s| SeqStep {
                tokens: &s.feed,
                cache: &mut s.cache,
                logits: match (s.wants_logits, &s.spec) {
                    (false, _) => LogitRows::None,
                    (true, Some(_)) if s.fed >= s.job.prompt.len() => LogitRows::All,
                    (true, _) => LogitRows::Last,
                },
            })
            .collect();
        if steps.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let tokens: usize = steps.iter().map(|s| s.tokens.len()).sum();
        let n_steps = steps.len();
        let result =
            self.engine
                .model()
                .forward_batch(&mut steps, &mut self.scratch, &mut self.logits);
        drop(steps);
        let m = &self.metrics;
        Metrics::add(&m.busy_micros, t0.elapsed().as_micros() as usize);
        m.forward_passes.fetch_add(1, Relaxed);
        Metrics::add(&m.forward_tokens, tokens);
        Metrics::add(&m.forward_sequences, n_steps);
        if let Err(e) = result {
            // The batch is lost (e.g. an expert read failed): fail the sequences it carried
            // (their caches may be half written), keep the others and go on.
            let message = e.to_string();
            let metrics = &self.metrics;
            self.active.retain(|s| {
                if s.feed.is_empty() {
                    return true;
                }
                metrics.failed.fetch_add(1, Relaxed);
                let _ = s.job.events.send(Event::Failed(message.clone()));
                false
            });
            return;
        }
        // Logits rows follow the batch order; retire finished sequences only afterwards so
        // that order holds while sampling.
        let vocab = self.engine.model().info.vocab_size;
        let mut row = 0;
        let mut finished = Vec::new();
        for (i, s) in self.active.iter_mut().enumerate() {
            if s.feed.is_empty() {
                continue;
            }
            let decoding = s.fed >= s.job.prompt.len();
            if !decoding {
                s.fed += s.feed.len();
            }
            if !s.wants_logits {
                continue;
            }
            let alive = match (&mut s.spec, &self.engine.draft) {
                (Some(_), Some(draft)) if decoding => {
                    let n = s.feed.len();
                    let rows = &self.logits[row * vocab..(row + n) * vocab];
                    row += n;
                    speculative_step(s, draft, self.engine.model(), rows, &self.metrics)
                }
                _ => {
                    let logits = &self.logits[row * vocab..(row + 1) * vocab];
                    row += 1;
                    sample(s, logits, &self.metrics)
                }
            };
            if !alive {
                finished.push(i);
            }
        }
        for &i in finished.iter().rev() {
            let s = self.active.remove(i);
            self.retire(s);
        }
    }

    fn drop_gone_clients(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].job.events.is_closed() {
                let mut s = self.active.swap_remove(i);
                s.text.cancel();
                self.metrics.cancelled.fetch_add(1, Relaxed);
                self.retire(s);
            } else {
                i += 1;
            }
        }
    }

    /// A finished sequence's state goes to the prompt cache (the tokens its KV holds).
    fn retire(&mut self, mut s: Seq) {
        // Speculative rounds' rollback log is scratch: not worth keeping in the cache.
        s.cache.log = Default::default();
        let held = s.cache.offset;
        if held > 0 {
            let tokens = &s.text.tokens.tokens()[..held];
            self.prompt_cache.insert(tokens, s.cache);
        }
        self.metrics
            .prompt_cache_entries
            .store(self.prompt_cache.len() as u64, Relaxed);
        self.metrics
            .prompt_cache_bytes
            .store(self.prompt_cache.bytes() as u64, Relaxed);
    }

    fn fail_all(&mut self, message: &str) {
        for s in self.active.drain(..) {
            self.metrics.failed.fetch_add(1, Relaxed);
            let _ = s.job.events.send(Event::Failed(message.to_string()));
        }
    }
}

/// Samples the sequence's next token and sends it; `false` when the sequence is over.
fn sample(s: &mut Seq, logits: &[f32], metrics: &Metrics) -> bool {
    let step = s.text.step(logits);
    deliver(s, step, metrics)
}

/// Ends a speculative round from the verification rows of the batch: decides the tokens,
/// sends them in order, rolls the caches back; `false` when the sequence is over.
fn speculative_step(
    s: &mut Seq,
    draft: &Draft,
    model: &Transformer,
    rows: &[f32],
    metrics: &Metrics,
) -> bool {
    let Some(mut spec) = s.spec.take() else {
        return false;
    };
    let before = spec.stats;
    spec.decide(&mut s.text.tokens, rows);
    let mut cache = std::mem::take(&mut s.cache);
    let alive = spec.finish_round(draft, model, &mut cache, rows, |id, row| {
        let step = s.text.push(id, row);
        let joined = step.as_ref().is_ok_and(|st| st.token.is_some());
        Ok::<_, std::convert::Infallible>((joined, deliver(s, step, metrics)))
    });
    s.cache = cache;
    metrics.add_speculative(&spec.stats.since(&before));
    s.spec = Some(spec);
    alive.unwrap_or(false)
}

/// Sends a step's token (and the end of the sequence); `false` when the sequence is over.
fn deliver(s: &mut Seq, step: Result<TextStep, RunError>, metrics: &Metrics) -> bool {
    let step = match step {
        Ok(step) => step,
        Err(e) => {
            metrics.failed.fetch_add(1, Relaxed);
            let _ = s.job.events.send(Event::Failed(e.to_string()));
            s.text.cancel();
            return false;
        }
    };
    if let Some(token) = step.token {
        metrics.completion_tokens.fetch_add(1, Relaxed);
        if s.job
            .events
            .send(Event::Token {
                token,
                text: step.text,
            })
            .is_err()
        {
            s.text.cancel();
            metrics.cancelled.fetch_add(1, Relaxed);
            return false;
        }
    }
    match step.finish {
        None => true,
        Some(finish) => {
            let usage = s.usage();
            let _ = s.job.events.send(Event::Done {
                tail: step.tail,
                finish,
                usage,
            });
            false
        }
    }
}
