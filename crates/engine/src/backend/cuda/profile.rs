//! Per-op timing of the CUDA backend (`MOESTREAM_CUDA_PROFILE=1`): each kernel launch and
//! host copy runs between two stream syncs and its wall time is added to its name's total;
//! the table goes to stderr when the backend is dropped. Syncing after every op serialises
//! the host and the GPU, so the totals attribute time (launch included) rather than
//! measure the normal, overlapped speed.

use cudarc::driver::CudaStream;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub(super) struct Profile {
    on: bool,
    /// Per op name: calls and seconds.
    totals: Mutex<Vec<(&'static str, u64, f64)>>,
}

impl Profile {
    pub fn from_env() -> Profile {
        Profile {
            on: std::env::var_os("MOESTREAM_CUDA_PROFILE").is_some_and(|v| v != "0"),
            totals: Mutex::default(),
        }
    }

    /// Runs `f` (an op queued on `stream`); when profiling, timed between syncs.
    pub fn time<R>(&self, stream: &CudaStream, name: &'static str, f: impl FnOnce() -> R) -> R {
        if !self.on {
            return f();
        }
        let _ = stream.synchronize();
        let t = Instant::now();
        let r = f();
        let _ = stream.synchronize();
        let secs = t.elapsed().as_secs_f64();
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        match totals.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => {
                e.1 += 1;
                e.2 += secs;
            }
            None => totals.push((name, 1, secs)),
        }
        r
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let mut totals = std::mem::take(self.totals.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !self.on || totals.is_empty() {
            return;
        }
        totals.sort_by(|a, b| b.2.total_cmp(&a.2));
        let all: f64 = totals.iter().map(|t| t.2).sum();
        eprintln!(
            "CUDA op profile (synced per op): {:.1} ms in all",
            all * 1e3
        );
        for (name, calls, secs) in totals {
            eprintln!(
                "  {name:<20} {calls:>8} calls {:>10.2} ms {:>5.1}%  {:>8.1} us/call",
                secs * 1e3,
                100.0 * secs / all,
                secs * 1e6 / calls as f64
            );
        }
    }
}
