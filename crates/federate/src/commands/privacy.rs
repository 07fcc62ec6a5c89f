//! `federate privacy`: ε of a DP-SGD run, or the noise that reaches a target ε, printed
//! with safe rounding.

use anyhow::Result;

use federate_core::{Mechanism, Sampling};
use federate_privacy::Accountant;

use crate::cli::*;

fn name(a: Accountant) -> &'static str {
    match a {
        Accountant::Rdp => "rdp",
        Accountant::Pld => "pld",
    }
}

pub(crate) fn privacy(what: PrivacyCommand) -> Result<()> {
    match what {
        PrivacyCommand::Epsilon {
            sampling_rate,
            noise_multiplier,
            epsilon_per_step,
            steps,
            delta,
            mechanism,
            sampling,
            accountant,
        } => {
            let run = Run { q: sampling_rate, steps, delta, mechanism, sampling, accountant };
            epsilon(&run, noise_multiplier, epsilon_per_step)
        }
        PrivacyCommand::Noise { target_epsilon, sampling_rate, steps, delta, mechanism, accountant } => {
            let run = Run { q: sampling_rate, steps, delta, mechanism, sampling: Sampling::Poisson, accountant };
            noise(&run, target_epsilon)
        }
    }
}

/// The DP-SGD run a question is about.
struct Run {
    q: f64,
    steps: u64,
    delta: f64,
    mechanism: Mechanism,
    sampling: Sampling,
    accountant: Accountant,
}

/// `federate privacy epsilon`: the ε of a run at σ (Gaussian) or ε₀ (Laplace).
fn epsilon(r: &Run, noise_multiplier: Option<f64>, epsilon_per_step: Option<f64>) -> Result<()> {
    use anyhow::bail;
    use federate_privacy::laplace;
    let (q, steps, delta) = (r.q, r.steps, r.delta);
    let acc = r.accountant;
    let eps = match r.mechanism {
        Mechanism::Gaussian => {
            let Some(sigma) = noise_multiplier else {
                bail!("the gaussian mechanism needs --noise-multiplier σ");
            };
            if r.sampling == Sampling::FixedSize {
                if r.accountant == Accountant::Pld {
                    bail!("fixed-size sampling is accounted by RDP: use --accountant rdp");
                }
                federate_privacy::rdp::epsilon_fixed_size(q, sigma, steps, delta)?
            } else {
                federate_privacy::epsilon(acc, q, sigma, steps, delta)?
            }
        }
        Mechanism::Laplace => {
            let Some(e0) = epsilon_per_step else {
                bail!("the laplace mechanism needs --epsilon-per-step ε₀");
            };
            if r.sampling == Sampling::FixedSize {
                bail!("fixed-size sampling is accounted for the gaussian mechanism only: use --sampling poisson");
            }
            laplace::epsilon(acc, q, e0, steps, delta)?
        }
    };
    let noise = match r.mechanism {
        Mechanism::Gaussian => format!("mechanism=gaussian noise_multiplier={}", noise_multiplier.unwrap_or(0.0)),
        Mechanism::Laplace => format!("mechanism=laplace epsilon_per_step={}", epsilon_per_step.unwrap_or(0.0)),
    };
    let sampling = if r.sampling == Sampling::FixedSize { "fixed-size" } else { "poisson" };
    println!(
        "{noise} accountant={} sampling={sampling} sampling_rate={q} steps={steps} delta={delta}",
        name(r.accountant)
    );
    println!("epsilon={}", up6(eps));
    Ok(())
}

/// `federate privacy noise`: the least noise that reaches `target_epsilon`, printed on the
/// safe side.
fn noise(r: &Run, target_epsilon: f64) -> Result<()> {
    use federate_privacy::laplace;
    let (q, steps, delta) = (r.q, r.steps, r.delta);
    let acc = r.accountant;
    match r.mechanism {
        Mechanism::Gaussian => {
            let sigma = federate_privacy::noise_multiplier_for_epsilon(acc, target_epsilon, q, steps, delta)?;
            let eps = |s: f64| federate_privacy::epsilon(acc, q, s, steps, delta);
            // σ printed rounded up, so the printed value is on the safe side.
            let (sigma, text) = safe_decimal(sigma, true, |s| Ok(eps(s)? <= target_epsilon))?;
            println!("epsilon={} at noise_multiplier={text} ({})", up6(eps(sigma)?), name(r.accountant));
            println!("noise_multiplier={text}");
        }
        Mechanism::Laplace => {
            let e0 = laplace::epsilon_per_step_for_epsilon(acc, target_epsilon, q, steps, delta)?;
            let eps = |e: f64| laplace::epsilon(acc, q, e, steps, delta);
            // ε₀ printed rounded down, so the printed value is on the safe side.
            let (e0, text) = safe_decimal(e0, false, |e| Ok(eps(e)? <= target_epsilon))?;
            println!("epsilon={} at epsilon_per_step={text} ({})", up6(eps(e0)?), name(r.accountant));
            println!("epsilon_per_step={text}");
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
