//! The IDX file format of MNIST and Fashion-MNIST: a big-endian header (magic, element type,
//! dimension sizes) then the values. Only unsigned bytes (type 0x08) are supported; gzip
//! input is detected by its magic bytes and decompressed, bounded.

use std::io::Read;
use std::path::Path;

use crate::DataError;

/// The largest decompressed IDX file we accept (MNIST's largest is 47 MB).
pub const MAX_IDX_BYTES: u64 = 512 << 20;

/// A parsed IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Decompresses `bytes` if they are gzip, bounded by `MAX_IDX_BYTES`.
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::BadIdx { path: path.into(), problem: format!("gzip: {e}") })?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(DataError::BadIdx {
                path: path.into(),
                problem: format!("decompresses to more than {MAX_IDX_BYTES} bytes"),
            });
        }
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses IDX bytes (raw, not gzip). `path` is only used in messages.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let bad = |problem: String| DataError::BadIdx { path: path.into(), problem };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is too short for a header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!("magic starts {:02x} {:02x}, expected 00 00", bytes[0], bytes[1])));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} is not unsigned byte (0x08)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(bad(format!("{ndim} dimensions; expected 1 to 4")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let mut dims = Vec::with_capacity(ndim);
    let mut count: u64 = 1;
    for i in 0..ndim {
        let b = &bytes[4 + 4 * i..8 + 4 * i];
        let d = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        count = count.saturating_mul(d as u64);
        dims.push(d);
    }
    let body = (bytes.len() - header) as u64;
    if count != body {
        return Err(bad(format!("header promises {count} values but the file holds {body}")));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Reads and parses an IDX file, raw or gzip.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = read_bounded(path)?;
    let raw = maybe_gunzip(bytes, path)?;
    parse_idx(&raw, path)
}

/// Reads a whole file, refusing files over `MAX_IDX_BYTES`.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Vec::new();
    f.take(MAX_IDX_BYTES + 1).read_to_end(&mut out).map_err(|e| DataError::io(path, e))?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(DataError::BadIdx { path: path.into(), problem: format!("larger than {MAX_IDX_BYTES} bytes") });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_refuses() {
        let p = Path::new("x");
        let a = parse_idx(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6]), p).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        assert!(parse_idx(&idx(&[2, 3], &[1, 2, 3]), p).unwrap_err().to_string().contains("promises 6"));
        assert!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0], p).unwrap_err().to_string().contains("element type"));
        assert!(parse_idx(&[1, 2], p).is_err());
        assert!(parse_idx(&idx(&[u32::MAX, u32::MAX, u32::MAX, u32::MAX], &[]), p).is_err());
    }

    #[test]
    fn gzip_is_detected() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let raw = idx(&[3], &[7, 8, 9]);
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(&raw).unwrap();
        let gz = e.finish().unwrap();
        assert_eq!(maybe_gunzip(gz, Path::new("x")).unwrap(), raw);
    }

    /// Random bytes (fixed seed), raw and behind a gzip magic: parsing returns a value or an
    /// error, never panics.
    #[test]
    fn random_input_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let p = Path::new("random");
        for i in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 && bytes.len() >= 4 {
                bytes[0] = 0;
                bytes[1] = 0;
                bytes[2] = 8;
                bytes[3] %= 5;
            }
            if i % 7 == 0 && bytes.len() >= 2 {
                bytes[0] = 0x1f;
                bytes[1] = 0x8b;
            }
            if let Ok(raw) = maybe_gunzip(bytes, p)
                && let Ok(a) = parse_idx(&raw, p)
            {
                assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
            }
        }
    }
}
