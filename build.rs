//! Build script: makes the `pipe` binary find libtorch without any environment variable at run time.
//!
//! With the `train` feature, torch-sys (built with `LIBTORCH_USE_PYTORCH=1` against the project's
//! `.venv`) reports the libtorch folder as `DEP_TCH_LIBTORCH_LIB`. We add it as an rpath, and when the
//! wheel carries `libtorch_cuda.so` we link it with `--no-as-needed`: otherwise the linker drops it as
//! unneeded (no symbol of it is referenced directly) and CUDA silently disappears at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_SERVE").is_some() {
        grpc_service();
    }
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report the libtorch folder; set LD_LIBRARY_PATH at run time");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// With the `serve` feature: the KServe v2 gRPC messages, service trait and client (the client is
/// `make loadtest`'s gRPC load generator), generated from Triton's own descriptors
/// (`proto/triton.binpb`, taken from the tritonclient wheel by `scripts/triton_descriptors.py`) into
/// `OUT_DIR/inference.rs`.
fn grpc_service() {
    use prost::Message;
    println!("cargo:rerun-if-changed=proto/triton.binpb");
    let bytes = std::fs::read("proto/triton.binpb").expect("proto/triton.binpb");
    let fds = tonic_prost_build::FileDescriptorSet::decode(bytes.as_slice())
        .expect("proto/triton.binpb is a FileDescriptorSet");
    tonic_prost_build::configure()
        .build_client(true)
        .build_transport(false)
        .generate_default_stubs(true)
        .compile_fds(fds)
        .expect("generating the gRPC service from proto/triton.binpb");
}
