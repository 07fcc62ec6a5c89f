//! Model files (safetensors) read back from disk or a peer: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for (_, t) in st.tensors() {
            let _ = t.data().len();
        }
    }
});
