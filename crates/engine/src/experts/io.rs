//! The I/O engine of the streamed expert store: positional reads submitted as a batch and
//! served by a pool of reader threads, so a layer's misses are in flight together (queue
//! depth = threads). SSDs need depth: one read at a time reaches a fraction of their
//! bandwidth (see DESIGN.md).

use crate::weights::bytes::{Bytes, ReadError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// One read: `src` (a range of a weight file) into `dst` (`src.len()` bytes of a slot).
pub struct ReadJob {
    pub src: Bytes,
    pub dst: *mut u8,
}

// SAFETY: `dst` points into a slot buffer that the submitter keeps alive and untouched until
// the batch completes (`IoPool::read_all` blocks until then).
unsafe impl Send for ReadJob {}

struct Batch {
    remaining: AtomicUsize,
    error: Mutex<Option<ReadError>>,
    done: Condvar,
    lock: Mutex<()>,
}

type Work = (ReadJob, Arc<Batch>);

pub struct IoPool {
    tx: Option<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
    depth: usize,
}

impl IoPool {
    /// `depth` reader threads (reads in flight at once).
    pub fn new(depth: usize) -> Self {
        let depth = depth.max(1);
        let (tx, rx) = channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..depth)
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("moestream-io-{i}"))
                    .spawn(move || reader(&rx))
                    .expect("spawning an I/O thread")
            })
            .collect();
        IoPool {
            tx: Some(tx),
            threads,
            depth,
        }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Performs every job and returns when all have finished; the first error, if any.
    pub fn read_all(&self, jobs: Vec<ReadJob>) -> Result<(), ReadError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(Batch {
            remaining: AtomicUsize::new(jobs.len()),
            error: Mutex::new(None),
            done: Condvar::new(),
            lock: Mutex::new(()),
        });
        let tx = self.tx.as_ref().expect("the pool is alive");
        for job in jobs {
            if tx.send((job, Arc::clone(&batch))).is_err() {
                unreachable!("reader threads live as long as the pool");
            }
        }
        {
            let mut guard = batch.lock.lock().unwrap_or_else(|e| e.into_inner());
            while batch.remaining.load(Ordering::Acquire) > 0 {
                guard = batch.done.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
        let error = batch.error.lock().unwrap_or_else(|e| e.into_inner()).take();
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn reader(rx: &Mutex<Receiver<Work>>) {
    loop {
        let work = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        let Ok((job, batch)) = work else { return };
        // SAFETY: see `ReadJob`.
        let dst = unsafe { std::slice::from_raw_parts_mut(job.dst, job.src.len()) };
        if let Err(e) = job.src.read_into(dst) {
            let mut slot = batch.error.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(e);
        }
        if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _g = batch.lock.lock().unwrap_or_else(|e| e.into_inner());
            batch.done.notify_all();
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
