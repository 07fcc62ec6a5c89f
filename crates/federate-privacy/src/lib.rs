//! federate-privacy: how much privacy a training run spends.
//!
//! Pure arithmetic on numbers, no I/O: Rényi-DP (RDP) and privacy-loss-distribution (PLD)
//! accountants for the Poisson-subsampled Gaussian mechanism, conversion to (ε, δ),
//! calibration of the noise multiplier for a target ε, and the noise and clipping of flat
//! vectors (`vector`: seeded, or exact discrete noise from the OS's randomness). No maintained Rust crate implements
//! these accountants, so they are written here and tested against the published values of
//! Google's `dp_accounting` library (which Opacus agrees with).

mod calibrate;
mod error;
pub mod laplace;
pub mod ledger;
mod math;
pub mod pld;
pub mod rdp;
pub mod sample;
pub mod vector;

pub use calibrate::{Accountant, epsilon, noise_multiplier_for_epsilon};
pub use error::PrivacyError;
pub use ledger::{Draw, Entry, Ledger, Noise};
