//! Generates the protocol code from proto/federate.proto with protox (no protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/federate.proto");
    let fds = protox::compile(["proto/federate.proto"], ["proto"])?;
    // Chunk payloads as `Bytes`: one encoded model is shared by every party it goes to.
    tonic_prost_build::configure()
        .bytes(".federate.v1.Chunk.data")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
