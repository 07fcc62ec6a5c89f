//! What the server sends parties of the global model, and what that costs: every model is
//! numbered (the round whose aggregate it is), a party is sent a model it already holds by
//! reference, and under a compressed broadcast a party holding the previous model gets the
//! quantised change to the next one instead of its values.
//!
//! Compressed broadcast (`[compression] broadcast`): the global model is *defined* as what
//! the parties reconstruct. After aggregation the server encodes δ = θᵗ − θ̂ᵗ⁻¹ with unbiased
//! stochastic rounding to 8 or 4 bits (`compress`'s format, zstd optional), decodes it as a
//! party will, and sets θ̂ᵗ = θ̂ᵗ⁻¹ + decode(δ) with [`compress::reconstruct`], the function
//! the party calls: the server, in-process parties and remote parties hold the same bits,
//! and what is evaluated, checkpointed and reported is the model the parties have. A round's
//! rounding error is not carried to the next (no server residual: it is unbiased and the
//! parties' next updates start from θ̂ᵗ), so a checkpoint needs nothing beyond the model and a
//! resumed run equals an uninterrupted one. A party that does not hold θ̂ᵗ⁻¹ (sampled after
//! sitting rounds out, reconnected, or joining a resumed run) is sent the values.
//!
//! A run that starts from scratch quantises its random initial model the same way (the values
//! themselves, not a change: θ̂⁰ = decode(Q(θ⁰))), so the first model every party needs also
//! travels in 8 or 4 bits; that is only another draw of a random initialisation, unbiased
//! around the first. A resumed run sends its checkpointed model in full.
//!
//! The broadcast is post-processing of the aggregate, so it changes no privacy guarantee.

use std::collections::HashMap;
use std::sync::Arc;

use crate::compress;
use crate::messages::{Codec, ModelDelta, UpdateCompression};

/// How the server compresses the global model it sends: stochastic rounding of the change
/// from the previous model to `bits` (8 or 4) per value, optionally zstd on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastCompression {
    /// Bits per value: 8 or 4.
    pub bits: u8,
    /// zstd over the encoded change.
    pub zstd: bool,
}

impl BroadcastCompression {
    /// Checks the settings; the error names the key and the values allowed.
    pub fn validate(&self) -> Result<(), String> {
        match self.bits {
            4 | 8 => Ok(()),
            b => Err(format!("compression.broadcast with {b} bits: use \"q8\" or \"q4\"")),
        }
    }

    fn codec(&self) -> UpdateCompression {
        UpdateCompression { codec: Codec::Quantize { bits: self.bits }, error_feedback: false, zstd: self.zstd }
    }
}

/// Which global model each party holds, and the compressed change to the current one.
#[derive(Debug, Default)]
pub(crate) struct Models {
    /// The round whose aggregate the current global model is (0: the model the run started
    /// or resumed from).
    pub(crate) current: u32,
    /// Which model each party (by index) was last sent.
    held: HashMap<usize, u32>,
    compression: Option<BroadcastCompression>,
    /// The change from the model before to `current`, when it was compressed.
    delta: Option<Arc<ModelDelta>>,
}

impl Models {
    /// Broadcasts every later model as its compressed change.
    pub(crate) fn compress(&mut self, c: BroadcastCompression) {
        self.compression = Some(c);
    }

    /// A run starts or resumes at model `current`, `global`: no party holds a model of it yet
    /// (a resumed server has new connections). Under a compressed broadcast a run from
    /// scratch (`current` 0) replaces its initial model by what parties decode from its
    /// quantised values (`seed` drives the rounding).
    pub(crate) fn restart(&mut self, current: u32, global: &mut Vec<f32>, seed: u64) {
        self.current = current;
        self.held.clear();
        self.delta = None;
        if let Some(c) = self.compression.filter(|_| current == 0) {
            self.delta = encode(c, global, None, seed).map(|(payload, values)| {
                *global = values;
                Arc::new(ModelDelta { base: None, target: 0, payload })
            });
        }
    }

    /// What a task for the current model carries: its number, and the compressed change to it
    /// when there is one.
    pub(crate) fn stamp(&self) -> (Option<u32>, Option<Arc<ModelDelta>>) {
        (Some(self.current), self.delta.clone())
    }

    /// Round `round`'s aggregate `next` becomes the current model. Under a compressed
    /// broadcast `next` is replaced by what a party holding `global` reconstructs from the
    /// encoded change (`seed` drives the rounding); a change that cannot be encoded (not
    /// finite) leaves `next` as it is, sent in full.
    pub(crate) fn advance(&mut self, round: u32, global: &[f32], next: &mut Vec<f32>, seed: u64) {
        self.delta = None;
        if let Some(c) = self.compression.filter(|_| global.len() == next.len()) {
            let change: Vec<f32> = next.iter().zip(global).map(|(n, g)| n - g).collect();
            self.delta = encode(c, &change, Some(global), seed).map(|(payload, values)| {
                *next = values;
                Arc::new(ModelDelta { base: Some(self.current), target: round, payload })
            });
        }
        self.current = round;
    }

