//! A party's compressed update (`federate_core::compress`) as the server receives it: decoding
//! never panics, never allocates beyond the model's bound, and what it returns is a model of
//! the expected size with finite values.
#![no_main]
use federate_core::compress::decode_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the model size the server expects (1..=512 values).
    let Some((&n, payload)) = data.split_first() else { return };
    let reference = vec![0.5f32; usize::from(n) * 2 + 1];
    if let Ok(values) = decode_reply(payload, &reference) {
        assert_eq!(values.len(), reference.len());
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
