//! Generates the gRPC code from `proto/` with `protox`, a pure-Rust protobuf
//! compiler, so building this crate does not need a system `protoc`.

const PROTOS: [&str; 3] = ["user.proto", "preferences.proto", "subscription.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
