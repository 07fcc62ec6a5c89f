//! Update compression: what a party sends instead of its update as 32-bit floats, and how the
//! server reads it back. The same bytes are produced in a simulation and on the wire, and the
//! same function decodes them on both, so a compressed simulation equals a compressed
//! deployment bit for bit and counts the same bytes.
//!
//! Codecs ([`Codec`]):
//! - **Stochastic quantisation** to 8 or 4 bits (QSGD-style, Alistarh et al. 2017): per block
//!   of [`BLOCK`] values, `lo` = the block's minimum and `step` = (max − lo) / (2^b − 1); each
//!   value becomes the integer code ⌊(x − lo)/step + u⌋ with u uniform in [0, 1), so the
//!   decoded `lo + code·step` is unbiased. The codes are plain unsigned integers, packed two
//!   to a byte at 4 bits.
//! - **Quantisation onto a shared grid** ([`Codec::Grid`]): the same, with every block's
//!   `lo` and `step` those of one grid over [−range, range] that all parties use (values
//!   beyond it clipped, error feedback keeping the rest). The parties' codes then add up as
//!   integers — Σ decoded = K·lo + step·Σ codes — which is what secure aggregation (to come)
//!   sums in a ring without seeing any party's codes.
//! - **Top-k sparsification**: the ⌈fraction·n⌉ values largest in magnitude (ties broken by
//!   index, so the choice is deterministic), as index gaps and exact values.
//!
//! With error feedback (Seide et al. 2014; Karimireddy et al. 2019) the party adds what the
//! codec dropped last time (its residual, kept as party state and checkpointed) to this
//! round's update before encoding, and keeps the new difference: nothing is lost, only
//! delayed. zstd may wrap the encoded bytes.
//!
//! What is encoded is the change from the model the party was sent (`relative`), or the
//! reply itself when it is not a model (FedSGD's gradient). Decoding is bounded by the model
//! size the server expects: a payload claiming another size, indices out of order or out of
//! range, non-finite scales, or more bytes than the format allows is refused by name.
//!
//! Written here rather than taken from a crate: no maintained Rust crate implements
//! unbiased stochastic quantisation or top-k with a byte format fit for the wire.

use rand::RngExt;
use thiserror::Error;

use crate::messages::{Codec, UpdateCompression};

/// Values per quantisation block (each carries its own `lo` and `step`: 8 bytes, 0.25 bits
/// per value).
pub const BLOCK: usize = 256;

const RAW: u8 = 0;
const ZSTD: u8 = 1;
const QUANTIZED: u8 = 1;
const TOP_K: u8 = 2;

/// Why a payload could not be decoded (or an update encoded).
#[derive(Debug, Clone, Error, PartialEq)]
pub enum CompressError {
    /// The payload does not follow the format.
    #[error("compressed update: {0}")]
    Malformed(String),
    /// The update has a NaN or infinite value, which no codec can carry.
    #[error("the update's value {0} is not finite, so it cannot be compressed")]
    NotFinite(usize),
}

fn bad(why: impl Into<String>) -> CompressError {
    CompressError::Malformed(why.into())
}

impl UpdateCompression {
    /// Checks the settings; the error names the key and the range.
    pub fn validate(&self) -> Result<(), String> {
        match self.codec {
            Codec::Quantize { bits: 4 | 8 } => Ok(()),
            Codec::Quantize { bits } => Err(format!("compression bits = {bits}: use 8 or 4")),
            Codec::TopK { fraction } if fraction > 0.0 && fraction <= 1.0 => Ok(()),
            Codec::TopK { fraction } => Err(format!("compression.fraction = {fraction} must be in (0, 1]")),
            Codec::Grid { bits, .. } if bits != 4 && bits != 8 => Err(format!("compression bits = {bits}: use 8 or 4")),
            Codec::Grid { range, .. } if range > 0.0 && range.is_finite() => Ok(()),
            Codec::Grid { range, .. } => Err(format!("compression.range = {range} must be a positive number")),
        }
    }

