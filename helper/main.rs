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
//!
//! The module embeds this binary (build.rs compiles it with plain `rustc`), so it uses
//! only `std` plus a few libc functions declared below.

#[path = "../src/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use protocol::{Report, Request};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

mod sys {
    //! The few libc calls std does not wrap (Linux, LP64).
    pub use std::os::raw::c_ulong;
    use std::os::raw::{c_int, c_long, c_void};

    /// `struct epoll_event`, packed on x86-64.
    #[cfg_attr(target_arch = "x86_64", repr(C, packed))]
    #[cfg_attr(not(target_arch = "x86_64"), repr(C))]
    #[derive(Clone, Copy)]
    pub struct EpollEvent {
        pub events: u32,
        pub data: u64,
    }

    pub const EPOLLIN: u32 = 0x1;
    pub const EPOLLOUT: u32 = 0x4;
    pub const EPOLL_CTL_ADD: c_int = 1;
    pub const EPOLL_CTL_DEL: c_int = 2;
    pub const EPOLL_CLOEXEC: c_int = 0o2000000;

    #[repr(C)]
    pub struct Timespec {
        pub sec: i64,
        pub nsec: i64,
    }
    pub const CLOCK_BOOTTIME: c_int = 7;
    pub const SC_CLK_TCK: c_int = 2;

    #[repr(C)]
    pub struct RLimit {
        pub cur: u64,
        pub max: u64,
    }

    pub const SIGKILL: c_int = 9;
    pub const SIGSTOP: c_int = 19;
    pub const SIGCHLD: c_int = 17;
    pub const WNOHANG: c_int = 1;
    pub const WEXITED: c_int = 4;
    pub const WNOWAIT: c_int = 0x0100_0000;
    pub const P_ALL: c_int = 0;
    pub const F_SETFL: c_int = 4;
    pub const F_GETFD: c_int = 1;
    pub const F_SETFD: c_int = 2;
    pub const FD_CLOEXEC: c_int = 1;
    pub const O_NONBLOCK: c_int = 0o4000;
    pub const PR_SET_CHILD_SUBREAPER: c_int = 36;
    pub const PR_SET_NAME: c_int = 15;
    pub const RLIMIT_NOFILE: c_int = 7;
    pub const SIG_DFL: usize = 0;
    pub const SIG_IGN: usize = 1;
    pub const SIGHUP: c_int = 1;
    pub const SIGINT: c_int = 2;
    pub const SIGQUIT: c_int = 3;
    pub const SIGTERM: c_int = 15;

