//! Every protobuf message a peer can send us: decoding arbitrary bytes must never panic.
#![no_main]
use federate_net::proto::{PartyMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = PartyMessage::decode(data);
    let _ = ServerMessage::decode(data);
});
