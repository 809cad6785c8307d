//! The CUDA backend (first version): the blocks' ops as CUDA kernels (`kernels.cu`, compiled
//! at run time by NVRTC for the GPU in use), over device buffers, with the weights and every
//! routed expert resident in device memory.
//!
//! The CUDA libraries are loaded at run time (cudarc's dynamic loading), so the binary builds
//! and runs where there is no CUDA; [`Cuda::new`] says what is missing there.
//!
//! Every architecture runs (standard and gated attention, MLA in the absorbed form, the Gated
//! DeltaNet). What this version does not do yet (each a clear error, never a wrong answer):
//! streamed experts (refused by [`to_cuda`]) and int8 activations (it always computes in
//! f32, `--exact`'s arithmetic).
//!
//! Routing runs on the device (`router_topk`), and so do the routed experts, with no host
//! sync: a few tokens' slots (decode) straight from the device's expert ids, one kernel for
//! gate, up and SwiGLU and one for the down projection; a prompt's grouped by expert first
//! (a counting sort in one block) so each expert's rows are read once for all its slots.

mod buffer;
mod prepare;
mod profile;

pub use buffer::{DevBuf, Device};
pub use prepare::{to_cuda, CudaExperts, CudaWeights, DevMat};

use super::{Backend, DeltaRule, Rope, WeightLayout};
use crate::cache::{DeltaState, KvCache, MoeDispatch};
use crate::error::RunError;
use crate::experts::ExpertSource;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use moestream_kernels::attention::AttnShape;
use moestream_kernels::delta::DeltaShape;
use moestream_kernels::mla::MlaShape;
use moestream_kernels::router::{router_topk, RouterKind};
use moestream_kernels::Precision;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Buf = DevBuf<f32>;
type Ids = DevBuf<u32>;

const SOURCE: &str = include_str!("kernels.cu");

/// Declares the kernels the backend loads from `kernels.cu`: the struct of their handles,
/// the loader, and [`KERNEL_NAMES`] (a test holds the compiled PTX to that list, so a
/// kernel the backend uses cannot go missing from the source unnoticed).
macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// The kernels of `kernels.cu`.
        struct Kernels {
            $($name: CudaFunction,)*
        }

        /// Every kernel the backend loads, by name.
        pub const KERNEL_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl Kernels {
            fn load(module: &Arc<cudarc::driver::CudaModule>) -> Result<Kernels, String> {
                let f = |n: &str| {
                    module
                        .load_function(n)
                        .map_err(|e| format!("CUDA kernel {n}: {e}"))
                };
                Ok(Kernels {
                    $($name: f(stringify!($name))?,)*
                })
            }
        }
    };
}

kernels!(
    gather_matmul,
    embed_rows,
    silu_mul,
    rms_norm,
    residual_rows,
    sigmoid_inplace,
    sigmoid_gate,
    scaled_add_rows,
    moe_combine,
    split_heads,
    rope_append,
    grow_cache,
    attention,
    fill,
    router_topk,
    moe_gate_up,
    moe_down,
    moe_group,
    moe_gate_up_grouped,
    moe_down_grouped,
    rope_append_latent,
    mla_attention,
    unfuse_delta,
    delta_gates,
    conv_silu,
    l2norm_qk,
    gated_delta,
    gated_rms_norm,
);

/// Routed slots (`rows * k`) up to which a MoE layer runs without grouping by expert: every
/// slot reads its expert's weights itself, which costs nothing extra while slots rarely
/// share an expert (decode), and saves the sort kernel and the expert-wide grids of the
/// grouped kernels.
const DIRECT_SLOTS: usize = 64;

/// The most experts a layer may have for the device's grouping (`moe_group`'s shared
/// counters).
const MAX_GROUPED_EXPERTS: usize = 1024;

/// The router kernel's limits (`ROUTER_MAX_*` in kernels.cu); larger routers run on the
/// host.
const ROUTER_MAX_EXPERTS: usize = 512;
const ROUTER_MAX_K: usize = 32;
const ROUTER_MAX_GROUPS: usize = 64;

/// One NVIDIA GPU and a stream on it.
pub struct Cuda {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    name: String,
    /// The first failure since the last [`Backend::check`]; ops do nothing once set.
    error: Mutex<Option<String>>,
    /// Buffers the ops reuse from call to call instead of allocating per token.
    staging: Mutex<Staging>,
    profile: profile::Profile,
}

/// Per-call device buffers kept between calls: host values an op copies in (token ids, row
/// indices), the logits before they go to the host, a split's spare output, and the RoPE
/// frequency tables, each uploaded once.
#[derive(Default)]
struct Staging {
    ids: Ids,
    logits: Buf,
    spare: Buf,
    inv_freq: Vec<(Vec<f32>, Buf)>,
}

