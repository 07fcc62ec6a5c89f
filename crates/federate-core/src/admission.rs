//! What the server accepts from a party before a reply reaches the strategy.
//!
//! A party's example count is its FedAvg weight, and the party reports it itself: one party
//! claiming 10^12 examples would own the global model. The bound therefore comes from the
//! operator, never from the party (which could lie at join time too): a cap for every party
//! (`max_examples`) and, optionally, a declared count per party that is both its cap and,
//! under [`Weighting::Declared`], the weight the server uses instead of the reported one.
//! A count above its cap is refused with the reason, never silently clipped. Every float a
//! party reports must be finite, and an evaluation's accuracy a fraction.
//!
//! A bad model sent with an honest count is not this module's business: that is robust
//! aggregation's (`strategy.aggregator`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::{EvaluateReply, FitReply};

/// The default cap on any example count a party reports (training or test).
pub const DEFAULT_MAX_EXAMPLES: u64 = 100_000_000;

/// Whose example counts weight the parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// The counts the parties report, each bounded by its cap.
    #[default]
    Reported,
    /// The counts the operator declared for each party (`Admission::declared`); the reported
    /// ones are still checked against them.
    Declared,
}

/// The operator's count for one party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// Training examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<u64>,
    /// Test examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<u64>,
}

/// The server's rules for the numbers in a party's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// Cap on any example count a party without a declared count reports.
    pub max_examples: u64,
    /// Declared counts by party identity: each is that party's cap (and its weight under
    /// [`Weighting::Declared`]).
    pub declared: BTreeMap<String, Declared>,
    /// Whose counts weight the parties.
    pub weight_by: Weighting,
}

impl Default for Admission {
    fn default() -> Self {
        Admission { max_examples: DEFAULT_MAX_EXAMPLES, declared: BTreeMap::new(), weight_by: Weighting::Reported }
    }
}

/// Which count a check is about.
#[derive(Clone, Copy)]
enum Stage {
    Train,
    Test,
}

impl Admission {
    /// Checks the rules against the federation's parties: every declared identity is one of
    /// them, declared counts are positive, and under [`Weighting::Declared`] every party has
    /// both counts. The error names the setting to change.
    pub fn validate(&self, parties: &[String]) -> Result<(), String> {
        if self.max_examples == 0 {
            return Err(
                "server.max_examples = 0 would refuse every party: give the largest count a party may report".into()
            );
        }
        for (id, d) in &self.declared {
            if !parties.iter().any(|p| p == id) {
                return Err(format!(
                    "server.declared names party '{id}', which is not in this federation ({}): fix the identity or \
                     remove the entry",
                    parties.join(", ")
                ));
            }
            if d.train == Some(0) || d.test == Some(0) {
                return Err(format!("server.declared.{id}: a declared count must be at least 1"));
            }
        }
        if self.weight_by == Weighting::Declared {
            for id in parties {
                let d = self.declared.get(id).copied().unwrap_or_default();
                if d.train.is_none() || d.test.is_none() {
                    return Err(format!(
                        "server.weight_by = \"declared\" needs server.declared.{id} = {{ train = …, test = … }} for \
                         every party; '{id}' has none"
                    ));
                }
            }
        }
        Ok(())
    }

    fn cap(&self, id: &str, stage: Stage) -> (u64, String) {
        let d = self.declared.get(id).copied().unwrap_or_default();
        let (declared, name) = match stage {
            Stage::Train => (d.train, "train"),
            Stage::Test => (d.test, "test"),
        };
        match declared {
            Some(c) => (c, format!("server.declared.{id}.{name}")),
            None => (self.max_examples, "server.max_examples".into()),
        }
    }

    fn count(&self, id: &str, stage: Stage, reported: usize) -> Result<usize, String> {
        let (cap, setting) = self.cap(id, stage);
        let what = match stage {
            Stage::Train => "training",
            Stage::Test => "test",
        };
        if reported as u64 > cap {
            return Err(format!(
                "reported {reported} {what} examples, above its cap of {cap} ({setting}); refused, not clipped"
            ));
        }
        Ok(match self.weight_by {
            Weighting::Declared => usize::try_from(cap).unwrap_or(usize::MAX),
            Weighting::Reported => reported,
        })
    }