    /// Encodes `update` (as long as the model; with the residual already added) into the
    /// bytes that travel. `relative` says the update is a change from the model sent; `seed`
    /// drives the stochastic rounding.
    pub fn encode(&self, update: &[f32], relative: bool, seed: u64) -> Result<Vec<u8>, CompressError> {
        if let Some(i) = update.iter().position(|v| !v.is_finite()) {
            return Err(CompressError::NotFinite(i));
        }
        let mut body = Vec::new();
        match self.codec {
            Codec::Quantize { bits } => {
                body.push(QUANTIZED);
                body.push(u8::from(relative));
                body.extend_from_slice(&(update.len() as u64).to_le_bytes());
                body.push(bits);
                quantize(update, bits, None, seed, &mut body);
            }
            Codec::Grid { bits, range } => {
                // The same format: every block carries the shared grid's lo and step.
                body.push(QUANTIZED);
                body.push(u8::from(relative));
                body.extend_from_slice(&(update.len() as u64).to_le_bytes());
                body.push(bits);
                quantize(update, bits, Some(range), seed, &mut body);
            }
            Codec::TopK { fraction } => {
                body.push(TOP_K);
                body.push(u8::from(relative));
                body.extend_from_slice(&(update.len() as u64).to_le_bytes());
                top_k(update, fraction, &mut body);
            }
        }
        if self.zstd {
            let mut out = vec![ZSTD];
            out.extend(zstd::bulk::compress(&body, 3).map_err(|e| bad(format!("zstd: {e}")))?);
            Ok(out)
        } else {
            let mut out = Vec::with_capacity(body.len() + 1);
            out.push(RAW);
            out.extend(body);
            Ok(out)
        }
    }
}

/// The most bytes a body for `n` values can take (top-k of every value), bounding zstd.
fn max_body(n: usize) -> usize {
    32 + n.saturating_mul(8)
}

/// The most bytes a payload for a model of `n` values can take, however encoded: what a
/// receiver accepts before decoding.
pub fn max_payload(n: usize) -> usize {
    // zstd's worst case on incompressible input is a few bytes per 128 KiB block.
    let body = max_body(n);
    1 + body + body / 1024 + 64
}

/// What a payload carries: whether it is relative to the model sent, and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The values are a change from the model sent.
    pub relative: bool,
    /// The decoded update, `n` values.
    pub values: Vec<f32>,
}

/// Decodes a payload for a model of `n` values.
pub fn decode(payload: &[u8], n: usize) -> Result<Decoded, CompressError> {
    let Some((&wrap, rest)) = payload.split_first() else { return Err(bad("empty payload")) };
    let unwrapped;
    let body = match wrap {
        RAW => rest,
        ZSTD => {
            unwrapped = zstd::bulk::decompress(rest, max_body(n))
                .map_err(|e| bad(format!("zstd payload does not decompress within the model's bound: {e}")))?;
            &unwrapped[..]
        }
        w => return Err(bad(format!("unknown wrapping {w}"))),
    };
    let mut r = Reader(body);
    let kind = r.u8()?;
    let relative = match r.u8()? {
        0 => false,
        1 => true,
        x => return Err(bad(format!("relative flag {x}"))),
    };
    let len = r.u64()?;
    if len != n as u64 {
        return Err(bad(format!("it carries {len} values, the model has {n}")));
    }
    let values = match kind {
        QUANTIZED => dequantize(&mut r, n)?,
        TOP_K => untop_k(&mut r, n)?,
        k => return Err(bad(format!("unknown codec {k}"))),
    };
    if !r.0.is_empty() {
        return Err(bad(format!("{} bytes after the end", r.0.len())));
    }
    Ok(Decoded { relative, values })
}

/// The parameters a reply means: `reference + values` when relative (the model the party was
/// sent), else the values. The server and the party both call this, so they agree exactly.
pub fn reconstruct(decoded: &Decoded, reference: &[f32]) -> Vec<f32> {
    if decoded.relative {
        reference.iter().zip(&decoded.values).map(|(r, d)| r + d).collect()
    } else {
        decoded.values.clone()
    }
}

/// Decodes `payload` against the model the party was sent: the reply's parameters.
pub fn decode_reply(payload: &[u8], reference: &[f32]) -> Result<Vec<f32>, CompressError> {
    Ok(reconstruct(&decode(payload, reference.len())?, reference))
}

/// The grid of `bits` codes over [−range, range] that every party shares: (lo, step).
pub fn grid(bits: u8, range: f32) -> (f32, f32) {
    (-range, 2.0 * range / ((1u32 << bits) - 1) as f32)
}