    extern "C" {
        pub fn epoll_create1(flags: c_int) -> c_int;
        pub fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut EpollEvent) -> c_int;
        pub fn epoll_wait(
            epfd: c_int,
            events: *mut EpollEvent,
            max: c_int,
            timeout: c_int,
        ) -> c_int;
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
        pub fn waitid(idtype: c_int, id: u32, info: *mut c_void, options: c_int) -> c_int;
        pub fn signal(sig: c_int, handler: usize) -> usize;
        pub fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
        pub fn close(fd: c_int) -> c_int;
        pub fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
        pub fn getppid() -> c_int;
        pub fn setsid() -> c_int;
        pub fn prctl(option: c_int, arg2: c_ulong, ...) -> c_int;
        pub fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
        pub fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
        pub fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
        pub fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
        pub fn sysconf(name: c_int) -> c_long;
    }

    /// `siginfo_t` is 128 bytes; on LP64 Linux `si_pid` is the int at byte 16.
    pub fn peek_exited_child() -> Option<c_int> {
        let mut info = [0i32; 32];
        let r = unsafe {
            waitid(
                P_ALL,
                0,
                info.as_mut_ptr().cast(),
                WEXITED | WNOHANG | WNOWAIT,
            )
        };
        (r == 0 && info[4] != 0).then_some(info[4])
    }

    /// Watches `fd` for `events`, reported with `token`.
    pub fn watch(epfd: c_int, fd: c_int, events: u32, token: u64) {
        let mut ev = EpollEvent {
            events,
            data: token,
        };
        unsafe { epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &mut ev) };
    }

    pub fn unwatch(epfd: c_int, fd: c_int) {
        let mut ev = EpollEvent { events: 0, data: 0 };
        unsafe { epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// For a fresh pipe end: it has no other status flag to keep, so one call does.
    pub fn set_nonblocking(fd: c_int) {
        unsafe { fcntl(fd, F_SETFL, O_NONBLOCK) };
    }

    pub fn set_cloexec(fd: c_int) {
        unsafe {
            let fl = fcntl(fd, F_GETFD);
            if fl >= 0 {
                fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
            }
        }
    }

    pub fn _unused(_: c_long) {}
}

/// A run's start time as `/proc/PID/stat` gives it (clock ticks since boot): with the
/// pid, it is how the module knows the process again after a crash. The kernel takes it
/// from the boot-time clock during the clone, so readings of that clock just before and
/// just after the clone that fall in the same tick give it without opening `/proc`
/// (an open per run was a tenth of the CPU the module spends on a short stream job).
/// The first run checks this against `/proc`; if they disagree, `/proc` it is.
mod start_time {
    use super::sys;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::OnceLock;

    /// 0: not checked yet; 1: the clock agrees with /proc; 2: it does not.
    static CLOCK_OK: AtomicU8 = AtomicU8::new(0);

    pub fn now_ns() -> u64 {
        let mut ts = sys::Timespec { sec: 0, nsec: 0 };
        unsafe { sys::clock_gettime(sys::CLOCK_BOOTTIME, &mut ts) };
        ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
    }

    fn tick_ns() -> u64 {
        static TICK: OnceLock<u64> = OnceLock::new();
        *TICK.get_or_init(|| {
            let hz = unsafe { sys::sysconf(sys::SC_CLK_TCK) };
            1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
        })
    }

    /// `pid`'s start time, cloned between the readings `before` and `after`; 0 if
    /// unknown.
    pub fn of(pid: i32, before: u64, after: u64) -> u64 {
        let (a, b) = (before / tick_ns(), after / tick_ns());
        match CLOCK_OK.load(Ordering::Relaxed) {
            1 if a == b => return a,
            0 | 1 => {}
            _ => return from_proc(pid).unwrap_or(0),
        }
        let proc = from_proc(pid);
        if let (0, true, Some(p)) = (CLOCK_OK.load(Ordering::Relaxed), a == b, proc) {
            CLOCK_OK.store(if p == a { 1 } else { 2 }, Ordering::Relaxed);
        }
        proc.unwrap_or(0)
    }

    /// Field 22 of `/proc/PID/stat` (the run is our child, not reaped: it is there).
    pub fn from_proc(pid: i32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: skip past it.
        stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(19)?
            .parse()
            .ok()
    }
}

mod spawn {
    //! One run, started with these attributes: its own process group; an empty signal
    //! mask; every signal at its default, glibc's internal 32 and 33 included (an
    //! ignored signal stays ignored across exec); stdin `/dev/null` or the input pipe,
    //! stdout and stderr on `out`; `cwd` if given; the helper's environment plus `env`.
    //!
    //! How: a `clone` that shares the helper's memory (CLONE_VM: cheap whatever the
    //! helper's size) and descriptor table (CLONE_FILES), and whose child first calls
    //! `close_range(SLOTS_END, ~0, CLOSE_RANGE_UNSHARE)`: it gets a private table
    //! holding only the descriptors below `SLOTS_END`. The helper holds one output pipe
    //! per run, so with 10,000 runs a plain `posix_spawn` copied 10,000 descriptors at
    //! the clone and walked them again at the exec (`dup_fd`, `do_close_on_exec`: most
    //! of the helper's time when starting many runs). The run's pipe ends are dup2'ed
    //! onto a pair of slots reserved at start, below `SLOTS_END`, just before the clone.
    //!
    //! The helper does not wait for the exec (no CLONE_VFORK). With more runs than
    //! cores, a new child waits its turn behind the running ones, and a vfork-style
    //! helper waited with it: spawning was serialized behind the scheduler (a clone took
    //! 0.2 ms at the median and 1 ms at p90 with 8 stream jobs on 2 cores). Instead each
    //! launch keeps what its child reads (stack, argv, slots) in a `Launch` until the
    //! kernel clears the launch's `tid` word (CLONE_CHILD_CLEARTID): the child has
    //! exec'ed or exited and no longer uses the helper's memory. `settled` then says
    //! whether the exec happened. The child makes raw system calls only: it shares the
    //! helper's thread-local `errno`, which libc's wrappers would write.
    //!
    //! Kernels before 5.9 (no close_range) get glibc's `posix_spawn` instead.
    use std::cell::RefCell;
    use std::ffi::{c_char, c_int, c_long, c_uint, c_void, CString};
    use std::io;
    use std::os::fd::RawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// glibc x86_64 sizes of the opaque types (`posix_spawnattr_t` 336 bytes,
    /// `posix_spawn_file_actions_t` 80, `sigset_t` 128), over-allocated for safety.
    #[repr(C, align(8))]
    struct Attr([u8; 512]);
    #[repr(C, align(8))]
    struct Actions([u8; 256]);
    #[repr(C, align(8))]
    struct SigSet([u64; 16]);

    const POSIX_SPAWN_SETPGROUP: i16 = 0x02;
    const POSIX_SPAWN_SETSIGDEF: i16 = 0x04;
    const POSIX_SPAWN_SETSIGMASK: i16 = 0x08;
    const O_RDONLY: c_int = 0;

    extern "C" {
        fn posix_spawn(
            pid: *mut c_int,
            path: *const c_char,
            actions: *const Actions,
            attr: *const Attr,
            argv: *const *const c_char,
            envp: *const *const c_char,
        ) -> c_int;
        fn posix_spawnp(
            pid: *mut c_int,
            file: *const c_char,
            actions: *const Actions,
            attr: *const Attr,
            argv: *const *const c_char,
            envp: *const *const c_char,
        ) -> c_int;
        fn posix_spawnattr_init(attr: *mut Attr) -> c_int;
        fn posix_spawnattr_destroy(attr: *mut Attr) -> c_int;
        fn posix_spawnattr_setflags(attr: *mut Attr, flags: i16) -> c_int;
        fn posix_spawnattr_setpgroup(attr: *mut Attr, pgroup: c_int) -> c_int;
        fn posix_spawnattr_setsigdefault(attr: *mut Attr, set: *const SigSet) -> c_int;
        fn posix_spawnattr_setsigmask(attr: *mut Attr, set: *const SigSet) -> c_int;
        fn posix_spawn_file_actions_init(a: *mut Actions) -> c_int;
        fn posix_spawn_file_actions_destroy(a: *mut Actions) -> c_int;
        fn posix_spawn_file_actions_addopen(
            a: *mut Actions,
            fd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: u32,
        ) -> c_int;
        fn posix_spawn_file_actions_adddup2(a: *mut Actions, fd: c_int, new: c_int) -> c_int;
        fn posix_spawn_file_actions_addchdir_np(a: *mut Actions, path: *const c_char) -> c_int;
        fn clone(
            f: extern "C" fn(*mut c_void) -> c_int,
            stack: *mut c_void,
            flags: c_int,
            arg: *mut c_void,
            ...
        ) -> c_int;
        fn syscall(n: c_long, ...) -> c_long;
        fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
        fn open(path: *const c_char, flags: c_int, ...) -> c_int;
        fn setpgid(pid: c_int, pgid: c_int) -> c_int;
        fn access(path: *const c_char, mode: c_int) -> c_int;
    }

    /// System call numbers, for the raw calls of the child (and the helper's few).
    #[cfg(target_arch = "x86_64")]
    mod nr {
        pub const CLOSE_RANGE: usize = 436;
        pub const DUP3: usize = 292;
        pub const RT_SIGACTION: usize = 13;
        pub const RT_SIGPROCMASK: usize = 14;
        pub const SETPGID: usize = 109;
        pub const CHDIR: usize = 80;
        pub const EXECVE: usize = 59;
        pub const EXIT: usize = 60;
        pub const FUTEX: usize = 202;
        pub const PRCTL: usize = 157;
        pub const GETPPID: usize = 110;
    }
    #[cfg(target_arch = "aarch64")]
    mod nr {
        pub const CLOSE_RANGE: usize = 436;
        pub const DUP3: usize = 24;
        pub const RT_SIGACTION: usize = 134;
        pub const RT_SIGPROCMASK: usize = 135;
        pub const SETPGID: usize = 154;
        pub const CHDIR: usize = 49;
        pub const EXECVE: usize = 221;
        pub const EXIT: usize = 93;
        pub const FUTEX: usize = 98;
        pub const PRCTL: usize = 167;
        pub const GETPPID: usize = 173;
    }

    /// A system call without libc: the result, or `-errno`. Touches no thread-local.
    #[cfg(target_arch = "x86_64")]
    unsafe fn raw(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
        ret
    }
    #[cfg(target_arch = "aarch64")]
    unsafe fn raw(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a as isize => ret,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            options(nostack)
        );
        ret
    }

    const CLOSE_RANGE_UNSHARE: c_uint = 1 << 1;
    const CLONE_VM: c_int = 0x100;
    const CLONE_FILES: c_int = 0x400;
    const CLONE_CHILD_CLEARTID: c_int = 0x0020_0000;
    const SIGCHLD: c_int = 17;
    const SIGKILL: c_int = 9;
    const PR_SET_PDEATHSIG: usize = 1;
    const SIG_SETMASK: c_int = 2;
    const O_CLOEXEC: c_int = 0o2000000;
    const X_OK: c_int = 1;
    const FUTEX_WAIT: usize = 0;

    /// How many runs may be between their clone and their exec at once; one more waits
    /// for the oldest (each holds a stack and a pair of slots until then). A few are
    /// enough to keep the helper from waiting on the scheduler; more would only let a
    /// burst of starts crowd the cores (and Redis) harder.
    const LAUNCHES: usize = 8;
    /// A child's stack, in 16-byte words (64 KiB).
    const STACK_WORDS: usize = 4096;

    /// The kernel's `struct sigaction` (what rt_sigaction takes), handler SIG_DFL.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }

    /// What the child reads, prepared before the clone (the child allocates nothing),
    /// and where it says why it failed.
    #[repr(C)]
    struct Child {
        path: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
        dir: *const c_char,
        slot_out: c_int,
        slot_in: c_int,
        /// The lowest descriptor the child does not keep.
        keep_below: c_uint,
        /// The signals to set to their defaults (bit `n - 1` for signal `n`).
        reset: u64,
        /// The helper's pid: the child dies with it (see `child`).
        parent: c_int,
        /// Written by the child when a step fails: the errno, and 1.
        errno: AtomicI32,
        failed: AtomicI32,
    }

    /// One run between its clone and its exec: everything its child reads, kept at a
    /// fixed address (boxed) until the kernel clears `tid`.
    struct Launch {
        pid: i32,
        /// 1 from before the clone; the kernel writes 0 (and wakes futex waiters) when
        /// the child leaves this memory: at its exec, or at its exit.
        tid: AtomicI32,
        child: Child,
        pair: usize,
        stack: Vec<u128>,
        _strings: Vec<CString>,
        _pointers: [Vec<*const c_char>; 2],
    }

    /// The clone path's state (the helper is single-threaded).
    struct Launcher {
        /// Whether the clone path works here (close_range with UNSHARE exists).
        fast: bool,
        null: c_int,
        /// Descriptor pairs (out, in) a child's stdout and stdin are dup2'ed onto for
        /// its clone; parked on /dev/null, close-on-exec, while free.
        pairs: Vec<(c_int, c_int)>,
        free_pairs: Vec<usize>,
        keep_below: c_uint,
        /// Boxed: a child reads its launch at a fixed address while the list changes.
        #[allow(clippy::vec_box)]
        launches: Vec<Box<Launch>>,
        stacks: Vec<Vec<u128>>,
        /// Launches over: (pid, the error if the exec did not happen).
        settled: Vec<(i32, Option<io::Error>)>,
    }

    thread_local! {
        static LAUNCHER: RefCell<Launcher> = const {
            RefCell::new(Launcher {
                fast: false,
                null: -1,
                pairs: Vec::new(),
                free_pairs: Vec::new(),
                keep_below: 0,
                launches: Vec::new(),
                stacks: Vec::new(),
                settled: Vec::new(),
            })
        };
    }

    fn open_null() -> c_int {
        unsafe { open(c"/dev/null".as_ptr(), O_CLOEXEC) }
    }

    /// Reserves the slots; called at start, when the lowest descriptors are free.
    pub fn reserve() {
        // close_range with UNSHARE on a descriptor nobody has: 0 if the kernel has both.
        let probe = u32::MAX as usize - 1;
        let has_close_range = unsafe {
            raw(
                nr::CLOSE_RANGE,
                probe,
                probe,
                CLOSE_RANGE_UNSHARE as usize,
                0,
            )
        } == 0;
        let null = open_null();
        let mut pairs = Vec::new();
        for _ in 0..LAUNCHES {
            let (out, inp) = (open_null(), open_null());
            if out < 0 || inp < 0 {
                return;
            }
            pairs.push((out, inp));
        }
        if null < 0 || !has_close_range {
            return;
        }
        let top = pairs.iter().map(|&(o, i)| o.max(i)).max().unwrap_or(null);
        LAUNCHER.with_borrow_mut(|l| {
            l.keep_below = (top.max(null) + 1) as c_uint;
            l.null = null;
            l.free_pairs = (0..pairs.len()).rev().collect();
            l.pairs = pairs;
            l.fast = true;
        });
    }

    /// Runs in the clone child, on its own stack, sharing the helper's memory while the
    /// helper goes on: raw system calls only.
    extern "C" fn child(arg: *mut c_void) -> c_int {
        unsafe {
            let c = &*arg.cast::<Child>();
            let fail = |r: isize| -> ! {
                c.errno.store(-r as i32, Ordering::Relaxed);
                c.failed.store(1, Ordering::Release);
                raw(nr::EXIT, 127, 0, 0, 0);
                #[allow(clippy::empty_loop)]
                loop {}
            };
            let r = raw(
                nr::CLOSE_RANGE,
                c.keep_below as usize,
                c_uint::MAX as usize,
                CLOSE_RANGE_UNSHARE as usize,
                0,
            );
            if r < 0 {
                fail(r);
            }
            // From here on the descriptor table is the child's own.
            for (from, to) in [(c.slot_in, 0), (c.slot_out, 1), (c.slot_out, 2)] {
                let r = raw(nr::DUP3, from as usize, to, 0, 0);
                if r < 0 {
                    fail(r);
                }
            }
            // Every other slot (its own, other launches', the helper's close-on-exec
            // descriptors below `keep_below`): the worker gets 0, 1 and 2 only.
            raw(nr::CLOSE_RANGE, 3, c.keep_below as usize - 1, 0, 0);
            let dfl = KernelSigaction {
                handler: 0,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            // Only the signals the helper handles or ignores: the rest are at their
            // defaults already (see `non_default_signals`).
            for sig in 1..=64usize {
                if c.reset & (1u64 << (sig - 1)) != 0 {
                    raw(
                        nr::RT_SIGACTION,
                        sig,
                        &dfl as *const KernelSigaction as usize,
                        0,
                        8,
                    );
                }
            }
            raw(nr::SETPGID, 0, 0, 0, 0);
            // SIGKILL when the helper dies (it is killed, say): a run the module has
            // not heard of yet would otherwise outlive it and nobody would stop it.
            // Kept across the exec. If the helper died before this, do not start.
            raw(nr::PRCTL, PR_SET_PDEATHSIG, SIGKILL as usize, 0, 0);
            if raw(nr::GETPPID, 0, 0, 0, 0) != c.parent as isize {
                raw(nr::EXIT, 127, 0, 0, 0);
            }
            if !c.dir.is_null() {
                let r = raw(nr::CHDIR, c.dir as usize, 0, 0, 0);
                if r < 0 {
                    fail(r);
                }
            }
            // The helper blocked every signal around the clone: unblock them last.
            let empty: u64 = 0;
            raw(
                nr::RT_SIGPROCMASK,
                SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                0,
                8,
            );
            let r = raw(
                nr::EXECVE,
                c.path as usize,
                c.argv as usize,
                c.envp as usize,
                0,
            );
            fail(r)
        }
    }

    /// The signals whose disposition is not the default in the helper (SIGCHLD, SIGPIPE):
    /// a child resets only these, not all 64.
    /// Read once: the helper sets its handlers at start and never changes them.
    fn non_default_signals() -> u64 {
        static MASK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *MASK.get_or_init(|| {
            let mut mask = 0u64;
            for sig in 1..=64usize {
                if sig == 9 || sig == 19 {
                    continue; // SIGKILL and SIGSTOP cannot be changed
                }
                let mut old = KernelSigaction {
                    handler: 0,
                    flags: 0,
                    restorer: 0,
                    mask: 0,
                };
                let r = unsafe {
                    raw(
                        nr::RT_SIGACTION,
                        sig,
                        0,
                        &mut old as *mut KernelSigaction as usize,
                        8,
                    )
                };
                // Unknown (or unreadable): reset it, as before.
                if r != 0 || old.handler != 0 {
                    mask |= 1u64 << (sig - 1);
                }
            }
            mask
        })
    }

    /// `program` as execve needs it: as given if it has a slash, else the first
    /// executable `dir/program` along the helper's PATH (what posix_spawnp does).
    fn resolve(program: &[u8]) -> io::Result<CString> {
        if program.contains(&b'/') {
            return cstring(program);
        }
        let path = std::env::var_os("PATH");
        let dirs = path
            .as_ref()
            .map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
        for dir in dirs.split(|&b| b == b':') {
            let dir = if dir.is_empty() { &b"."[..] } else { dir };
            let full = cstring(&[dir, b"/", program].concat())?;
            let is_file = std::fs::metadata(std::ffi::OsStr::from_bytes(full.as_bytes()))
                .is_ok_and(|m| m.is_file());
            if is_file && unsafe { access(full.as_ptr(), X_OK) } == 0 {
                return Ok(full);
            }
        }
        Err(io::Error::from_raw_os_error(2)) // ENOENT, as posix_spawnp says
    }

    impl Launcher {
        /// Collects the launches whose child has left the helper's memory: their slots
        /// are parked again, their stacks kept for the next ones.
        fn collect(&mut self) {
            let mut i = 0;
            while i < self.launches.len() {
                if self.launches[i].tid.load(Ordering::Acquire) != 0 {
                    i += 1;
                    continue;
                }
                let l = self.launches.remove(i); // in order: the first is the oldest
                self.finish(*l);
            }
        }

        fn finish(&mut self, mut l: Launch) {
            let (out, inp) = self.pairs[l.pair];
            unsafe {
                dup3(self.null, inp, O_CLOEXEC);
                dup3(self.null, out, O_CLOEXEC);
            }
            self.free_pairs.push(l.pair);
            let error = (l.child.failed.load(Ordering::Acquire) != 0)
                .then(|| io::Error::from_raw_os_error(l.child.errno.load(Ordering::Relaxed)));
            self.stacks.push(std::mem::take(&mut l.stack));
            self.settled.push((l.pid, error));
        }

        /// Waits until the oldest launch is over (all slots taken).
        fn wait_oldest(&mut self) {
            let Some(oldest) = self.launches.first() else {
                return;
            };
            while oldest.tid.load(Ordering::Acquire) != 0 {
                // The kernel's wake at the clear is a shared (not private) futex wake.
                unsafe { raw(nr::FUTEX, oldest.tid.as_ptr() as usize, FUTEX_WAIT, 1, 0) };
            }
            let l = self.launches.remove(0);
            self.finish(*l);
        }

        fn launch(
            &mut self,
            path: CString,
            strings: Vec<CString>,
            pointers: [Vec<*const c_char>; 2],
            dir: Option<CString>,
            stdin: Option<RawFd>,
            out: RawFd,
        ) -> io::Result<i32> {
            self.collect();
            if self.free_pairs.is_empty() {
                self.wait_oldest();
            }
            let pair = self.free_pairs.pop().expect("a pair is free");
            let (slot_out, slot_in) = self.pairs[pair];
            let stack = self
                .stacks
                .pop()
                .unwrap_or_else(|| vec![0u128; STACK_WORDS]);
            let mut l = Box::new(Launch {
                pid: 0,
                tid: AtomicI32::new(1),
                child: Child {
                    path: path.as_ptr(),
                    argv: pointers[0].as_ptr(),
                    envp: pointers[1].as_ptr(),
                    dir: dir.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
                    slot_out,
                    slot_in,
                    keep_below: self.keep_below,
                    reset: non_default_signals(),
                    parent: std::process::id() as c_int,
                    errno: AtomicI32::new(0),
                    failed: AtomicI32::new(0),
                },
                pair,
                stack,
                _strings: strings.into_iter().chain([path]).chain(dir).collect(),
                _pointers: pointers,
            });
            let null = self.null;
            let park = |e: io::Error, free: &mut Vec<usize>| {
                unsafe {
                    dup3(null, slot_in, O_CLOEXEC);
                    dup3(null, slot_out, O_CLOEXEC);
                }
                free.push(pair);
                Err(e)
            };
            if unsafe { dup3(stdin.unwrap_or(null), slot_in, 0) } < 0
                || unsafe { dup3(out, slot_out, 0) } < 0
            {
                return park(io::Error::last_os_error(), &mut self.free_pairs);
            }
            let top = unsafe { l.stack.as_mut_ptr().add(STACK_WORDS) }.cast::<c_void>();
            let all: u64 = !0;
            let mut old: u64 = 0;
            let pid = unsafe {
                syscall(
                    nr::RT_SIGPROCMASK as c_long,
                    SIG_SETMASK,
                    &all as *const u64,
                    &mut old as *mut u64,
                    8usize,
                );
                let arg: *mut Child = &mut l.child;
                let pid = clone(
                    child,
                    top,
                    CLONE_VM | CLONE_FILES | CLONE_CHILD_CLEARTID | SIGCHLD,
                    arg.cast(),
                    std::ptr::null_mut::<c_int>(),
                    std::ptr::null_mut::<c_void>(),
                    l.tid.as_ptr(),
                );
                let clone_error = io::Error::last_os_error();
                syscall(
                    nr::RT_SIGPROCMASK as c_long,
                    SIG_SETMASK,
                    &old as *const u64,
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
                if pid < 0 {
                    self.stacks.push(std::mem::take(&mut l.stack));
                    return park(clone_error, &mut self.free_pairs);
                }
                // Its own group from now on, whether or not the child got there yet
                // (a stop sent before then reaches it); fails harmlessly after its exec.
                setpgid(pid, pid);
                pid
            };
            l.pid = pid;
            self.launches.push(l);
            Ok(pid)
        }
    }

    fn check(r: c_int) -> io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }

    fn cstring(b: &[u8]) -> io::Result<CString> {
        CString::new(b).map_err(|_| io::Error::other("argument contains a NUL byte"))
    }

    /// Starts a run; its outcome (exec'ed, or why not) comes later from `settled`.
    pub fn run(
        argv: &[Vec<u8>],
        env: &[(Vec<u8>, Vec<u8>)],
        cwd: Option<&[u8]>,
        stdin: Option<RawFd>,
        out: RawFd,
    ) -> io::Result<i32> {
        let program = argv
            .first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let mut strings: Vec<CString> =
            argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
        let nargs = strings.len();
        for (k, v) in std::env::vars_os() {
            let k = k.as_bytes();
            if !env.iter().any(|(ek, _)| ek.as_slice() == k) {
                strings.push(cstring(&[k, b"=", v.as_bytes()].concat())?);
            }
        }
        for (k, v) in env {
            strings.push(cstring(&[k.as_slice(), b"=", v.as_slice()].concat())?);
        }
        let list = |s: &[CString]| -> Vec<*const c_char> {
            s.iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argp = list(&strings[..nargs]);
        let envp = list(&strings[nargs..]);
        let dir = cwd.map(cstring).transpose()?;
        if LAUNCHER.with_borrow(|l| l.fast) {
            let path = resolve(program)?;
            return LAUNCHER
                .with_borrow_mut(|l| l.launch(path, strings, [argp, envp], dir, stdin, out));
        }
        let pid = posix_spawn_run(program, &strings[0], &argp, &envp, dir.as_ref(), stdin, out)?;
        LAUNCHER.with_borrow_mut(|l| l.settled.push((pid, None)));
        Ok(pid)
    }

    /// The launches over since the last call: (pid, why the exec did not happen).
    pub fn settled() -> Vec<(i32, Option<io::Error>)> {
        LAUNCHER.with_borrow_mut(|l| {
            l.collect();
            std::mem::take(&mut l.settled)
        })
    }

    /// Whether some launch is not over yet.
    pub fn launching() -> bool {
        LAUNCHER.with_borrow(|l| !l.launches.is_empty())
    }

    /// glibc's `posix_spawn`, where the clone path is not available (it returns once
    /// the child has exec'ed, or with why it could not).
    fn posix_spawn_run(
        program: &[u8],
        arg0: &CString,
        argp: &[*const c_char],
        envp: &[*const c_char],
        dir: Option<&CString>,
        stdin: Option<RawFd>,
        out: RawFd,
    ) -> io::Result<i32> {
        let mut defaults = SigSet([0; 16]);
        for sig in 1..=64u32 {
            if sig != 9 && sig != 19 {
                defaults.0[0] |= 1 << (sig - 1);
            }
        }
        let empty = SigSet([0; 16]);
        let mut attr = Attr([0; 512]);
        let mut actions = Actions([0; 256]);
        let mut pid: c_int = 0;
        unsafe {
            check(posix_spawnattr_init(&mut attr))?;
            check(posix_spawn_file_actions_init(&mut actions)).inspect_err(|_| {
                posix_spawnattr_destroy(&mut attr);
            })?;
            let result = (|| {
                check(posix_spawnattr_setflags(
                    &mut attr,
                    POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK,
                ))?;
                check(posix_spawnattr_setpgroup(&mut attr, 0))?;
                check(posix_spawnattr_setsigdefault(&mut attr, &defaults))?;
                check(posix_spawnattr_setsigmask(&mut attr, &empty))?;
                match stdin {
                    Some(fd) => check(posix_spawn_file_actions_adddup2(&mut actions, fd, 0))?,
                    None => check(posix_spawn_file_actions_addopen(
                        &mut actions,
                        0,
                        c"/dev/null".as_ptr(),
                        O_RDONLY,
                        0,
                    ))?,
                }
                check(posix_spawn_file_actions_adddup2(&mut actions, out, 1))?;
                check(posix_spawn_file_actions_adddup2(&mut actions, out, 2))?;
                if let Some(dir) = dir {
                    check(posix_spawn_file_actions_addchdir_np(
                        &mut actions,
                        dir.as_ptr(),
                    ))?;
                }
                let f = if program.contains(&b'/') {
                    posix_spawn
                } else {
                    posix_spawnp
                };
                check(f(
                    &mut pid,
                    arg0.as_ptr(),
                    &actions,
                    &attr,
                    argp.as_ptr(),
                    envp.as_ptr(),
                ))
            })();
            posix_spawn_file_actions_destroy(&mut actions);
            posix_spawnattr_destroy(&mut attr);
            result?;
        }
        Ok(pid)
    }
}

/// Write end of the self-pipe the SIGCHLD handler pokes.
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_sig: i32) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = 1u8;
        // Async-signal-safe; a full pipe already means "wake up".
        unsafe { sys::write(fd, (&b as *const u8).cast(), 1) };
    }
}

