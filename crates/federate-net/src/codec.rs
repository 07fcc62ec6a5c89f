//! Parameter vectors on the wire: a header, then chunks of little-endian f32 bytes, each
//! optionally zstd-compressed. Reassembly is bounded at every step — value count, chunk
//! count, bytes per chunk before and after decompression — so a peer cannot make us
//! allocate more than the limits say, and a vector that arrives short, long or out of order
//! is refused with the reason.

use crate::proto::{Chunk, Compression, ParametersHeader};
use thiserror::Error;

/// Limits on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most values in one parameter vector.
    pub max_values: u64,
    /// Most bytes in one chunk, before and after decompression.
    pub max_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 256 M values = 1 GiB of f32; chunks of at most 4 MiB stay under gRPC's default
        // message limit with room for the envelope.
        Limits { max_values: 1 << 28, max_chunk_bytes: 4 << 20 }
    }
}

/// A malformed or over-limit transfer.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum WireError {
    /// The header announces more than the limits allow.
    #[error("parameter vector of {values} values exceeds the limit of {limit}")]
    TooManyValues {
        /// Announced values.
        values: u64,
        /// The limit.
        limit: u64,
    },
    /// The chunk count cannot carry the announced bytes.
    #[error("{chunks} chunks cannot carry {bytes} bytes at {max} bytes per chunk")]
    BadChunkCount {
        /// Announced chunks.
        chunks: u32,
        /// Bytes announced.
        bytes: u64,
        /// Chunk limit.
        max: usize,
    },
    /// A chunk that does not belong or comes out of order.
    #[error("chunk {index} of transfer {transfer} is unexpected (expected chunk {expected} of transfer {want})")]
    UnexpectedChunk {
        /// Its transfer id.
        transfer: u64,
        /// Its index.
        index: u32,
        /// The transfer being assembled.
        want: u64,
        /// The index expected next.
        expected: u32,
    },
    /// A chunk larger than allowed.
    #[error("chunk of {0} bytes exceeds the per-chunk limit")]
    ChunkTooLarge(usize),
    /// More bytes than announced, or fewer at the end.
    #[error("transfer carries {got} bytes, header announced {want}")]
    LengthMismatch {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// A chunk that does not decompress.
    #[error("chunk {0} does not decompress: {1}")]
    Decompress(u32, String),
    /// An unknown compression code.
    #[error("unknown compression {0}")]
    UnknownCompression(i32),
}

/// Splits `values` into a header and chunks of at most `chunk_bytes` raw bytes.
pub fn split(values: &[f32], transfer_id: u64, chunk_bytes: usize, zstd: bool) -> (ParametersHeader, Vec<Chunk>) {
    let chunk_bytes = chunk_bytes.max(4) / 4 * 4;
    let per = chunk_bytes / 4;
    let chunks: Vec<Chunk> = values
        .chunks(per.max(1))
        .enumerate()
        .map(|(i, vals)| {
            let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            let data = if zstd { zstd::bulk::compress(&raw, 1).unwrap_or(raw) } else { raw };
            Chunk { transfer_id, index: i as u32, data: data.into() }
        })
        .collect();
    let header = ParametersHeader {
        transfer_id,
        num_values: values.len() as u64,
        num_chunks: chunks.len() as u32,
        compression: if zstd { Compression::Zstd as i32 } else { Compression::None as i32 },
        ..Default::default()
    };
    (header, chunks)
}

/// Splits a compressed update (`federate_core::compress` bytes) the way [`split`] splits
/// values: its bytes packed four to a value, the last value zero-padded, and the exact length
/// in the header's `encoded_bytes`. `zstd` is off: the update is already entropy-coded when
/// its sender chose so.
pub fn split_encoded(bytes: &[u8], transfer_id: u64, chunk_bytes: usize) -> (ParametersHeader, Vec<Chunk>) {
    let words: Vec<f32> = bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            f32::from_le_bytes(w)
        })
        .collect();
    let (mut header, chunks) = split(&words, transfer_id, chunk_bytes, false);
    header.encoded_bytes = bytes.len() as u64;
    (header, chunks)
}

/// The bytes of an encoded transfer ([`split_encoded`]) from the values it arrived as:
/// exactly `encoded_bytes`, the padding dropped (it must be zeros).
pub fn encoded_bytes(values: &[f32], encoded_bytes: u64) -> Result<Vec<u8>, WireError> {
    let want = values.len() as u64 * 4;
    if encoded_bytes > want || encoded_bytes + 4 <= want {
        return Err(WireError::LengthMismatch { got: want, want: encoded_bytes });
    }
    let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    if bytes[encoded_bytes as usize..].iter().any(|&b| b != 0) {
        return Err(WireError::LengthMismatch { got: want, want: encoded_bytes });
    }
    bytes.truncate(encoded_bytes as usize);
    Ok(bytes)
}

/// Reassembles one announced transfer from its chunks.
#[derive(Debug)]
pub struct Assembler {
    header: ParametersHeader,
    zstd: bool,
    next: u32,
    bytes: Vec<u8>,
    limits: Limits,
}