    /// Admits a fit reply from party `id`: its count within its cap (replaced by the declared
    /// one under [`Weighting::Declared`]), every reported number finite, loss ≥ 0, accuracy
    /// in [0, 1]. The reason if refused.
    pub fn fit(&self, id: &str, reply: &mut FitReply) -> Result<(), String> {
        if reply.num_examples == 0 {
            return Err("reported 0 training examples".into());
        }
        reply.num_examples = self.count(id, Stage::Train, reply.num_examples)?;
        let t = &reply.training;
        let p = &reply.privacy;
        let numbers = [
            ("train_loss", t.loss),
            ("train_accuracy", t.accuracy),
            ("train_seconds", t.seconds),
            ("epsilon", p.epsilon),
            ("clip_indicator", p.clip_indicator),
        ];
        let algorithm = match reply.algorithm {
            crate::messages::AlgorithmReply::PrimalResidual(r) => Some(("primal_residual", r)),
            _ => None,
        };
        let named = numbers.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).chain(algorithm);
        let user = reply.metrics.iter().map(|(k, v)| (k.as_str(), *v));
        if let Some((k, v)) = named.chain(user).find(|(_, v)| !v.is_finite()) {
            return Err(format!("'{k}' is {v} (not finite)"));
        }
        if let Some(a) = t.accuracy.filter(|a| !(0.0..=1.0).contains(a)) {
            return Err(format!("train_accuracy is {a} (not a fraction in [0, 1])"));
        }
        if let Some(v) = [t.loss, t.seconds, p.epsilon].into_iter().flatten().find(|v| *v < 0.0) {
            return Err(format!("a reported loss, time or ε is {v} (negative)"));
        }
        Ok(())
    }

    /// Admits an evaluation from party `id`: finite loss, accuracy in [0, 1], count within its
    /// cap (replaced by the declared one under [`Weighting::Declared`]).
    pub fn evaluate(&self, id: &str, reply: &mut EvaluateReply) -> Result<(), String> {
        if !reply.loss.is_finite() {
            return Err(format!("evaluation loss is {} (not finite)", reply.loss));
        }
        if !(0.0..=1.0).contains(&reply.accuracy) {
            return Err(format!("evaluation accuracy is {} (not a fraction in [0, 1])", reply.accuracy));
        }
        reply.stats.check(reply.num_examples).map_err(|e| format!("evaluation statistics: {e}"))?;
        reply.num_examples = self.count(id, Stage::Test, reply.num_examples)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: usize) -> FitReply {
        FitReply { params: vec![0.0], num_examples: n, ..Default::default() }
    }

    #[test]
    fn counts_above_the_cap_are_refused_and_declared_counts_replace_reported_ones() {
        let mut a = Admission { max_examples: 1000, ..Admission::default() };
        a.declared.insert("b".into(), Declared { train: Some(50), test: Some(5) });
        assert!(a.fit("a", &mut reply(1000)).is_ok());
        let e = a.fit("a", &mut reply(1001)).unwrap_err();
        assert!(e.contains("above its cap of 1000 (server.max_examples)"), "{e}");
        let e = a.fit("b", &mut reply(51)).unwrap_err();
        assert!(e.contains("server.declared.b.train"), "{e}");
        assert!(a.fit("a", &mut reply(usize::MAX)).is_err());
        assert!(a.fit("a", &mut reply(0)).unwrap_err().contains("0 training"));
        a.weight_by = Weighting::Declared;
        let mut r = reply(7);
        a.fit("b", &mut r).unwrap();
        assert_eq!(r.num_examples, 50);
        let mut e = EvaluateReply { num_examples: 5, loss: 0.1, accuracy: 0.5, ..Default::default() };
        a.evaluate("b", &mut e).unwrap();
        e.num_examples = 6;
        assert!(a.evaluate("b", &mut e).unwrap_err().contains("server.declared.b.test"));
        e.num_examples = 1;
        e.accuracy = 4.6e18;
        assert!(a.evaluate("b", &mut e).unwrap_err().contains("not a fraction"));
        let mut r = reply(3);
        r.training.loss = Some(f64::NAN);
        assert!(a.fit("b", &mut r).unwrap_err().contains("'train_loss' is NaN"));
        let mut r = reply(3);
        r.metrics.insert("user".into(), f64::INFINITY);
        assert!(a.fit("b", &mut r).unwrap_err().contains("'user' is inf"));
        let mut r = reply(3);
        r.training.accuracy = Some(1.5);
        assert!(a.fit("b", &mut r).unwrap_err().contains("not a fraction"));
        let mut r = reply(3);
        r.privacy.epsilon = Some(-1.0);
        assert!(a.fit("b", &mut r).unwrap_err().contains("negative"));
    }

    #[test]
    fn validation_names_the_setting() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let mut a = Admission::default();
        a.declared.insert("c".into(), Declared { train: Some(1), test: None });
        assert!(a.validate(&ids).unwrap_err().contains("'c', which is not in this federation"));
        a.declared.clear();
        a.weight_by = Weighting::Declared;
        assert!(a.validate(&ids).unwrap_err().contains("server.declared.a"));
        for id in &ids {
            a.declared.insert(id.clone(), Declared { train: Some(10), test: Some(2) });
        }
        a.validate(&ids).unwrap();
        a.max_examples = 0;
        assert!(a.validate(&ids).is_err());
    }
}
