//! The clone child: what it reads, and the code it runs between the clone and the exec.
//!
//! It shares the helper's memory (CLONE_VM) while the helper goes on, so it makes raw
//! system calls only: libc's wrappers would write the helper's thread-local `errno`
//! (and may take locks the helper holds). The numbers and flags are libc's; only the
//! instruction that enters the kernel is spelled out here (`raw`).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

/// Signals as the kernel numbers them for rt_sigaction and rt_sigprocmask on x86-64
/// and aarch64: 1 to 64, a set of them one `u64` (the kernel's `_NSIG` and
/// `sizeof(sigset_t)`, which are not glibc's).
const KERNEL_NSIG: usize = 64;
const KERNEL_SIGSET_SIZE: usize = std::mem::size_of::<u64>();

/// A system call without libc: the result, or `-errno`. Touches no thread-local.
///
/// # Safety
/// As the system call `n` with these arguments: pointers among them must be valid for
/// what the kernel does with them.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn raw(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the Linux x86-64 system call convention: number in rax, arguments in
    // rdi, rsi, rdx, r10; the kernel clobbers rcx and r11 and uses no user stack.
    unsafe {
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
    }
    ret
}
#[cfg(target_arch = "aarch64")]
pub(super) unsafe fn raw(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the Linux aarch64 system call convention: number in x8, arguments in
    // x0 to x3, the result in x0; no user stack is used.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n as usize,
            inlateout("x0") a as isize => ret,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            options(nostack)
        );
    }
    ret
}

/// The kernel's `struct sigaction` as rt_sigaction takes it on x86-64 and aarch64
/// (handler, flags, restorer, mask: not glibc's `sigaction`, whose mask is 128 bytes and
/// comes second). libc has no type for this layout.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// What the child reads, prepared before the clone (the child allocates nothing),
/// and where it says why it failed.
#[repr(C)]
pub(super) struct Child {
    pub path: *const c_char,
    pub argv: *const *const c_char,
    pub envp: *const *const c_char,
    pub dir: *const c_char,
    pub slot_out: c_int,
    pub slot_in: c_int,
    /// Becomes descriptor 3; -1: the run has no descriptor 3.
    pub slot_replies: c_int,
    /// The lowest descriptor the child does not keep.
    pub keep_below: c_uint,
    /// The signals to set to their defaults (bit `n - 1` for signal `n`).
    pub reset: u64,
    /// The helper's pid: the child dies with it (see `child`).
    pub parent: c_int,
    /// `cgroup.procs` of the run's own cgroup (null: none): the child moves in.
    pub cgroup_procs: *const c_char,
    /// Its nice value (`NO_NICE`: the helper's).
    pub nice: c_int,
    /// Resource limits set before the exec: the first `n_rlimits`.
    pub rlimits: [KernelRlimit; 5],
    pub n_rlimits: usize,
    /// Written by the child when a step fails: which (`STEP_*`), the errno, and 1.
    pub step: AtomicI32,
    pub errno: AtomicI32,
    pub failed: AtomicI32,
}

/// No nice value to set (`Child::nice`).
pub(super) const NO_NICE: c_int = c_int::MIN;
/// What failed in the child (`Child::step`): the exec itself; moving into its cgroup;
/// its nice value; entering its working directory; setting up its descriptors; its
/// resource limit `STEP_RLIMIT + i`.
pub(super) const STEP_EXEC: i32 = 0;
pub(super) const STEP_CGROUP: i32 = 1;
pub(super) const STEP_NICE: i32 = 2;
pub(super) const STEP_CWD: i32 = 3;
pub(super) const STEP_FDS: i32 = 4;
pub(super) const STEP_RLIMIT: i32 = 8;

/// One resource limit as prlimit64 takes it (resource, then `struct rlimit64`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct KernelRlimit {
    pub resource: c_uint,
    /// Soft, hard (`u64::MAX`: RLIM_INFINITY).
    pub limit: [u64; 2],
}

/// Whether close_range with CLOSE_RANGE_UNSHARE works here (Linux 5.9): called on a
/// descriptor nobody has, it returns 0 if the kernel has both.
pub(super) fn has_close_range() -> bool {
    let probe = u32::MAX as usize - 1;
    let flags = libc::CLOSE_RANGE_UNSHARE as usize;
    // SAFETY: no pointer arguments; the range holds no open descriptor, so the call
    // closes nothing (it does unshare the table if the process shared it: harmless).
    unsafe { raw(libc::SYS_close_range, probe, probe, flags, 0) == 0 }
}

