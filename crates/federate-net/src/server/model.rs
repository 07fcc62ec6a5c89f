//! The global model as the hub sends it: by reference to a party that holds it on its
//! connection, as the compressed changes from the model a party holds (under a compressed
//! broadcast, see `federate_core::broadcast`), else its values.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use federate_core::Parameters;
use federate_core::messages::ModelDelta;

use super::{Conn, Encoded, Hub};
use crate::codec;

/// A global model ready to send: its values, and under a compressed broadcast the encoded
/// changes leading to it from the models before (consecutive, oldest first).
#[derive(Clone)]
pub(super) struct ModelPayload {
    pub(super) values: Arc<Encoded>,
    changes: Arc<Changes>,
}

/// The changes leading to a model, as the server made them (for `changes_for`) and encoded.
struct Changes {
    deltas: Vec<Arc<ModelDelta>>,
    encoded: Vec<Encoded>,
}

/// How a model goes to one party: the instruction's parameters header, the headers of the
/// further changes that follow it, and the transfers whose chunks follow, in order.
pub(super) struct Sending<'a> {
    pub(super) params: crate::proto::ParametersHeader,
    pub(super) chain: Vec<crate::proto::ParametersHeader>,
    pub(super) transfers: Vec<&'a Encoded>,
}

impl Conn {
    /// How `payload`, global model number `model`, goes to this party: by reference (no
    /// chunks) when it is the model last sent on this connection; as the encoded changes from
    /// the model the party holds when `broadcast::changes_for` says so (the first in the
    /// instruction's header, the rest in `chain`); else the values. The party then keeps the
    /// model in place of the one before.
    pub(super) fn model_header<'a>(&self, payload: &'a ModelPayload, model: Option<u32>) -> Sending<'a> {
        let number = |m: u32| m.saturating_add(1);
        let mut h = payload.values.header;
        h.model = model.map_or(0, number);
        let values = Sending { params: h, chain: Vec::new(), transfers: vec![&payload.values] };
        let Ok(mut held) = self.held.lock() else { return values };
        if model.is_some() && *held == model {
            h.by_reference = true;
            h.num_chunks = 0;
            return Sending { params: h, chain: Vec::new(), transfers: Vec::new() };
        }
        let before = std::mem::replace(&mut *held, model);
        let Changes { deltas, encoded } = &*payload.changes;
        let leads_here = deltas.last().is_some_and(|d| Some(d.target) == model);
        match federate_core::broadcast::changes_for(deltas, before, payload.values.header.num_values as usize) {
            Some(start) if leads_here => {
                let mut headers = deltas[start..].iter().zip(&encoded[start..]).map(|(d, e)| {
                    let mut h = e.header;
                    (h.model, h.delta_from) = (number(d.target), d.base.map_or(0, number));
                    h
                });
                let params = headers.next().unwrap_or(h);
                Sending { params, chain: headers.collect(), transfers: encoded[start..].iter().collect() }
            }
            _ => values,
        }
    }
}

impl Hub {
    /// The model `global` ready to send, with the compressed changes leading to it (when they
    /// lead to the model the task names).
    pub(super) fn model_payload(
        &self,
        global: &Parameters,
        model: Option<u32>,
        changes: &[Arc<ModelDelta>],
    ) -> ModelPayload {
        let leads_here = changes.last().is_some_and(|d| Some(d.target) == model);
        let deltas: Vec<Arc<ModelDelta>> = if leads_here { changes.to_vec() } else { Vec::new() };
        let encoded = deltas
            .iter()
            .map(|d| {
                let transfer = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let (header, chunks) = codec::split_encoded(&d.payload, transfer, self.inner.cfg.chunk_bytes);
                Encoded { header, chunks }
            })
            .collect();
        ModelPayload { values: self.encode(&global.values), changes: Arc::new(Changes { deltas, encoded }) }
    }
}
