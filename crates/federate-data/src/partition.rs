//! Partitioners: which examples each party holds. Each returns one list of example indices
//! per party, disjoint, drawn from the caller's seeded random stream.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};

use crate::DataError;

/// Checks the party count.
fn parties_ok(k: usize) -> Result<(), DataError> {
    if k == 0 {
        return Err(DataError::Partition("parties = 0: a federation needs at least 1 party".into()));
    }
    Ok(())
}

/// The worked example's split: `k` parties each get `per_party` examples drawn without
/// replacement from `0..n`.
pub fn disjoint_sample<R: Rng>(
    n: usize,
    k: usize,
    per_party: usize,
    rng: &mut R,
) -> Result<Vec<Vec<usize>>, DataError> {
    parties_ok(k)?;
    if per_party == 0 {
        return Err(DataError::Partition("0 examples per party: ask for at least 1".into()));
    }
    if k * per_party > n {
        return Err(DataError::Partition(format!(
            "{k} parties × {per_party} examples = {} but only {n} exist: lower the parties or the examples per party",
            k * per_party
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    Ok(idx.chunks(per_party).take(k).map(|c| c.to_vec()).collect())
}

/// IID: all `n` examples shuffled and dealt into `k` parts whose sizes differ by at most 1.
pub fn iid<R: Rng>(n: usize, k: usize, rng: &mut R) -> Result<Vec<Vec<usize>>, DataError> {
    parties_ok(k)?;
    if n < k {
        return Err(DataError::Partition(format!("{n} examples cannot be split across {k} parties")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let (base, extra) = (n / k, n % k);
    let mut out = Vec::with_capacity(k);
    let mut at = 0;
    for p in 0..k {
        let len = base + usize::from(p < extra);
        out.push(idx[at..at + len].to_vec());
        at += len;
    }
    Ok(out)
}

/// Label skew: for each class, the share of its examples each party gets is drawn from
/// Dirichlet(α, …, α). Small α gives parties few classes. Draws again (up to 100 times)
/// until every party holds at least `min_size` examples.
pub fn dirichlet<R: Rng>(
    labels: &[u32],
    classes: usize,
    k: usize,
    alpha: f64,
    min_size: usize,
    rng: &mut R,
) -> Result<Vec<Vec<usize>>, DataError> {
    parties_ok(k)?;
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(DataError::Partition(format!("dirichlet alpha = {alpha} must be a positive number")));
    }
    if labels.len() < k * min_size {
        return Err(DataError::Partition(format!("{} examples cannot give {k} parties {min_size} each", labels.len())));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|e| DataError::Partition(format!("dirichlet alpha: {e}")))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    for _ in 0..100 {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); k];
        for members in &by_class {
            let mut members = members.clone();
            members.shuffle(rng);
            let w: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
            let total: f64 = w.iter().sum();
            let mut at = 0;
            let mut cum = 0.0;
            for (p, wp) in w.iter().enumerate() {
                cum += wp / total.max(f64::MIN_POSITIVE);
                let end =
                    if p + 1 == k { members.len() } else { ((cum * members.len() as f64) as usize).min(members.len()) };
                parts[p].extend_from_slice(&members[at..end.max(at)]);
                at = end.max(at);
            }
        }
        if parts.iter().all(|p| p.len() >= min_size) {
            for p in &mut parts {
                p.shuffle(rng);
            }
            return Ok(parts);
        }
    }
    Err(DataError::Partition(format!(
        "dirichlet alpha = {alpha} left a party with fewer than {min_size} examples in 100 draws: raise alpha or lower the parties"
    )))
}

/// McMahan et al.'s pathological non-IID split: sort by label, cut into `k·per_party`
/// equal shards, give each party `per_party` shards at random.
pub fn shards<R: Rng>(labels: &[u32], k: usize, per_party: usize, rng: &mut R) -> Result<Vec<Vec<usize>>, DataError> {
    parties_ok(k)?;
    let count = k * per_party;
    if per_party == 0 || labels.len() < count {
        return Err(DataError::Partition(format!(
            "{} examples cannot be cut into {count} shards ({k} parties × {per_party})",
            labels.len()
        )));
    }
    let mut idx: Vec<usize> = (0..labels.len()).collect();
    idx.sort_by_key(|&i| (labels[i], i));
    let size = labels.len() / count;
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(rng);
    Ok(order
        .chunks(per_party)
        .map(|ss| ss.iter().flat_map(|&s| idx[s * size..(s + 1) * size].iter().copied()).collect())
        .collect())
}

#[cfg(test)]
mod skew_tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn quantity_skew_sizes_vary_and_cover_everything() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let parts = quantity_skew(10_000, 20, 1.0, 10, &mut rng).unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert!(sizes.iter().all(|&s| s >= 10));
        assert!(sizes.iter().max().unwrap() > &(3 * sizes.iter().min().unwrap()), "{sizes:?}");
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
        let equal = quantity_skew(100, 4, 0.0, 1, &mut rng).unwrap();
        assert!(equal.iter().all(|p| p.len() == 25));
        assert!(quantity_skew(10, 20, 1.0, 1, &mut rng).is_err());
    }

    #[test]
    fn natural_partition_groups_by_key() {
        let parts = by_key(&[5, 1, 5, 2, 1]);
        assert_eq!(parts, vec![vec![1, 4], vec![3], vec![0, 2]]);
    }
}

#[cfg(test)]
mod like_train_tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn test_sets_follow_each_partys_training_labels_and_sizes() {
        // Training: party 0 holds only class 0 (300), party 1 classes 0 and 1 (100 + 200),
        // party 2 class 1 only (100); nobody holds class 2.
        let mut train_y = vec![0u32; 400];
        train_y.extend(vec![1u32; 300]);
        let parts = vec![(0..300).collect::<Vec<_>>(), (300..400).chain(400..600).collect(), (600..700).collect()];
        let mut test_y = vec![0u32; 40];
        test_y.extend(vec![1u32; 30]);
        test_y.extend(vec![2u32; 9]);
        let out = like_train(&parts, &train_y, &test_y, 3, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let count = |p: usize, c: u32| out[p].iter().filter(|&&i| test_y[i] == c).count();
        // Class 0: 300:100 → 30 and 10; class 1: 200:100 → 20 and 10; class 2 evenly, 3 each.
        assert_eq!((count(0, 0), count(1, 0), count(2, 0)), (30, 10, 0));
        assert_eq!((count(0, 1), count(1, 1), count(2, 1)), (0, 20, 10));
        assert_eq!((count(0, 2), count(1, 2), count(2, 2)), (3, 3, 3));
        let mut all: Vec<usize> = out.concat();
        all.sort_unstable();
        assert_eq!(all, (0..test_y.len()).collect::<Vec<_>>(), "disjoint and covering");
        assert!(like_train(&parts, &train_y, &[7], 3, &mut ChaCha8Rng::seed_from_u64(3)).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashSet;

    fn disjoint(parts: &[Vec<usize>]) -> bool {
        let mut seen = HashSet::new();
        parts.iter().flatten().all(|i| seen.insert(*i))
    }

    #[test]
    fn worked_example_sizes_and_disjointness() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = disjoint_sample(60_000, 3, 2_000, &mut rng).unwrap();
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![2000; 3]);
        assert!(disjoint(&p));
        assert!(disjoint_sample(5_000, 3, 2_000, &mut rng).unwrap_err().to_string().contains("only 5000 exist"));
        assert!(disjoint_sample(100, 0, 10, &mut rng).is_err());
    }

    #[test]
    fn iid_covers_everything_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let p = iid(103, 10, &mut rng).unwrap();
        assert!(disjoint(&p));
        assert_eq!(p.iter().map(Vec::len).sum::<usize>(), 103);
        assert!(p.iter().all(|x| x.len() == 10 || x.len() == 11));
    }

    #[test]
    fn dirichlet_skews_labels() {
        let labels: Vec<u32> = (0..10_000).map(|i| (i % 10) as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let p = dirichlet(&labels, 10, 10, 0.1, 10, &mut rng).unwrap();
        assert!(disjoint(&p));
        assert_eq!(p.iter().map(Vec::len).sum::<usize>(), 10_000);
        // With α = 0.1 a typical party is dominated by a few classes.
        let dominated = p
            .iter()
            .filter(|part| {
                let mut c = [0usize; 10];
                for &i in part.iter() {
                    c[labels[i] as usize] += 1;
                }
                let mut c = c.to_vec();
                c.sort_unstable_by(|a, b| b.cmp(a));
                (c[0] + c[1]) * 2 > part.len()
            })
            .count();
        assert!(dominated >= 6, "{dominated}");
        assert!(dirichlet(&labels, 10, 10, 0.0, 10, &mut rng).is_err());
    }

    #[test]
    fn shards_give_two_labels_per_party() {
        let labels: Vec<u32> = (0..6000).map(|i| (i / 600) as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let p = shards(&labels, 10, 2, &mut rng).unwrap();
        assert!(disjoint(&p));
        for part in &p {
            assert_eq!(part.len(), 600);
            let distinct: HashSet<u32> = part.iter().map(|&i| labels[i]).collect();
            assert!(distinct.len() <= 2);
        }
    }
}

/// Quantity skew: party sizes proportional to lognormal(0, σ) draws (at least `min` each),
/// examples dealt IID. σ = 0 gives equal sizes.
pub fn quantity_skew<R: Rng>(
    n: usize,
    k: usize,
    sigma: f64,
    min: usize,
    rng: &mut R,
) -> Result<Vec<Vec<usize>>, DataError> {
    parties_ok(k)?;
    if !(sigma >= 0.0 && sigma.is_finite()) {
        return Err(DataError::Partition(format!("quantity skew σ = {sigma} must be ≥ 0")));
    }
    if k * min.max(1) > n {
        return Err(DataError::Partition(format!("{n} examples cannot give {k} parties at least {} each", min.max(1))));
    }
    let dist = rand_distr::LogNormal::new(0.0, sigma).map_err(|e| DataError::Partition(e.to_string()))?;
    let w: Vec<f64> = (0..k).map(|_| dist.sample(rng)).collect();
    let total: f64 = w.iter().sum();
    let spare = n - k * min.max(1);
    let mut sizes: Vec<usize> = w.iter().map(|x| min.max(1) + (x / total * spare as f64).floor() as usize).collect();
    // Rounding leftovers go to the largest parties, one each.
    let mut left = n - sizes.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|a, b| w[*b].total_cmp(&w[*a]));
    for &p in order.iter().cycle() {
        if left == 0 {
            break;
        }
        sizes[p] += 1;
        left -= 1;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let mut out = Vec::with_capacity(k);
    let mut at = 0;
    for s in sizes {
        out.push(idx[at..at + s].to_vec());
        at += s;
    }
    Ok(out)
}

/// Test indices per party that follow each party's own training distribution: the test
/// examples of every class are dealt to the parties in proportion to how many training
/// examples of that class each holds (largest remainders), after a shuffle. Parties of a
/// label-skewed split are evaluated on their own skew and parties of a quantity-skewed split
/// get test sets in proportion to their size; the sets are disjoint, and the test examples of
/// a class no party trains on are dealt evenly so every test example is used.
pub fn like_train<R: Rng>(
    train_parts: &[Vec<usize>],
    train_labels: &[u32],
    test_labels: &[u32],
    classes: usize,
    rng: &mut R,
) -> Result<Vec<Vec<usize>>, DataError> {
    let k = train_parts.len();
    parties_ok(k)?;
    let mut held = vec![vec![0u64; classes]; k];
    for (p, part) in train_parts.iter().enumerate() {
        for &i in part {
            let Some(&y) = train_labels.get(i) else {
                return Err(DataError::Partition(format!("training index {i} is beyond the training set")));
            };
            if let Some(c) = held[p].get_mut(y as usize) {
                *c += 1;
            }
        }
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &y) in test_labels.iter().enumerate() {
        match by_class.get_mut(y as usize) {
            Some(v) => v.push(i),
            None => return Err(DataError::Partition(format!("test label {y} is not below {classes} classes"))),
        }
    }
    let mut out = vec![Vec::new(); k];
    for (c, mut idx) in by_class.into_iter().enumerate() {
        idx.shuffle(rng);
        let weights: Vec<u64> = held.iter().map(|h| h[c]).collect();
        let total: u64 = weights.iter().sum();
        // No party trains on this class: deal it evenly.
        let weights = if total == 0 { vec![1; k] } else { weights };
        let total: u64 = weights.iter().sum();
        let n = idx.len() as u64;
        let mut counts: Vec<u64> = weights.iter().map(|w| n * w / total).collect();
        let mut rest: Vec<(u64, usize)> = weights.iter().enumerate().map(|(p, w)| ((n * w) % total, p)).collect();
        rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let short = n - counts.iter().sum::<u64>();
        for &(_, p) in rest.iter().take(short as usize) {
            counts[p] += 1;
        }
        let mut start = 0usize;
        for (p, &m) in counts.iter().enumerate() {
            let end = start + m as usize;
            out[p].extend_from_slice(&idx[start..end]);
            start = end;
        }
    }
    for part in &mut out {
        part.sort_unstable();
    }
    Ok(out)
}

/// The natural partition: one party per distinct key (in key order), holding every example
/// with that key (a device, a hospital, a writer).
pub fn by_key(keys: &[u64]) -> Vec<Vec<usize>> {
    let mut groups: std::collections::BTreeMap<u64, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &k) in keys.iter().enumerate() {
        groups.entry(k).or_default().push(i);
    }
    groups.into_values().collect()
}
