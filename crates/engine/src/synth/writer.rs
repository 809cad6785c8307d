//! A streaming safetensors writer: the header first (every shape is known up front), then
//! the data section appended in pieces, so a multi-GiB file never sits in memory.
//!
//! Same conventions as `weights::safetensors::write_file`: 8-byte little-endian header
//! length, JSON header padded with spaces to a multiple of 8 so the data section starts
//! aligned, offsets relative to the data section, no gaps between tensors.

use crate::weights::Dtype;
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// One tensor's header entry; data is written later, in this order.
pub struct Entry<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
}

impl Entry<'_> {
    fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// The header bytes (length prefix included) for tensors laid out in `entries` order.
pub fn header(entries: &[Entry<'_>], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut map = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        map.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0u64;
    for e in entries {
        let end = offset + e.bytes();
        map.insert(
            e.name.to_string(),
            json!({"dtype": e.dtype.as_str(), "shape": e.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out
}

/// Size of the file `header(entries)` plus the data make.
pub fn file_size(entries: &[Entry<'_>], metadata: &[(&str, &str)]) -> u64 {
    header(entries, metadata).len() as u64 + entries.iter().map(Entry::bytes).sum::<u64>()
}

/// A file being written: the header is on disk, data is appended with [`write`](Self::write)
/// and [`finish`](Self::finish) checks that exactly the declared bytes arrived, so a bug
/// cannot leave a file whose header promises data it does not have.
pub struct StreamWriter {
    file: File,
    remaining: u64,
}

impl StreamWriter {
    pub fn create(
        path: &Path,
        entries: &[Entry<'_>],
        metadata: &[(&str, &str)],
    ) -> io::Result<Self> {
        let mut file = File::create(path)?;
        file.write_all(&header(entries, metadata))?;
        Ok(StreamWriter {
            file,
            remaining: entries.iter().map(Entry::bytes).sum(),
        })
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.remaining {
            return Err(io::Error::other(format!(
                "{} bytes written past the end of the declared tensors",
                data.len() as u64 - self.remaining
            )));
        }
        self.file.write_all(data)?;
        self.remaining -= data.len() as u64;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(io::Error::other(format!(
                "{} bytes of declared tensor data were never written",
                self.remaining
            )));
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::safetensors::{read_file, write_file};

    #[test]
    fn streamed_file_equals_write_file_and_reads_back() {
        let dir =
            std::env::temp_dir().join(format!("moestream-synth-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = (0..6u8).collect();
        let tensors = vec![
            ("a".to_string(), Dtype::U32, vec![2, 3], a.clone()),
            ("b".to_string(), Dtype::Bf16, vec![3], b.clone()),
        ];
        let meta = [("format", "mlx")];
        let reference = dir.join("reference.safetensors");
        write_file(&reference, &tensors, &meta).unwrap();
        let entries: Vec<Entry> = tensors
            .iter()
            .map(|(n, d, s, _)| Entry {
                name: n,
                dtype: *d,
                shape: s,
            })
            .collect();
        let streamed = dir.join("streamed.safetensors");
        let mut w = StreamWriter::create(&streamed, &entries, &meta).unwrap();
        for piece in a.chunks(5).chain(b.chunks(4)) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
        let (r, s) = (
            std::fs::read(&reference).unwrap(),
            std::fs::read(&streamed).unwrap(),
        );
        assert_eq!(r, s);
        assert_eq!(s.len() as u64, file_size(&entries, &meta));
        let back = read_file(&streamed).unwrap();
        assert_eq!(back["a"].shape, vec![2, 3]);
        assert_eq!(back["b"].bytes.as_slice(), &b[..]);
        // Short data is an error, not a silently truncated file.
        let w = StreamWriter::create(&streamed, &entries, &meta).unwrap();
        assert!(w.finish().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
