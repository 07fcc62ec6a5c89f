//! `[compression]`: how parties compress the updates they send (see
//! `federate_core::compress`), and how the server compresses the model it sends them (see
//! `federate_core::broadcast`). The server sends the update setting with every task, and the
//! model's encoding with the model, so parties need no setting of their own.

use anyhow::{Result, bail};
use federate_core::{BroadcastCompression, Codec, UpdateCompression};
use serde::{Deserialize, Serialize};

/// The codecs `[compression] update` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateCodec {
    /// 32-bit floats.
    #[default]
    None,
    /// Stochastic quantisation to 8 bits per value.
    Q8,
    /// Stochastic quantisation to 4 bits per value.
    Q4,
    /// The `fraction` of values largest in magnitude.
    TopK,
}

/// The codecs `[compression] broadcast` accepts: the server's change from one global model to
/// the next needs an unbiased codec, since it keeps no residual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BroadcastCodec {
    /// The model's values as 32-bit floats.
    #[default]
    None,
    /// The change from the model a party holds, stochastically rounded to 8 bits per value.
    Q8,
    /// The same at 4 bits per value.
    Q4,
}

/// Update and broadcast compression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// `none` (default), `q8`, `q4` or `top-k`.
    pub update: UpdateCodec,
    /// Top-k: the fraction of values sent, in (0, 1] (default 0.01).
    pub fraction: f64,
    /// Keep what the codec dropped and add it to the next update (default true).
    pub error_feedback: bool,
    /// zstd over the encoded update and the encoded broadcast (default false).
    pub zstd: bool,
    /// q8/q4: > 0 quantises onto one grid over [−range, range] that every party shares (the
    /// form secure aggregation sums); 0 (default): each block's own minimum and maximum.
    pub range: f64,
    /// `none` (default), `q8` or `q4`: the server sends a party holding the previous global
    /// model the change to the next one at 8 or 4 bits per value; the global model is then
    /// what the parties reconstruct.
    pub broadcast: BroadcastCodec,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            update: UpdateCodec::None,
            fraction: 0.01,
            error_feedback: true,
            zstd: false,
            range: 0.0,
            broadcast: BroadcastCodec::None,
        }
    }
}

impl CompressionConfig {
    /// The setting the tasks carry (`None`: 32-bit floats).
    pub fn update_compression(&self) -> Option<UpdateCompression> {
        let bits = |b| {
            if self.range != 0.0 {
                Codec::Grid { bits: b, range: self.range as f32 }
            } else {
                Codec::Quantize { bits: b }
            }
        };
        let codec = match self.update {
            UpdateCodec::None => return None,
            UpdateCodec::Q8 => bits(8),
            UpdateCodec::Q4 => bits(4),
            UpdateCodec::TopK => Codec::TopK { fraction: self.fraction },
        };
        Some(UpdateCompression { codec, error_feedback: self.error_feedback, zstd: self.zstd })
    }

    /// How the server compresses the model it sends (`None`: 32-bit floats).
    pub fn broadcast_compression(&self) -> Option<BroadcastCompression> {
        let bits = match self.broadcast {
            BroadcastCodec::None => return None,
            BroadcastCodec::Q8 => 8,
            BroadcastCodec::Q4 => 4,
        };
        Some(BroadcastCompression { bits, zstd: self.zstd })
    }

    /// Checks the ranges, and that no key is set that the chosen codec does not read.
    pub fn validate(&self) -> Result<()> {
        let d = CompressionConfig::default();
        if self.update != UpdateCodec::TopK && self.fraction != d.fraction {
            bail!(
                "compression.fraction is read only by update = \"top-k\": remove it, or set compression.update = \"top-k\""
            );
        }
        if !matches!(self.update, UpdateCodec::Q8 | UpdateCodec::Q4) && self.range != d.range {
            bail!("compression.range is read only by update = \"q8\" or \"q4\": remove it, or choose one of them");
        }
        if self.update == UpdateCodec::None && self.error_feedback != d.error_feedback {
            bail!(
                "compression.error_feedback needs an update codec: set compression.update to \"q8\", \"q4\" or \
                 \"top-k\""
            );
        }
        if self.update == UpdateCodec::None && self.broadcast == BroadcastCodec::None && self.zstd != d.zstd {
            bail!(
                "compression.zstd needs a codec: set compression.update to \"q8\", \"q4\" or \"top-k\", or \
                 compression.broadcast to \"q8\" or \"q4\" (transport-level zstd of 32-bit floats is server.zstd)"
            );
        }
        if let Some(c) = self.update_compression() {
            c.validate().map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
