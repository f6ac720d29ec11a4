//! Builds the helper process (helper/, the `streamwatch-helper` crate of this workspace)
//! with a cargo of its own and embeds it in the module, so deploying streamwatch stays
//! one `.so` file (see `src/runner.rs`).
//!
//! The nested cargo uses the workspace's `helper` profile (Cargo.toml: opt-level 2, no
//! debug info, stripped, panic=abort), the workspace's Cargo.lock as it is (`--locked`;
//! its only dependency, libc, is the module's own, so it is downloaded already:
//! `--offline`), and a target directory under OUT_DIR (the outer cargo holds the lock of
//! its own). It shares the outer cargo's jobserver, so it adds no parallelism.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // A directory is scanned whole: every file of the helper crate.
    for path in [
        "helper",
        "src/protocol.rs",
        "src/procstat.rs",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let target = env::var("TARGET").expect("TARGET is set by cargo");
    let target_dir = out.join("helper-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("helper/Cargo.toml"))
        .args(["-p", "streamwatch-helper", "--bin", "streamwatch-helper"])
        .args(["--profile", "helper", "--locked", "--offline"])
        .args(["--target", &target])
        .arg("--target-dir")
        .arg(&target_dir);
    // The helper is built as before, with its profile only: not with the flags of the
    // module's build (cargo-fuzz's sanitizers and `--cfg fuzzing`, a user's RUSTFLAGS),
    // nor through clippy (`cargo clippy` lints the helper as a workspace member itself).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the helper");
    assert!(status.success(), "building the helper (helper/) failed");
    let built = target_dir
        .join(&target)
        .join("helper")
        .join("streamwatch-helper");
    copy(&built, &out.join("streamwatch-helper"));
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("cannot copy {} to {}: {e}", from.display(), to.display());
    }
}
