//! Compiles the helper process (helper/main.rs, std only) with the same rustc and
//! embeds it in the module, so deploying streamwatch stays one `.so` file.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=helper/main.rs");
    println!("cargo:rerun-if-changed=src/protocol.rs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("TARGET is set by cargo");
    let bin = out.join("streamwatch-helper");
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-name", "streamwatch_helper"])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "strip=symbols",
            "-C",
            "panic=abort",
        ])
        .arg("-o")
        .arg(&bin)
        .arg("helper/main.rs")
        .status()
        .expect("cannot run rustc to build the helper");
    assert!(status.success(), "building helper/main.rs failed");
}
