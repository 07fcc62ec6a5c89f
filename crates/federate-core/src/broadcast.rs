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
//! resumed run equals an uninterrupted one.
//!
//! A party that sat rounds out and holds an older model θ̂ᵐ is sent the changes from θ̂ᵐ to
//! θ̂ᵗ one after the other, which reconstruct θ̂ᵗ exactly (each is applied as the server
//! applied it), as long as they cost less than the values: the server keeps the last
//! [`MAX_CHAIN`] changes. A party holding none of those models (reconnected, new to a resumed
//! run, or too far behind) is sent the values.
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

/// Most compressed changes the server keeps (and sends one party in a row).
pub const MAX_CHAIN: usize = 16;

/// Where in `chain` (consecutive changes ending at the current model, oldest first) a party
/// holding model `held` starts: the change from `held`, or the first when it carries a model's
/// values (any party can start there); `None` when no suffix applies or the changes from there
/// cost at least the model's values (`len` values at 4 bytes). The server's byte count and the
/// transport use this one rule.
pub fn changes_for(chain: &[Arc<ModelDelta>], held: Option<u32>, len: usize) -> Option<usize> {
    let start = match held.and_then(|m| chain.iter().position(|d| d.base == Some(m))) {
        Some(i) => i,
        None => chain.first().filter(|d| d.base.is_none()).map(|_| 0)?,
    };
    let bytes: usize = chain[start..].iter().map(|d| d.payload.len()).sum();
    (bytes < 4 * len).then_some(start)
}

