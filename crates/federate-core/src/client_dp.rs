//! Client-level differential privacy: DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018) with
//! fixed or adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021).
//!
//! Each round every party joins independently with probability q (Poisson sampling of
//! parties, as in the paper). A party's update Δ_k = θ_k − θ is clipped to L2 norm S, the
//! clipped updates are summed, Gaussian noise of standard deviation z·S is added, and the
//! sum is divided by the *expected* number of parties m = q·N (a fixed denominator, so one
//! party's presence changes the sum by at most S). The new model is θ + η_s·mean.
//!
//! - `Central`: parties send θ_k; the server clips and adds all the noise (it is trusted).
//! - `Distributed` is refused (by [`ClientDp::validate`]) until secure aggregation lands.
//!   There each party clips its update and adds its share N(0, z²S²/m). Without secure
//!   aggregation the server sees every update with only its own 1/√m share of the noise (local
//!   DP at multiplier z/√m, far weaker than the z reported). Nor is the sum's Gaussian a bound
//!   against anyone else: removing a party also removes its noise share, so neighbouring sums
//!   are N(Δ, u·s²) and N(0, (u−1)·s²) for u replies, whose Rényi divergence is infinite at
//!   orders ≥ u. Having each party add noise for the minimum reply count (Kairouz et al.
//!   2021) raises the variance but not that asymmetry: it bounds the privacy loss under
//!   zero-out neighbours (the party stays and sends noise only), which is what the secure
//!   aggregation version will account. The party half ([`privatize_update`]) is kept for it.
//! - Adaptive clipping: each party reports the bit b_k = [‖Δ_k‖ ≤ S]; the server forms the
//!   noised fraction b̄ = (Σ(b_k − ½) + N(0, σ_b²))/m + ½ and sets S ← S·exp(−η_C(b̄ − γ))
//!   to track the γ-quantile of update norms. The update noise then uses
//!   z_Δ = (z⁻² − (2σ_b)⁻²)^(−½), so that the pair of releases is as private as one Gaussian
//!   release with multiplier z (Andrew et al., Theorem 1).
//!
//! Accounting is per round by RDP of the Poisson-subsampled Gaussian (rate q, multiplier z,
//! or the round's effective multiplier) and reported as `client_epsilon`: the (ε, δ) of
//! any one party's whole participation.

pub use crate::messages::UpdateDp;

use std::collections::BTreeMap;

use federate_privacy::rdp;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::algorithms::FedAvg;
use crate::dp::gaussian_noise;
use crate::messages::NoiseSource;
use crate::messages::{EvaluateReply, EvaluateTask};
use crate::messages::{FitReply, FitTask};
use crate::messages::{Rejection, StrategyError};
use crate::params::Parameters;
use crate::seed::Stream;
use crate::strategy::{Strategy, StrategyState, missing_state, usable_replies};

/// Clips `params − global` to `u.clip`, adds the party's noise share, and returns the noised
/// centred indicator b − ½ (b = 1 when the update was within the clip norm).
pub fn privatize_update(
    params: &mut [f32],
    global: &[f32],
    u: &UpdateDp,
    source: NoiseSource,
    seed: u64,
) -> Result<f64, crate::messages::LearnerError> {
    let mut delta: Vec<f32> = params.iter().zip(global).map(|(p, g)| p - g).collect();
    let norm = federate_privacy::vector::clip_l2(&mut delta, u.clip);
    gaussian_noise(&mut delta, u.clip, u.noise_std, source, crate::seed::derive(seed, Stream::UpdateNoise, &[]))?;
    for ((p, g), d) in params.iter_mut().zip(global).zip(&delta) {
        *p = g + d;
    }
    let mut bit = [if norm <= u.clip { 0.5f32 } else { -0.5 }];
    gaussian_noise(&mut bit, 0.5, u.count_noise_std, source, crate::seed::derive(seed, Stream::CountNoise, &[]))?;
    Ok(bit[0] as f64)
}

use federate_privacy::vector::l2_norm as l2;

/// Where the noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientDpMode {
    /// The server clips and adds the noise.
    Central,
    /// Each party clips and adds its share; the server only sums. Refused until secure
    /// aggregation (see the module doc).
    Distributed,
}

