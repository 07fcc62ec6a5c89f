//! `federate privacy`: ε of a DP-SGD run, or the noise that reaches a target ε, printed
//! with safe rounding.

use anyhow::Result;

use crate::cli::*;

pub(crate) fn privacy(what: PrivacyCommand) -> Result<()> {
    use anyhow::bail;
    use federate_privacy::{Accountant, laplace};
    let name = |a: AccountantArg| match a {
        AccountantArg::Rdp => "rdp",
        AccountantArg::Pld => "pld",
    };
    match what {
        PrivacyCommand::Epsilon {
            sampling_rate: q,
            noise_multiplier,
            epsilon_per_step,
            steps,
            delta,
            mechanism,
            sampling,
            accountant,
        } => {
            let acc: Accountant = accountant.into();
            let eps = match mechanism {
                MechanismArg::Gaussian => {
                    let Some(sigma) = noise_multiplier else {
                        bail!("the gaussian mechanism needs --noise-multiplier σ");
                    };
                    if sampling == SamplingArg::FixedSize {
                        if accountant == AccountantArg::Pld {
                            bail!("fixed-size sampling is accounted by RDP: use --accountant rdp");
                        }
                        federate_privacy::rdp::epsilon_fixed_size(q, sigma, steps, delta)?
                    } else {
                        federate_privacy::epsilon(acc, q, sigma, steps, delta)?
                    }
                }
                MechanismArg::Laplace => {
                    let Some(e0) = epsilon_per_step else {
                        bail!("the laplace mechanism needs --epsilon-per-step ε₀");
                    };
                    if sampling == SamplingArg::FixedSize {
                        bail!(
                            "fixed-size sampling is accounted for the gaussian mechanism only: use --sampling poisson"
                        );
                    }
                    laplace::epsilon(acc, q, e0, steps, delta)?
                }
            };
            let noise = match mechanism {
                MechanismArg::Gaussian => {
                    format!("mechanism=gaussian noise_multiplier={}", noise_multiplier.unwrap_or(0.0))
                }
                MechanismArg::Laplace => {
                    format!("mechanism=laplace epsilon_per_step={}", epsilon_per_step.unwrap_or(0.0))
                }
            };
            let sampling = if sampling == SamplingArg::FixedSize { "fixed-size" } else { "poisson" };
            println!(
                "{noise} accountant={} sampling={sampling} sampling_rate={q} steps={steps} delta={delta}",
                name(accountant)
            );
            println!("epsilon={}", up6(eps));
        }
        PrivacyCommand::Noise { target_epsilon, sampling_rate: q, steps, delta, mechanism, accountant } => {
            let acc: Accountant = accountant.into();
            match mechanism {
                MechanismArg::Gaussian => {
                    let sigma = federate_privacy::noise_multiplier_for_epsilon(acc, target_epsilon, q, steps, delta)?;
                    let eps = |s: f64| federate_privacy::epsilon(acc, q, s, steps, delta);
                    // σ printed rounded up, so the printed value is on the safe side.
                    let (sigma, text) = safe_decimal(sigma, true, |s| Ok(eps(s)? <= target_epsilon))?;
                    println!("epsilon={} at noise_multiplier={text} ({})", up6(eps(sigma)?), name(accountant));
                    println!("noise_multiplier={text}");
                }
                MechanismArg::Laplace => {
                    let e0 = laplace::epsilon_per_step_for_epsilon(acc, target_epsilon, q, steps, delta)?;
                    let eps = |e: f64| laplace::epsilon(acc, q, e, steps, delta);
                    // ε₀ printed rounded down, so the printed value is on the safe side.
                    let (e0, text) = safe_decimal(e0, false, |e| Ok(eps(e)? <= target_epsilon))?;
                    println!("epsilon={} at epsilon_per_step={text} ({})", up6(eps(e0)?), name(accountant));
                    println!("epsilon_per_step={text}");
                }
            }
        }
    }
    Ok(())
}

/// `x` written with 6 decimals, rounded up (a printed ε is never below the computed one).
pub(crate) fn up6(x: f64) -> String {
    let mut v = (x * 1e6).ceil() / 1e6;
    let mut text = format!("{v:.6}");
    while text.parse::<f64>().is_ok_and(|p| p < x) {
        v += 1e-6;
        text = format!("{v:.6}");
    }
    text
}

/// The shortest decimal (4 to 12 places) for the calibrated `x`, rounded up (`up`) or down,
/// whose parsed value still satisfies `ok`; `x`'s exact shortest form if none does. What is
/// printed is then safe to copy into a config.
pub(crate) fn safe_decimal(x: f64, up: bool, ok: impl Fn(f64) -> Result<bool>) -> Result<(f64, String)> {
    for places in 4..=12usize {
        let scale = 10f64.powi(places as i32);
        let v = if up { (x * scale).ceil() / scale } else { (x * scale).floor() / scale };
        let text = format!("{v:.places$}");
        if let Ok(parsed) = text.parse::<f64>()
            && parsed > 0.0
            && ok(parsed)?
        {
            return Ok((parsed, text));
        }
    }
    Ok((x, format!("{x}")))
}
