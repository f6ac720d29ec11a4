//! A minimal worker for latency measurements: records when it started (CLOCK_REALTIME,
//! nanoseconds) in `$STAMP_DIR/$STREAMWATCH_FIELD`, then sleeps until signalled. On
//! SIGTERM it records when the signal arrived in `$STAMP_DIR/$STREAMWATCH_FIELD.exit`
//! and exits at once, so "HDEL -> worker gone" can be timed without polling `/proc`.

use std::ffi::CString;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static EXIT_PATHS: OnceLock<(CString, CString)> = OnceLock::new();

/// Async-signal-safe: clock_gettime, open, write, close, rename, _exit only.
extern "C" fn on_term(_sig: libc::c_int) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let mut ns = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
    let mut buf = [0u8; 40];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (ns % 10) as u8;
        ns /= 10;
        if ns == 0 {
            break;
        }
    }
    if let Some((tmp, path)) = EXIT_PATHS.get() {
        unsafe {
            let fd = libc::open(
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            );
            if fd >= 0 {
                libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
                libc::close(fd);
                libc::rename(tmp.as_ptr(), path.as_ptr());
            }
        }
    }
    unsafe { libc::_exit(0) };
}

fn main() {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::var("STAMP_DIR").unwrap_or_else(|_| "/tmp".into());
    let field = std::env::var("STREAMWATCH_FIELD").unwrap_or_else(|_| "x".into());
    // The handler first: once the start stamp exists a stop may come at once, and a
    // SIGTERM before the handler would kill the worker without its exit stamp.
    if let (Ok(tmp), Ok(path)) = (
        CString::new(format!("{dir}/.{field}.exit")),
        CString::new(format!("{dir}/{field}.exit")),
    ) {
        let _ = EXIT_PATHS.set((tmp, path));
        unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    }
    let tmp = format!("{dir}/.{field}");
    let path = format!("{dir}/{field}");
    if std::fs::write(&tmp, ns.to_string()).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
    loop {
        std::thread::park();
    }
}