/// Launches `$f` with `$grid` blocks (x, y) of `$block` threads and the arguments given.
macro_rules! launch {
    ($self:ident, $f:ident, $grid:expr, $block:expr; $($arg:expr),* $(,)?) => {{
        if !$self.failed() {
            let (gx, gy): (u32, u32) = $grid;
            let cfg = LaunchConfig {
                grid_dim: (gx.max(1), gy.max(1), 1),
                block_dim: ($block, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = $self.stream.launch_builder(&$self.kernels.$f);
            $( let a = $arg; b.arg(&a); )*
            // SAFETY: the arguments match the kernel's signature in kernels.cu.
            let r = $self.profile.time(&$self.stream, stringify!($f), || unsafe { b.launch(cfg) });
            $self.ok(r.map(|_| ()), stringify!($f));
        }
    }};
}

impl Cuda {
    /// The GPU `ordinal`, with the kernels compiled for it. Fails with what is missing: no
    /// driver library, no NVRTC, no such GPU, or a compile error.
    pub fn new(ordinal: usize) -> Result<Cuda, String> {
        // SAFETY: only probes whether the libraries can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver on this machine (libcuda could not be loaded)".into());
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(
                "no NVRTC on this machine (libnvrtc could not be loaded; it ships \
                        with the CUDA toolkit)"
                    .into(),
            );
        }
        let count = CudaContext::device_count().map_err(|e| format!("CUDA: {e}"))?;
        if ordinal as i32 >= count {
            return Err(format!(
                "no CUDA device {ordinal}: this machine has {count}"
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e}"))?;
        // Every buffer lives on the one stream, so cudarc's per-buffer events only cost time.
        // SAFETY: the backend uses a single stream.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("CUDA device {ordinal}: {e}"))?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA GPU".into());
        let (ptx, _) = kernels_ptx(major, minor, cache_dir().as_deref())?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| format!("loading the CUDA kernels: {e}"))?;
        let kernels = Kernels::load(&module)?;
        Ok(Cuda {
            stream: ctx.default_stream(),
            kernels,
            name: format!("{name} (sm_{major}{minor})"),
            error: Mutex::new(None),
            staging: Mutex::new(Staging::default()),
            profile: profile::Profile::from_env(),
        })
    }

    /// The GPU's name and compute capability.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// A device buffer holding `host` (tests and tools; errors surface at `check`).
    pub fn buffer<T: DeviceRepr + ValidAsZeroBits>(&self, host: &[T]) -> DevBuf<T> {
        self.uploaded(host)
    }

    /// `b`'s values on the host (waits for the stream).
    pub fn to_host<T: DeviceRepr + ValidAsZeroBits + Default + Clone>(
        &self,
        b: &DevBuf<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        self.download(b, &mut out);
        out
    }

    fn failed(&self) -> bool {
        self.error.lock().map_or(true, |e| e.is_some())
    }

    /// Keeps the first error of `r` (what was being done: `what`).
    fn ok<T>(&self, r: Result<T, cudarc::driver::DriverError>, what: &str) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(format!("{what}: {e}"));
                None
            }
        }
    }

    fn fail(&self, msg: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(msg);
        }
    }

    /// An op this version has no kernel for (never reached: `to_cuda` refuses such models).
    fn unsupported(&self, what: &str) {
        self.fail(format!("{what} is not implemented on CUDA yet"));
    }

    /// The reusable buffers (a poisoned lock only means a panic elsewhere: the buffers are
    /// still whole).
    fn staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        self.staging.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Device address of `host` copied into the staging id buffer (valid until the next
    /// call that stages ids: the copy and the kernel reading it are ordered on the stream).
    fn stage_ids(&self, host: &[u32]) -> u64 {
        let mut st = self.staging();
        self.upload(&mut st.ids, host);
        self.ptr(&st.ids)
    }

    /// Device address of the frequency table `inv_freq`, uploaded on first use.
    fn freq_table(&self, inv_freq: &[f32]) -> u64 {
        let mut st = self.staging();
        if let Some((_, b)) = st.inv_freq.iter().find(|(h, _)| h.as_slice() == inv_freq) {
            return self.ptr(b);
        }
        let b = self.uploaded(inv_freq);
        let p = self.ptr(&b);
        st.inv_freq.push((inv_freq.to_vec(), b));
        p
    }

    /// The device address of `b` (0 when it has no allocation).
    fn ptr<T>(&self, b: &DevBuf<T>) -> u64 {
        b.slice.as_ref().map_or(0, |s| s.device_ptr(&self.stream).0)
    }

    /// Sizes `b` to `n` values, keeping its first values and zeroing new ones.
    fn resize_buf<T: DeviceRepr + ValidAsZeroBits>(&self, b: &mut DevBuf<T>, n: usize) {
        if self.failed() {
            return;
        }
        if n > b.capacity() {
            let cap = n.max(b.capacity() * 3 / 2);
            let Some(mut fresh) = self.ok(self.stream.alloc_zeros::<T>(cap), "allocating") else {
                return;
            };
            if let Some(old) = &b.slice {
                if b.len > 0 {
                    let r = self
                        .stream
                        .memcpy_dtod(&old.slice(..b.len), &mut fresh.slice_mut(..b.len));
                    self.ok(r, "copying");
                }
            }
            b.slice = Some(fresh);
        } else if n > b.len {
            if let Some(s) = &mut b.slice {
                let r = self.stream.memset_zeros(&mut s.slice_mut(b.len..n));
                self.ok(r, "zeroing");
            }
        }
        b.len = n;
    }

    /// `b = host`.
    fn upload<T: DeviceRepr + ValidAsZeroBits>(&self, b: &mut DevBuf<T>, host: &[T]) {
        self.resize_buf(b, host.len());
        if let (false, Some(s), false) = (self.failed(), &mut b.slice, host.is_empty()) {
            let r = self.profile.time(&self.stream, "copy to device", || {
                self.stream
                    .memcpy_htod(host, &mut s.slice_mut(..host.len()))
            });
            self.ok(r, "copying to the device");
        }
    }

    /// A new buffer holding `host`.
    fn uploaded<T: DeviceRepr + ValidAsZeroBits>(&self, host: &[T]) -> DevBuf<T> {
        let mut b = DevBuf::default();
        self.upload(&mut b, host);
        b
    }

    /// `out = b` on the host (waits for the stream).
    fn download<T: DeviceRepr + ValidAsZeroBits + Default + Clone>(
        &self,
        b: &DevBuf<T>,
        out: &mut Vec<T>,
    ) {
        out.clear();
        out.resize(b.len, T::default());
        if let (false, Some(s), false) = (self.failed(), &b.slice, b.len == 0) {
            let r = self.profile.time(&self.stream, "copy to host", || {
                self.stream
                    .memcpy_dtoh(&s.slice(..b.len), out.as_mut_slice())
            });
            self.ok(r, "copying to the host");
            // A copy into pageable memory may return before it lands: the caller reads `out`
            // next.
            let r = self.stream.synchronize();
            self.ok(r, "synchronizing");
        }
    }

    /// Elementwise launch shape for `n` values.
    fn flat(n: usize) -> (u32, u32) {
        (n.div_ceil(256) as u32, 1)
    }

    /// `out[out_idx[t]] = x[x_idx[t]] W^T + b` for `n` rows (index addresses of 0: the
    /// identity).
    #[allow(clippy::too_many_arguments)]
    fn gathered(&self, x: u64, x_idx: u64, n: usize, w: &DevMat, out: u64, out_idx: u64) {
        if n == 0 {
            return;
        }
        let grid = (w.arg.rows as usize).div_ceil(8) as u32;
        launch!(self, gather_matmul, (grid, 1), 256; x, x_idx, n as i32, w.arg, out, out_idx);
    }

    /// Grows a head-major cache buffer `[heads, cap, w]` to `new_cap`, keeping `keep`
    /// positions of each head.
    fn grow(
        &self,
        b: &mut Buf,
        heads: usize,
        (cap, new_cap): (usize, usize),
        keep: usize,
        w: usize,
    ) {
        let mut fresh = Buf::default();
        self.resize_buf(&mut fresh, heads * new_cap * w);
        if keep > 0 {
            let (src, dst) = (self.ptr(b), self.ptr(&fresh));
            let grid = ((keep * w).div_ceil(256).min(1024) as u32, heads as u32);
            launch!(self, grow_cache, grid, 256; src, dst, cap as i32, new_cap as i32,
                keep as i32, w as i32);
        }
        *b = fresh;
    }

    fn reserve(&self, kv: &mut KvCache<Device>, len: usize, keep: usize) {
        if len <= kv.cap {
            return;
        }
        let new_cap = kv.grown_cap(len);
        let caps = (kv.cap, new_cap);
        self.grow(&mut kv.k, kv.n_kv, caps, keep, kv.head_dim);
        self.grow(&mut kv.v, kv.n_kv, caps, keep, kv.v_dim);
        kv.cap = new_cap;
    }

    /// `norm` over rows of `stride` (the first `width` values of each), from `x` (+ `delta`,
    /// written back to `x`) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        x: u64,
        delta: u64,
        w: &Buf,
        eps: f32,
        width: usize,
        stride: usize,
        rows: usize,
        out: u64,
    ) {
        // No rows (a prompt chunk that wants no logits): no launch (the grid would round up
        // to one block over an empty buffer).
        if rows == 0 {
            return;
        }
        let wp = self.ptr(w);
        launch!(self, rms_norm, (rows as u32, 1), 256; x, delta, wp, eps, width as i32,
            stride as i32, out);
    }
}