/// Stochastic rounding of `x` to `bits`-bit codes per block: on the block's own [min, max],
/// or on the shared grid over [−range, range] (values clipped to it) when `range` is given.
fn quantize(x: &[f32], bits: u8, range: Option<f32>, seed: u64, out: &mut Vec<u8>) {
    let levels = ((1u32 << bits) - 1) as f32;
    let mut rng = crate::seed::stream(seed, crate::seed::Stream::Compression, &[]);
    let mut codes: Vec<u8> = Vec::with_capacity(x.len());
    for block in x.chunks(BLOCK) {
        let (lo, mut step) = match range {
            Some(r) => grid(bits, r),
            None => {
                let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                (lo, (hi - lo) / levels)
            }
        };
        if !step.is_normal() {
            step = 0.0;
        }
        out.extend_from_slice(&lo.to_le_bytes());
        out.extend_from_slice(&step.to_le_bytes());
        for &v in block {
            let u: f32 = rng.random();
            let code = if step == 0.0 { 0.0 } else { ((v - lo) / step + u).floor().clamp(0.0, levels) };
            codes.push(code as u8);
        }
    }
    if bits == 8 {
        out.extend_from_slice(&codes);
    } else {
        out.extend(codes.chunks(2).map(|p| p[0] | (p.get(1).copied().unwrap_or(0) << 4)));
    }
}

fn dequantize(r: &mut Reader<'_>, n: usize) -> Result<Vec<f32>, CompressError> {
    let bits = r.u8()?;
    if bits != 8 && bits != 4 {
        return Err(bad(format!("{bits} bits per value (8 or 4)")));
    }
    let blocks = n.div_ceil(BLOCK);
    let mut scales = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let (lo, step) = (r.f32()?, r.f32()?);
        if !lo.is_finite() || !step.is_finite() || step < 0.0 {
            return Err(bad(format!("block {b} has scale lo = {lo}, step = {step}")));
        }
        scales.push((lo, step));
    }
    let bytes = if bits == 8 { n } else { n.div_ceil(2) };
    let packed = r.take(bytes)?;
    let code = |i: usize| -> u8 {
        if bits == 8 {
            packed[i]
        } else if i.is_multiple_of(2) {
            packed[i / 2] & 0x0f
        } else {
            packed[i / 2] >> 4
        }
    };
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let (lo, step) = scales[i / BLOCK];
            lo + f32::from(code(i)) * step
        })
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} decodes to a non-finite number")));
    }
    Ok(values)
}

fn top_k(x: &[f32], fraction: f64, out: &mut Vec<u8>) {
    let n = x.len();
    let k = ((fraction * n as f64).ceil() as usize).clamp(usize::from(n > 0), n);
    let mut idx: Vec<u32> = (0..n as u32).collect();
    if k < n && k > 0 {
        // Largest magnitude first, lower index on ties: a total order, so the same k win on
        // every machine.
        idx.select_nth_unstable_by(k - 1, |&a, &b| x[b as usize].abs().total_cmp(&x[a as usize].abs()).then(a.cmp(&b)));
    }
    idx.truncate(k);
    idx.sort_unstable();
    out.extend_from_slice(&(k as u64).to_le_bytes());
    let mut prev = 0u32;
    for (j, &i) in idx.iter().enumerate() {
        // Gaps between indices compress better than the indices.
        let gap = if j == 0 { i } else { i - prev - 1 };
        out.extend_from_slice(&gap.to_le_bytes());
        prev = i;
    }
    for &i in &idx {
        out.extend_from_slice(&x[i as usize].to_le_bytes());
    }
}

fn untop_k(r: &mut Reader<'_>, n: usize) -> Result<Vec<f32>, CompressError> {
    let k = r.u64()?;
    if k > n as u64 {
        return Err(bad(format!("{k} values of a model of {n}")));
    }
    let k = k as usize;
    let gaps = r.take(k.saturating_mul(4))?;
    let vals = r.take(k.saturating_mul(4))?;
    let mut out = vec![0.0f32; n];
    let mut next: u64 = 0;
    for (j, (g, v)) in gaps.chunks_exact(4).zip(vals.chunks_exact(4)).enumerate() {
        let i = next + u64::from(u32::from_le_bytes([g[0], g[1], g[2], g[3]]));
        if i >= n as u64 {
            return Err(bad(format!("index {i} of value {j} is beyond the model's {n} values")));
        }
        let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        if !v.is_finite() {
            return Err(bad(format!("value {j} is not finite")));
        }
        out[i as usize] = v;
        next = i + 1;
    }
    Ok(out)
}

