//! Named random streams derived from the run's seed, so that every random choice
//! (client sampling, partitioning, initialisation, batches, noise) is reproducible and
//! independent of the others.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn mix(mut z: u64) -> u64 {
    // SplitMix64 finaliser.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every random stream of a run, each named once. The name is hashed into the stream's
/// seed, so renaming a variant is free but changing its name string changes every result
/// drawn from it (the golden test notices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// A party's training in one round (ids: round, party index): the task seed the server sends.
    Fit,
    /// The initial global model (no ids).
    Init,
    /// A party's batch order within a task (under the task seed).
    Batches,
    /// A party's dropout masks within a task (under the task seed).
    Dropout,
    /// Which parties train in a round (ids: round), when sampling is seeded.
    ClientSampling,
    /// Which parties evaluate in a round (ids: round).
    EvaluateSampling,
    /// Update-level DP noise on a party's clipped update (under the task seed).
    UpdateNoise,
    /// Noise on the clip indicator of adaptive clipping (under the task seed).
    CountNoise,
    /// The server's noise on the aggregate under central client-level DP (ids: round).
    ClientDpNoise,
    /// The seed of a task's DP-SGD noise (under the task seed; ids: epoch), apart from the
    /// batch stream so that the noise and the batches are drawn independently.
    DpSgdNoise,
    /// DP-SGD noise per step and coordinate block (ids: step, block) under a `DpSgdNoise`
    /// seed, seeded noise only.
    Noise,
    /// Gaussian noise on a flat vector, per coordinate block (ids: block).
    GaussianNoise,
    /// The Synthetic(α, β) dataset.
    Synthetic,
    /// How the data is split among the parties.
    Partition,
    /// A simulated attacker's random update (ids: attacker index, under the task seed).
    Attack,
    /// The train-alone baseline's batch order (ids: party index).
    Alone,
    /// The train-alone baseline's dropout masks (ids: party index).
    AloneDropout,
    /// The train-alone baseline's DP-SGD noise seed (ids: party index).
    AloneNoise,
    /// Random models for `federate bench aggregate`.
    BenchAggregate,
    /// Stochastic rounding of a party's compressed update (under the task seed).
    Compression,
    /// Stochastic rounding of the compressed broadcast of a round's global model (ids: round).
    Broadcast,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 21] = [
        Stream::Fit,
        Stream::Init,
        Stream::Batches,
        Stream::Dropout,
        Stream::ClientSampling,
        Stream::EvaluateSampling,
        Stream::UpdateNoise,
        Stream::CountNoise,
        Stream::ClientDpNoise,
        Stream::DpSgdNoise,
        Stream::Noise,
        Stream::GaussianNoise,
        Stream::Synthetic,
        Stream::Partition,
        Stream::Attack,
        Stream::Alone,
        Stream::AloneDropout,
        Stream::AloneNoise,
        Stream::BenchAggregate,
        Stream::Compression,
        Stream::Broadcast,
    ];

    /// The name hashed into the stream's seed.
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Fit => "fit",
            Stream::Init => "init",
            Stream::Batches => "batches",
            Stream::Dropout => "dropout",
            Stream::ClientSampling => "client-sampling",
            Stream::EvaluateSampling => "evaluate-sampling",
            Stream::UpdateNoise => "update-noise",
            Stream::CountNoise => "count-noise",
            Stream::ClientDpNoise => "client-dp-noise",
            Stream::DpSgdNoise => "dp-sgd-noise",
            Stream::Noise => "noise",
            Stream::GaussianNoise => "gaussian-noise",
            Stream::Synthetic => "synthetic",
            Stream::Partition => "partition",
            Stream::Attack => "attack",
            Stream::Alone => "alone",
            Stream::AloneDropout => "alone-dropout",
            Stream::AloneNoise => "alone-noise",
            Stream::BenchAggregate => "bench-aggregate",
            Stream::Compression => "compression",
            Stream::Broadcast => "broadcast",
        }
    }
}

/// The seed of `stream` with indices `ids` (e.g. round, client) under `seed`.
pub fn derive(seed: u64, stream: Stream, ids: &[u64]) -> u64 {
    let mut h = mix(seed);
    for b in stream.name().bytes() {
        h = mix(h ^ b as u64);
    }
    for &i in ids {
        h = mix(h ^ i);
    }
    h
}

/// A generator for `stream` with indices `ids` under `seed`.
pub fn stream(seed: u64, stream: Stream, ids: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, stream, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        use Stream::*;
        assert_eq!(derive(1, Fit, &[2, 3]), derive(1, Fit, &[2, 3]));
        assert_ne!(derive(1, Fit, &[2, 3]), derive(1, Fit, &[3, 2]));
        assert_ne!(derive(1, Fit, &[2]), derive(1, Init, &[2]));
        assert_ne!(derive(1, Fit, &[2]), derive(2, Fit, &[2]));
        // Every stream has its own name, hence its own seeds.
        let names: std::collections::HashSet<&str> = Stream::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Stream::ALL.len());
    }
}
