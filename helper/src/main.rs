//! streamwatch-helper: the real parent of every worker the module runs.
//!
//! Why a separate process: while Redis has a fork child of its own (BGSAVE, AOF rewrite,
//! full sync) it calls `waitpid(-1)` and reaps *any* child of redis-server, so a module
//! that spawned workers itself would lose their exit statuses. The module spawns this
//! helper once (posix_spawn, no fork of the big server), and the helper spawns, stops,
//! reaps and reports every run over the control socket on its stdin (see
//! `src/protocol.rs`). Nothing else reaps the helper's children, so statuses are exact.
//!
//! When the module goes away (the socket closes: SHUTDOWN, a crash, `kill -9` of
//! redis-server) or the helper is reparented, it stops every run (stop signal, then
//! SIGKILL after the grace) and exits, so no worker outlives the server. When the
//! helper itself is killed, every run it started dies with it (`PR_SET_PDEATHSIG`), and
//! the module kills what is left in the helper's session (the runs' own children).
//!
//! A run's output is forwarded at a bounded rate (see `Budget`): a worker that writes
//! faster waits on its pipe, so no amount of output is ever buffered on either side.
//! So are a pool worker's replies (its descriptor 3), on the same budget. Its input
//! (`Feed`) is buffered here until its stdin pipe takes it: the module decides how
//! much it feeds.
//!
//! The module embeds this binary (build.rs builds this crate with the workspace's
//! `helper` profile). It uses `std`, the `libc` crate, and `serde_json` to tell a pool
//! worker's answers (`answers`).
//!
//! Here: the startup. Elsewhere: `event_loop` (the loop: requests from the socket,
//! child exits, output pipes; the pipes themselves in its child `pipes`), `answers` (a
//! pool worker's next entry, held until it answered), `spawn` (starting a run), `identity` (a run's start
//! time), `budget` (the output rate), `inbox` (splitting the control stream into
//! requests), `sys` (the libc calls std does not wrap), and the protocol itself, shared
//! with the module.

mod answers;
mod budget;
mod cgroup;
mod event_loop;
mod identity;
mod inbox;
#[path = "../../src/protocol.rs"]
#[allow(dead_code)]
mod protocol;
#[path = "../../src/reply.rs"]
#[allow(dead_code)] // a per-entry run's lines are the module's alone
mod reply;
mod spawn;
mod sys;

use event_loop::{Helper, TOKEN_CONTROL, TOKEN_SIGCHLD};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the self-pipe the SIGCHLD handler pokes.
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_sig: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        sys::poke(fd);
    }
}

fn log(msg: &str) {
    let _ = writeln!(
        io::stderr(),
        "streamwatch-helper[{}]: {msg}",
        std::process::id()
    );
}

fn main() {
    // The control socket is our stdin; stdout/stderr are redis-server's.
    // SAFETY: descriptor 0 is the socket the module gave us, owned by nothing else.
    let control = unsafe { File::from_raw_fd(0) };
    // fd 0 becomes /dev/null for anything that would read it; the socket moves away.
    let control = match control.try_clone() {
        Ok(c) => {
            drop(control);
            if let Ok(null) = File::open("/dev/null") {
                // open() returns the lowest free fd, 0.
                std::mem::forget(null);
            }
            c
        }
        Err(e) => {
            log(&format!("cannot take the control socket: {e}"));
            std::process::exit(2);
        }
    };
    sys::set_cloexec(control.as_raw_fd());
    close_inherited_fds(&[0, 1, 2, control.as_raw_fd()]);
    spawn::reserve();
    reset_signals();
    detach_from_terminal();
    mark_runs();
    sys::raise_fd_limit();
    sys::become_subreaper();
    // Executed from a memfd its name would be the fd number; `ps`/`top` show this.
    sys::set_name(c"streamwatch-hlp");

    let Ok((sigchld_rx, sigchld_tx)) = sys::pipe_nonblocking() else {
        log("cannot create the SIGCHLD pipe");
        std::process::exit(2);
    };
    SIGCHLD_PIPE.store(sigchld_tx, Ordering::Relaxed);
    sys::signal(libc::SIGCHLD, on_sigchld as *const () as libc::sighandler_t);

    let Ok(epfd) = sys::epoll_create() else {
        log("cannot create the epoll set");
        std::process::exit(2);
    };
    sys::watch(epfd, control.as_raw_fd(), libc::EPOLLIN, TOKEN_CONTROL);
    sys::watch(epfd, sigchld_rx, libc::EPOLLIN, TOKEN_SIGCHLD);
    // SAFETY: the pipe's read end was just created and is owned by nothing else.
    let sigchld_rx = unsafe { File::from_raw_fd(sigchld_rx) };
    let mut helper = Helper::new(epfd, control, sigchld_rx);
    helper.run();
}

/// Redis does not mark all its descriptors close-on-exec; none of them may reach a worker.
fn close_inherited_fds(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            sys::close(fd);
        }
    }
}

/// Ignored signals stay ignored across exec; workers must start with defaults.
fn reset_signals() {
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP && sig != libc::SIGPIPE {
            sys::signal(sig, libc::SIG_DFL);
        }
    }
}

/// The helper follows its control socket, not signals meant for the server: Ctrl-C in
/// the terminal of `make run` (SIGINT to the terminal's process group) or a service
/// manager's stop (SIGTERM to every process of the unit) would otherwise end the helper
/// and its runs while redis-server is still shutting down, and the module would start
/// a new helper. In a session of its own, no terminal signal reaches it or its runs;
/// the signals a service manager sends everyone are ignored (runs get the defaults
/// back, see `spawn`). The session also names every run for the module: after the
/// helper dies, whatever is left in its session is a leftover of its runs.
fn detach_from_terminal() {
    sys::setsid();
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
        sys::signal(sig, libc::SIG_IGN);
    }
}

/// Every run inherits `STREAMWATCH_HELPER=<pid>.<start time>` naming this helper, and
/// so, usually, does whatever a run starts: a daemon that left the helper's session
/// (`setsid`) is still found by it when the helper is killed (see the module's
/// `runner::kill_session`). Set before any thread or run exists.
fn mark_runs() {
    let me = std::process::id() as i32;
    let start = identity::from_proc(me).unwrap_or(0);
    std::env::set_var("STREAMWATCH_HELPER", format!("{me}.{start}"));
}