fn log(msg: &str) {
    let _ = writeln!(
        io::stderr(),
        "streamwatch-helper[{}]: {msg}",
        std::process::id()
    );
}

struct Run {
    pid: i32,
    output: Option<File>,
    /// What the run may still forward now (see `Budget`).
    budget: Budget,
    /// The output pipe is out of the epoll set until then: the run wrote faster than
    /// its budget, so it waits (blocked on a full pipe, as on a slow terminal).
    paused_until: Option<Instant>,
    /// What is still to be written to the run's stdin (stream jobs: the entry).
    input: Option<Input>,
    stop_signal: i32,
    stop_grace: Duration,
    /// Set when a stop was asked: SIGKILL the group at this time.
    kill_at: Option<Instant>,
}

/// How much output may be forwarded to the module, refilled with time (a token
/// bucket): a worker that writes without pause (`yes`) is read only at this rate, so its
/// output costs neither the helper, the module nor Redis's memory more than that.
struct Budget {
    bytes: f64,
    at: Instant,
}

impl Budget {
    fn full(burst: usize, now: Instant) -> Budget {
        Budget {
            bytes: burst as f64,
            at: now,
        }
    }

    /// Bytes available now.
    fn refill(&mut self, now: Instant, rate: usize, burst: usize) -> usize {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.bytes = (self.bytes + dt * rate as f64).min(burst as f64);
        self.at = now;
        self.bytes as usize
    }