    /// The bytes of sending the current model (`len` values) to `parties`: nothing to one
    /// that holds it (sent by reference), the encoded change to one that holds the model it
    /// is from, 4 a value to any other. Marks them as holding it.
    pub(crate) fn send(&mut self, parties: impl Iterator<Item = usize>, len: usize) -> u64 {
        let mut bytes = 0;
        for c in parties {
            let before = self.held.insert(c, self.current);
            bytes += match (&self.delta, before) {
                (_, Some(m)) if m == self.current => 0,
                (Some(d), _) if d.target == self.current && (d.base.is_none() || d.base == before) => {
                    d.payload.len() as u64
                }
                _ => 4 * len as u64,
            };
        }
        bytes
    }
}

/// `values` encoded with `c` (a change from `reference`, or the values themselves), and what a
/// party decodes from the payload; `None` when they cannot be encoded (not finite).
fn encode(
    c: BroadcastCompression,
    values: &[f32],
    reference: Option<&[f32]>,
    seed: u64,
) -> Option<(Vec<u8>, Vec<f32>)> {
    let payload = c.codec().encode(values, reference.is_some(), seed).ok()?;
    let decoded = compress::decode(&payload, values.len()).ok()?;
    let model = compress::reconstruct(&decoded, reference.unwrap_or_default());
    Some((payload, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(bits: u8) -> Models {
        let mut m = Models::default();
        m.compress(BroadcastCompression { bits, zstd: false });
        m
    }

    #[test]
    fn the_model_is_what_a_party_reconstructs_from_the_change() {
        let global: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let aggregate: Vec<f32> = global.iter().enumerate().map(|(i, g)| g + 0.01 * (i as f32).cos()).collect();
        for bits in [8u8, 4] {
            let mut m = models(bits);
            let mut next = aggregate.clone();
            m.advance(1, &global, &mut next, 7);
            let d = m.delta.clone().expect("a change");
            assert_eq!((d.base, d.target, m.current), (Some(0), 1, 1));
            // A party holding `global` gets exactly the server's model from the payload.
            assert_eq!(compress::decode_reply(&d.payload, &global).unwrap(), next);
            // Within one rounding step of the aggregate (the change spans 0.02: step 0.02/15
            // at 4 bits), and not equal to it.
            let worst = next.iter().zip(&aggregate).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst > 0.0 && worst <= 0.021 / ((1u32 << bits) - 1) as f32, "{bits} bits: {worst}");
            // The same seed rounds the same way.
            let mut again = models(bits);
            let mut next2 = aggregate.clone();
            again.advance(1, &global, &mut next2, 7);
            assert_eq!(next, next2);
        }
    }

    #[test]
    fn bytes_follow_what_each_party_holds() {
        let n = 600;
        let mut global: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).cos()).collect();
        let init = global.clone();
        let mut m = models(4);
        m.restart(0, &mut global, 5);
        // A fresh run's initial model is its own quantised values, which any party decodes.
        let d = m.delta.clone().unwrap();
        assert_eq!((d.base, d.target), (None, 0));
        assert_eq!(compress::decode_reply(&d.payload, &[]).unwrap_or_default().len(), 0);
        assert_eq!(compress::decode(&d.payload, n).unwrap().values, global);
        assert_ne!(global, init);
        // Round 1: parties 0 and 1 are sent model 0 in 4 bits, then model 1 as the change.
        assert_eq!(m.send([0, 1].into_iter(), n), 2 * d.payload.len() as u64);
        let mut next: Vec<f32> = global.iter().map(|g| g + 0.1).collect();
        m.advance(1, &global, &mut next, 1);
        let change = m.delta.as_ref().unwrap().payload.len() as u64;
        assert!(change < n as u64, "{change} bytes for {n} values at 4 bits");
        assert_eq!(m.send([0, 1].into_iter(), n), 2 * change);
        // Round 2: both hold model 1 (by reference); party 2, new, gets the values.
        assert_eq!(m.send([0, 1, 2].into_iter(), n), 4 * n as u64);
        let mut third = next.clone();
        m.advance(2, &next, &mut third, 2);
        // Party 1 sat round 2's evaluation out... it still holds model 1: the change.
        assert_eq!(m.send([1].into_iter(), n), m.delta.as_ref().unwrap().payload.len() as u64);
        m.advance(3, &third.clone(), &mut third, 3);
        // Party 0 holds model 1, two behind: the values.
        assert_eq!(m.send([0].into_iter(), n), 4 * n as u64);
        // A resumed run holds nothing, and its model goes in full, unchanged.
        let mut resumed = third.clone();
        m.restart(3, &mut resumed, 9);
        assert_eq!(resumed, third);
        assert_eq!(m.send([1].into_iter(), n), 4 * n as u64);
        // Without compression, a model not held always costs its values.
        let mut plain = Models::default();
        let mut global = vec![0.5f32; n];
        plain.restart(0, &mut global, 1);
        assert_eq!(plain.send([0].into_iter(), n), 4 * n as u64);
        let mut next = global.clone();
        plain.advance(1, &global, &mut next, 1);
        assert_eq!(next, global);
        assert_eq!(plain.send([0].into_iter(), n), 4 * n as u64);
    }

    #[test]
    fn a_change_that_cannot_be_encoded_is_sent_in_full() {
        let mut m = models(8);
        let global = vec![f32::MAX, 0.0];
        let mut next = vec![-f32::MAX, 1.0];
        m.advance(1, &global, &mut next, 1);
        assert_eq!(next, vec![-f32::MAX, 1.0]);
        assert!(m.delta.is_none());
        assert!(BroadcastCompression { bits: 3, zstd: false }.validate().unwrap_err().contains("q4"));
    }
}
