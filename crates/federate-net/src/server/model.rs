//! The global model as the hub sends it: by reference to a party that holds it on its
//! connection, as the compressed change to a party that holds the model before (under a
//! compressed broadcast, see `federate_core::broadcast`), else its values.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use federate_core::Parameters;

use super::{Conn, Encoded, Hub};
use crate::codec;

/// A global model ready to send: its values, and under a compressed broadcast the encoded
/// change to it from the model before.
#[derive(Clone)]
pub(super) struct ModelPayload {
    pub(super) values: Arc<Encoded>,
    pub(super) change: Option<Arc<Change>>,
}

/// The encoded change from global model `base` to global model `target` (numbered as the
/// server numbers them: the round whose aggregate each is); with no base, the encoded values
/// of model `target` (a fresh run's initial model), which any party can decode.
pub(super) struct Change {
    base: Option<u32>,
    target: u32,
    encoded: Encoded,
}

impl Conn {
    /// The header that sends `payload`, global model number `model`, to this party, and the
    /// transfer whose chunks follow: by reference (no chunks) when it is the model last sent on
    /// this connection; the encoded change when the party holds the model the change is from;
    /// else the values. The party then keeps the model in place of the one before.
    pub(super) fn model_header<'a>(
        &self,
        payload: &'a ModelPayload,
        model: Option<u32>,
    ) -> (crate::proto::ParametersHeader, Option<&'a Encoded>) {
        let number = |m: u32| m.saturating_add(1);
        let mut h = payload.values.header;
        h.model = model.map_or(0, number);
        let Ok(mut held) = self.held.lock() else { return (h, Some(&payload.values)) };
        if model.is_some() && *held == model {
            h.by_reference = true;
            h.num_chunks = 0;
            return (h, None);
        }
        let before = std::mem::replace(&mut *held, model);
        match &payload.change {
            Some(c) if model == Some(c.target) && (c.base.is_none() || before == c.base) => {
                let mut h = c.encoded.header;
                (h.model, h.delta_from) = (number(c.target), c.base.map_or(0, number));
                (h, Some(&c.encoded))
            }
            _ => (h, Some(&payload.values)),
        }
    }
}

impl Hub {
    /// The model `global` ready to send, with the compressed change to it when `delta` is one
    /// (for the model the task names).
    pub(super) fn model_payload(
        &self,
        global: &Parameters,
        model: Option<u32>,
        delta: Option<&Arc<federate_core::messages::ModelDelta>>,
    ) -> ModelPayload {
        let change = delta.filter(|d| Some(d.target) == model).map(|d| {
            let transfer = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (header, chunks) = codec::split_encoded(&d.payload, transfer, self.inner.cfg.chunk_bytes);
            Arc::new(Change { base: d.base, target: d.target, encoded: Encoded { header, chunks } })
        });
        ModelPayload { values: self.encode(&global.values), change }
    }
}
