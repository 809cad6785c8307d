//! Shared, immutable byte ranges of mapped (or, rarely, copied) weight files.

use moestream_kernels::hugebuf::HugeBuf;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// What keeps a byte range alive: a file mapping (with the open file, so ranges can also be
/// read with positional reads instead of through the mapping), or an owned, 8-byte aligned
/// copy.
pub enum Backing {
    Mapped {
        map: memmap2::Mmap,
        file: std::fs::File,
        path: PathBuf,
    },
    /// Weights copied at load (dense weights kept resident while streaming, re-laid 4-bit
    /// matrices): huge-page backed where large, see [`HugeBuf`].
    Owned(HugeBuf),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped { map, .. } => map,
            Backing::Owned(v) => v.as_slice(),
        }
    }
}

/// A failed positional read, with where it was.
#[derive(Debug, thiserror::Error)]
#[error("reading {len} bytes at offset {offset} of {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    pub offset: u64,
    pub len: usize,
    #[source]
    pub source: std::io::Error,
}

/// A byte range inside a [`Backing`], cheap to clone and to slice. Construction guarantees
/// the start is aligned for the element type it will be viewed as.
#[derive(Clone)]
pub struct Bytes {
    backing: Arc<Backing>,
    start: usize,
    len: usize,
}

impl Bytes {
    pub fn new(backing: Arc<Backing>, start: usize, len: usize) -> Self {
        assert!(
            start + len <= backing.bytes().len(),
            "byte range beyond its backing"
        );
        Bytes {
            backing,
            start,
            len,
        }
    }

    /// Copies `src` into an owned aligned buffer (for tensors whose file offset is not
    /// aligned for their dtype, and for tensors built in memory).
    pub fn copied(src: &[u8]) -> Self {
        Self::filled_with(src.len(), |dst| dst.copy_from_slice(src))
    }

    /// An owned aligned buffer of `len` bytes that `fill` writes (zeroed before).
    pub fn filled_with(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        let mut v = HugeBuf::zeroed(len);
        fill(&mut v.as_mut_slice()[..len]);
        Bytes::new(Arc::new(Backing::Owned(v)), 0, len)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.backing.bytes()[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Offset of the range in its backing (for a mapped file: the file offset).
    pub fn offset(&self) -> usize {
        self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-range (used to view one expert of a stacked tensor without copying).
    pub fn sub(&self, offset: usize, len: usize) -> Bytes {
        assert!(offset + len <= self.len, "sub-range beyond the tensor");
        Bytes {
            backing: Arc::clone(&self.backing),
            start: self.start + offset,
            len,
        }
    }

    /// The open file and its path, for a range mapped from a file (the expert store opens its
    /// own descriptors on it for positional and direct reads).
    pub fn source_file(&self) -> Option<(&std::fs::File, &std::path::Path)> {
        match &*self.backing {
            Backing::Mapped { file, path, .. } => Some((file, path)),
            Backing::Owned(_) => None,
        }
    }

    /// Drops this process's mapping of the range's whole pages (`MADV_DONTNEED`), for a
    /// mapped range whose bytes were copied elsewhere: they stop counting in the resident set
    /// and leave the page cache to the kernel. A later read would fault them back in from the
    /// file, so this never changes what the range holds. A no-op for in-memory ranges.
    pub fn release_pages(&self) {
        if let Backing::Mapped { map, .. } = &*self.backing {
            let page = 4096usize;
            let base = map.as_ptr() as usize;
            let start = (base + self.start).next_multiple_of(page);
            let end = (base + self.start + self.len) / page * page;
            if end > start {
                // SAFETY: a page-aligned range inside our own read-only file mapping; on such
                // a mapping MADV_DONTNEED only drops page-table entries.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
    }

    /// Whether the range is mapped from a file (false for in-memory copies).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.backing, Backing::Mapped { .. })
    }

    /// Reads the range from its file with positional reads into `dst` (`dst.len() ==
    /// self.len()`), bypassing the mapping: the expert store's miss path. A short read (the
    /// file was truncated under us) is an error naming the file and offset. In-memory ranges
    /// are copied.
    pub fn read_into(&self, dst: &mut [u8]) -> Result<(), ReadError> {
        assert_eq!(dst.len(), self.len, "destination size");
        match &*self.backing {
            Backing::Mapped { file, path, .. } => file
                .read_exact_at(dst, self.start as u64)
                .map_err(|source| ReadError {
                    path: path.clone(),
                    offset: self.start as u64,
                    len: self.len,
                    source,
                }),
            Backing::Owned(_) => {
                dst.copy_from_slice(self.as_slice());
                Ok(())
            }
        }
    }
}
