//! A persistent thread pool for per-token kernels: workers spin briefly, then park.
//!
//! A decode step of a 48-layer MoE issues hundreds of small parallel kernels; waking threads
//! through a fork/join library for each one costs more than the kernel. Workers here stay
//! alive, spin on an epoch counter for a short while after each job (the next kernel usually
//! follows within microseconds), and only then sleep on a condition variable. The calling
//! thread takes part in every job, so a pool of N threads has N-1 workers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Iterations a worker spins on the epoch before it parks.
const SPIN_ITERS: u32 = 20_000;

type TaskFn = dyn Fn(usize) + Sync;

struct Job {
    /// Lifetime-erased pointer to the caller's closure. Valid while the caller waits in
    /// `run`, which it does until every claimed task has finished (`done == n_tasks`).
    task: *const TaskFn,
    n_tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `task` points to a `Sync` closure, only called while the owner blocks in `run`.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs tasks until none is left. Returns after the last claim fails, so the
    /// closure is never touched once `done` can reach `n_tasks`.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.n_tasks {
                return;
            }
            // SAFETY: i < n_tasks, so the owner is still waiting for this task.
            let f = unsafe { &*self.task };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

struct Shared {
    epoch: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    wake: Condvar,
    shutdown: AtomicBool,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// Serialises callers: one job at a time.
    submit: Mutex<()>,
}

impl ThreadPool {
    /// A pool using `threads` threads in total (the caller plus `threads - 1` workers).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|k| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("moestream-worker-{k}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("spawning a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            threads,
            submit: Mutex::new(()),
        }
    }

    /// A pool sized to the machine's available parallelism (or `MOESTREAM_THREADS`).
    pub fn with_default_threads() -> Self {
        Self::new(default_threads())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0..n_tasks)` across the pool and returns when all calls have finished.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.threads == 1 || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _guard = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: erase the closure's lifetime; we block below until every task is done.
        let task: *const TaskFn = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static TaskFn>(f) as *const TaskFn
        };
        let job = Arc::new(Job {
            task,
            n_tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(Arc::clone(&job));
            self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.wake.notify_all();
        job.work();
        let mut spins = 0u32;
        while job.done.load(Ordering::Acquire) < n_tasks {
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if job.panicked.load(Ordering::Acquire) {
            panic!("a thread-pool task panicked");
        }
    }

    /// Splits `0..n` into about `chunks_per_thread * threads` contiguous ranges and runs `f`
    /// on each: the common shape of a row-parallel kernel.
    pub fn for_ranges(&self, n: usize, min_chunk: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let chunk = n.div_ceil(self.threads * 2).max(min_chunk.max(1));
        let tasks = n.div_ceil(chunk);
        self.run(tasks, &|t| {
            let start = t * chunk;
            f(start, (start + chunk).min(n));
        });
    }
}

pub fn default_threads() -> usize {
    std::env::var("MOESTREAM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn worker_loop(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        while shared.epoch.load(Ordering::Acquire) == seen && spins < SPIN_ITERS {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
            spins += 1;
        }
        let job = {
            let mut slot = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            while shared.epoch.load(Ordering::Acquire) == seen {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
            seen = shared.epoch.load(Ordering::Acquire);
            slot.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that row-parallel kernels share to write disjoint parts of one output.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
// SAFETY: users write disjoint index ranges only (each kernel documents its split).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(s: &mut [T]) -> Self {
        SharedMut(s.as_mut_ptr())
    }

    /// # Safety
    /// `i` must lie within the original slice and no other task may touch it.
    #[inline]
    pub unsafe fn write(&self, i: usize, v: T) {
        *self.0.add(i) = v;
    }

    /// # Safety
    /// The range must lie within the original slice and no other task may touch it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for n in [1usize, 2, 5, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn ranges_cover_exactly() {
        let pool = ThreadPool::new(2);
        let hits: Vec<AtomicUsize> = (0..103).map(|_| AtomicUsize::new(0)).collect();
        pool.for_ranges(103, 4, &|a, b| {
            for h in &hits[a..b] {
                h.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(4, &|i| assert!(i != 2))));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
