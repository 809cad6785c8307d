//! The I/O engine of the streamed expert store: positional reads submitted as a batch and kept
//! in flight together (queue depth), so a layer's misses overlap. SSDs need depth: one read
//! at a time reaches a fraction of their bandwidth (SwiftLM issue #24: ~5% of the SSD at depth
//! 1; fio on the dev machine: 1.0 GB/s at depth 1, 2.2 GB/s at depth 16).
//!
//! Two engines serve the same queue: io_uring (one submitter thread keeps `depth` reads in
//! the ring), probed at startup, and a pool of `depth` pread threads as the fallback. Reads
//! have two priorities: a forward pass waiting on a miss goes before a prefetch.
//!
//! Direct I/O (`O_DIRECT`) bypasses the page cache; it needs the file offset, the length and
//! the destination aligned to [`DIRECT_ALIGN`], so the store reads an aligned superset of
//! each part into an aligned place of its slot and views the part inside it.

use crate::weights::bytes::{Bytes, ReadError};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Alignment of direct reads: offset, length and destination (covers 512-byte and 4 KiB
/// logical blocks).
pub const DIRECT_ALIGN: usize = 4096;

/// Which engine serves reads. The default is the pread pool: on the dev machine it read
/// faster than this io_uring loop, buffered and direct (BENCHMARKS.md, streaming).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring if the probe at startup succeeds, else the pread pool.
    Auto,
    /// io_uring, falling back to the pread pool (and saying why) if the probe fails.
    IoUring,
    #[default]
    Pread,
}

impl std::str::FromStr for IoEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoEngine::Auto),
            // (An explicit io_uring request still falls back cleanly when the probe fails.)
            "io-uring" | "io_uring" | "uring" => Ok(IoEngine::IoUring),
            "pread" => Ok(IoEngine::Pread),
            _ => Err(format!("{s:?}: expected auto, io-uring or pread")),
        }
    }
}

/// A weight file opened for the store's reads: a buffered descriptor and, with direct I/O,
/// an `O_DIRECT` one.
pub struct SourceFile {
    pub path: PathBuf,
    buffered: File,
    direct: Option<File>,
}

/// Opens each weight file once (keyed by path).
#[derive(Default)]
pub struct SourceFiles {
    files: HashMap<PathBuf, Arc<SourceFile>>,
    /// Why direct I/O could not be used on some file (first reason), if asked for.
    pub direct_failure: Option<String>,
}

impl SourceFiles {
    /// The source of `b`'s file, opened before by [`SourceFiles::open`].
    pub fn get(&self, b: &Bytes) -> Option<Arc<SourceFile>> {
        let (_, path) = b.source_file()?;
        self.files.get(path).cloned()
    }

    /// Whether any file has a direct descriptor.
    pub fn any_direct(&self) -> bool {
        self.files.values().any(|f| f.direct.is_some())
    }