/// Waits while `word` is 1 (the kernel's wake when it clears a CLONE_CHILD_CLEARTID
/// word is a shared, not private, futex wake).
pub(super) fn futex_wait_while_one(word: &AtomicI32) {
    // SAFETY: the kernel reads the live atomic `word` (and sleeps on its address).
    unsafe {
        raw(
            libc::SYS_futex,
            word.as_ptr() as usize,
            libc::FUTEX_WAIT as usize,
            1,
            0,
        )
    };
}

/// Runs in the clone child, on its own stack, sharing the helper's memory while the
/// helper goes on: raw system calls only. `arg` is the launch's `Child`.
pub(super) extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to the `Child` of a boxed launch the helper keeps, unchanged,
    // until the kernel clears the launch's tid word at this child's exec or exit.
    let c = unsafe { &*arg.cast::<Child>() };
    let fail_at = |step: i32, r: isize| -> ! {
        c.step.store(step, Ordering::Relaxed);
        c.errno.store(-r as i32, Ordering::Relaxed);
        c.failed.store(1, Ordering::Release);
        // SAFETY: exit takes no pointer and does not return.
        unsafe { raw(libc::SYS_exit, 127, 0, 0, 0) };
        #[allow(clippy::empty_loop)]
        loop {}
    };
    let fail = |r: isize| -> ! { fail_at(STEP_FDS, r) };
    // SAFETY (every `raw` below): the pointers passed are to `c`'s strings and arrays
    // (alive, see above) or to locals of this function, each of the type the system call
    // takes; descriptor numbers are the launch's slots and the range it may close.
    unsafe {
        let r = raw(
            libc::SYS_close_range,
            c.keep_below as usize,
            c_uint::MAX as usize,
            libc::CLOSE_RANGE_UNSHARE as usize,
            0,
        );
        if r < 0 {
            fail(r);
        }
        // From here on the descriptor table is the child's own.
        for (from, to) in [(c.slot_in, 0), (c.slot_out, 1), (c.slot_out, 2)] {
            let r = raw(libc::SYS_dup3, from as usize, to, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        // The replies pipe, after 0 to 2 (whose slots may be 3). A slot that is 3
        // already is not close-on-exec (dup3'ed with no flags) and stays.
        let mut first_closed = 3;
        if c.slot_replies >= 0 {
            if c.slot_replies != 3 {
                // SAFETY: no pointer arguments; the table is the child's own (see above),
                // so overwriting its 3 closes nothing of the helper's.
                let r = raw(libc::SYS_dup3, c.slot_replies as usize, 3, 0, 0);
                if r < 0 {
                    fail(r);
                }
            }
            first_closed = 4;
        }
        // Every other slot (its own, other launches', the helper's close-on-exec
        // descriptors below `keep_below`): the worker gets 0, 1 and 2 only, and 3 if
        // it has replies.
        raw(
            libc::SYS_close_range,
            first_closed,
            c.keep_below as usize - 1,
            0,
            0,
        );
        let dfl = KernelSigaction::default(); // SIG_DFL is 0
                                              // Only the signals the helper handles or ignores: the rest are at their
                                              // defaults already (see `non_default_signals`).
        for sig in 1..=KERNEL_NSIG {
            if c.reset & (1u64 << (sig - 1)) != 0 {
                raw(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction as usize,
                    0,
                    KERNEL_SIGSET_SIZE,
                );
            }
        }
        raw(libc::SYS_setpgid, 0, 0, 0, 0);
        // SIGKILL when the helper dies (it is killed, say): a run the module has
        // not heard of yet would otherwise outlive it and nobody would stop it.
        // Kept across the exec. If the helper died before this, do not start.
        raw(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as usize,
            libc::SIGKILL as usize,
            0,
            0,
        );
        if raw(libc::SYS_getppid, 0, 0, 0, 0) != c.parent as isize {
            raw(libc::SYS_exit, 127, 0, 0, 0);
        }
        if !c.dir.is_null() {
            let r = raw(libc::SYS_chdir, c.dir as usize, 0, 0, 0);
            if r < 0 {
                fail_at(STEP_CWD, r);
            }
        }
        // The handler's limits, the cgroup first (a low limit-nofile could refuse the
        // descriptor it takes). Each touches this process only: not oom_score_adj,
        // which the kernel would give the helper too (see `Launcher::set_oom`).
        if !c.cgroup_procs.is_null() {
            let flags = (libc::O_WRONLY | libc::O_CLOEXEC) as usize;
            let at = libc::AT_FDCWD as isize as usize;
            let fd = raw(libc::SYS_openat, at, c.cgroup_procs as usize, flags, 0);
            if fd < 0 {
                fail_at(STEP_CGROUP, fd);
            }
            // "0": the writer itself.
            let r = raw(libc::SYS_write, fd as usize, b"0".as_ptr() as usize, 1, 0);
            raw(libc::SYS_close, fd as usize, 0, 0, 0);
            if r < 0 {
                fail_at(STEP_CGROUP, r);
            }
        }
        if c.nice != NO_NICE {
            let nice = c.nice as isize as usize;
            let r = raw(
                libc::SYS_setpriority,
                libc::PRIO_PROCESS as usize,
                0,
                nice,
                0,
            );
            if r < 0 {
                fail_at(STEP_NICE, r);
            }
        }
        for (i, l) in c.rlimits[..c.n_rlimits.min(5)].iter().enumerate() {
            let limit = l.limit.as_ptr() as usize;
            let r = raw(libc::SYS_prlimit64, 0, l.resource as usize, limit, 0);
            if r < 0 {
                fail_at(STEP_RLIMIT + i as i32, r);
            }
        }
        // The helper blocked every signal around the clone: unblock them last.
        let empty: u64 = 0;
        raw(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &empty as *const u64 as usize,
            0,
            KERNEL_SIGSET_SIZE,
        );
        let r = raw(
            libc::SYS_execve,
            c.path as usize,
            c.argv as usize,
            c.envp as usize,
            0,
        );
        fail_at(STEP_EXEC, r)
    }
}

/// Blocks every signal of the calling thread (glibc's internal ones included, which
/// `pthread_sigmask` would leave out): the old mask, for `restore_signal_mask`.
pub(super) fn block_all_signals() -> u64 {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: both pointers are to live locals of the kernel's sigset size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            KERNEL_SIGSET_SIZE,
        )
    };
    old
}

