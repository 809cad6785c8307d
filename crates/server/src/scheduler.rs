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
use crate::prompt_cache::{NoPromptCache, PrefixCache, PromptCache};
use moestream_engine::backend::cuda::Cuda;
use moestream_engine::backend::{Backend, Memory};
use moestream_engine::cache::{Scratch, SeqCache};
use moestream_engine::generate::{FinishReason, TokenEvent};
use moestream_engine::models::Transformer;
use moestream_engine::models::{LogitRows, SeqStep};
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::session::Session;
use moestream_engine::{Engine, TextLoop, TextParams, TextStep};
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
    /// As `GenerateParams::logprobs`: `None` unless the request asked for them.
    pub logprobs: Option<usize>,
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

/// Where the scheduler runs the model: the engine's own (CPU), or a copy on a GPU (made by
/// `backend::cuda::to_cuda`; without a prompt cache there for now).
pub enum Placement {
    Cpu,
    Cuda(Box<Transformer<Cuda>>),
}

/// Starts the scheduler thread.
pub fn start(
    engine: Arc<Engine>,
    placement: Placement,
    cfg: SchedulerConfig,
    metrics: Arc<Metrics>,
) -> SchedulerHandle {
    let (tx, rx) = sync_channel(cfg.max_queue);
    let handle = SchedulerHandle {
        jobs: tx,
        metrics: Arc::clone(&metrics),
        max_queue: cfg.max_queue,
    };
    std::thread::Builder::new()
        .name("moestream-scheduler".into())
        .spawn(move || match placement {
            Placement::Cpu => {
                let cache = PromptCache::new(cfg.prompt_cache_entries, cfg.prompt_cache_bytes);
                let model = engine.model();
                Scheduler::new(&engine, model, Box::new(cache), cfg, metrics).run(rx)
            }
            Placement::Cuda(model) => {
                Scheduler::new(&engine, &*model, Box::new(NoPromptCache), cfg, metrics).run(rx)
            }
        })
        .expect("spawning the scheduler thread");
    handle
}

/// A sequence in the batch: its request, its cache and its generation session.
struct Seq<'e, M: Memory> {
    job: Job,
    cache: SeqCache<M>,
    cached_tokens: usize,
    session: Session<'e, TextLoop, M>,
    /// Whether the sequence is in this iteration's forward pass.
    running: bool,
}

/// What the consumer of a sequence's steps needs: where its events go and what to count.
struct Sink<'a> {
    job: &'a Job,
    cached_tokens: usize,
    metrics: &'a Metrics,
}

impl<'a> Sink<'a> {
    fn new(job: &'a Job, cached_tokens: usize, metrics: &'a Metrics) -> Self {
        Sink {
            job,
            cached_tokens,
            metrics,
        }
    }

    fn usage(&self, text: &TextLoop) -> Usage {
        Usage {
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: text.tokens.stats.generated_tokens,
            cached_tokens: self.cached_tokens,
        }
    }

    /// Sends a step's token (and the end of the sequence); `false` when the sequence is
    /// over.
    fn deliver(&self, text: &mut TextLoop, step: TextStep) -> bool {
        if let Some(token) = step.token {
            self.metrics.completion_tokens.fetch_add(1, Relaxed);
            let sent = self.job.events.send(Event::Token {
                token,
                text: step.text,
            });
            if sent.is_err() {
                text.cancel();
                self.metrics.cancelled.fetch_add(1, Relaxed);
                return false;
            }
        }
        match step.finish {
            None => true,
            Some(finish) => {
                let _ = self.job.events.send(Event::Done {
                    tail: step.tail,
                    finish,
                    usage: self.usage(text),
                });
                false
            }
        }
    }

    /// The sequence failed: its client is told.
    fn fail(&self, message: String) {
        self.metrics.failed.fetch_add(1, Relaxed);
        let _ = self.job.events.send(Event::Failed(message));
    }
}

struct Scheduler<'e, B: Backend> {
    /// The tokenizer, the chat template and the draft.
    engine: &'e Engine,
    /// The model the forward passes run on.
    model: &'e Transformer<B>,
    cfg: SchedulerConfig,
    metrics: Arc<Metrics>,
    active: Vec<Seq<'e, B::Mem>>,
    prompt_cache: Box<dyn PrefixCache<B::Mem> + 'e>,
    scratch: Scratch<B::Mem>,
    logits: Vec<f32>,
}

