//! `[privacy]` (sample-level DP during local training) and `[client_privacy]` (client-level
//! DP on updates).

use serde::{Deserialize, Serialize};

/// `"none"` or one of `T`'s names in a config: `Option<T>` on the Rust side, so the setting
/// uses core's enum directly instead of a copy with a `None` variant.
pub(crate) mod none_or {
    use serde::de::{Error, IntoDeserializer};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes `None` as `"none"`.
    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_str("none"),
            Some(t) => t.serialize(s),
        }
    }

    /// Reads `"none"` as `None`, anything else as `T` (its error lists `T`'s names; "none"
    /// is added).
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "none" {
            return Ok(None);
        }
        let inner: Result<T, serde::de::value::Error> = T::deserialize(text.into_deserializer());
        inner.map(Some).map_err(|e| D::Error::custom(format!("{e}, or `none`")))
    }
}

/// Differential-privacy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `none`, `gaussian` or `laplace` (sample-level DP-SGD in every party).
    #[serde(with = "none_or")]
    pub mechanism: Option<federate_core::Mechanism>,
    /// σ: noise standard deviation ÷ clipping norm (gaussian).
    pub noise_multiplier: f64,
    /// ε₀ of one step before subsampling (laplace: noise scale = clip / ε₀).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_per_step: Option<f64>,
    /// Per-example clipping norm (L2 for gaussian, L1 for laplace).
    pub clip: f32,
    /// δ of the reported (ε, δ).
    pub delta: f64,
    /// `rdp` or `pld`.
    pub accountant: federate_privacy::Accountant,
    /// Poisson sampling rate (default: batch_size ÷ each party's examples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    /// Each party stops training before its ε would pass this; the run stops when all have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// `poisson` (each example with probability q) or `fixed-size` (exactly batch_size
    /// examples per step; RDP accounting for replace-one neighbours; gaussian only).
    pub sampling: federate_core::Sampling,
    /// Noise from the operating system and exact discrete samplers (`secure`), or seeded
    /// floating-point noise (`seeded`, reproducible). Default: seeded for `federate run`,
    /// secure for `federate join`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise: Option<federate_core::NoiseSource>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            mechanism: None,
            noise_multiplier: 1.0,
            epsilon_per_step: None,
            clip: 1.0,
            delta: 1e-5,
            accountant: federate_privacy::Accountant::Rdp,
            sampling_rate: None,
            target_epsilon: None,
            sampling: federate_core::Sampling::Poisson,
            noise: None,
        }
    }
}

impl PrivacyConfig {
    /// The DP-SGD settings, if DP is on.
    pub fn dp_sgd(&self) -> Option<federate_core::DpSgd> {
        Some(federate_core::DpSgd {
            mechanism: self.mechanism?,
            noise_multiplier: self.noise_multiplier,
            epsilon_per_step: self.epsilon_per_step,
            clip: self.clip,
            sampling_rate: self.sampling_rate,
            delta: self.delta,
            accountant: self.accountant,
            max_epsilon: self.target_epsilon,
            sampling: self.sampling,
        })
    }
}

/// Client-level DP settings (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et
/// al. 2021). Parties join each round with probability strategy.fraction_fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientPrivacyConfig {
    /// `none`, `central` or `distributed` (refused until secure aggregation).
    #[serde(with = "none_or")]
    pub mode: Option<federate_core::ClientDpMode>,
    /// z: noise std ÷ clip norm on the sum of clipped updates.
    pub noise_multiplier: f64,
    /// S: the L2 clip norm of an update (the initial one when adaptive).
    pub clip: f64,
    /// Track a quantile of the update norms instead of a fixed clip norm.
    pub adaptive: bool,
    /// γ: the quantile tracked.
    pub target_quantile: f64,
    /// η_C: geometric learning rate of the clip norm.
    pub clip_learning_rate: f64,
    /// σ_b: noise std on the count of unclipped updates (default: expected parties ÷ 20, as
    /// Andrew et al. suggest, but at least noise_multiplier, which z_Δ requires to exceed
    /// z/2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_noise: Option<f64>,
    /// η_s: server learning rate on the mean clipped update.
    pub server_lr: f64,
    /// δ of the client-level (ε, δ).
    pub delta: f64,
}

impl Default for ClientPrivacyConfig {
    fn default() -> Self {
        ClientPrivacyConfig {
            mode: None,
            noise_multiplier: 1.0,
            clip: 1.0,
            adaptive: false,
            target_quantile: 0.5,
            clip_learning_rate: 0.2,
            count_noise: None,
            server_lr: 1.0,
            delta: 1e-5,
        }
    }
}

impl ClientPrivacyConfig {
    /// The core settings, if client-level DP is on; `expected` parties per round size the
    /// default count noise.
    pub fn client_dp_for(&self, expected: f64) -> Option<federate_core::ClientDp> {
        Some(federate_core::ClientDp {
            mode: self.mode?,
            noise_multiplier: self.noise_multiplier,
            clip: self.clip,
            adaptive: self.adaptive.then(|| federate_core::AdaptiveClip {
                target_quantile: self.target_quantile,
                learning_rate: self.clip_learning_rate,
                count_noise: self.count_noise.unwrap_or((expected / 20.0).max(self.noise_multiplier)),
            }),
            server_lr: self.server_lr,
            delta: self.delta,
        })
    }
}
