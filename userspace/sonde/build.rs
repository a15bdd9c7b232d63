//! Builds the kernel programs (ebpf/probes) with the pinned nightly and bpf-linker, and puts
//! the object in OUT_DIR for `include_bytes_aligned!`. Same command as `cargo xtask build-ebpf`.
use std::{env, path::PathBuf, process::Command};

/// The pinned eBPF toolchain: `channel` in ebpf/probes/rust-toolchain.toml (the one place it
/// is written; xtask and bootstrap.sh read it too).
fn ebpf_toolchain(probes: &std::path::Path) -> String {
    let file = probes.join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no `channel` in {}", file.display()))
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir.join("../..");
    let probes = root.join("ebpf/probes");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = root.join("target/ebpf");
    let ebpf_toolchain = ebpf_toolchain(&probes);
    for dir in [
        "ebpf/probes/src",
        "ebpf/probes/Cargo.toml",
        "ebpf/probes/rust-toolchain.toml",
        "ebpf/common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=SONDE_PROBES_OBJECT");

    // A prebuilt object (e.g. from `cargo xtask build-ebpf`) can be supplied directly.
    let object = if let Ok(path) = env::var("SONDE_PROBES_OBJECT") {
        PathBuf::from(path)
    } else {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&probes)
            .arg(format!("+{ebpf_toolchain}"))
            .args([
                "build",
                "-Z",
                "build-std=core",
                "--target",
                "bpfel-unknown-none",
                "--release",
            ])
            .arg("--target-dir")
            .arg(&target_dir);
        // The outer cargo's settings (clippy's wrapper, host rustflags, toolchain) must not leak
        // into the nested build for another target.
        for (key, _) in env::vars() {
            if key.starts_with("CARGO_")
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || key == "RUSTUP_TOOLCHAIN"
            {
                cmd.env_remove(key);
            }
        }
        let status = cmd.status().unwrap_or_else(|e| {
            panic!(
                "could not run cargo to build the eBPF programs: {e}; run `cargo xtask bootstrap`"
            )
        });
        if !status.success() {
            panic!(
                "building ebpf/probes failed; run `cargo xtask bootstrap` (installs {ebpf_toolchain} with rust-src and bpf-linker), then retry"
            );
        }
        target_dir.join("bpfel-unknown-none/release/sonde-probes")
    };
    std::fs::copy(&object, out_dir.join("sonde-probes"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
}
