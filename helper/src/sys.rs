//! Safe wrappers for the libc calls std does not offer, as the event loop and the
//! startup use them (the spawn path has its own, see `spawn`).

use std::io;
use std::os::fd::RawFd;

/// Pokes the SIGCHLD self-pipe from the handler: one byte, errors ignored (a full pipe
/// already means "wake up"). Async-signal-safe.
pub fn poke(fd: RawFd) {
    let b = 1u8;
    // SAFETY: writes one byte from a live local; `write` is async-signal-safe.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// An epoll set, close-on-exec.
pub fn epoll_create() -> io::Result<RawFd> {
    // SAFETY: no pointer arguments.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Watches `fd` for `events` (`libc::EPOLLIN`...), reported with `token`.
pub fn watch(epfd: RawFd, fd: RawFd, events: libc::c_int, token: u64) {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: `ev` is a valid epoll_event the kernel only reads.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
}

pub fn unwatch(epfd: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: as in `watch` (kernels before 2.6.9 wanted a non-null event for DEL).
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
}

/// The events ready within `timeout_ms`, into `events`: how many, or the error.
pub fn epoll_wait(
    epfd: RawFd,
    events: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let max = events.len().min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the kernel writes at most `max` events into the slice.
    let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, timeout_ms) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A child that has exited, not reaped (WNOWAIT): its pid, if there is one.
pub fn peek_exited_child() -> Option<libc::pid_t> {
    // SAFETY: siginfo_t is plain data, all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a siginfo_t the kernel fills.
    let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
    if r != 0 {
        return None;
    }
    // SAFETY: waitid succeeded with WEXITED: `info` is a SIGCHLD siginfo (or all
    // zeroes when no child has exited, WNOHANG), whose pid field is set.
    let pid = unsafe { info.si_pid() };
    (pid != 0).then_some(pid)
}

/// Reaps `pid` if it has exited: its raw wait status.
pub fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    // SAFETY: `status` is a live local the kernel writes.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid).then_some(status)
}

/// `kill(2)`; errors (no such process, already reaped) ignored.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: no pointer arguments.
    unsafe { libc::kill(pid, sig) };
}

pub fn getppid() -> libc::pid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getppid() }
}

pub fn close(fd: RawFd) {
    // SAFETY: only for descriptors no Rust object owns (inherited at startup).
    unsafe { libc::close(fd) };
}

/// For a fresh pipe end: it has no other status flag to keep, so one call does.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: F_SETFL takes an int.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
}

pub fn set_cloexec(fd: RawFd) {
    // SAFETY: F_GETFD takes nothing, F_SETFD an int.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFD);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
        }
    }
}

/// A pipe, both ends close-on-exec and non-blocking: (read end, write end).
pub fn pipe_nonblocking() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: the kernel writes two ints into `fds`.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((fds[0], fds[1]))
    }
}

/// How many bytes a pipe's read end `fd` holds now (`FIONREAD`), if it can say.
pub fn readable_bytes(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into the live local `n`.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0 && n >= 0).then_some(n as usize)
}

/// Sets `sig`'s disposition: `libc::SIG_DFL`, `libc::SIG_IGN`, or a handler.
pub fn signal(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: a handler passed here is an `extern "C" fn(c_int)` that is
    // async-signal-safe (see `on_sigchld`); invalid signals just fail.
    unsafe { libc::signal(sig, handler) };
}

pub fn setsid() {
    // SAFETY: no arguments; fails harmlessly if already a group leader.
    unsafe { libc::setsid() };
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: orphans of our runs are reparented to us.
pub fn become_subreaper() {
    // SAFETY: this option takes an unsigned long flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
}

/// `prctl(PR_SET_NAME)`: the name `ps` and `top` show (at most 15 bytes).
pub fn set_name(name: &std::ffi::CStr) {
    // SAFETY: the kernel reads at most 16 bytes of a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong) };
}

/// Raises the soft limit on open descriptors to the hard one (at most 2^20).
pub fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is an rlimit the kernel fills, then reads.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// An error's text without Rust's " (os error N)": what spawn errors end with.
pub fn error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// CLOCK_BOOTTIME, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a timespec the kernel fills.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second (`_SC_CLK_TCK`), if known.
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: no pointer arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_and_self_pipe() {
        let (r, w) = pipe_nonblocking().unwrap();
        poke(w);
        let mut b = [0u8; 4];
        // SAFETY: reads into a live local buffer.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), b.len()) };
        assert_eq!(n, 1);
        let ep = epoll_create().unwrap();
        watch(ep, r, libc::EPOLLIN, 7);
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(epoll_wait(ep, &mut evs, 0).unwrap(), 0);
        poke(w);
        assert_eq!(epoll_wait(ep, &mut evs, 1000).unwrap(), 1);
        let token = evs[0].u64;
        assert_eq!(token, 7);
        unwatch(ep, r);
        assert_eq!(epoll_wait(ep, &mut evs, 0).unwrap(), 0);
        for fd in [r, w, ep] {
            close(fd);
        }
    }

    #[test]
    fn readable_bytes_counts_what_a_pipe_holds() {
        let (r, w) = pipe_nonblocking().unwrap();
        assert_eq!(readable_bytes(r), Some(0));
        for _ in 0..3 {
            poke(w);
        }
        assert_eq!(readable_bytes(r), Some(3));
        // Not a pipe, socket or tty: no answer.
        let ep = epoll_create().unwrap();
        assert_eq!(readable_bytes(ep), None);
        for fd in [r, w, ep] {
            close(fd);
        }
    }

    #[test]
    fn error_texts_drop_the_number() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(error_text(&e), "Permission denied");
        assert_eq!(error_text(&io::Error::other("as it is")), "as it is");
    }

    #[test]
    fn clocks() {
        assert!(clock_ticks_per_second().is_some());
        let a = boottime_ns();
        assert!(boottime_ns() >= a && a > 0);
    }
}
