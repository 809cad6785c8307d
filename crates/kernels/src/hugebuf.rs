//! Large owned buffers backed by transparent huge pages where the OS has them.
//!
//! Decode streams through gigabytes of weights once per token. With 4 KiB pages the hardware
//! prefetchers stop at every page boundary and every page costs a TLB walk; 2 MiB pages
//! remove both. Measured on the 8-layer Qwen3-30B-A3B cut (BENCHMARKS.md): about 10% more
//! decode speed with the re-laid weights in huge pages. The memory-bandwidth probe uses the
//! same buffers, so the roofline it reports is measured under the same conditions.

/// A zeroed byte buffer; 2 MiB-aligned and advised to use huge pages when at least 2 MiB,
/// 8-byte aligned otherwise.
pub struct HugeBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: a plain owned allocation; shared access is read-only, mutation needs `&mut`.
unsafe impl Send for HugeBuf {}
unsafe impl Sync for HugeBuf {}

const HUGE_PAGE: usize = 2 << 20;

impl HugeBuf {
    pub fn zeroed(len: usize) -> Self {
        let align = if len >= HUGE_PAGE { HUGE_PAGE } else { 8 };
        let layout = std::alloc::Layout::from_size_align(len.max(1), align)
            .expect("buffer size overflows a Layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // The advice must come before the first touch (the zeroing below faults the pages
        // in). Advice only: with THP off the kernel keeps 4 KiB pages.
        #[cfg(target_os = "linux")]
        if align == HUGE_PAGE {
            // SAFETY: the range is this allocation.
            unsafe { libc::madvise(ptr.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `layout.size()` bytes owned by us.
        unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
        HugeBuf { ptr, layout }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `layout.size()` initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed uniquely.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `zeroed`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}