    /// Opens `b`'s file unless already open (nothing for in-memory ranges).
    pub fn open(&mut self, b: &Bytes, direct: bool) -> Option<Arc<SourceFile>> {
        let (file, path) = b.source_file()?;
        if let Some(f) = self.files.get(path) {
            return Some(Arc::clone(f));
        }
        // A descriptor of our own, marked random-access: the kernel's readahead would turn
        // every slab read into a window of several times its size (read_ahead_kb is 8 MiB on
        // the dev machine), wasting disk time and page cache on neighbouring experts.
        let buffered = std::fs::File::open(path)
            .or_else(|_| file.try_clone())
            .ok()?;
        // SAFETY: an advisory call on a descriptor we own.
        unsafe { libc::posix_fadvise(buffered.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let direct = if direct {
            match open_direct(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    self.direct_failure
                        .get_or_insert_with(|| format!("{}: {e}", path.display()));
                    None
                }
            }
        } else {
            None
        };
        let f = Arc::new(SourceFile {
            path: path.to_path_buf(),
            buffered,
            direct,
        });
        self.files.insert(path.to_path_buf(), Arc::clone(&f));
        Some(f)
    }
}

fn open_direct(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Where a read comes from.
pub enum ReadSrc {
    /// `len` bytes at `offset` of a file (direct when the file has a direct descriptor).
    File { file: Arc<SourceFile>, offset: u64 },
    /// An in-memory range (copied).
    Memory(Bytes),
}

/// One read of `len` bytes into `dst`.
/// A transform of the bytes a job read, run by the reader thread right after the read, with
/// its parameter (an expert part re-laid for the kernels: `(re-lay, items per row)`). The
/// readers run in parallel, so this spreads the work over the cores, off the compute thread.
pub type AfterRead = (fn(&mut [u8], usize), usize);

pub struct ReadJob {
    pub src: ReadSrc,
    pub len: usize,
    pub dst: *mut u8,
    /// After the read, move `len` bytes from `dst + from` to `dst + to`.
    fixup: Option<(usize, usize, usize)>,
    /// Then transform the range (at its view offset).
    after: Option<AfterRead>,
    /// The range's length and its offset from `dst` once in place.
    view: (usize, usize),
}

impl ReadJob {
    /// The read of range `src` into `region`, after which its bytes lie at
    /// `region + view_offset(src, aligned_layout)`. With `aligned_layout` the region is
    /// [`DIRECT_ALIGN`]-aligned and holds [`direct_region`]`(src.len())` bytes; a file with a
    /// direct descriptor is then read as the aligned superset of the range (and the range
    /// moved down to a 64-byte boundary if its file offset is not one, so element views stay
    /// aligned). Otherwise exactly the range is read.
    pub fn new(
        src: &Bytes,
        file: Option<Arc<SourceFile>>,
        region: *mut u8,
        aligned_layout: bool,
    ) -> Self {
        let at = view_offset(src, aligned_layout);
        // The caller sized the region for `at + len` (pointer offsets below stay inside it).
        match file {
            Some(file) if aligned_layout && file.direct.is_some() => {
                debug_assert_eq!(region as usize % DIRECT_ALIGN, 0);
                let phase = src.offset() % DIRECT_ALIGN;
                let offset = (src.offset() - phase) as u64;
                let len = (phase + src.len()).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
                ReadJob {
                    src: ReadSrc::File { file, offset },
                    len,
                    dst: region,
                    fixup: (phase != at).then_some((phase, at, src.len())),
                    after: None,
                    view: (src.len(), at),
                }
            }
            Some(file) => ReadJob {
                src: ReadSrc::File {
                    file,
                    offset: src.offset() as u64,
                },
                len: src.len(),
                dst: region.wrapping_add(at),
                fixup: None,
                after: None,
                view: (src.len(), 0),
            },
            None => ReadJob {
                src: ReadSrc::Memory(src.clone()),
                len: src.len(),
                dst: region.wrapping_add(at),
                fixup: None,
                after: None,
                view: (src.len(), 0),
            },
        }
    }

    /// Runs `after` on the bytes once they are read (and in place).
    pub fn then(self, after: Option<AfterRead>) -> Self {
        ReadJob { after, ..self }
    }

    /// After a successful read: moves the range to its view offset if needed, then runs the
    /// job's transform on it.
    fn finish(&self) {
        if let Some((from, to, len)) = self.fixup {
            // SAFETY: both ranges lie inside the region the read filled.
            unsafe { std::ptr::copy(self.dst.add(from), self.dst.add(to), len) }
        }
        if let Some((transform, param)) = self.after {
            let (len, at) = self.view;
            // SAFETY: the range the read filled, owned by this job until its batch completes.
            transform(
                unsafe { std::slice::from_raw_parts_mut(self.dst.add(at), len) },
                param,
            );
        }
    }

    fn is_direct(&self) -> bool {
        matches!(&self.src, ReadSrc::File { file, .. } if file.direct.is_some())
    }

    fn fd(&self) -> Option<(i32, &SourceFile)> {
        match &self.src {
            ReadSrc::File { file, .. } => Some((
                file.direct.as_ref().unwrap_or(&file.buffered).as_raw_fd(),
                file,
            )),
            ReadSrc::Memory(_) => None,
        }
    }

    fn error(&self, source: std::io::Error) -> ReadError {
        let (path, offset) = match &self.src {
            ReadSrc::File { file, offset } => (file.path.clone(), *offset),
            ReadSrc::Memory(b) => (PathBuf::from("<memory>"), b.offset() as u64),
        };
        ReadError {
            path,
            offset,
            len: self.len,
            source,
        }
    }

    /// Performs the read on this thread.
    fn run(&self) -> Result<(), ReadError> {
        // SAFETY: see `ReadJob`'s Send impl: `dst` holds `len` writable bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.dst, self.len) };
        match &self.src {
            ReadSrc::Memory(b) => b.read_into(dst),
            ReadSrc::File { file, offset } => match &file.direct {
                None => file
                    .buffered
                    .read_exact_at(dst, *offset)
                    .map_err(|e| self.error(e)),
                Some(d) => {
                    // The superset may run past the end of the file: a short read is fine
                    // once the bytes that matter (all but the last block's tail) are in.
                    let mut got = 0;
                    while got < self.len {
                        match d.read_at(&mut dst[got..], *offset + got as u64) {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(self.error(e)),
                        }
                    }
                    if got + DIRECT_ALIGN <= self.len || got == 0 {
                        return Err(self.error(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    Ok(())
                }
            },
        }
    }
}

/// Where a range's bytes lie inside its region once read: 0 in a packed layout; in an
/// aligned layout, its file offset modulo [`DIRECT_ALIGN`] rounded down to 64 bytes (so a
/// direct read of the aligned superset needs at most a short move), 0 for in-memory ranges.
pub fn view_offset(src: &Bytes, aligned_layout: bool) -> usize {
    if aligned_layout && src.source_file().is_some() {
        src.offset() % DIRECT_ALIGN / 64 * 64
    } else {
        0
    }
}

/// Bytes of a region that can hold a direct read of any `len`-byte range.
pub fn direct_region(len: usize) -> usize {
    (len + 2 * DIRECT_ALIGN - 1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

// SAFETY: `dst` points into a slot buffer that the submitter keeps alive and untouched until
// the batch completes (the store waits on the batch's ticket before touching those slots or
// freeing the buffer).
unsafe impl Send for ReadJob {}

/// A submitted batch: completes when all its reads have.
pub struct Ticket(Arc<Batch>);

struct Batch {
    remaining: AtomicUsize,
    error: Mutex<Option<ReadError>>,
    done: Condvar,
    lock: Mutex<()>,
}

impl Batch {
    fn finish(&self, result: Result<(), ReadError>) {
        if let Err(e) = result {
            lock(&self.error).get_or_insert(e);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _g = lock(&self.lock);
            self.done.notify_all();
        }
    }
}

impl Ticket {
    /// Blocks until every read of the batch has finished; the first error, if any.
    pub fn wait(&self) -> Result<(), ReadError> {
        let b = &self.0;
        {
            let mut guard = lock(&b.lock);
            while b.remaining.load(Ordering::Acquire) > 0 {
                guard = b.done.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
        match lock(&b.error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn is_done(&self) -> bool {
        self.0.remaining.load(Ordering::Acquire) == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A forward pass waits on it.
    Demand,
    /// A guess: served after every demand read.
    Prefetch,
}

type Work = (ReadJob, Arc<Batch>);

#[derive(Default)]
struct Queue {
    demand: VecDeque<Work>,
    prefetch: VecDeque<Work>,
    closed: bool,
}

impl Queue {
    fn pop(&mut self) -> Option<Work> {
        self.demand
            .pop_front()
            .or_else(|| self.prefetch.pop_front())
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct IoPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    depth: usize,
    uring: bool,
    /// Why io_uring is not used when it was wanted (`Auto` or `IoUring`).
    pub uring_failure: Option<String>,
}

impl IoPool {
    /// An engine keeping up to `depth` reads in flight: io_uring if wanted and the probe
    /// succeeds, else `depth` pread threads.
    pub fn new(depth: usize, engine: IoEngine) -> Self {
        Self::with_probe(depth, engine, probe_uring)
    }

    fn with_probe(
        depth: usize,
        engine: IoEngine,
        probe: fn(usize) -> Result<io_uring::IoUring, String>,
    ) -> Self {
        let depth = depth.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let mut uring_failure = None;
        if engine != IoEngine::Pread {
            match probe(depth) {
                Ok(ring) => {
                    let s = Arc::clone(&shared);
                    let t = std::thread::Builder::new()
                        .name("moestream-uring".into())
                        .spawn(move || uring_loop(ring, &s, depth))
                        .expect("spawning the io_uring thread");
                    return IoPool {
                        shared,
                        threads: vec![t],
                        depth,
                        uring: true,
                        uring_failure: None,
                    };
                }
                Err(e) => uring_failure = Some(e),
            }
        }
        let threads = (0..depth)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("moestream-io-{i}"))
                    .spawn(move || reader(&s))
                    .expect("spawning an I/O thread")
            })
            .collect();
        IoPool {
            shared,
            threads,
            depth,
            uring: false,
            uring_failure,
        }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// "io_uring" or "pread x N".
    pub fn engine_name(&self) -> String {
        if self.uring {
            "io_uring".into()
        } else {
            format!("pread pool of {} threads", self.depth)
        }
    }

    /// Queues every job and returns at once; the ticket completes with the last of them.
    pub fn submit(&self, jobs: Vec<ReadJob>, priority: Priority) -> Ticket {
        let batch = Arc::new(Batch {
            remaining: AtomicUsize::new(jobs.len()),
            error: Mutex::new(None),
            done: Condvar::new(),
            lock: Mutex::new(()),
        });
        if !jobs.is_empty() {
            let mut q = lock(&self.shared.queue);
            let target = match priority {
                Priority::Demand => &mut q.demand,
                Priority::Prefetch => &mut q.prefetch,
            };
            target.extend(jobs.into_iter().map(|j| (j, Arc::clone(&batch))));
            drop(q);
            self.shared.ready.notify_all();
        }
        Ticket(batch)
    }

    /// Performs every job and returns when all have finished; the first error, if any.
    pub fn read_all(&self, jobs: Vec<ReadJob>) -> Result<(), ReadError> {
        self.submit(jobs, Priority::Demand).wait()
    }
}

fn reader(s: &Shared) {
    loop {
        let work = {
            let mut q = lock(&s.queue);
            loop {
                if let Some(w) = q.pop() {
                    break w;
                }
                if q.closed {
                    return;
                }
                q = s.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let (job, batch) = work;
        let r = job.run();
        if r.is_ok() {
            job.finish();
        }
        batch.finish(r);
    }
}

/// Creates a ring and checks that it works (a no-op round trip): sandboxes may forbid
/// `io_uring_setup` or `io_uring_enter`.
fn probe_uring(depth: usize) -> Result<io_uring::IoUring, String> {
    let entries = (depth as u32).next_power_of_two().max(2);
    let mut ring = io_uring::IoUring::new(entries).map_err(|e| format!("io_uring_setup: {e}"))?;
    let nop = io_uring::opcode::Nop::new().build().user_data(7);
    // SAFETY: a no-op references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "submission queue full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let done = ring
        .completion()
        .next()
        .map(|c| (c.user_data(), c.result()));
    match done {
        Some((7, r)) if r >= 0 => Ok(ring),
        Some((_, r)) => Err(format!(
            "no-op failed: {}",
            std::io::Error::from_raw_os_error(-r)
        )),
        None => Err("no completion for a no-op".into()),
    }
}

/// A read in the ring: the job, how far it got.
struct InFlight {
    work: Work,
    got: usize,
}

fn uring_loop(mut ring: io_uring::IoUring, s: &Shared, depth: usize) {
    let mut slots: Vec<Option<InFlight>> = (0..depth).map(|_| None).collect();
    let mut free: Vec<usize> = (0..depth).rev().collect();
    loop {
        // Fill the ring from the queue; block only when nothing is in flight.
        {
            let mut q = lock(&s.queue);
            while !free.is_empty() {
                match q.pop() {
                    Some((job, batch)) => {
                        if job.fd().is_none() {
                            batch.finish(job.run());
                            continue;
                        }
                        let k = free.pop().expect("a free slot");
                        slots[k] = Some(InFlight {
                            work: (job, batch),
                            got: 0,
                        });
                        push_read(&mut ring, &slots, k);
                    }
                    None if free.len() == depth => {
                        if q.closed {
                            return;
                        }
                        q = s.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                    }
                    None => break,
                }
            }
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The ring broke: fail what is in flight (it is not touched again).
            for f in slots.iter_mut().filter_map(Option::take) {
                f.work.1.finish(Err(f
                    .work
                    .0
                    .error(std::io::Error::other(format!("io_uring_enter: {e}")))));
            }
            return;
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (k, res) in done {
            let k = k as usize;
            let f = slots[k].as_mut().expect("a read in flight");
            let needed = f.work.0.len;
            let direct = f.work.0.is_direct();
            let outcome = if res < 0 {
                let err = std::io::Error::from_raw_os_error(-res);
                if err.kind() == std::io::ErrorKind::Interrupted || -res == libc::EAGAIN {
                    None
                } else {
                    Some(Err(err))
                }
            } else if res == 0 {
                // End of file: a direct superset may stop in its last block.
                if direct && f.got + DIRECT_ALIGN > needed && f.got > 0 {
                    Some(Ok(()))
                } else {
                    Some(Err(std::io::ErrorKind::UnexpectedEof.into()))
                }
            } else {
                f.got += res as usize;
                (f.got >= needed).then_some(Ok(()))
            };
            match outcome {
                None => push_read(&mut ring, &slots, k),
                Some(r) => {
                    let f = slots[k].take().expect("a read in flight");
                    let (job, batch) = f.work;
                    if r.is_ok() {
                        job.finish();
                    }
                    batch.finish(r.map_err(|e| job.error(e)));
                    free.push(k);
                }
            }
        }
    }
}

/// Pushes the (rest of the) read in slot `k` onto the submission queue.
fn push_read(ring: &mut io_uring::IoUring, slots: &[Option<InFlight>], k: usize) {
    let f = slots[k].as_ref().expect("a read in flight");
    let job = &f.work.0;
    let (fd, _) = job.fd().expect("a file read");
    let offset = match &job.src {
        ReadSrc::File { offset, .. } => *offset,
        ReadSrc::Memory(_) => unreachable!("memory jobs are copied, not queued"),
    };
    let entry = io_uring::opcode::Read::new(
        io_uring::types::Fd(fd),
        // SAFETY: `got < len`: inside the destination.
        unsafe { job.dst.add(f.got) },
        (job.len - f.got) as u32,
    )
    .offset(offset + f.got as u64)
    .build()
    .user_data(k as u64);
    // SAFETY: the destination stays valid until the completion is reaped (see `ReadJob`);
    // the ring has `depth` entries and at most `depth` reads are queued.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit().expect("flushing a full submission queue");
        unsafe { ring.submission().push(&entry) }.expect("room after a flush");
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(src: &Bytes, dst: &mut [u8], n: usize) -> Vec<ReadJob> {
        dst.chunks_mut(src.len())
            .take(n)
            .map(|d| ReadJob::new(src, None, d.as_mut_ptr(), false))
            .collect()
    }

    /// A sandbox that forbids io_uring: the pool falls back to pread threads, says why, and
    /// reads as before.
    #[test]
    fn forbidden_io_uring_falls_back_to_the_pread_pool() {
        let forbidden = |_| Err("io_uring_setup: Operation not permitted (os error 1)".into());
        let pool = IoPool::with_probe(3, IoEngine::Auto, forbidden);
        assert_eq!(pool.engine_name(), "pread pool of 3 threads");
        assert!(pool
            .uring_failure
            .as_deref()
            .unwrap()
            .contains("not permitted"));
        let src = Bytes::copied(&(0..200u8).collect::<Vec<_>>());
        let mut dst = vec![0u8; 200 * 5];
        pool.read_all(jobs(&src, &mut dst, 5)).unwrap();
        assert!(dst.chunks(200).all(|c| c == src.as_slice()));
    }

    #[test]
    fn prefetch_reads_complete_behind_their_ticket() {
        for engine in [IoEngine::Pread, IoEngine::IoUring] {
            let pool = IoPool::new(2, engine);
            let src = Bytes::copied(&[7u8; 64]);
            let mut dst = vec![0u8; 64 * 8];
            let t = pool.submit(jobs(&src, &mut dst, 8), Priority::Prefetch);
            t.wait().unwrap();
            assert!(t.is_done());
            assert!(dst.iter().all(|&b| b == 7), "{engine:?}");
        }
    }
}
