//! Where a task's global model comes from: its values in a transfer, the model the party kept
//! from the server's last transfer on this connection (by reference), or that model plus the
//! compressed change the transfer carries (`ParametersHeader.delta_from`). The party keeps one
//! model per connection, as the server keeps per connection which model it sent.

use crate::proto::ParametersHeader;

/// Where a task's global model comes from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ModelFrom {
    /// Its values arrive as the task's first transfer; numbered ones are kept (the number:
    /// `ParametersHeader.model`, 0 for none).
    Transfer(u32),
    /// The server refers to the model it sent last on this connection, with this number.
    Kept(u32),
    /// The first transfers carry encoded changes, applied in order: the first from the model
    /// kept, each next from the one before's result.
    Changes(Vec<Step>),
}

/// One encoded change: `bytes` bytes leading from model `base` to model `model`; with `base`
/// 0, model `model`'s values so encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    /// The number of the model it leads to.
    pub(super) model: u32,
    /// The number of the model it is from (0: none).
    pub(super) base: u32,
    /// The encoded change's length.
    pub(super) bytes: u64,
}

/// Most changes the party accepts in one instruction (the server sends at most
/// `federate_core::broadcast::MAX_CHAIN`).
const MAX_STEPS: usize = 64;

/// Where a task's model comes from, by the instruction's parameters header and `chain` of
/// further changes; and the headers of the transfers that carry it, in order.
pub(super) fn model_from(
    params: ParametersHeader,
    chain: Vec<ParametersHeader>,
) -> Result<(ModelFrom, Vec<ParametersHeader>), String> {
    let is_change = params.delta_from != 0 || params.encoded_bytes != 0;
    if !chain.is_empty() && !is_change {
        return Err("further changes follow a model that is not a change".into());
    }
    if chain.len() >= MAX_STEPS {
        return Err(format!("{} changes in a row (at most {MAX_STEPS})", chain.len() + 1));
    }
    if params.by_reference {
        // A model sent by reference has no transfer: the party uses the one it kept.
        return Ok((ModelFrom::Kept(params.model), Vec::new()));
    }
    if !is_change {
        return Ok((ModelFrom::Transfer(params.model), vec![params]));
    }
    let headers: Vec<ParametersHeader> = std::iter::once(params).chain(chain).collect();
    let steps = headers.iter().map(|h| Step { model: h.model, base: h.delta_from, bytes: h.encoded_bytes }).collect();
    Ok((ModelFrom::Changes(steps), headers))
}

/// The numbered model the server last sent on this connection (`model`, values).
pub(super) type KeptModel = Option<(u32, Vec<f32>)>;

/// A task's model: the one kept when the server refers to it; the one kept plus the change
/// the first transfer carries; else the first transfer. A numbered model received is kept
/// (even if the task is then refused: the server counts it as held); a change that cannot be
/// applied leaves nothing kept.
pub(super) fn task_model(
    model: ModelFrom,
    kept: &mut KeptModel,
    vectors: &mut impl Iterator<Item = Vec<f32>>,
    n: usize,
) -> Result<Vec<f32>, String> {
    match model {
        ModelFrom::Kept(m) => match kept.as_ref() {
            Some((k, v)) if *k == m => Ok(v.clone()),
            other => {
                let have = other.map_or("none".to_string(), |(k, _)| format!("model {k}"));
                Err(format!(
                    "the server referred to model {m} sent earlier on this connection, but this party kept {have}"
                ))
            }
        },
        ModelFrom::Transfer(m) => {
            let v = vectors.next().unwrap_or_default();
            *kept = (m != 0).then(|| (m, v.clone()));
            Ok(v)
        }
        ModelFrom::Changes(steps) => {
            // Every change's transfer is read, so the vectors after them stay in step.
            let packed: Vec<Vec<f32>> = steps.iter().map(|_| vectors.next().unwrap_or_default()).collect();
            let mut held = kept.take();
            for (i, (step, packed)) in steps.iter().zip(&packed).enumerate() {
                let from = match held.take() {
                    _ if step.base == 0 => Ok(Vec::new()),
                    Some((k, values)) if k == step.base => Ok(values),
                    other if i == 0 => Err(format!(
                        "the server sent the change from model {} sent earlier on this connection, but this party \
                         kept {}",
                        step.base,
                        other.map_or("none".to_string(), |(k, _)| format!("model {k}"))
                    )),
                    _ => Err(format!(
                        "the server's change {} is from model {}, not from the one before",
                        i + 1,
                        step.base
                    )),
                };
                // A change that cannot be applied leaves nothing kept (`held` is taken).
                held = Some((step.model, from.and_then(|from| apply(*step, packed, &from, n))?));
            }
            *kept = held;
            Ok(kept.as_ref().map(|(_, values)| values.clone()).unwrap_or_default())
        }
    }
}