/// Adaptive clipping settings (Andrew et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveClip {
    /// γ: the quantile of update norms the clip norm tracks.
    pub target_quantile: f64,
    /// η_C: geometric learning rate of the clip norm.
    pub learning_rate: f64,
    /// σ_b: standard deviation of the noise on the count of unclipped updates.
    pub count_noise: f64,
}

/// DP-FedAvg settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientDp {
    /// Central or distributed noise.
    pub mode: ClientDpMode,
    /// z: noise standard deviation ÷ clip norm, for the sum of clipped updates.
    pub noise_multiplier: f64,
    /// S: the clip norm (the initial one when adaptive).
    pub clip: f64,
    /// Adaptive clipping, if any.
    pub adaptive: Option<AdaptiveClip>,
    /// η_s: server learning rate on the mean clipped update (1 = FedAvg).
    pub server_lr: f64,
    /// δ of the reported client-level (ε, δ).
    pub delta: f64,
}

impl ClientDp {
    /// Checks the ranges; the message names the setting and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == ClientDpMode::Distributed {
            return Err(
                "client_privacy.mode = \"distributed\" is refused: without secure aggregation the server sees \
                        each update with only its share of the noise, and a missing party's share leaves the sum \
                        with less noise than accounted; use client_privacy.mode = \"central\""
                    .into(),
            );
        }
        if !(self.noise_multiplier > 0.0 && self.noise_multiplier.is_finite()) {
            return Err(format!("client_privacy.noise_multiplier = {} must be > 0", self.noise_multiplier));
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(format!("client_privacy.clip = {} must be > 0", self.clip));
        }
        if !(self.server_lr > 0.0 && self.server_lr.is_finite()) {
            return Err(format!("client_privacy.server_lr = {} must be > 0", self.server_lr));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("client_privacy.delta = {} must be in (0, 1)", self.delta));
        }
        if let Some(a) = self.adaptive {
            if !(a.target_quantile > 0.0 && a.target_quantile < 1.0) {
                return Err(format!("client_privacy.target_quantile = {} must be in (0, 1)", a.target_quantile));
            }
            if !(a.learning_rate > 0.0 && a.learning_rate.is_finite()) {
                return Err(format!("client_privacy.clip_learning_rate = {} must be > 0", a.learning_rate));
            }
            if a.count_noise.is_nan() || a.count_noise <= self.noise_multiplier / 2.0 {
                return Err(format!(
                    "client_privacy.count_noise = {} must exceed noise_multiplier / 2 = {} (Andrew et al.: \
                     z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)); raise count_noise",
                    a.count_noise,
                    self.noise_multiplier / 2.0
                ));
            }
        }
        Ok(())
    }

    /// z_Δ: the multiplier of the update noise (z itself without adaptive clipping).
    pub fn update_multiplier(&self) -> f64 {
        match self.adaptive {
            None => self.noise_multiplier,
            Some(a) => (self.noise_multiplier.powi(-2) - (2.0 * a.count_noise).powi(-2)).powf(-0.5),
        }
    }
}

/// What a DP-FedAvg server carries from round to round (and into checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientDpState {
    /// The current clip norm.
    pub clip: f64,
    /// (sampling rate, effective noise multiplier) of every round so far.
    pub rounds: Vec<(f64, f64)>,
}

/// DP-FedAvg: FedAvg's party training with client-level DP on the aggregate.
pub struct DpFedAvg {
    base: FedAvg,
    dp: ClientDp,
    state: ClientDpState,
    noise: NoiseSource,
    run_seed: u64,
    expected: f64,
    last: BTreeMap<String, f64>,
}

impl DpFedAvg {
    /// Client-level DP around `base` (whose `fraction_fit` is the sampling rate q).
    pub fn new(base: FedAvg, dp: ClientDp, noise: NoiseSource) -> Result<Self, StrategyError> {
        base.validate()?;
        dp.validate().map_err(StrategyError::Config)?;
        crate::robust::mean_only(base.aggregator, "DP-FedAvg (client-level DP sums clipped updates)")?;
        let state = ClientDpState { clip: dp.clip, rounds: Vec::new() };
        Ok(DpFedAvg { base, dp, state, noise, run_seed: 0, expected: 1.0, last: BTreeMap::new() })
    }