/// Which global model each party holds, and the compressed changes to the current one.
#[derive(Debug, Default)]
pub(crate) struct Models {
    /// The round whose aggregate the current global model is (0: the model the run started
    /// or resumed from).
    pub(crate) current: u32,
    /// Which model each party (by index) was last sent.
    held: HashMap<usize, u32>,
    compression: Option<BroadcastCompression>,
    /// The last consecutive compressed changes, ending at `current` (empty when it went in
    /// full).
    chain: Vec<Arc<ModelDelta>>,
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
        self.chain.clear();
        if let Some(c) = self.compression.filter(|_| current == 0)
            && let Some((payload, values)) = encode(c, global, None, seed)
        {
            *global = values;
            self.chain.push(Arc::new(ModelDelta { base: None, target: 0, payload }));
        }
    }

    /// What a task for the current model carries: its number, and the compressed changes
    /// leading to it.
    pub(crate) fn stamp(&self) -> (Option<u32>, Vec<Arc<ModelDelta>>) {
        (Some(self.current), self.chain.clone())
    }

    /// Round `round`'s aggregate `next` becomes the current model. Under a compressed
    /// broadcast `next` is replaced by what a party holding `global` reconstructs from the
    /// encoded change (`seed` drives the rounding); a change that cannot be encoded (not
    /// finite) leaves `next` as it is, sent in full.
    pub(crate) fn advance(&mut self, round: u32, global: &[f32], next: &mut Vec<f32>, seed: u64) {
        let change = self.compression.filter(|_| global.len() == next.len()).and_then(|c| {
            let change: Vec<f32> = next.iter().zip(global).map(|(n, g)| n - g).collect();
            encode(c, &change, Some(global), seed)
        });
        match change {
            Some((payload, values)) => {
                *next = values;
                self.chain.push(Arc::new(ModelDelta { base: Some(self.current), target: round, payload }));
                if self.chain.len() > MAX_CHAIN {
                    self.chain.remove(0);
                }
            }
            // The model goes in full: no change leads to it.
            None => self.chain.clear(),
        }
        self.current = round;
    }

    /// The bytes of sending the current model (`len` values) to `parties`: nothing to one
    /// that holds it (sent by reference), the encoded changes from the model it holds when
    /// [`changes_for`] says so, 4 a value to any other. Marks them as holding it.
    pub(crate) fn send(&mut self, parties: impl Iterator<Item = usize>, len: usize) -> u64 {
        let chain = &self.chain;
        let mut bytes = 0;
        for c in parties {
            let before = self.held.insert(c, self.current);
            bytes += match changes_for(chain, before, len) {
                _ if before == Some(self.current) => 0,
                Some(start) => chain[start..].iter().map(|d| d.payload.len() as u64).sum(),
                None => 4 * len as u64,
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

    fn last(m: &Models) -> Arc<ModelDelta> {
        m.chain.last().cloned().expect("a change")
    }

    #[test]
    fn the_model_is_what_a_party_reconstructs_from_the_changes() {
        let global: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let aggregate: Vec<f32> = global.iter().enumerate().map(|(i, g)| g + 0.01 * (i as f32).cos()).collect();
        for bits in [8u8, 4] {
            let mut m = models(bits);
            let mut next = aggregate.clone();
            m.advance(1, &global, &mut next, 7);
            let d = last(&m);
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
            // Two rounds later, a party still holding `global` applies the three changes one
            // after the other and holds the server's model exactly.
            let mut model = next.clone();
            for round in 2..=3 {
                let mut after: Vec<f32> = model.iter().map(|v| v * 0.99 + 0.001 * round as f32).collect();
                m.advance(round, &model, &mut after, round as u64);
                model = after;
            }
            let chain = &m.chain;
            let start = changes_for(chain, Some(0), global.len()).expect("three changes cost less than the values");
            let held =
                chain[start..].iter().fold(global.clone(), |h, d| compress::decode_reply(&d.payload, &h).unwrap());
            assert_eq!((start, held), (0, model));
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
        let p0 = last(&m);
        assert_eq!((p0.base, p0.target), (None, 0));
        assert_eq!(compress::decode(&p0.payload, n).unwrap().values, global);
        assert_ne!(global, init);
        let size = |d: &Arc<ModelDelta>| d.payload.len() as u64;
        // Round 1: parties 0 and 1 are sent model 0 in 4 bits, then model 1 as the change.
        assert_eq!(m.send([0, 1].into_iter(), n), 2 * size(&p0));
        let mut model1: Vec<f32> = global.iter().map(|g| g + 0.1).collect();
        m.advance(1, &global, &mut model1, 1);
        let d1 = last(&m);
        assert!(size(&d1) < n as u64, "{} bytes for {n} values at 4 bits", size(&d1));
        assert_eq!(m.send([0, 1].into_iter(), n), 2 * size(&d1));
        // Round 2: both hold model 1 (by reference); party 2, new, gets model 0's values and
        // the change to model 1.
        assert_eq!(m.send([0, 1, 2].into_iter(), n), size(&p0) + size(&d1));
        let mut model2: Vec<f32> = model1.iter().map(|g| g - 0.05).collect();
        m.advance(2, &model1, &mut model2, 2);
        let d2 = last(&m);
        // Party 1 still holds model 1: one change.
        assert_eq!(m.send([1].into_iter(), n), size(&d2));
        let mut model3: Vec<f32> = model2.iter().map(|g| g * 1.01).collect();
        m.advance(3, &model2, &mut model3, 3);
        let d3 = last(&m);
        // Party 0 holds model 1, two behind: two changes.
        assert_eq!(m.send([0].into_iter(), n), size(&d2) + size(&d3));
        // Changes that together cost as much as the values are not sent.
        let chain = &m.chain;
        let all = (size(&p0) + size(&d1) + size(&d2) + size(&d3)) as usize;
        assert_eq!(changes_for(chain, None, all / 4 + 1), Some(0));
        assert_eq!(changes_for(chain, None, all / 4), None);
        assert_eq!(changes_for(chain, Some(2), 1), None);
        // The server keeps the last MAX_CHAIN changes: a party further behind gets the values.
        let mut model = model3.clone();
        for round in 4..4 + MAX_CHAIN as u32 {
            let mut after: Vec<f32> = model.iter().map(|v| v + 0.01).collect();
            m.advance(round, &model, &mut after, round as u64);
            model = after;
        }
        assert_eq!(m.chain.len(), MAX_CHAIN);
        assert_eq!(m.send([0].into_iter(), n), 4 * n as u64);
        // A resumed run holds nothing, and its model goes in full, unchanged.
        let mut resumed = model.clone();
        m.restart(20, &mut resumed, 9);
        assert_eq!(resumed, model);
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
    fn a_change_that_cannot_be_encoded_is_sent_in_full_and_ends_the_chain() {
        let mut m = models(8);
        let mut global = vec![1.0, 0.0];
        m.restart(0, &mut global, 1);
        let mut next = vec![-f32::MAX, 1.0];
        m.advance(1, &[f32::MAX, 0.0], &mut next, 1);
        assert_eq!(next, vec![-f32::MAX, 1.0]);
        assert!(m.chain.is_empty());
        assert!(BroadcastCompression { bits: 3, zstd: false }.validate().unwrap_err().contains("q4"));
    }
}