/// Reads a body front to back, every read checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CompressError> {
        if self.0.len() < n {
            return Err(bad(format!("ends early: {n} bytes wanted, {} left", self.0.len())));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CompressError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CompressError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    fn f32(&mut self) -> Result<f32, CompressError> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Error feedback and encoding of one reply, as the party does it: `params` is the reply
/// (`reference` the model it was sent, used when `relative`), `residual` what earlier rounds
/// did not send (updated in place when error feedback is on; created at the model's length).
/// Returns the payload and the parameters the server will decode from it.
pub fn compress_reply(
    c: &UpdateCompression,
    params: &[f32],
    reference: &[f32],
    relative: bool,
    residual: &mut Option<Vec<f32>>,
    seed: u64,
) -> Result<(Vec<u8>, Vec<f32>), CompressError> {
    let mut update: Vec<f32> =
        if relative { params.iter().zip(reference).map(|(p, r)| p - r).collect() } else { params.to_vec() };
    if c.error_feedback
        && let Some(e) = residual.as_ref().filter(|e| e.len() == update.len())
    {
        update.iter_mut().zip(e).for_each(|(u, e)| *u += e);
    }
    let payload = c.encode(&update, relative, seed)?;
    let decoded = decode(&payload, update.len())?;
    if c.error_feedback {
        *residual = Some(update.iter().zip(&decoded.values).map(|(u, d)| u - d).collect());
    }
    Ok((payload, reconstruct(&decoded, reference)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_distr::{Distribution, Normal};

    fn c(codec: Codec, zstd: bool) -> UpdateCompression {
        UpdateCompression { codec, error_feedback: true, zstd }
    }

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = Normal::new(0.0f32, 0.01).unwrap();
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    #[test]
    fn quantisation_is_unbiased_and_within_one_step() {
        let x = gaussian(1000, 1);
        for bits in [8u8, 4] {
            let q = c(Codec::Quantize { bits }, false);
            let mut mean = vec![0.0f64; x.len()];
            let trials = 400;
            for t in 0..trials {
                let d = decode(&q.encode(&x, true, t).unwrap(), x.len()).unwrap();
                assert!(d.relative);
                for (i, (v, o)) in d.values.iter().zip(&x).enumerate() {
                    let block = &x[i / BLOCK * BLOCK..((i / BLOCK + 1) * BLOCK).min(x.len())];
                    let range = block.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                        - block.iter().copied().fold(f32::INFINITY, f32::min);
                    let step = range / ((1u32 << bits) - 1) as f32;
                    assert!((v - o).abs() <= step * 1.0001, "bits {bits} value {i}: {v} vs {o}, step {step}");
                    mean[i] += *v as f64 / trials as f64;
                }
            }
            // The average of many roundings approaches the value (unbiased): within 4 standard
            // errors of the step's uniform spread.
            let worst = mean.iter().zip(&x).map(|(m, o)| (m - *o as f64).abs()).fold(0.0, f64::max);
            let step = 0.08 / ((1u32 << bits) - 1) as f64;
            assert!(worst < 4.0 * step / (trials as f64).sqrt() + 1e-6, "bits {bits}: bias {worst}");
        }
    }

    #[test]
    fn sizes_are_what_the_format_says() {
        let n = 10_000;
        let x = gaussian(n, 2);
        let blocks = n.div_ceil(BLOCK);
        let q8 = c(Codec::Quantize { bits: 8 }, false).encode(&x, true, 0).unwrap();
        assert_eq!(q8.len(), 1 + 11 + blocks * 8 + n);
        let q4 = c(Codec::Quantize { bits: 4 }, false).encode(&x, true, 0).unwrap();
        assert_eq!(q4.len(), 1 + 11 + blocks * 8 + n / 2);
        let top = c(Codec::TopK { fraction: 0.01 }, false).encode(&x, true, 0).unwrap();
        assert_eq!(top.len(), 1 + 10 + 8 + 100 * 8);
        // 32-bit floats take 4n: the ratios the docs quote.
        assert!((4 * n) as f64 / q4.len() as f64 > 7.4);
    }

    #[test]
    fn top_k_keeps_the_largest_exactly_and_zeroes_the_rest() {
        let x = vec![0.1f32, -5.0, 0.0, 3.0, -0.2, 3.0, 1.0];
        let p = c(Codec::TopK { fraction: 3.0 / 7.0 }, true).encode(&x, false, 0).unwrap();
        let d = decode(&p, 7).unwrap();
        assert!(!d.relative);
        // -5 and the two 3.0s (ties broken by index).
        assert_eq!(d.values, vec![0.0, -5.0, 0.0, 3.0, 0.0, 3.0, 0.0]);
        // fraction 1: everything, exactly.
        let all = decode(&c(Codec::TopK { fraction: 1.0 }, false).encode(&x, true, 0).unwrap(), 7).unwrap();
        assert_eq!(all.values, x);
    }

    #[test]
    fn error_feedback_carries_exactly_what_was_not_sent() {
        let reference = gaussian(600, 3);
        let mut residual = None;
        let comp = c(Codec::TopK { fraction: 0.05 }, false);
        let mut sent_total = vec![0.0f64; 600];
        let mut true_total = vec![0.0f64; 600];
        for round in 0..5u64 {
            let params: Vec<f32> = reference.iter().zip(gaussian(600, 10 + round)).map(|(r, d)| r + d).collect();
            let before = residual.clone();
            let (payload, recon) = compress_reply(&comp, &params, &reference, true, &mut residual, round).unwrap();
            assert_eq!(decode_reply(&payload, &reference).unwrap(), recon, "the server decodes what the party sent");
            let update: Vec<f32> = params.iter().zip(&reference).map(|(p, r)| p - r).collect();
            let d = decode(&payload, 600).unwrap().values;
            let after = residual.as_ref().unwrap();
            for i in 0..600 {
                let u = update[i] + before.as_ref().map_or(0.0, |b: &Vec<f32>| b[i]);
                assert_eq!(after[i], u - d[i], "residual {i} of round {round}");
                sent_total[i] += d[i] as f64;
                true_total[i] += update[i] as f64;
            }
        }
        // Sent plus what is still held equals everything the party meant to send.
        for i in 0..600 {
            let held = residual.as_ref().unwrap()[i] as f64;
            assert!((sent_total[i] + held - true_total[i]).abs() < 1e-5, "value {i}");
        }
    }

    #[test]
    fn hostile_payloads_are_refused_by_name() {
        let x = gaussian(300, 4);
        let q = c(Codec::Quantize { bits: 4 }, false).encode(&x, true, 0).unwrap();
        let err = |p: &[u8], n: usize| decode(p, n).unwrap_err().to_string();
        assert!(err(&q, 301).contains("carries 300 values, the model has 301"));
        assert!(err(&q[..q.len() - 1], 300).contains("ends early"));
        let mut long = q.clone();
        long.push(0);
        assert!(err(&long, 300).contains("after the end"));
        let mut nan = q.clone();
        nan[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(err(&nan, 300).contains("block 0 has scale"));
        assert!(err(&[], 300).contains("empty"));
        assert!(err(&[7], 300).contains("unknown wrapping"));
        let mut top = c(Codec::TopK { fraction: 0.1 }, false).encode(&x, true, 0).unwrap();
        top[19..23].copy_from_slice(&400u32.to_le_bytes());
        assert!(err(&top, 300).contains("beyond the model"));
        // A zstd bomb: a body far larger than any payload for this model.
        let bomb: Vec<u8> =
            std::iter::once(ZSTD).chain(zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap()).collect();
        assert!(err(&bomb, 300).contains("does not decompress within"));
        assert_eq!(
            c(Codec::Quantize { bits: 8 }, false).encode(&[1.0, f32::NAN], true, 0),
            Err(CompressError::NotFinite(1))
        );
    }

    /// On the shared grid, two parties' integer codes add up: decoding the summed codes gives
    /// the sum of what each sent (exactly, up to the f32 rounding of one multiply), which is
    /// what secure aggregation will compute in a ring. Values beyond the grid are clipped,
    /// and error feedback keeps the clipped part.
    #[test]
    fn codes_on_the_shared_grid_add_up_and_error_feedback_keeps_what_was_clipped() {
        let comp = UpdateCompression { codec: Codec::Grid { bits: 8, range: 0.05 }, error_feedback: true, zstd: false };
        let (a, mut b) = (gaussian(1000, 20), gaussian(1000, 21));
        b[7] = 0.3; // beyond the grid
        let codes = |p: &[u8]| -> Vec<u32> {
            let blocks = 1000usize.div_ceil(BLOCK);
            p[12 + blocks * 8..].iter().map(|&c| u32::from(c)).collect()
        };
        let (pa, pb) = (comp.encode(&a, true, 1).unwrap(), comp.encode(&b, true, 2).unwrap());
        let (da, db) = (decode(&pa, 1000).unwrap().values, decode(&pb, 1000).unwrap().values);
        let (lo, step) = grid(8, 0.05);
        for (i, (ca, cb)) in codes(&pa).iter().zip(codes(&pb)).enumerate() {
            // Summed in a ring of 2^32: no party's code can wrap it for any realistic count.
            let sum = ca.wrapping_add(cb);
            let from_sum = 2.0 * lo as f64 + step as f64 * sum as f64;
            assert!((from_sum - (da[i] as f64 + db[i] as f64)).abs() < 1e-6, "value {i}");
        }
        assert!((db[7] - 0.05).abs() < 1e-6, "clipped to the grid: {}", db[7]);
        let mut residual = None;
        compress_reply(&comp, &b, &vec![0.0; 1000], true, &mut residual, 2).unwrap();
        let kept = residual.unwrap()[7];
        assert!((kept - 0.25).abs() < 1e-6, "error feedback keeps the clipped 0.25: {kept}");
        assert!(
            UpdateCompression { codec: Codec::Grid { bits: 8, range: 0.0 }, error_feedback: false, zstd: false }
                .validate()
                .is_err()
        );
    }

    /// Random bytes and corrupted valid payloads (fixed seed; `fuzz/` has the fuzz target):
    /// decoding never panics, and what it accepts is a model of the right size, finite.
    #[test]
    fn random_and_corrupted_payloads_never_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let x = gaussian(700, 6);
        let valid: Vec<Vec<u8>> =
            [Codec::Quantize { bits: 8 }, Codec::Quantize { bits: 4 }, Codec::TopK { fraction: 0.1 }]
                .iter()
                .flat_map(|&codec| [false, true].map(|z| c(codec, z).encode(&x, true, 1).unwrap()))
                .collect();
        for i in 0..20_000 {
            let mut p = if i % 2 == 0 {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random::<u8>()).collect()
            } else {
                valid[i % valid.len()].clone()
            };
            for _ in 0..rng.random_range(1..4) {
                if p.is_empty() {
                    break;
                }
                let at = rng.random_range(0..p.len());
                match rng.random_range(0..3) {
                    0 => p[at] = rng.random(),
                    1 => p.truncate(at),
                    _ => p.insert(at, rng.random()),
                }
            }
            if let Ok(d) = decode(&p, 700) {
                assert_eq!(d.values.len(), 700);
                assert!(d.values.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn encoding_is_deterministic_for_a_seed_and_zstd_changes_only_the_bytes() {
        let x = gaussian(5000, 5);
        for codec in [Codec::Quantize { bits: 8 }, Codec::Quantize { bits: 4 }, Codec::TopK { fraction: 0.01 }] {
            let a = c(codec, false).encode(&x, true, 9).unwrap();
            assert_eq!(a, c(codec, false).encode(&x, true, 9).unwrap());
            let z = c(codec, true).encode(&x, true, 9).unwrap();
            assert_eq!(decode(&a, 5000).unwrap(), decode(&z, 5000).unwrap());
        }
        assert!(
            UpdateCompression { codec: Codec::Quantize { bits: 2 }, error_feedback: false, zstd: false }
                .validate()
                .is_err()
        );
        assert!(
            UpdateCompression { codec: Codec::TopK { fraction: 0.0 }, error_feedback: false, zstd: false }
                .validate()
                .is_err()
        );
    }
}