impl Cuda {
    /// Each `[a | b]` head of `x` into the rows of `left` and `right`.
    fn split(&self, x: &Buf, left: &mut Buf, right: &mut Buf, a: usize, b: usize) {
        let n = x.len;
        let heads = n / (a + b).max(1);
        self.resize_buf(left, heads * a);
        self.resize_buf(right, heads * b);
        let (xp, lp, rp) = (self.ptr(x), self.ptr(left), self.ptr(right));
        launch!(self, split_heads, Self::flat(n), 256; xp, lp, rp, a as i32, b as i32, n as i32);
    }

    /// Routing on the host with the CPU's `router_topk`, for routers larger than the
    /// kernel's limits (a sync per MoE layer).
    #[allow(clippy::too_many_arguments)]
    fn router_on_host(
        &self,
        kind: &RouterKind,
        logits: &Buf,
        experts: usize,
        bias: Option<&Buf>,
        k: usize,
        ids: &mut Ids,
        w: &mut Buf,
    ) {
        let (mut host, mut host_bias) = (Vec::new(), Vec::new());
        self.download(logits, &mut host);
        if let Some(b) = bias {
            self.download(b, &mut host_bias);
        }
        let rows = host.len() / experts.max(1);
        let (mut hid, mut hw) = (vec![0u32; rows * k], vec![0f32; rows * k]);
        for ((l, i), wt) in host
            .chunks_exact_mut(experts)
            .zip(hid.chunks_exact_mut(k))
            .zip(hw.chunks_exact_mut(k))
        {
            router_topk(kind, l, bias.map(|_| host_bias.as_slice()), i, wt);
        }
        self.upload(ids, &hid);
        self.upload(w, &hw);
    }
}

