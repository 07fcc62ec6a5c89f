//! Parameter reassembly from a peer-chosen header and chunks: bounded, never panics.
#![no_main]
use federate_net::codec::{Assembler, Limits};
use federate_net::proto::{Chunk, ParametersHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 14 {
        return;
    }
    let header = ParametersHeader {
        transfer_id: 1,
        num_values: u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64,
        num_chunks: u32::from_le_bytes([data[4], data[5], data[6], data[7]]),
        compression: (data[8] % 3) as i32,
    };
    let limits = Limits { max_values: 1 << 16, max_chunk_bytes: 4096 };
    let Ok(mut a) = Assembler::new(header, limits) else { return };
    let mut rest = &data[9..];
    let mut index = 0u32;
    while rest.len() >= 2 {
        let len = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let chunk = Chunk { transfer_id: 1, index, data: rest[2..2 + len].to_vec() };
        rest = &rest[2 + len..];
        index += 1;
        match a.push(chunk) {
            Ok(Some(v)) => {
                assert!(v.len() <= 1 << 16);
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
});
