//! A minimal worker for latency measurements: records when it started (CLOCK_REALTIME,
//! nanoseconds) in `$STAMP_DIR/$STREAMWATCH_FIELD`, then sleeps until signalled.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::var("STAMP_DIR").unwrap_or_else(|_| "/tmp".into());
    let field = std::env::var("STREAMWATCH_FIELD").unwrap_or_else(|_| "x".into());
    let tmp = format!("{dir}/.{field}");
    let path = format!("{dir}/{field}");
    if std::fs::write(&tmp, ns.to_string()).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
    loop {
        std::thread::park();
    }
}