    fn spend(&mut self, n: usize) {
        self.bytes = (self.bytes - n as f64).max(0.0);
    }
}

/// Output one run may forward: this many bytes a second, in bursts of `RUN_BURST`.
const RUN_RATE: usize = 1 << 20;
const RUN_BURST: usize = 1 << 20;
/// Output all runs together may forward.
const TOTAL_RATE: usize = 16 << 20;
const TOTAL_BURST: usize = 4 << 20;
/// How long a run over its budget (or all runs, over theirs) is not read.
const OUTPUT_PAUSE: Duration = Duration::from_millis(50);
/// At most this much of one run's output is read per wake-up.
const READ_PER_TURN: usize = 64 * 1024;

struct Input {
    pipe: File,
    data: Vec<u8>,
    written: usize,
}

impl Input {
    /// Writes what the pipe takes now; true when done (all written, or the run
    /// closed its end: a handler need not read its input).
    fn pump(&mut self) -> bool {
        while self.written < self.data.len() {
            match self.pipe.write(&self.data[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        true
    }
}

/// epoll tokens: the two fixed descriptors, then per run `id << 1` (output) and
/// `id << 1 | 1` (input).
const TOKEN_CONTROL: u64 = u64::MAX;
const TOKEN_SIGCHLD: u64 = u64::MAX - 1;

struct Helper {
    /// One epoll set for everything (a poll set rebuilt per wake-up costs O(runs), which
    /// made starting 10,000 runs take tens of seconds).
    epfd: i32,
    control: File,
    runs: HashMap<u64, Run>,
    by_pid: HashMap<i32, u64>,
    sigchld_rx: File,
    parent: i32,
    /// The module is gone: stop everything and exit when all runs are reaped.
    shutting_down: bool,
    /// Stop deadlines: (SIGKILL time, run).
    kills: std::collections::BTreeSet<(Instant, u64)>,
    /// Runs launched but not yet reported started: their start time (see `settle`).
    starting: HashMap<i32, u64>,
    /// Bytes read from the control socket that do not make a whole request yet.
    inbox: Vec<u8>,
    /// Reports not written yet: one write per turn of the loop, not one per report.
    outbox: Vec<u8>,
    /// Where a run's output is read into.
    scratch: Vec<u8>,
    /// What all runs together may still forward (see `Budget`).
    total_budget: Budget,
    /// Runs whose output pipe is paused, by when it is read again.
    paused: std::collections::BTreeSet<(Instant, u64)>,
    /// When children were last reaped without a SIGCHLD (see `run`).
    reaped: Instant,
    /// When adopted processes were last looked for (`kill_adopted`).
    adopted_checked: Instant,
}

fn main() {
    // The control socket is our stdin; stdout/stderr are redis-server's.
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
    raise_fd_limit();
    unsafe { sys::prctl(sys::PR_SET_CHILD_SUBREAPER, 1) };
    // Executed from a memfd its name would be the fd number; `ps`/`top` show this.
    unsafe {
        sys::prctl(
            sys::PR_SET_NAME,
            c"streamwatch-hlp".as_ptr() as sys::c_ulong,
        )
    };

    let mut fds = [0i32; 2];
    if unsafe { sys::pipe2(fds.as_mut_ptr(), 0o2000000 | sys::O_NONBLOCK) } != 0 {
        log("cannot create the SIGCHLD pipe");
        std::process::exit(2);
    }
    SIGCHLD_PIPE.store(fds[1], Ordering::Relaxed);
    unsafe { sys::signal(sys::SIGCHLD, on_sigchld as *const () as usize) };

    let epfd = unsafe { sys::epoll_create1(sys::EPOLL_CLOEXEC) };
    if epfd < 0 {
        log("cannot create the epoll set");
        std::process::exit(2);
    }
    sys::watch(epfd, control.as_raw_fd(), sys::EPOLLIN, TOKEN_CONTROL);
    sys::watch(epfd, fds[0], sys::EPOLLIN, TOKEN_SIGCHLD);
    let mut helper = Helper {
        epfd,
        control,
        runs: HashMap::new(),
        by_pid: HashMap::new(),
        sigchld_rx: unsafe { File::from_raw_fd(fds[0]) },
        parent: unsafe { sys::getppid() },
        shutting_down: false,
        adopted_checked: Instant::now(),
        kills: std::collections::BTreeSet::new(),
        starting: HashMap::new(),
        inbox: Vec::new(),
        outbox: Vec::new(),
        scratch: vec![0; READ_PER_TURN],
        total_budget: Budget::full(TOTAL_BURST, Instant::now()),
        paused: std::collections::BTreeSet::new(),
        reaped: Instant::now(),
    };
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
            unsafe { sys::close(fd) };
        }
    }
}

/// Ignored signals stay ignored across exec; workers must start with defaults.
fn reset_signals() {
    for sig in 1..=64 {
        if sig != sys::SIGKILL && sig != sys::SIGSTOP && sig != 13 {
            unsafe { sys::signal(sig, sys::SIG_DFL) };
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
    unsafe {
        sys::setsid();
        for sig in [sys::SIGHUP, sys::SIGINT, sys::SIGQUIT, sys::SIGTERM] {
            sys::signal(sig, sys::SIG_IGN);
        }
    }
}

/// Every run inherits `STREAMWATCH_HELPER=<pid>.<start time>` naming this helper, and
/// so, usually, does whatever a run starts: a daemon that left the helper's session
/// (`setsid`) is still found by it when the helper is killed (see the module's
/// `runner::kill_session`). Set before any thread or run exists.
fn mark_runs() {
    let me = std::process::id() as i32;
    let start = start_time::from_proc(me).unwrap_or(0);
    std::env::set_var("STREAMWATCH_HELPER", format!("{me}.{start}"));
}

fn raise_fd_limit() {
    let mut l = sys::RLimit { cur: 0, max: 0 };
    unsafe {
        if sys::getrlimit(sys::RLIMIT_NOFILE, &mut l) == 0 && l.cur < l.max {
            l.cur = l.max.min(1 << 20);
            sys::setrlimit(sys::RLIMIT_NOFILE, &l);
        }
    }
}

impl Helper {
    fn run(&mut self) {
        loop {
            self.flush_reports();
            if self.shutting_down && self.runs.is_empty() {
                // A daemon a run started (adopted by us when the run ended) goes too,
                // before we do: after us it would belong to no one.
                self.reap();
                if self.sweep_adopted() == 0 {
                    return;
                }
            }
            let now = Instant::now();
            self.kill_overdue(now);
            self.resume_output(now);
            let timeout = self.poll_timeout(now);
            let mut events = [sys::EpollEvent { events: 0, data: 0 }; 256];
            let n = unsafe {
                sys::epoll_wait(self.epfd, events.as_mut_ptr(), events.len() as i32, timeout)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log(&format!("epoll_wait failed: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let mut control_ready = false;
            let mut sigchld = n == 0;
            for ev in &events[..n as usize] {
                let token = ev.data;
                match token {
                    TOKEN_CONTROL => control_ready = true,
                    TOKEN_SIGCHLD => {
                        sigchld = true;
                        let mut buf = [0u8; 256];
                        while matches!(self.sigchld_rx.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    t if t & 1 == 0 => self.pump_output(t >> 1, false),
                    t => {
                        if let Some(run) = self.runs.get_mut(&(t >> 1)) {
                            if run.input.as_mut().is_some_and(Input::pump) {
                                run.input = None;
                            }
                        }
                    }
                }
            }
            // Reap on SIGCHLD, and at least every 100 ms in case one was lost (waitid
            // walks every child, so not on every wake-up with 10,000 runs).
            if sigchld || self.reaped.elapsed() >= Duration::from_millis(100) {
                self.reaped = Instant::now();
                self.reap();
            }
            self.kill_adopted();
            if control_ready && !self.shutting_down {
                self.read_requests();
            }
            self.settle();
            if !self.shutting_down && unsafe { sys::getppid() } != self.parent {
                log("redis-server is gone; stopping every run");
                self.shutdown();
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> i32 {
        // Wake at least every 500 ms to notice reparenting.
        let mut t = Duration::from_millis(500);
        if let Some((at, _)) = self.kills.first() {
            t = t.min(at.saturating_duration_since(now));
        }
        if let Some((at, _)) = self.paused.first() {
            t = t.min(at.saturating_duration_since(now));
        }
        if spawn::launching() {
            // A launch's end wakes no one: look again soon.
            t = t.min(Duration::from_millis(1));
        }
        // Rounded up: a deadline 0.3 ms away is not a timeout of 0, which made the
        // helper spin on epoll_wait until it passed, taking a core from everyone.
        t.as_micros().div_ceil(1000).min(500) as i32
    }

    /// SIGKILL for the groups whose stop grace is over (only runs being stopped are
    /// looked at: with 10,000 runs every wake-up must stay cheap).
    fn kill_overdue(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.kills.first() {
            if at > now {
                break;
            }
            self.kills.remove(&(at, id));
            if let Some(run) = self.runs.get_mut(&id) {
                if run.kill_at == Some(at) {
                    unsafe { sys::kill(-run.pid, sys::SIGKILL) };
                    run.kill_at = None;
                }
            }
        }
    }

    /// Queues a report; `flush_reports` writes the turn's reports at once.
    fn send(&mut self, report: Report) {
        self.outbox.extend_from_slice(&report.encode());
    }

    fn flush_reports(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let result = self.control.write_all(&self.outbox);
        self.outbox.clear();
        if let Err(e) = result {
            if !self.shutting_down {
                log(&format!(
                    "control socket write failed ({e}); stopping every run"
                ));
                self.shutdown();
            }
        }
    }

    /// Reads what the control socket has (it is readable) and handles every whole
    /// request in it; a partial one waits for the rest.
    fn read_requests(&mut self) {
        let n = match self.control.read(&mut self.scratch) {
            Ok(0) => return self.shutdown(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                log(&format!(
                    "control socket read failed ({e}); stopping every run"
                ));
                return self.shutdown();
            }
        };
        let mut inbox = std::mem::take(&mut self.inbox);
        inbox.extend_from_slice(&self.scratch[..n]);
        let mut at = 0;
        while inbox.len() - at >= 4 && !self.shutting_down {
            let len = u32::from_le_bytes(inbox[at..at + 4].try_into().expect("4 bytes")) as usize;
            if len == 0 || len > protocol::MAX_FRAME {
                log(&format!("bad frame length {len}; stopping every run"));
                return self.shutdown();
            }
            if inbox.len() - at - 4 < len {
                break;
            }
            match Request::decode(&inbox[at + 4..at + 4 + len]) {
                Ok(req) => self.handle(req),
                Err(e) => log(&format!("bad request: {e}")),
            }
            at += 4 + len;
        }
        inbox.drain(..at);
        self.inbox = inbox;
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Stop { run } => self.stop(run),
            spawn @ Request::Spawn { .. } => self.spawn(spawn),
        }
    }

    fn spawn(&mut self, req: Request) {
        let Request::Spawn {
            run: id,
            argv,
            env,
            cwd,
            stdin,
            stop_signal,
            stop_grace_ms,
        } = req
        else {
            return;
        };
        let result = (|| -> io::Result<(i32, u64, File, Option<Input>)> {
            let (reader, writer) = io::pipe()?;
            // Both pipes are close-on-exec; the run gets its ends by dup2 only.
            let input = stdin
                .map(|data| io::pipe().map(|p| (p, data)))
                .transpose()?;
            let before = start_time::now_ns();
            let pid = spawn::run(
                &argv,
                &env,
                cwd.as_deref(),
                input.as_ref().map(|((r, _), _)| r.as_raw_fd()),
                writer.as_raw_fd(),
            )?;
            let started = start_time::of(pid, before, start_time::now_ns());
            drop(writer);
            let out = File::from(OwnedFd::from(reader));
            sys::set_nonblocking(out.as_raw_fd());
            let input = input.and_then(|((r, w), data)| {
                drop(r);
                let pipe = File::from(OwnedFd::from(w));
                sys::set_nonblocking(pipe.as_raw_fd());
                let mut input = Input {
                    pipe,
                    data,
                    written: 0,
                };
                (!input.pump()).then_some(input)
            });
            Ok((pid, started, out, input))
        })();
        match result {
            Ok((pid, start_ticks, out, input)) => {
                sys::watch(self.epfd, out.as_raw_fd(), sys::EPOLLIN, id << 1);
                if let Some(input) = &input {
                    sys::watch(
                        self.epfd,
                        input.pipe.as_raw_fd(),
                        sys::EPOLLOUT,
                        id << 1 | 1,
                    );
                }
                self.runs.insert(
                    id,
                    Run {
                        pid,
                        output: Some(out),
                        budget: Budget::full(RUN_BURST, Instant::now()),
                        paused_until: None,
                        input,
                        stop_signal,
                        stop_grace: Duration::from_millis(stop_grace_ms),
                        kill_at: None,
                    },
                );
                self.by_pid.insert(pid, id);
                self.starting.insert(pid, start_ticks);
            }
            Err(e) => self.send(Report::SpawnFailed {
                run: id,
                error: e.to_string(),
            }),
        }
    }

    /// Reports the runs whose launch is over: started (exec'ed), or failed to start
    /// (then the child has exited, and is reaped as no run's).
    fn settle(&mut self) {
        for (pid, error) in spawn::settled() {
            let Some(start_ticks) = self.starting.remove(&pid) else {
                continue;
            };
            let Some(&id) = self.by_pid.get(&pid) else {
                continue;
            };
            match error {
                None => self.send(Report::Started {
                    run: id,
                    pid,
                    start_ticks,
                }),
                Some(e) => {
                    self.by_pid.remove(&pid);
                    if let Some(run) = self.runs.remove(&id) {
                        if let Some(at) = run.kill_at {
                            self.kills.remove(&(at, id));
                        }
                    }
                    self.send(Report::SpawnFailed {
                        run: id,
                        error: e.to_string(),
                    });
                }
            }
        }
    }

    fn stop(&mut self, id: u64) {
        if let Some(run) = self.runs.get_mut(&id) {
            if run.kill_at.is_none() {
                let at = Instant::now() + run.stop_grace;
                self.kills.insert((at, id));
                unsafe { sys::kill(-run.pid, run.stop_signal) };
                run.kill_at = Some(at);
            }
        }
    }

    fn shutdown(&mut self) {
        if !self.shutting_down {
            sys::unwatch(self.epfd, self.control.as_raw_fd());
        }
        self.shutting_down = true;
        let ids: Vec<u64> = self.runs.keys().copied().collect();
        for id in ids {
            self.stop(id);
        }
    }

    /// Forwards what the run has written, within its budget and everyone's; a run over
    /// budget is paused (its pipe taken out of the epoll set, so the worker waits on
    /// it). Closes the pipe at end of file. `last`: the run has exited; what its pipe
    /// still holds (its last words, at most one read) is forwarded whatever the budget.
    fn pump_output(&mut self, id: u64, last: bool) {
        let now = Instant::now();
        let total = self.total_budget.refill(now, TOTAL_RATE, TOTAL_BURST);
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let Some(out) = run.output.as_mut() else {
            return;
        };
        let own = run.budget.refill(now, RUN_RATE, RUN_BURST);
        let allowed = if last {
            READ_PER_TURN
        } else {
            own.min(total).min(READ_PER_TURN)
        };
        let mut eof = false;
        let mut data = None;
        if allowed > 0 {
            loop {
                match out.read(&mut self.scratch[..allowed]) {
                    Ok(0) => eof = true,
                    Ok(n) => data = Some(self.scratch[..n].to_vec()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => eof = true,
                }
                break;
            }
        }
        let n = data.as_ref().map_or(0, Vec::len);
        run.budget.spend(n);
        self.total_budget.spend(n);
        if eof {
            if let Some(out) = run.output.take() {
                if run.paused_until.take().is_none() {
                    sys::unwatch(self.epfd, out.as_raw_fd());
                }
            }
        } else if !last && n >= allowed && allowed < READ_PER_TURN && run.paused_until.is_none() {
            // Used up what it may send now: pause it (a full read within budget is
            // simply read again on the next wake-up, after the other runs).
            let at = now + OUTPUT_PAUSE;
            run.paused_until = Some(at);
            sys::unwatch(self.epfd, out.as_raw_fd());
            self.paused.insert((at, id));
        }
        if let Some(data) = data {
            self.send(Report::Output { run: id, data });
        }
    }

    /// Puts paused output pipes whose pause is over back into the epoll set.
    fn resume_output(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.paused.first() {
            if at > now {
                break;
            }
            self.paused.remove(&(at, id));
            if let Some(run) = self.runs.get_mut(&id) {
                if run.paused_until == Some(at) {
                    run.paused_until = None;
                    if let Some(out) = &run.output {
                        sys::watch(self.epfd, out.as_raw_fd(), sys::EPOLLIN, id << 1);
                    }
                }
            }
        }
    }

    /// A worker that daemonizes (a new session, out of its process group) leaves a
    /// process the helper adopts as subreaper. Any child that is not a run's leader is
    /// such a leftover: it and its group are killed (it is reaped like any child).
    /// Looked for at most every `ADOPTED_EVERY`, from the kernel's list of our children.
    fn kill_adopted(&mut self) {
        const ADOPTED_EVERY: Duration = Duration::from_millis(250);
        if self.adopted_checked.elapsed() < ADOPTED_EVERY {
            return;
        }
        self.adopted_checked = Instant::now();
        self.sweep_adopted();
    }

    /// Kills every child that is not a run's leader (and its group); returns how many
    /// there were (zombies not reaped yet included).
    fn sweep_adopted(&mut self) -> usize {
        let me = std::process::id();
        let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
            return 0;
        };
        let mut found = 0;
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if !self.by_pid.contains_key(&pid) {
                found += 1;
                // A live process with this pid: no other group can have this id.
                unsafe {
                    sys::kill(-pid, sys::SIGKILL);
                    sys::kill(pid, sys::SIGKILL);
                }
            }
        }
        found
    }

    /// Reaps every exited child. A run's leader is first only peeked at (WNOWAIT) so that
    /// its process group can be killed while the pid still cannot be reused.
    fn reap(&mut self) {
        // A run is reported started before it is reported exited.
        self.settle();
        while let Some(pid) = sys::peek_exited_child() {
            if self.by_pid.contains_key(&pid) {
                // The leader is a zombie: -pid still names only its own group.
                unsafe { sys::kill(-pid, sys::SIGKILL) };
            }
            let mut status = 0;
            let r = unsafe { sys::waitpid(pid, &mut status, sys::WNOHANG) };
            if r != pid {
                break;
            }
            if let Some(id) = self.by_pid.remove(&pid) {
                // Whatever the run wrote before it exited goes out first.
                self.pump_output(id, true);
                if let Some(at) = self.runs.remove(&id).and_then(|r| r.kill_at) {
                    // Stopped in time: its SIGKILL deadline goes too (else the helper
                    // wakes for nothing when it comes).
                    self.kills.remove(&(at, id));
                }
                self.send(Report::Exited { run: id, status });
            }
            // Otherwise it was an orphaned grandchild we adopted as subreaper.
        }
    }
}
