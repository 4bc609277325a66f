//! Compiles the `.proto` files with protox, a protobuf compiler written in Rust, so that a build
//! needs nothing but cargo: no `protoc` on the PATH and no downloaded binary.

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &[
    "kv/v1/types.proto",
    "kv/v1/errors.proto",
    "kv/v1/kv.proto",
    "kv/internode/v1/internode.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Cargo scans a directory recursively, so a new .proto file reruns the build too.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    // protox reports errors with file, line and a snippet; returning them shows them as they are.
    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;

    let mut config = tonic_prost_build::Config::new();
    // Error details travel as google.protobuf.Any, whose type URL comes from prost::Name.
    config.enable_type_names();

    tonic_prost_build::configure()
        // Values reach 16 MiB: Bytes lets them move from the wire to the engine without copies.
        .bytes(".")
        // Deterministic order for replication maps, in Debug output and in re-encoded messages.
        .btree_map(".")
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