    /// The client-level ε(δ) after the rounds so far.
    pub fn epsilon(&self) -> Result<f64, federate_privacy::PrivacyError> {
        let orders = rdp::default_orders();
        let mut total = vec![0.0; orders.len()];
        for &(q, z) in &self.state.rounds {
            for (t, r) in total.iter_mut().zip(rdp::rdp(q, z, 1, &orders)?) {
                *t += r;
            }
        }
        Ok(rdp::epsilon_from_rdp(&orders, &total, self.dp.delta)?.0)
    }
}

impl Strategy for DpFedAvg {
    fn name(&self) -> &str {
        "dp-fedavg"
    }

    fn configure_fit(
        &mut self,
        round: u32,
        num_clients: usize,
        run_seed: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, FitTask)> {
        self.run_seed = run_seed;
        self.last.clear();
        let rate = self.base.fraction_fit;
        self.expected = (rate * num_clients as f64).max(1.0);
        let chosen: Vec<usize> = (0..num_clients).filter(|_| rng.random::<f64>() < rate).collect();
        chosen
            .into_iter()
            .map(|c| {
                (
                    c,
                    FitTask {
                        round,
                        training: self.base.training.clone(),
                        seed: 0,
                        vector: None,
                        scaling: None,
                        model: None,
                        changes: Vec::new(),
                    },
                )
            })
            .collect()
    }

    fn aggregate_fit(
        &mut self,
        round: u32,
        global: &Parameters,
        replies: &[(usize, FitReply)],
    ) -> Result<(Parameters, Vec<Rejection>), StrategyError> {
        let m = self.expected;
        let clip = self.state.clip;
        let z_delta = self.dp.update_multiplier();
        let (usable, rejected) = usable_replies(global, replies);
        let mut sum = vec![0.0f64; global.len()];
        let mut count = 0.0f64;
        let mut used = 0usize;
        for (_, r) in usable {
            let delta: Vec<f32> = r.params.iter().zip(&global.values).map(|(p, g)| p - g).collect();
            let norm = l2(&delta);
            let scale = if norm > clip { clip / norm } else { 1.0 };
            for (s, d) in sum.iter_mut().zip(&delta) {
                *s += *d as f64 * scale;
            }
            count += if norm <= clip { 0.5 } else { -0.5 };
            used += 1;
        }
        if used < self.base.min_replies.max(1) {
            return Err(StrategyError::TooFewReplies { round, got: used, need: self.base.min_replies.max(1) });
        }
        let noise_seed = crate::seed::derive(self.run_seed, Stream::ClientDpNoise, &[round as u64]);
        let mut noisy: Vec<f32> = sum.iter().map(|&s| s as f32).collect();
        gaussian_noise(&mut noisy, clip, z_delta * clip, self.noise, noise_seed)
            .map_err(|e| StrategyError::Config(e.to_string()))?;
        if let Some(a) = self.dp.adaptive {
            let mut c = [count as f32];
            gaussian_noise(&mut c, 0.5, a.count_noise, self.noise, noise_seed ^ 1)
                .map_err(|e| StrategyError::Config(e.to_string()))?;
            count = c[0] as f64;
        }
        let values: Vec<f32> = global
            .values
            .iter()
            .zip(&noisy)
            .map(|(g, s)| (*g as f64 + self.dp.server_lr * *s as f64 / m) as f32)
            .collect();
        self.state.rounds.push((self.base.fraction_fit, self.dp.noise_multiplier));
        let fraction = count / m + 0.5;
        if let Some(a) = self.dp.adaptive {
            self.state.clip *= (-a.learning_rate * (fraction - a.target_quantile)).exp();
        }
        self.last.clear();
        self.last.insert("client_epsilon".into(), self.epsilon().unwrap_or(f64::INFINITY));
        self.last.insert("clip_norm".into(), clip);
        // Without adaptive clipping the fraction was not noised: it stays on the server.
        if self.dp.adaptive.is_some() {
            self.last.insert("unclipped_fraction".into(), fraction);
        }
        Ok((Parameters { values, layout: global.layout.clone() }, rejected))
    }

