//! Device buffers: a CUDA allocation with a length inside its capacity, so that resizing a
//! scratch buffer to the same or a smaller size never reallocates.

use super::super::memory::Memory;
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// A growable device array. Empty (no allocation) by default.
pub struct DevBuf<T> {
    pub(super) slice: Option<CudaSlice<T>>,
    pub(super) len: usize,
}

impl<T> DevBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values the allocation holds.
    pub(super) fn capacity(&self) -> usize {
        self.slice.as_ref().map_or(0, CudaSlice::len)
    }
}

impl<T> Default for DevBuf<T> {
    fn default() -> Self {
        DevBuf {
            slice: None,
            len: 0,
        }
    }
}

impl<T> std::fmt::Debug for DevBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevBuf(len {})", self.len)
    }
}

impl<T: DeviceRepr> Clone for DevBuf<T> {
    /// A device-to-device copy on the allocation's stream (checkpoints of recurrent states).
    fn clone(&self) -> Self {
        DevBuf {
            slice: self.slice.clone(),
            len: self.len,
        }
    }
}

impl<T: DeviceRepr + Default + Clone + PartialEq + ValidAsZeroBits> PartialEq for DevBuf<T> {
    /// Compares the values (copied to the host: for tests).
    fn eq(&self, other: &Self) -> bool {
        fn host<T: DeviceRepr + Default + Clone + ValidAsZeroBits>(
            b: &DevBuf<T>,
        ) -> Option<Vec<T>> {
            match &b.slice {
                None => Some(Vec::new()),
                Some(s) => {
                    let mut v = s.stream().memcpy_dtov(s).ok()?;
                    v.truncate(b.len);
                    Some(v)
                }
            }
        }
        self.len == other.len && host(self).is_some() && host(self) == host(other)
    }
}

/// The CUDA backend's buffer family.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Device;

impl Memory for Device {
    type F32 = DevBuf<f32>;
    type U32 = DevBuf<u32>;

    fn len(b: &DevBuf<f32>) -> usize {
        b.len
    }
}