pub(super) fn restore_signal_mask(old: u64) {
    // SAFETY: the pointer is to a live local of the kernel's sigset size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_SIZE,
        )
    };
}

/// The signals whose disposition is not the default in the helper (SIGCHLD, SIGPIPE):
/// a child resets only these, not all 64.
/// Read once: the helper sets its handlers at start and never changes them.
pub(super) fn non_default_signals() -> u64 {
    static MASK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        let mut mask = 0u64;
        for sig in 1..=KERNEL_NSIG {
            if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
                continue; // cannot be changed
            }
            let mut old = KernelSigaction::default();
            // SAFETY: reads the disposition into a live local of the kernel's layout.
            let r = unsafe {
                raw(
                    libc::SYS_rt_sigaction,
                    sig,
                    0,
                    &mut old as *mut KernelSigaction as usize,
                    KERNEL_SIGSET_SIZE,
                )
            };
            // Unknown (or unreadable): reset it, as before.
            if r != 0 || old.handler != libc::SIG_DFL {
                mask |= 1u64 << (sig - 1);
            }
        }
        mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_calls_report_errors_as_negative_errno() {
        // SAFETY: no pointer arguments.
        let r = unsafe { raw(libc::SYS_dup3, 1_000_000, 1_000_001, 0, 0) };
        assert_eq!(r, -(libc::EBADF as isize));
        // SAFETY: no pointer arguments.
        let pid = unsafe { raw(libc::SYS_getppid, 0, 0, 0, 0) };
        // SAFETY: no arguments.
        assert_eq!(pid, unsafe { libc::getppid() } as isize);
    }

    #[test]
    fn the_kernel_sigaction_layout_reads_real_dispositions() {
        // The test harness leaves SIGPIPE ignored (Rust's runtime does) and SIGKILL can
        // never be read as anything but the default.
        let mask = non_default_signals();
        assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0);
        assert_eq!(mask & (1 << (libc::SIGKILL - 1)), 0);
        assert_eq!(mask & (1 << (libc::SIGSTOP - 1)), 0);
    }

    #[test]
    fn signal_masks_round_trip() {
        let old = block_all_signals();
        let blocked = block_all_signals();
        restore_signal_mask(old);
        // SIGKILL and SIGSTOP are never blocked, whatever was asked.
        assert_eq!(blocked & (1 << (libc::SIGKILL - 1)), 0);
        assert_ne!(blocked & (1 << (libc::SIGTERM - 1)), 0);
        assert_eq!(block_all_signals(), old);
        restore_signal_mask(old);
    }
}