    fn configure_evaluate(
        &mut self,
        round: u32,
        num_clients: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, EvaluateTask)> {
        self.base.configure_evaluate(round, num_clients, rng)
    }

    fn aggregate_evaluate(&mut self, round: u32, replies: &[(usize, EvaluateReply)]) -> Option<EvaluateReply> {
        self.base.aggregate_evaluate(round, replies)
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        self.last.clone()
    }

    fn state(&self) -> Option<StrategyState> {
        Some(StrategyState { meta: serde_json_lite(&self.state), vectors: Vec::new() })
    }

    fn restore(&mut self, state: Option<&StrategyState>) -> Result<(), StrategyError> {
        let Some(s) = state else {
            return Err(missing_state("dp-fedavg (clip norm and privacy ledger)"));
        };
        self.state = parse_state(&s.meta).map_err(StrategyError::Config)?;
        Ok(())
    }
}

/// The state as one line: `clip q,z q,z …` (no JSON dependency in the core).
fn serde_json_lite(s: &ClientDpState) -> String {
    let mut out = format!("{:?}", s.clip);
    for (q, z) in &s.rounds {
        out.push_str(&format!(" {q:?},{z:?}"));
    }
    out
}

fn parse_state(text: &str) -> Result<ClientDpState, String> {
    let bad = || format!("dp-fedavg checkpoint state is malformed: '{}'", text.chars().take(80).collect::<String>());
    let mut parts = text.split_whitespace();
    let clip: f64 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let mut rounds = Vec::new();
    for p in parts {
        let (q, z) = p.split_once(',').ok_or_else(bad)?;
        rounds.push((q.parse().map_err(|_| bad())?, z.parse().map_err(|_| bad())?));
    }
    if !(clip > 0.0 && clip.is_finite()) {
        return Err(bad());
    }
    Ok(ClientDpState { clip, rounds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::LocalTraining;
    use crate::params::{Layout, TensorSpec};
    use rand::SeedableRng;
    use std::sync::Arc;

    fn base(fraction: f64) -> FedAvg {
        FedAvg { fraction_fit: fraction, ..FedAvg::new(LocalTraining::sgd(1, 1, 0.1)) }
    }

    fn dp(mode: ClientDpMode, z: f64, clip: f64) -> ClientDp {
        ClientDp { mode, noise_multiplier: z, clip, adaptive: None, server_lr: 1.0, delta: 1e-5 }
    }

    fn global(v: Vec<f32>) -> Parameters {
        let layout = Arc::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![v.len()], offset: 0 }]));
        Parameters { values: v, layout }
    }

    fn reply(params: Vec<f32>) -> FitReply {
        FitReply { params, num_examples: 10, ..Default::default() }
    }

    fn tasks(s: &mut DpFedAvg, n: usize) -> Vec<(usize, FitTask)> {
        s.configure_fit(1, n, 7, &mut ChaCha8Rng::seed_from_u64(1))
    }

    #[test]
    fn central_clips_each_update_and_divides_by_the_expected_count() {
        let mut s = DpFedAvg::new(base(1.0), dp(ClientDpMode::Central, 1e-9, 1.0), NoiseSource::Seeded).unwrap();
        assert_eq!(tasks(&mut s, 2).len(), 2);
        let g = global(vec![0.0, 0.0]);
        // Δ₁ = (3, 4) has norm 5 → (0.6, 0.8); Δ₂ = (0.1, 0) is inside the clip.
        let replies = vec![(0, reply(vec![3.0, 4.0])), (1, reply(vec![0.1, 0.0]))];
        let (next, rejected) = s.aggregate_fit(1, &g, &replies).unwrap();
        assert!(rejected.is_empty());
        assert!((next.values[0] - 0.35).abs() < 1e-6 && (next.values[1] - 0.4).abs() < 1e-6, "{:?}", next.values);
        // Un-noised, the fraction of unclipped updates is not released.
        assert!(!s.metrics().contains_key("unclipped_fraction"), "{:?}", s.metrics());
    }

    #[test]
    fn distributed_mode_is_refused_and_the_party_half_clips_and_noises() {
        let e = DpFedAvg::new(base(1.0), dp(ClientDpMode::Distributed, 2.0, 1.0), NoiseSource::Seeded)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("client_privacy.mode") && e.contains("secure aggregation") && e.contains("central"), "{e}");
        // The party side (kept for secure aggregation): a big update is clipped to norm 1
        // before noise, and the noise has the share's standard deviation.
        let u = UpdateDp { clip: 1.0, noise_std: 1.0, count_noise_std: 0.0 };
        let d = 100_000;
        let g = vec![0.0f32; d];
        let mut p = vec![1.0f32; d];
        let quiet = UpdateDp { noise_std: 0.0, ..u };
        let bit = privatize_update(&mut p, &g, &quiet, NoiseSource::Seeded, 3).unwrap();
        assert!((l2(&p) - 1.0).abs() < 1e-4 && bit == -0.5, "{} {bit}", l2(&p));
        let mut p = vec![0.0f32; d];
        privatize_update(&mut p, &g, &u, NoiseSource::Secure, 3).unwrap();
        let sd = (p.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / d as f64).sqrt();
        assert!((sd / u.noise_std - 1.0).abs() < 0.02, "{sd}");
    }

    #[test]
    fn adaptive_clip_moves_towards_the_quantile_and_epsilon_accumulates() {
        let mut cfg = dp(ClientDpMode::Central, 0.5, 1.0);
        cfg.adaptive = Some(AdaptiveClip { target_quantile: 0.5, learning_rate: 0.2, count_noise: 0.2 });
        assert!(cfg.validate().is_err(), "σ_b below z/2 is refused");
        // σ_b = m/20 with m = 10 expected parties, as Andrew et al. suggest.
        cfg.adaptive = Some(AdaptiveClip { target_quantile: 0.5, learning_rate: 0.2, count_noise: 0.5 });
        let z_delta = cfg.update_multiplier();
        assert!((z_delta - 3f64.powf(-0.5)).abs() < 1e-12, "{z_delta}");
        let mut s = DpFedAvg::new(base(1.0), cfg, NoiseSource::Seeded).unwrap();
        let g = global(vec![0.0; 4]);
        let mut eps = Vec::new();
        for round in 1..=3 {
            let t = s.configure_fit(round, 10, 7, &mut ChaCha8Rng::seed_from_u64(round as u64));
            // Every update is tiny: all unclipped, so the clip norm shrinks.
            let replies: Vec<_> = t.iter().map(|(c, _)| (*c, reply(vec![1e-3; 4]))).collect();
            s.aggregate_fit(round, &g, &replies).unwrap();
            eps.push(s.metrics()["client_epsilon"]);
        }
        // Each round: S ← S·exp(−0.2·(b̄ − 0.5)) with b̄ ≈ 1 ± 0.05.
        assert!(s.state.clip < 0.85, "clip {}", s.state.clip);
        assert!(eps[0] < eps[1] && eps[1] < eps[2], "{eps:?}");
        let want = federate_privacy::rdp::epsilon(1.0, 0.5, 3, 1e-5).unwrap();
        assert!((eps[2] - want).abs() < 1e-9, "{} vs {want}", eps[2]);
        // The state survives a checkpoint, and a missing state is an error, not a reset.
        let saved = s.state().unwrap();
        let mut t = DpFedAvg::new(base(1.0), cfg, NoiseSource::Seeded).unwrap();
        t.restore(Some(&saved)).unwrap();
        assert_eq!(t.state, s.state);
        let e = t.restore(None).unwrap_err().to_string();
        assert!(e.contains("no dp-fedavg"), "{e}");
        assert!(t.restore(Some(&StrategyState { meta: "garbage".into(), vectors: vec![] })).is_err());
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (c, key) in [
            (ClientDp { noise_multiplier: 0.0, ..dp(ClientDpMode::Central, 1.0, 1.0) }, "noise_multiplier"),
            (ClientDp { clip: -1.0, ..dp(ClientDpMode::Central, 1.0, 1.0) }, "clip"),
            (ClientDp { server_lr: 0.0, ..dp(ClientDpMode::Central, 1.0, 1.0) }, "server_lr"),
            (ClientDp { delta: 1.0, ..dp(ClientDpMode::Central, 1.0, 1.0) }, "delta"),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
