//! A quick check of the pool benchmark's raw limit (`bench/pool_raw.rs`) outside the
//! benchmark: runs `raw_pool_rate` with the Python pool worker (`bench/pool_job.py`)
//! and the Rust one (`examples/pool_worker.rs`) and prints both rates. It exists so the
//! raw-limit code can be run and read on its own before the benchmark includes it.
//!
//! cargo build --release --examples && target/release/examples/pool_raw_check [ENTRIES [WORKERS]]

#[path = "../bench/pool_raw.rs"]
mod pool_raw;

use pool_raw::raw_pool_rate;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"));
    let entries: usize = args.next().unwrap_or(2000);
    let workers: usize = args.next().unwrap_or(8);
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/pool_job.py");
    // pool_worker is built next to this example (whatever the target dir).
    let exe = std::env::current_exe().expect("current_exe");
    let rust = exe.with_file_name("pool_worker");
    assert!(
        rust.exists(),
        "{} is missing: cargo build --release --examples",
        rust.display()
    );
    let rust = rust.to_str().expect("a UTF-8 path");
    for (name, command) in [
        ("python3 bench/pool_job.py", &["python3", python][..]),
        ("examples/pool_worker", &[rust][..]),
    ] {
        let rate = raw_pool_rate(command, workers, entries);
        println!("{name}: {entries} entries, {workers} workers: {rate:.0} entries/s");
    }
}