impl Assembler {
    /// Starts a transfer, checking the header against `limits`.
    pub fn new(header: ParametersHeader, limits: Limits) -> Result<Self, WireError> {
        if header.num_values > limits.max_values {
            return Err(WireError::TooManyValues { values: header.num_values, limit: limits.max_values });
        }
        let zstd = match Compression::try_from(header.compression) {
            Ok(Compression::None) => false,
            Ok(Compression::Zstd) => true,
            Err(_) => return Err(WireError::UnknownCompression(header.compression)),
        };
        let bytes = header.num_values * 4;
        let capacity = header.num_chunks as u64 * limits.max_chunk_bytes as u64;
        if capacity < bytes || (header.num_chunks == 0 && bytes > 0) {
            return Err(WireError::BadChunkCount { chunks: header.num_chunks, bytes, max: limits.max_chunk_bytes });
        }
        // Reserve at most one chunk up front; grow as bytes actually arrive.
        let reserve = (bytes as usize).min(limits.max_chunk_bytes);
        Ok(Assembler { header, zstd, next: 0, bytes: Vec::with_capacity(reserve), limits })
    }

    /// Whether every chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.next == self.header.num_chunks
    }

    /// Adds the next chunk; returns the values once the last one is in.
    pub fn push(&mut self, chunk: Chunk) -> Result<Option<Vec<f32>>, WireError> {
        if chunk.transfer_id != self.header.transfer_id || chunk.index != self.next || self.is_complete() {
            return Err(WireError::UnexpectedChunk {
                transfer: chunk.transfer_id,
                index: chunk.index,
                want: self.header.transfer_id,
                expected: self.next,
            });
        }
        if chunk.data.len() > self.limits.max_chunk_bytes {
            return Err(WireError::ChunkTooLarge(chunk.data.len()));
        }
        let want = self.header.num_values * 4;
        if self.zstd {
            let raw = zstd::bulk::decompress(&chunk.data, self.limits.max_chunk_bytes)
                .map_err(|e| WireError::Decompress(chunk.index, e.to_string()))?;
            self.bytes.extend_from_slice(&raw);
        } else {
            self.bytes.extend_from_slice(&chunk.data);
        }
        if self.bytes.len() as u64 > want {
            return Err(WireError::LengthMismatch { got: self.bytes.len() as u64, want });
        }
        self.next += 1;
        if !self.is_complete() {
            return Ok(None);
        }
        if self.bytes.len() as u64 != want {
            return Err(WireError::LengthMismatch { got: self.bytes.len() as u64, want });
        }
        Ok(Some(self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
    }
}

/// Several announced transfers whose chunks follow one another (a model, then an algorithm's
/// vector), each bounded as [`Assembler`] bounds one.
#[derive(Debug)]
pub struct Transfers {
    parts: std::collections::VecDeque<Assembler>,
    done: Vec<Vec<f32>>,
}

impl Transfers {
    /// Starts the transfers `headers` announce, in order.
    pub fn new(headers: impl IntoIterator<Item = ParametersHeader>, limits: Limits) -> Result<Self, WireError> {
        let parts = headers.into_iter().map(|h| Assembler::new(h, limits)).collect::<Result<_, _>>()?;
        let mut t = Transfers { parts, done: Vec::new() };
        t.skip_empty();
        Ok(t)
    }

    /// Empty transfers have no chunks: they are complete as soon as they come up.
    fn skip_empty(&mut self) {
        while self.parts.front().is_some_and(Assembler::is_complete) {
            self.parts.pop_front();
            self.done.push(Vec::new());
        }
    }

    /// Every vector, once all have arrived (at once if every transfer is empty).
    pub fn ready(&mut self) -> Option<Vec<Vec<f32>>> {
        self.parts.is_empty().then(|| std::mem::take(&mut self.done))
    }

    /// Adds the next chunk; returns every vector once the last chunk of the last transfer is in.
    pub fn push(&mut self, chunk: Chunk) -> Result<Option<Vec<Vec<f32>>>, WireError> {
        let Some(part) = self.parts.front_mut() else {
            return Err(WireError::UnexpectedChunk {
                transfer: chunk.transfer_id,
                index: chunk.index,
                want: 0,
                expected: 0,
            });
        };
        if let Some(v) = part.push(chunk)? {
            self.parts.pop_front();
            self.done.push(v);
            self.skip_empty();
        }
        Ok(self.ready())
    }
}

/// Decodes a whole transfer at once (header plus all its chunks).
pub fn join(header: ParametersHeader, chunks: Vec<Chunk>, limits: Limits) -> Result<Vec<f32>, WireError> {
    let want = header.num_values;
    let mut a = Assembler::new(header, limits)?;
    if want == 0 && a.is_complete() {
        return Ok(Vec::new());
    }
    for c in chunks {
        if let Some(v) = a.push(c)? {
            return Ok(v);
        }
    }
    Err(WireError::LengthMismatch { got: a.bytes.len() as u64, want: want * 4 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_follow_one_another_and_empty_ones_need_no_chunk() {
        let (a, b) = (vec![1.0f32, 2.0, 3.0], vec![-1.0f32; 5]);
        let (ha, ca) = split(&a, 1, 8, false);
        let (hb, cb) = split(&b, 2, 8, true);
        let (he, _) = split(&[], 3, 8, false);
        let mut t = Transfers::new([ha, he, hb], Limits::default()).unwrap();
        assert!(t.ready().is_none());
        let mut out = None;
        for c in ca.into_iter().chain(cb) {
            assert!(out.is_none(), "complete before the last chunk");
            out = t.push(c).unwrap();
        }
        assert_eq!(out.unwrap(), vec![a.clone(), Vec::new(), b]);
        // Only empty transfers: ready at once; a chunk then is refused.
        let mut t = Transfers::new([he], Limits::default()).unwrap();
        assert_eq!(t.ready().unwrap(), vec![Vec::<f32>::new()]);
        let (_, ca) = split(&a, 1, 8, false);
        assert!(t.push(ca[0].clone()).is_err());
        // A chunk of the second transfer while the first is arriving is refused.
        let (ha, _) = split(&a, 1, 8, false);
        let (hb, cb) = split(&a, 2, 8, false);
        let mut t = Transfers::new([ha, hb], Limits::default()).unwrap();
        assert!(t.push(cb[0].clone()).is_err());
    }

    #[test]
    fn round_trip_plain_and_zstd() {
        let v: Vec<f32> = (0..10_001).map(|i| (i as f32).sin()).collect();
        for z in [false, true] {
            let (h, c) = split(&v, 7, 4096, z);
            assert_eq!(c.len(), 10_001usize.div_ceil(1024));
            let back = join(h, c, Limits::default()).unwrap();
            assert!(back.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn refusals() {
        let v = vec![1.0f32; 100];
        let small = Limits { max_values: 50, max_chunk_bytes: 1024 };
        let (h, c) = split(&v, 1, 1024, false);
        assert!(matches!(join(h, c.clone(), small), Err(WireError::TooManyValues { .. })));
        let lim = Limits { max_values: 1000, max_chunk_bytes: 100 };
        assert!(matches!(join(h, c.clone(), lim), Err(WireError::BadChunkCount { .. })));
        // Out of order.
        let (h, mut c) = split(&v, 1, 40, false);
        c.swap(0, 1);
        assert!(matches!(join(h, c, Limits::default()), Err(WireError::UnexpectedChunk { .. })));
        // Header lies about the count.
        let (mut h, c) = split(&v, 1, 40, false);
        h.num_values = 99;
        assert!(matches!(join(h, c, Limits::default()), Err(WireError::LengthMismatch { .. })));
        // Garbage that claims to be zstd.
        let (mut h, mut c) = split(&v, 1, 400, false);
        h.compression = Compression::Zstd as i32;
        c[0].data = vec![1, 2, 3].into();
        assert!(matches!(join(h, c, Limits::default()), Err(WireError::Decompress(..))));
    }

    #[test]
    fn encoded_updates_travel_byte_exact() {
        for len in [0usize, 1, 3, 4, 5, 1000, 4099] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 255) as u8).collect();
            let (h, c) = split_encoded(&bytes, 9, 64);
            assert_eq!(h.encoded_bytes, len as u64);
            assert_eq!(h.num_values, len.div_ceil(4) as u64);
            let values = join(h, c, Limits::default()).unwrap();
            assert_eq!(encoded_bytes(&values, len as u64).unwrap(), bytes, "{len} bytes");
        }
        // A length the values cannot hold, or non-zero padding, is refused.
        assert!(encoded_bytes(&[1.0], 5).is_err());
        assert!(encoded_bytes(&[1.0, 2.0], 3).is_err());
        assert!(encoded_bytes(&[f32::from_le_bytes([1, 2, 3, 4])], 3).is_err());
    }

    /// Random headers and chunk bytes (fixed seed): every outcome is a value or an error,
    /// never a panic, and nothing beyond the limits is produced.
    #[test]
    fn random_input_never_panics() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = Limits { max_values: 4096, max_chunk_bytes: 512 };
        for _ in 0..20_000 {
            let header = ParametersHeader {
                transfer_id: next() % 3,
                num_values: next() % 5000,
                num_chunks: (next() % 40) as u32,
                compression: (next() % 3) as i32,
                ..Default::default()
            };
            let Ok(mut a) = Assembler::new(header, limits) else { continue };
            for i in 0..(next() % 12) {
                let len = (next() % 700) as usize;
                let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let index = if next() % 10 == 0 { (next() % 5) as u32 } else { i as u32 };
                match a.push(Chunk { transfer_id: next() % 2, index, data: data.into() }) {
                    Ok(Some(v)) => assert!(v.len() <= 4096),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
