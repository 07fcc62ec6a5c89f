//! Where a task's global model comes from: its values in a transfer, the model the party kept
//! from the server's last transfer on this connection (by reference), or that model plus the
//! compressed change the transfer carries (`ParametersHeader.delta_from`). The party keeps one
//! model per connection, as the server keeps per connection which model it sent.

/// Where a task's global model comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ModelFrom {
    /// Its values arrive as the task's first transfer; numbered ones are kept (the number:
    /// `ParametersHeader.model`, 0 for none).
    Transfer(u32),
    /// The server refers to the model it sent last on this connection, with this number.
    Kept(u32),
    /// The first transfer carries `bytes` bytes of the encoded change from the model kept
    /// (numbered `base`) to model `model`; with `base` 0, model `model`'s values so encoded.
    Change {
        /// The number of the model it leads to.
        model: u32,
        /// The number of the model it is from (0: none).
        base: u32,
        /// The encoded change's length.
        bytes: u64,
    },
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
        ModelFrom::Change { model, base, bytes } => {
            let packed = vectors.next().unwrap_or_default();
            let apply = |held: &[f32]| {
                let decoded = if base != 0 && held.len() != n {
                    Err(format!("it is from a model of {} values, this party's has {n}", held.len()))
                } else {
                    crate::codec::encoded_bytes(&packed, bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|payload| federate_core::compress::decode(&payload, n).map_err(|e| e.to_string()))
                };
                match decoded {
                    Ok(d) if d.relative == (base != 0) => Ok(federate_core::compress::reconstruct(&d, held)),
                    Ok(_) if base == 0 => Err("it is a change, but from no model".to_string()),
                    Ok(_) => Err("it is not a change".to_string()),
                    Err(e) => Err(e),
                }
                .map_err(|e| format!("the server's model {model} could not be decoded: {e}"))
            };
            let applied = match kept.take() {
                _ if base == 0 => apply(&[]),
                Some((k, held)) if k == base => apply(&held),
                other => Err(format!(
                    "the server sent the change from model {base} sent earlier on this connection, but this party \
                     kept {}",
                    other.map_or("none".to_string(), |(k, _)| format!("model {k}"))
                )),
            };
            *kept = applied.as_ref().ok().map(|v| (model, v.clone()));
            applied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federate_core::{Codec, UpdateCompression};

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
        let got = task_model(
            ModelFrom::Change { model: 3, base: 2, bytes },
            &mut kept,
            &mut [packed.clone()].into_iter(),
            700,
        );
        assert_eq!(got.unwrap(), expected);
        assert_eq!(kept, Some((3, expected.clone())));
        // By reference to it next.
        assert_eq!(task_model(ModelFrom::Kept(3), &mut kept, &mut std::iter::empty(), 700).unwrap(), expected);
        // A change from a model this party does not hold is refused by name and nothing is
        // kept, so the next reference is refused too.
        let e = task_model(
            ModelFrom::Change { model: 4, base: 2, bytes },
            &mut kept,
            &mut [packed.clone()].into_iter(),
            700,
        );
        assert!(e.unwrap_err().contains("change from model 2"), "wrong base");
        assert_eq!(kept, None);
        let mut none: KeptModel = None;
        let e = task_model(
            ModelFrom::Change { model: 3, base: 2, bytes },
            &mut none,
            &mut [packed.clone()].into_iter(),
            700,
        );
        assert!(e.unwrap_err().contains("kept none"));
        // A model's encoded values decode for a party holding nothing; a change from no model,
        // or values where a change was announced, are refused.
        let zeros = vec![0.0f32; 700];
        let (values, vbytes, decoded) = change(&zeros, &m2, 8);
        let mut none: KeptModel = None;
        let got = task_model(
            ModelFrom::Change { model: 1, base: 0, bytes: vbytes },
            &mut none,
            &mut [values.clone()].into_iter(),
            700,
        );
        assert_eq!(got.unwrap(), decoded);
        assert_eq!(none, Some((1, decoded.clone())));
        let e = task_model(
            ModelFrom::Change { model: 1, base: 0, bytes },
            &mut None,
            &mut [packed.clone()].into_iter(),
            700,
        );
        assert!(e.unwrap_err().contains("from no model"));
        let mut kept: KeptModel = Some((2, m1.clone()));
        let e = task_model(
            ModelFrom::Change { model: 3, base: 2, bytes: vbytes },
            &mut kept,
            &mut [values].into_iter(),
            700,
        );
        assert!(e.unwrap_err().contains("not a change"));
        // A length that is not the transfer's, a payload for another model size, or garbage.
        for (kept_model, packed, bytes) in [
            (m1.clone(), packed.clone(), bytes + 8),
            (m1[..600].to_vec(), packed.clone(), bytes),
            (m1.clone(), vec![f32::from_le_bytes([0, 7, 7, 7]); 50], 200),
        ] {
            let mut kept: KeptModel = Some((2, kept_model));
            let e =
                task_model(ModelFrom::Change { model: 3, base: 2, bytes }, &mut kept, &mut [packed].into_iter(), 700);
            assert!(e.unwrap_err().contains("could not be decoded"));
            assert_eq!(kept, None);
        }
    }
}
