//! A table party's side of round 0: the statistics of its training rows as read, and the
//! scaling of its rows with the federation's sum of them, applied once, the first time a task
//! carries it (so a restarted party, or a resumed server, needs nothing kept).

use std::sync::Arc;

use federate_data::Dataset;
use federate_data::stats::Moments;
use federate_data::table::{Preprocessing, Scaling};

use crate::messages::ClientError;

/// What a party holding a table keeps for round 0.
#[derive(Debug, Clone)]
pub struct TableRows {
    features: Vec<String>,
    numeric: Vec<bool>,
    scaling: Scaling,
    /// The statistics of the training rows as read (before any scaling).
    raw: Moments,
    /// Whether the rows hold missing values (NaN) that only the federation's means can fill.
    missing: bool,
    /// The federation's statistics the rows were scaled with, and the preprocessing they make.
    scaled_with: Option<Arc<Moments>>,
    pre: Option<Preprocessing>,
}

impl TableRows {
    /// For a party whose training rows are `train`, with the named features (`numeric`
    /// marks the ones to scale) and the schema's scaling.
    pub fn new(train: &Dataset, test: &Dataset, features: Vec<String>, numeric: Vec<bool>, scaling: Scaling) -> Self {
        let raw = federate_data::table::statistics(train);
        let missing = train.x.iter().chain(&test.x).any(|v| v.is_nan());
        TableRows { features, numeric, scaling, raw, missing, scaled_with: None, pre: None }
    }

    /// Round 0: the statistics of the rows as read (the same every time).
    pub fn statistics(&self) -> Moments {
        self.raw.clone()
    }

    /// Before a task: scales `train` and `test` with the federation's statistics the first
    /// time they come. Refuses statistics of another width, a change of them mid-run, and a
    /// task without them when the rows need them (scaling on, or missing values to fill).
    pub fn ensure(
        &mut self,
        federation: Option<&Arc<Moments>>,
        train: &mut Arc<Dataset>,
        test: &mut Arc<Dataset>,
    ) -> Result<(), ClientError> {
        let Some(m) = federation else {
            if self.scaling == Scaling::None && !self.missing {
                return Ok(());
            }
            return Err(ClientError::Model(
                "this party's table needs the federation's round-0 statistics and the task carries none: run the \
                 same federate version as the server"
                    .into(),
            ));
        };
        match &self.scaled_with {
            Some(done) if **done == **m => return Ok(()),
            Some(_) => {
                return Err(ClientError::Model(
                    "the federation's round-0 statistics changed after this party scaled its rows: restart the party"
                        .into(),
                ));
            }
            None => {}
        }
        if m.sum.len() != self.raw.sum.len() {
            return Err(ClientError::Model(format!(
                "the federation's statistics have {} columns and this party's table {}: its schema or file differs",
                m.sum.len(),
                self.raw.sum.len()
            )));
        }
        let pre = Preprocessing {
            features: self.features.clone(),
            numeric: self.numeric.clone(),
            scaling: self.scaling,
            moments: (**m).clone(),
        };
        // Scaling writes the rows: a party sharing them with its builder takes its own copy.
        pre.apply(Arc::make_mut(train));
        pre.apply(Arc::make_mut(test));
        self.scaled_with = Some(m.clone());
        self.pre = Some(pre);
        Ok(())
    }

    /// The preprocessing the rows were scaled with, once they were (metrics in the target's
    /// units read it).
    pub fn preprocessing(&self) -> Option<&Preprocessing> {
        self.pre.as_ref()
    }
}