impl Backend for Cuda {
    type Mem = Device;
    type Weights = CudaWeights;
    type Experts = CudaExperts;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn check(&self) -> Result<(), RunError> {
        let r = self.stream.synchronize();
        self.ok(r, "synchronizing");
        match self.error.lock() {
            Ok(mut e) => e.take().map_or(Ok(()), |m| Err(RunError::Device(m))),
            Err(_) => Err(RunError::Device("the error state was poisoned".into())),
        }
    }

    fn weight_layout(&self, _p: Precision) -> WeightLayout {
        // The kernels read MLX's row-major layout.
        WeightLayout::default()
    }

    fn zeros(&self, n: usize) -> Buf {
        let mut b = Buf::default();
        self.resize_buf(&mut b, n);
        b
    }

    fn resize(&self, b: &mut Buf, n: usize) {
        self.resize_buf(b, n);
    }

    fn fill(&self, b: &mut Buf, v: f32) {
        let (p, n) = (self.ptr(b), b.len);
        launch!(self, fill, Self::flat(n), 256; p, v, n as i32);
    }

    fn append_rows(&self, dst: &mut Buf, src: &Buf, rows: Range<usize>, width: usize) {
        let (at, n) = (dst.len, rows.len() * width);
        self.resize_buf(dst, at + n);
        if let (false, Some(d), Some(s), true) = (self.failed(), &mut dst.slice, &src.slice, n > 0)
        {
            let r = self.stream.memcpy_dtod(
                &s.slice(rows.start * width..rows.end * width),
                &mut d.slice_mut(at..at + n),
            );
            self.ok(r, "appending rows");
        }
    }

    fn ids_to_host(&self, b: &Ids, out: &mut Vec<u32>) {
        self.download(b, out);
    }

