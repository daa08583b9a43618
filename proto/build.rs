//! Compiles the `.proto` files with the vendored `protoc` (no system package needed).

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "flashsale/v1/common.proto",
    "flashsale/v1/inventory.proto",
    "flashsale/v1/orders.proto",
    "flashsale/v1/flashsale.proto",
    "flashsale/v1/limiter.proto",
    "flashsale/v1/events.proto",
    "envoy/type/v3/ratelimit_unit.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;

    // tonic-prost-build does not print rerun-if-changed for protos; do it here.
    println!("cargo:rerun-if-changed=build.rs");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        .emit_rerun_if_changed(false)
        .include_file("mod.rs")
        .file_descriptor_set_path(out.join("flashsale_descriptor.bin"))
        .compile_with_config(config, &files, &[root, include])?;
    Ok(())
}
