//! Generates the wire types from `proto/` with a pure-Rust protobuf compiler
//! (protox), so building needs no system `protoc`.

fn main() {
    let files = [
        "proto/e2ebk/v1/chatd.proto",
        "proto/e2ebk/v1/link.proto",
        "proto/e2ebk/v1/vault.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = match protox::compile(files, ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("invalid .proto files: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!("generating Rust types from .proto failed: {e}");
    }
}
