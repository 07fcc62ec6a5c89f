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

/// The seed of stream `name` with indices `ids` (e.g. round, client) under `seed`.
pub fn derive(seed: u64, name: &str, ids: &[u64]) -> u64 {
    let mut h = mix(seed);
    for b in name.bytes() {
        h = mix(h ^ b as u64);
    }
    for &i in ids {
        h = mix(h ^ i);
    }
    h
}

/// A generator for stream `name` with indices `ids` under `seed`.
pub fn stream(seed: u64, name: &str, ids: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, name, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        assert_eq!(derive(1, "fit", &[2, 3]), derive(1, "fit", &[2, 3]));
        assert_ne!(derive(1, "fit", &[2, 3]), derive(1, "fit", &[3, 2]));
        assert_ne!(derive(1, "fit", &[2]), derive(1, "init", &[2]));
        assert_ne!(derive(1, "fit", &[2]), derive(2, "fit", &[2]));
    }
}