    fn embed<'t>(
        &self,
        table: &DevMat,
        tokens: impl Iterator<Item = &'t u32>,
        rows: usize,
        x: &mut Buf,
    ) {
        let ids: Vec<u32> = tokens.copied().collect();
        let ip = self.stage_ids(&ids);
        self.resize_buf(x, rows * table.arg.cols as usize);
        let xp = self.ptr(x);
        launch!(self, embed_rows, (rows as u32, 1), 256; table.arg, ip, rows as i32, xp);
    }

    fn linear(&self, _p: Precision, x: &Buf, rows: usize, w: &DevMat, out: &mut Buf) {
        self.resize_buf(out, rows * w.arg.rows as usize);
        self.gathered(self.ptr(x), 0, rows, w, self.ptr(out), 0);
    }

    fn logits(&self, p: Precision, x: &Buf, rows: usize, w: &DevMat, out: &mut Vec<f32>) {
        let mut dev = std::mem::take(&mut self.staging().logits);
        self.linear(p, x, rows, w, &mut dev);
        self.download(&dev, out);
        self.staging().logits = dev;
    }

    fn per_head_linear(
        &self,
        _p: Precision,
        x: &Buf,
        rows: usize,
        heads: &[DevMat],
        idx: &mut Ids,
        out: &mut Buf,
    ) {
        let nh = heads.len();
        let width = heads.first().map_or(0, |h| h.arg.rows as usize);
        self.resize_buf(out, rows * nh * width);
        // Head h of token t is row t * nh + h of both x and out: index tables per head,
        // `idx[h * rows + t]`. Only this op writes `idx`, and the table depends on nothing
        // but its length (both of MLA's per-head projections have the same heads), so it
        // is uploaded only when the row count changes, not per token and layer.
        if idx.len != nh * rows {
            let table: Vec<u32> = (0..nh)
                .flat_map(|h| (0..rows).map(move |t| (t * nh + h) as u32))
                .collect();
            self.upload(idx, &table);
        }
        let (xp, op, ip) = (self.ptr(x), self.ptr(out), self.ptr(idx));
        for (h, w) in heads.iter().enumerate() {
            let at = ip + 4 * (h * rows) as u64;
            self.gathered(xp, at, rows, w, op, at);
        }
    }

    fn swiglu(
        &self,
        _p: Precision,
        _fused: bool,
        x: &Buf,
        rows: usize,
        (gate, up): (&DevMat, &DevMat),
        h: &mut Buf,
        (_idx, u): (&mut Ids, &mut Buf),
    ) {
        let n = rows * gate.arg.rows as usize;
        self.resize_buf(h, n);
        self.resize_buf(u, n);
        let xp = self.ptr(x);
        self.gathered(xp, 0, rows, gate, self.ptr(h), 0);
        self.gathered(xp, 0, rows, up, self.ptr(u), 0);
        let (hp, up_) = (self.ptr(h), self.ptr(u));
        launch!(self, silu_mul, Self::flat(n), 256; hp, up_, n as i32);
    }

    fn add_rms_norm(&self, x: &mut Buf, delta: &Buf, w: &Buf, eps: f32, xn: &mut Buf) {
        self.resize_buf(xn, x.len);
        let rows = x.len / w.len.max(1);
        let (xp, dp, op) = (self.ptr(x), self.ptr(delta), self.ptr(xn));
        self.norm(xp, dp, w, eps, w.len, w.len, rows, op);
    }

    fn rms_norm_rows(&self, x: &mut Buf, w: &Buf, eps: f32) {
        let xp = self.ptr(x);
        self.norm(xp, 0, w, eps, w.len, w.len, x.len / w.len.max(1), xp);
    }

    fn rms_norm_prefix(&self, x: &mut Buf, w: &Buf, eps: f32, stride: usize) {
        let xp = self.ptr(x);
        self.norm(xp, 0, w, eps, w.len, stride, x.len / stride.max(1), xp);
    }

    fn rms_norm(&self, x: &Buf, w: &Buf, eps: f32, out: &mut Buf) {
        self.resize_buf(out, x.len);
        let (xp, op) = (self.ptr(x), self.ptr(out));
        self.norm(xp, 0, w, eps, w.len, w.len, x.len / w.len.max(1), op);
    }

    fn residual_rows(&self, x: &Buf, delta: &Buf, rows: &[usize], width: usize, out: &mut Buf) {
        self.resize_buf(out, rows.len() * width);
        if rows.is_empty() {
            return;
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ip = self.stage_ids(&idx);
        let (xp, dp, op) = (self.ptr(x), self.ptr(delta), self.ptr(out));
        launch!(self, residual_rows, (rows.len() as u32, 1), 256; xp, dp, ip, width as i32, op);
    }

    fn sigmoid(&self, x: &mut Buf) {
        let (p, n) = (self.ptr(x), x.len);
        launch!(self, sigmoid_inplace, Self::flat(n), 256; p, n as i32);
    }

    fn sigmoid_gate(&self, out: &mut Buf, gate: &Buf) {
        let (op, gp, n) = (self.ptr(out), self.ptr(gate), out.len);
        launch!(self, sigmoid_gate, Self::flat(n), 256; op, gp, n as i32);
    }

    fn scaled_add_rows(&self, w: &Buf, y: &Buf, delta: &mut Buf, width: usize) {
        let n = w.len * width;
        let (wp, yp, dp) = (self.ptr(w), self.ptr(y), self.ptr(delta));
        launch!(self, scaled_add_rows, Self::flat(n), 256; wp, yp, dp, width as i32, n as i32);
    }

    fn split_query_gate(&self, qg: &mut Buf, gate: &mut Buf, head_dim: usize) {
        // The queries go to a spare buffer that then trades places with `qg`.
        let mut q = std::mem::take(&mut self.staging().spare);
        self.split(qg, &mut q, gate, head_dim, head_dim);
        self.staging().spare = std::mem::replace(qg, q);
    }

    fn split_heads(&self, x: &Buf, left: &mut Buf, right: &mut Buf, a: usize, b: usize) {
        self.split(x, left, right, a, b);
    }

    fn rope_append(
        &self,
        kv: &mut KvCache<Device>,
        q: &mut Buf,
        k: &mut Buf,
        v: &Buf,
        rows: Range<usize>,
        offset: usize,
        rope: Rope,
    ) {
        let (n, hd) = (rows.len(), kv.head_dim);
        let nk = kv.n_kv;
        let total = k.len / (nk * hd).max(1);
        let nq = q.len / (total * hd).max(1);
        self.reserve(kv, offset + n, offset);
        let fp = self.freq_table(rope.inv_freq);
        let (qp, kp, vp) = (self.ptr(q), self.ptr(k), self.ptr(v));
        let (kc, vc) = (self.ptr(&kv.k), self.ptr(&kv.v));
        launch!(self, rope_append, (n as u32, (nq + nk) as u32), 64;
            qp, kp, vp, rows.start as i32, n as i32, nq as i32, nk as i32, hd as i32, fp,
            rope.inv_freq.len() as i32, rope.traditional as i32, rope.mscale, offset as i32, kc,
            vc, kv.cap as i32);
    }

    fn attention(
        &self,
        q: &Buf,
        rows: Range<usize>,
        kv: &KvCache<Device>,
        s: AttnShape,
        out: &mut Buf,
    ) {
        if s.head_dim > 256 {
            return self.unsupported("attention over heads wider than 256");
        }
        // One block of 8 warps per (query, head) (ATT_WARPS in kernels.cu).
        let blocks = s.l * s.n_heads;
        let (qp, kc, vc, op) = (self.ptr(q), self.ptr(&kv.k), self.ptr(&kv.v), self.ptr(out));
        launch!(self, attention, (blocks as u32, 1), 256;
            qp, rows.start as i32, s.l as i32, s.t as i32, s.n_heads as i32, s.n_kv as i32,
            s.head_dim as i32, s.scale, kc, vc, kv.cap as i32, op);
    }

    fn rope_append_latent(
        &self,
        kv: &mut KvCache<Device>,
        q_pe: &mut Buf,
        ckv: &mut Buf,
        rows: Range<usize>,
        offset: usize,
        (r, dr): (usize, usize),
        rope: Rope,
    ) {
        let n = rows.len();
        let nh = q_pe.len / (ckv.len / (r + dr)).max(1) / dr.max(1);
        self.reserve(kv, offset + n, offset);
        let fp = self.freq_table(rope.inv_freq);
        let (qp, cp, lat, kpe) = (
            self.ptr(q_pe),
            self.ptr(ckv),
            self.ptr(&kv.k),
            self.ptr(&kv.v),
        );
        launch!(self, rope_append_latent, (n as u32, nh as u32 + 1), 64;
            qp, cp, rows.start as i32, n as i32, nh as i32, r as i32, dr as i32, fp,
            rope.inv_freq.len() as i32, rope.traditional as i32, rope.mscale, offset as i32,
            lat, kpe);
    }

    fn mla_attention(
        &self,
        (q_lat, q_pe): (&Buf, &Buf),
        rows: Range<usize>,
        kv: &KvCache<Device>,
        s: MlaShape,
        out: &mut Buf,
    ) {
        if s.rank > 512 || s.rope_dim > 128 {
            return self.unsupported("MLA with a latent wider than 512 or a rotary key over 128");
        }
        let warps = s.l * s.n_heads;
        let (qp, pp, lat, kpe) = (
            self.ptr(q_lat),
            self.ptr(q_pe),
            self.ptr(&kv.k),
            self.ptr(&kv.v),
        );
        let op = self.ptr(out);
        launch!(self, mla_attention, (warps.div_ceil(8) as u32, 1), 256;
            qp, pp, rows.start as i32, s.l as i32, s.t as i32, s.n_heads as i32, s.rank as i32,
            s.rope_dim as i32, s.scale, lat, kpe, op);
    }

    fn unfuse_delta_inputs(
        &self,
        fused: &Buf,
        ba: &Buf,
        shape: DeltaShape,
        rows: usize,
        [qkv, z, b, a]: [&mut Buf; 4],
    ) {
        let (c, vd, hv) = (shape.channels(), shape.value_dim(), shape.hv);
        self.resize_buf(qkv, rows * c);
        self.resize_buf(z, rows * vd);
        self.resize_buf(b, rows * hv);
        self.resize_buf(a, rows * hv);
        let n = fused.len;
        let (fp, bp) = (self.ptr(fused), self.ptr(ba));
        let outs = (self.ptr(qkv), self.ptr(z), self.ptr(b), self.ptr(a));
        launch!(self, unfuse_delta, Self::flat(n), 256; fp, bp, rows as i32,
            shape.hk as i32, shape.dk as i32, hv as i32, shape.dv as i32, outs.0, outs.1,
            outs.2, outs.3);
    }

    fn delta_gates(
        &self,
        a: &Buf,
        b: &Buf,
        a_exp: &Buf,
        dt_bias: &Buf,
        g: &mut Buf,
        beta: &mut Buf,
    ) {
        let n = a.len;
        self.resize_buf(g, n);
        self.resize_buf(beta, n);
        let (ap, bp, ep, dp) = (self.ptr(a), self.ptr(b), self.ptr(a_exp), self.ptr(dt_bias));
        let (gp, tp) = (self.ptr(g), self.ptr(beta));
        launch!(self, delta_gates, Self::flat(n), 256; ap, bp, ep, dp, a_exp.len as i32, gp, tp,
            n as i32);
    }

    fn delta_advance(
        &self,
        rule: DeltaRule<Self>,
        st: &mut DeltaState<Device>,
        (qkv, g, beta): (&Buf, &Buf, &Buf),
        rows: Range<usize>,
        conv: &mut Buf,
        y: &mut Buf,
    ) {
        let sh = rule.shape;
        if sh.dk > 256 {
            return self.unsupported("the Gated DeltaNet with key heads wider than 256");
        }
        let (c, n, r0) = (sh.channels(), rows.len() as i32, rows.start as i32);
        if n == 0 {
            return;
        }
        let (win, xp, wp, cp) = (
            self.ptr(&st.conv),
            self.ptr(qkv),
            self.ptr(rule.conv_w),
            self.ptr(conv),
        );
        launch!(self, conv_silu, Self::flat(c), 256; win, xp, r0, n, c as i32, wp,
            rule.kernel as i32, cp);
        let heads = rows.len() * 2 * sh.hk;
        launch!(self, l2norm_qk, (heads.div_ceil(8) as u32, 1), 256; cp, r0, n, sh.hk as i32,
            sh.dk as i32, c as i32);
        let (gp, bp, sp, yp) = (
            self.ptr(g),
            self.ptr(beta),
            self.ptr(&st.state),
            self.ptr(y),
        );
        let state_rows = sh.hv * sh.dv;
        launch!(self, gated_delta, (state_rows.div_ceil(8) as u32, 1), 256; cp, gp, bp, r0, n,
            sh.hk as i32, sh.dk as i32, sh.hv as i32, sh.dv as i32, sp, yp);
    }

    fn gated_rms_norm(&self, y: &mut Buf, z: &Buf, w: &Buf, eps: f32) {
        let rows = y.len / w.len.max(1);
        if rows == 0 {
            return;
        }
        let (yp, zp, wp) = (self.ptr(y), self.ptr(z), self.ptr(w));
        launch!(self, gated_rms_norm, (rows as u32, 1), 256; yp, zp, wp, eps, w.len as i32);
    }

    fn copy_state(&self, dst: &mut DeltaState<Device>, src: &DeltaState<Device>) {
        for (d, s) in [(&mut dst.conv, &src.conv), (&mut dst.state, &src.state)] {
            if let (false, Some(d), Some(s)) = (self.failed(), &mut d.slice, &s.slice) {
                let r = self.stream.memcpy_dtod(s, d);
                self.ok(r, "copying a state");
            }
        }
    }

    fn router_topk(
        &self,
        kind: &RouterKind,
        logits: &mut Buf,
        experts: usize,
        bias: Option<&Buf>,
        k: usize,
        ids: &mut Ids,
        w: &mut Buf,
    ) {
        let rows = logits.len / experts.max(1);
        self.resize_buf(ids, rows * k);
        self.resize_buf(w, rows * k);
        let (code, norm, scaling, groups) = match *kind {
            RouterKind::SoftmaxTopK { norm_topk_prob } => (0, norm_topk_prob, 1.0, (1, 1)),
            RouterKind::TopKSoftmax => (1, false, 1.0, (1, 1)),
            RouterKind::SigmoidTopK {
                norm_topk_prob,
                routed_scaling,
                n_group,
                topk_group,
            } => (2, norm_topk_prob, routed_scaling, (n_group, topk_group)),
        };
        let fits = experts <= ROUTER_MAX_EXPERTS && k <= ROUTER_MAX_K;
        if !fits || groups.0 > ROUTER_MAX_GROUPS || k > experts {
            return self.router_on_host(kind, logits, experts, bias, k, ids, w);
        }
        if rows == 0 {
            return;
        }
        let (lp, bp, ip, wp) = (
            self.ptr(logits),
            bias.map_or(0, |b| self.ptr(b)),
            self.ptr(ids),
            self.ptr(w),
        );
        launch!(self, router_topk, (rows as u32, 1), 32; lp, experts as i32, bp, k as i32,
            code, norm as i32, scaling, groups.0 as i32, groups.1 as i32, ip, wp);
    }

    fn moe_dispatch(&self, ids: &Ids, experts: usize, k: usize, d: &mut MoeDispatch<Device>) {
        // The ids stay on the device, in slot order, and many slots (a prompt) are grouped
        // by expert there too, so each expert's rows are read once for all of its slots.
        d.on_device = Some(k);
        d.active.clear();
        let slots = ids.len;
        self.resize_buf(&mut d.slots, slots);
        if let (false, Some(dst), Some(src), true) =
            (self.failed(), &mut d.slots.slice, &ids.slice, slots > 0)
        {
            let r = self
                .stream
                .memcpy_dtod(&src.slice(..slots), &mut dst.slice_mut(..slots));
            self.ok(r, "copying the expert ids");
        }
        if slots <= DIRECT_SLOTS {
            return;
        }
        if experts > MAX_GROUPED_EXPERTS {
            return self.fail(format!(
                "{experts} experts in a layer: the grouping kernel takes at most \
                 {MAX_GROUPED_EXPERTS}"
            ));
        }
        self.resize_buf(&mut d.counts, experts + 1);
        self.resize_buf(&mut d.tokens, slots);
        let (ip, op, tp) = (self.ptr(&d.slots), self.ptr(&d.counts), self.ptr(&d.tokens));
        launch!(self, moe_group, (1, 1), 1024; ip, slots as i32, experts as i32, op, tp);
    }

    fn moe_experts(
        &self,
        _arith: (Precision, bool),
        store: &CudaExperts,
        layer: usize,
        x: &Buf,
        d: &MoeDispatch<Device>,
        (inter, width): (usize, usize),
        (h, y, _u): (&mut Buf, &mut Buf, &mut Buf),
    ) -> Result<(), RunError> {
        // `d`: the ids in `slots`, and for many slots the groups (`counts`, `tokens`) that
        // `moe_dispatch` made.
        let Some(experts) = store.layer(layer) else {
            return Err(RunError::Experts(format!(
                "layer {layer} has no routed experts"
            )));
        };
        let Some(k) = d.on_device else {
            return Err(RunError::Device("routed experts without a dispatch".into()));
        };
        let slots = d.slots.len;
        self.resize_buf(h, slots * inter);
        self.resize_buf(y, slots * width);
        if slots == 0 {
            return Ok(());
        }
        let (xp, ip, hp, yp) = (self.ptr(x), self.ptr(&d.slots), self.ptr(h), self.ptr(y));
        let mp = self.ptr(store.mat_table(layer));
        let usage = self.ptr(&store.dev_usage) + 4 * store.usage_counters(layer) as u64;
        let warps = |rows: usize| rows.div_ceil(8) as u32;
        if slots <= DIRECT_SLOTS {
            // Every slot reads its own expert's rows: nothing to group.
            launch!(self, moe_gate_up, (warps(inter), slots as u32), 256; xp, ip, slots as i32,
                k as i32, mp, inter as i32, hp, usage);
            launch!(self, moe_down, (warps(width), slots as u32), 256; hp, ip, slots as i32, mp,
                width as i32, yp);
            return Ok(());
        }
        // Many slots (a prompt), grouped by `moe_dispatch`.
        let (op, tp) = (self.ptr(&d.counts), self.ptr(&d.tokens));
        let e = experts.len() as u32;
        launch!(self, moe_gate_up_grouped, (warps(inter), e), 256; xp, op, tp, k as i32, mp,
            inter as i32, hp, usage);
        launch!(self, moe_down_grouped, (warps(width), e), 256; hp, op, tp, mp, width as i32, yp);
        Ok(())
    }

    fn moe_combine(&self, w: &Buf, y: &Buf, delta: &mut Buf, k: usize, width: usize) {
        let n = w.len / k.max(1) * width;
        self.resize_buf(delta, n);
        let (wp, yp, dp) = (self.ptr(w), self.ptr(y), self.ptr(delta));
        launch!(self, moe_combine, Self::flat(n), 256; wp, yp, dp, k as i32, width as i32, n as i32);
    }
}

