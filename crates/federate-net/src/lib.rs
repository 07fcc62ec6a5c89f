//! federate-net: the federation across processes and machines.
//!
//! The versioned protobuf protocol (`proto/federate.proto`), chunked parameter transfer,
//! (mutual) TLS, the server side (`NetServer`, whose `RemoteParty` is just another
//! `ClientProxy` for the core `Server` loop) and the party runner (`run_party`).

/// Generated protocol types and gRPC stubs.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("federate.v1");
}

pub mod codec;
pub mod convert;
pub mod party;
pub mod server;
pub mod tls;
