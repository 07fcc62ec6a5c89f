//! Optimisers that update a flat parameter vector from a flat gradient, as a party's local
//! training applies them: SGD (momentum, weight decay, PyTorch's conventions) and Adam. Their
//! settings (`OptimizerSpec`) are plain data in `messages`; the behaviour is here.

use rayon::prelude::*;

use crate::messages::{LearnerError, OptimizerSpec};

impl OptimizerSpec {
    /// Checks every hyper-parameter's range.
    pub fn validate(&self) -> Result<(), LearnerError> {
        let bad = |m: String| Err(LearnerError::Setting(m));
        match *self {
            OptimizerSpec::Sgd { lr, momentum, weight_decay } => {
                if !(lr > 0.0 && lr.is_finite()) {
                    return bad(format!("learning rate lr = {lr} must be a positive number"));
                }
                if !(0.0..1.0).contains(&momentum) {
                    return bad(format!("momentum = {momentum} must be in [0, 1)"));
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad(format!("weight_decay = {weight_decay} must be ≥ 0"));
                }
            }
            OptimizerSpec::Adam { lr, beta1, beta2, eps, weight_decay } => {
                if !(lr > 0.0 && lr.is_finite()) {
                    return bad(format!("learning rate lr = {lr} must be a positive number"));
                }
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return bad(format!("beta1 = {beta1} and beta2 = {beta2} must be in [0, 1)"));
                }
                if eps.is_nan() || eps <= 0.0 {
                    return bad(format!("eps = {eps} must be > 0"));
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad(format!("weight_decay = {weight_decay} must be ≥ 0"));
                }
            }
        }
        Ok(())
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match *self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } => lr,
        }
    }

    /// How far `steps` steps from a fresh optimiser move the parameters per unit of a
    /// constant gradient: lr·K for plain SGD; with momentum μ the velocity builds up, so
    /// lr·Σ_{s=1..K} (1 − μ^s)/(1 − μ). Dividing a displacement by it gives the mean gradient
    /// along the path (SCAFFOLD's control variate). `None` for Adam, whose step is not
    /// proportional to the gradient.
    pub fn path_length(&self, steps: u64) -> Option<f64> {
        match *self {
            OptimizerSpec::Sgd { lr, momentum, .. } => {
                let (k, mu) = (steps as f64, f64::from(momentum));
                let per_gradient = if mu == 0.0 { k } else { (k - mu * (1.0 - mu.powf(k)) / (1.0 - mu)) / (1.0 - mu) };
                Some(f64::from(lr) * per_gradient)
            }
            OptimizerSpec::Adam { .. } => None,
        }
    }

    /// A fresh optimiser for `n` parameters.
    pub fn build(&self, n: usize) -> Result<Optimizer, LearnerError> {
        self.validate()?;
        let (m, v) = match self {
            OptimizerSpec::Sgd { momentum, .. } if *momentum == 0.0 => (Vec::new(), Vec::new()),
            OptimizerSpec::Sgd { .. } => (vec![0.0; n], Vec::new()),
            OptimizerSpec::Adam { .. } => (vec![0.0; n], vec![0.0; n]),
        };
        Ok(Optimizer { spec: self.clone(), m, v, t: 0 })
    }
}

/// An optimiser's state; lives for one local training run.
#[derive(Debug, Clone)]
pub struct Optimizer {
    spec: OptimizerSpec,
    m: Vec<f32>,
    v: Vec<f32>,
    t: u32,
}

impl Optimizer {
    /// Applies one step to `params` from `grad`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        self.t += 1;
        // Element-wise and memory-bound: split across the pool in fixed chunks (the result
        // does not depend on the split).
        const CHUNK: usize = 1 << 15;
        match self.spec {
            OptimizerSpec::Sgd { lr, momentum, weight_decay } => {
                if momentum == 0.0 {
                    params.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).for_each(|(p, g)| {
                        for (p, g) in p.iter_mut().zip(g) {
                            *p -= lr * (g + weight_decay * *p);
                        }
                    });
                } else {
                    params
                        .par_chunks_mut(CHUNK)
                        .zip(grad.par_chunks(CHUNK))
                        .zip(self.m.par_chunks_mut(CHUNK))
                        .for_each(|((p, g), v)| {
                            for ((p, g), v) in p.iter_mut().zip(g).zip(v) {
                                *v = momentum * *v + g + weight_decay * *p;
                                *p -= lr * *v;
                            }
                        });
                }
            }
            OptimizerSpec::Adam { lr, beta1, beta2, eps, weight_decay } => {
                let bc1 = 1.0 - beta1.powi(self.t as i32);
                let bc2 = 1.0 - beta2.powi(self.t as i32);
                let step = lr / bc1;
                let bc2s = bc2.sqrt();
                params
                    .par_chunks_mut(CHUNK)
                    .zip(grad.par_chunks(CHUNK))
                    .zip(self.m.par_chunks_mut(CHUNK))
                    .zip(self.v.par_chunks_mut(CHUNK))
                    .for_each(|(((p, g), m), v)| {
                        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                            let g = g + weight_decay * *p;
                            *m = beta1 * *m + (1.0 - beta1) * g;
                            *v = beta2 * *v + (1.0 - beta2) * g * g;
                            *p -= step * *m / (v.sqrt() / bc2s + eps);
                        }
                    });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_length_is_the_displacement_per_unit_of_a_constant_gradient() {
        for momentum in [0.0f32, 0.5, 0.9] {
            let spec = OptimizerSpec::Sgd { lr: 0.05, momentum, weight_decay: 0.0 };
            let mut opt = spec.build(1).unwrap();
            let mut x = [0.0f32];
            for k in 1..=60u64 {
                opt.step(&mut x, &[1.0]);
                let want = spec.path_length(k).unwrap();
                assert!((f64::from(-x[0]) - want).abs() < 1e-4 * want, "μ {momentum}, {k} steps: {} vs {want}", -x[0]);
            }
        }
        let adam = OptimizerSpec::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        assert_eq!(adam.path_length(5), None);
    }

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let mut o = OptimizerSpec::Sgd { lr: 0.1, momentum: 0.5, weight_decay: 0.0 }.build(1).unwrap();
        let mut p = [1.0f32];
        o.step(&mut p, &[2.0]); // v = 2, p = 0.8
        o.step(&mut p, &[2.0]); // v = 3, p = 0.5
        assert!((p[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let mut o =
            OptimizerSpec::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }.build(2).unwrap();
        let mut p = [0.0f32, 0.0];
        o.step(&mut p, &[3.0, -0.5]);
        assert!((p[0] + 0.01).abs() < 1e-6 && (p[1] - 0.01).abs() < 1e-6);
    }

    #[test]
    fn bad_hyper_parameters_are_refused() {
        assert!(OptimizerSpec::Sgd { lr: -0.1, momentum: 0.0, weight_decay: 0.0 }.build(1).is_err());
        assert!(OptimizerSpec::Sgd { lr: 0.1, momentum: 1.0, weight_decay: 0.0 }.build(1).is_err());
    }
}