/// `kernels.cu` compiled by NVRTC for compute capability `major.minor` (needs NVRTC, not a
/// GPU).
pub fn compile_kernels(major: i32, minor: i32) -> Result<Ptx, String> {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("no NVRTC on this machine (libnvrtc could not be loaded)".into());
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: compile_options(major, minor),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| format!("compiling the CUDA kernels for sm_{major}{minor}: {e}"))
}

fn compile_options(major: i32, minor: i32) -> Vec<String> {
    vec![format!("--gpu-architecture=compute_{major}{minor}")]
}

/// Where compiled kernels are kept between runs: `MOESTREAM_CACHE_DIR`, else the user's
/// cache directory (`XDG_CACHE_HOME` or `~/.cache`) under `moestream/`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MOESTREAM_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("moestream"))
}

/// The kernels' PTX for `major.minor`, from `cache` when an earlier run compiled the same
/// source with the same options and NVRTC, else compiled and stored there (a cache that
/// cannot be written only costs the next run a compile). Returns whether it came from the
/// cache.
pub fn kernels_ptx(major: i32, minor: i32, cache: Option<&Path>) -> Result<(Ptx, bool), String> {
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("no NVRTC on this machine (libnvrtc could not be loaded)".into());
    }
    let file = cache.map(|dir| dir.join(cache_name(major, minor)));
    if let Some(src) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        if src.contains(".entry") {
            return Ok((Ptx::from_src(src), true));
        }
    }
    let ptx = compile_kernels(major, minor)?;
    if let Some(f) = &file {
        // Written whole under another name, then renamed: a reader never sees half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let stored = f
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| {
                std::fs::write(&tmp, ptx.to_src())?;
                std::fs::rename(&tmp, f)
            });
        if let Err(e) = stored {
            let _ = std::fs::remove_file(&tmp);
            eprintln!(
                "note: the compiled CUDA kernels could not be cached in {}: {e}",
                f.display()
            );
        }
    }
    Ok((ptx, false))
}

/// The cache file's name: the architecture and a hash (FNV-1a) of what the PTX depends on,
/// the source, the options and NVRTC's version.
fn cache_name(major: i32, minor: i32) -> String {
    let (mut vmaj, mut vmin) = (0, 0);
    // SAFETY: two out-parameters; the caller checked that NVRTC loads.
    let _ = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut vmaj, &mut vmin) };
    let key = format!(
        "{SOURCE}\0{:?}\0{vmaj}.{vmin}",
        compile_options(major, minor)
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("kernels-sm_{major}{minor}-{h:016x}.ptx")
}

impl ExpertSource for CudaExperts {
    fn expert_bytes(&self, layer: usize) -> usize {
        self.bytes.get(layer).copied().unwrap_or(0)
    }

    fn usage(&self) -> Vec<Vec<u64>> {
        self.snapshot()
    }
}