impl<'e, B: Backend> Scheduler<'e, B> {
    fn new(
        engine: &'e Engine,
        model: &'e Transformer<B>,
        prompt_cache: Box<dyn PrefixCache<B::Mem> + 'e>,
        cfg: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Scheduler {
            engine,
            model,
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

    fn start(&mut self, job: Job) -> Seq<'e, B::Mem> {
        let (cache, cached_tokens) = match self.prompt_cache.lookup(&job.prompt) {
            Some(r) => {
                self.metrics.prompt_cache_hits.fetch_add(1, Relaxed);
                (r.cache, r.cached_tokens)
            }
            None => {
                self.metrics.prompt_cache_misses.fetch_add(1, Relaxed);
                (self.model.new_cache(), 0)
            }
        };
        Metrics::add(&self.metrics.prompt_tokens, job.prompt.len());
        Metrics::add(&self.metrics.cached_prompt_tokens, cached_tokens);
        let params = TextParams {
            max_tokens: job.max_tokens,
            stop: &job.stop,
            logprobs: job.logprobs,
        };
        let sampler = Sampler::new(job.sampling.clone());
        let text = self.engine.text_loop(&job.prompt, sampler, &params);
        let session = Session::new(text, self.engine.draft.as_ref(), cached_tokens);
        Seq {
            job,
            cache,
            cached_tokens,
            session,
            running: false,
        }
    }

    /// One forward pass over the batch, then one sampling step for each sequence that got
    /// logits.
    fn iterate(&mut self) {
        self.drop_gone_clients();
        let model = self.model;
        let mut budget = self.cfg.prefill_chunk.max(1);
        for s in &mut self.active {
            // Prompt tokens share the pass's budget; decoding sequences always run.
            let prefilling = s.session.prefilling();
            s.running = !prefilling || budget > 0;
            if !s.running {
                continue;
            }
            let room = if prefilling { budget } else { usize::MAX };
            // A decoding step with a draft runs the draft now, per sequence; its proposals
            // join the batch.
            match s.session.feed(model, &mut s.cache, room) {
                Ok((feed, _)) if prefilling => budget -= feed.len(),
                Ok(_) => {}
                Err(e) => {
                    Sink::new(&s.job, s.cached_tokens, &self.metrics).fail(e.to_string());
                    s.session.seq.cancel();
                }
            }
        }
        // A sequence whose draft failed is over (its client has been told).
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].session.is_finished() {
                self.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
        let mut steps: Vec<SeqStep<B>> = self
            .active
            .iter_mut()
            .filter(|s| s.running)
            .map(|s| {
                let (tokens, logits) = s.session.pending();
                SeqStep {
                    tokens,
                    cache: &mut s.cache,
                    logits,
                }
            })
            .collect();
        if steps.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let tokens: usize = steps.iter().map(|s| s.tokens.len()).sum();
        let n_steps = steps.len();
        let result = model.forward_batch(&mut steps, &mut self.scratch, &mut self.logits);
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
                if !s.running {
                    return true;
                }
                Sink::new(&s.job, s.cached_tokens, metrics).fail(message.clone());
                false
            });
            return;
        }
        // Logits rows follow the batch order; retire finished sequences only afterwards so
        // that order holds while sampling.
        let vocab = model.info.vocab_size;
        let mut row = 0;
        let mut finished = Vec::new();
        for (i, s) in self.active.iter_mut().enumerate() {
            if !s.running {
                continue;
            }
            let (fed, wants) = s.session.pending();
            let n = match wants {
                LogitRows::None => 0,
                LogitRows::Last => 1,
                LogitRows::All => fed.len(),
            };
            let rows = &self.logits[row * vocab..(row + n) * vocab];
            row += n;
            let sink = Sink::new(&s.job, s.cached_tokens, &self.metrics);
            let before = s.session.spec_stats();
            let alive = s
                .session
                .absorb(model, &mut s.cache, rows, &mut |text, step, _| {
                    sink.deliver(text, step)
                });
            if let (Some(b), Some(a)) = (before, s.session.spec_stats()) {
                self.metrics.add_speculative(&a.since(&b));
            }
            let alive = alive.unwrap_or_else(|e| {
                sink.fail(e.to_string());
                s.session.seq.cancel();
                false
            });
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
                s.session.seq.cancel();
                self.metrics.cancelled.fetch_add(1, Relaxed);
                self.retire(s);
            } else {
                i += 1;
            }
        }
    }

    /// A finished sequence's state goes to the prompt cache (the tokens its KV holds).
    fn retire(&mut self, mut s: Seq<'e, B::Mem>) {
        // Speculative rounds' rollback log is scratch: not worth keeping in the cache.
        s.cache.log = Default::default();
        let held = s.cache.offset;
        if held > 0 {
            let tokens = &s.session.seq.tokens.tokens()[..held];
            self.prompt_cache.insert(tokens, s.cache);
        }
        self.metrics
            .prompt_cache_entries
            .store(self.prompt_cache.entries() as u64, Relaxed);
        self.metrics
            .prompt_cache_bytes
            .store(self.prompt_cache.bytes() as u64, Relaxed);
    }

    fn fail_all(&mut self, message: &str) {
        for s in self.active.drain(..) {
            Sink::new(&s.job, s.cached_tokens, &self.metrics).fail(message.to_string());
        }
    }
}