/// The model `step` leads to from `held` (the kept model, or nothing when `step.base` is 0),
/// decoded from its `packed` transfer for a model of `n` values.
fn apply(step: Step, packed: &[f32], held: &[f32], n: usize) -> Result<Vec<f32>, String> {
    let relative = step.base != 0;
    let decoded = if relative && held.len() != n {
        Err(format!("it is from a model of {} values, this party's has {n}", held.len()))
    } else {
        crate::codec::encoded_bytes(packed, step.bytes)
            .map_err(|e| e.to_string())
            .and_then(|payload| federate_core::compress::decode(&payload, n).map_err(|e| e.to_string()))
    };
    match decoded {
        Ok(d) if d.relative == relative => Ok(federate_core::compress::reconstruct(&d, held)),
        Ok(_) if !relative => Err("it is a change, but from no model".to_string()),
        Ok(_) => Err("it is not a change".to_string()),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("the server's model {} could not be decoded: {e}", step.model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use federate_core::{Codec, UpdateCompression};

    fn one(model: u32, base: u32, bytes: u64) -> ModelFrom {
        ModelFrom::Changes(vec![Step { model, base, bytes }])
    }

    fn change(from: &[f32], to: &[f32], bits: u8) -> (Vec<f32>, u64, Vec<f32>) {
        let c = UpdateCompression { codec: Codec::Quantize { bits }, error_feedback: false, zstd: true };
        let d: Vec<f32> = to.iter().zip(from).map(|(t, f)| t - f).collect();
        let payload = c.encode(&d, !from.iter().all(|v| *v == 0.0), 9).unwrap();
        let expected = federate_core::compress::decode_reply(&payload, from).unwrap();
        let (header, chunks) = crate::codec::split_encoded(&payload, 1, 1 << 20);
        let packed = crate::codec::join(header, chunks, crate::codec::Limits::default()).unwrap();
        (packed, payload.len() as u64, expected)
    }

    #[test]
    fn a_change_applies_to_the_model_it_is_from_and_only_to_it() {
        let m1: Vec<f32> = (0..700).map(|i| (i as f32).sin()).collect();
        let m2: Vec<f32> = m1.iter().map(|v| v * 0.9 + 0.01).collect();
        let (packed, bytes, expected) = change(&m1, &m2, 4);
        // Kept model 2 (wire numbers), sent the change from 2 to 3: kept becomes model 3.
        let mut kept: KeptModel = Some((2, m1.clone()));
        let got = task_model(one(3, 2, bytes), &mut kept, &mut [packed.clone()].into_iter(), 700);
        assert_eq!(got.unwrap(), expected);
        assert_eq!(kept, Some((3, expected.clone())));
        // By reference to it next.
        assert_eq!(task_model(ModelFrom::Kept(3), &mut kept, &mut std::iter::empty(), 700).unwrap(), expected);
        // A change from a model this party does not hold is refused by name and nothing is
        // kept, so the next reference is refused too.
        let e = task_model(one(4, 2, bytes), &mut kept, &mut [packed.clone()].into_iter(), 700);
        assert!(e.unwrap_err().contains("change from model 2"), "wrong base");
        assert_eq!(kept, None);
        let mut none: KeptModel = None;
        let e = task_model(one(3, 2, bytes), &mut none, &mut [packed.clone()].into_iter(), 700);
        assert!(e.unwrap_err().contains("kept none"));
        // A model's encoded values decode for a party holding nothing; a change from no model,
        // or values where a change was announced, are refused.
        let zeros = vec![0.0f32; 700];
        let (values, vbytes, decoded) = change(&zeros, &m2, 8);
        let mut none: KeptModel = None;
        let got = task_model(one(1, 0, vbytes), &mut none, &mut [values.clone()].into_iter(), 700);
        assert_eq!(got.unwrap(), decoded);
        assert_eq!(none, Some((1, decoded.clone())));
        let e = task_model(one(1, 0, bytes), &mut None, &mut [packed.clone()].into_iter(), 700);
        assert!(e.unwrap_err().contains("from no model"));
        let mut kept: KeptModel = Some((2, m1.clone()));
        let e = task_model(one(3, 2, vbytes), &mut kept, &mut [values].into_iter(), 700);
        assert!(e.unwrap_err().contains("not a change"));
        // A length that is not the transfer's, a payload for another model size, or garbage.
        for (kept_model, packed, bytes) in [
            (m1.clone(), packed.clone(), bytes + 8),
            (m1[..600].to_vec(), packed.clone(), bytes),
            (m1.clone(), vec![f32::from_le_bytes([0, 7, 7, 7]); 50], 200),
        ] {
            let mut kept: KeptModel = Some((2, kept_model));
            let e = task_model(one(3, 2, bytes), &mut kept, &mut [packed].into_iter(), 700);
            assert!(e.unwrap_err().contains("could not be decoded"));
            assert_eq!(kept, None);
        }
    }

    #[test]
    fn changes_in_a_row_apply_one_after_the_other_and_must_follow_each_other() {
        let m1: Vec<f32> = (0..700).map(|i| (i as f32 * 0.3).cos()).collect();
        let m2: Vec<f32> = m1.iter().map(|v| v + 0.02).collect();
        let (p12, b12, e2) = change(&m1, &m2, 4);
        let m3: Vec<f32> = e2.iter().map(|v| v * 0.97).collect();
        let (p23, b23, e3) = change(&e2, &m3, 4);
        let steps = |second_base| {
            ModelFrom::Changes(vec![
                Step { model: 3, base: 2, bytes: b12 },
                Step { model: 4, base: second_base, bytes: b23 },
            ])
        };
        // Kept model 2 (wire numbers): the changes to 3 and then to 4 give model 4 exactly,
        // and the vector after them is still there for the task.
        let mut kept: KeptModel = Some((2, m1.clone()));
        let mut vectors = [p12.clone(), p23.clone(), vec![7.0]].into_iter();
        assert_eq!(task_model(steps(3), &mut kept, &mut vectors, 700).unwrap(), e3);
        assert_eq!(kept, Some((4, e3.clone())));
        assert_eq!(vectors.next(), Some(vec![7.0]));
        // A second change that is not from the first's model: refused, nothing kept, and its
        // transfer still read.
        let mut kept: KeptModel = Some((2, m1.clone()));
        let mut vectors = [p12, p23, vec![7.0]].into_iter();
        let e = task_model(steps(9), &mut kept, &mut vectors, 700).unwrap_err();
        assert!(e.contains("change 2 is from model 9"), "{e}");
        assert_eq!((kept, vectors.next()), (None, Some(vec![7.0])));
    }

    #[test]
    fn the_instruction_says_where_the_model_comes_from() {
        let h = |model, delta_from, encoded_bytes| ParametersHeader {
            model,
            delta_from,
            encoded_bytes,
            num_values: 10,
            num_chunks: 1,
            ..Default::default()
        };
        let (from, headers) = model_from(h(3, 2, 40), vec![h(4, 3, 40)]).unwrap();
        assert_eq!(
            from,
            ModelFrom::Changes(vec![Step { model: 3, base: 2, bytes: 40 }, Step { model: 4, base: 3, bytes: 40 }])
        );
        assert_eq!(headers.len(), 2);
        assert_eq!(model_from(h(3, 0, 0), vec![]).unwrap().0, ModelFrom::Transfer(3));
        let by_reference = ParametersHeader { by_reference: true, ..h(3, 0, 0) };
        assert_eq!(model_from(by_reference, vec![]).unwrap(), (ModelFrom::Kept(3), vec![]));
        assert!(model_from(h(3, 0, 0), vec![h(4, 3, 40)]).unwrap_err().contains("not a change"));
        assert!(model_from(h(3, 2, 40), vec![h(4, 3, 40); MAX_STEPS]).unwrap_err().contains("at most 64"));
    }
}
