//! One run, started with these attributes: its own process group; an empty signal
//! mask; every signal at its default, glibc's internal 32 and 33 included (an
//! ignored signal stays ignored across exec); stdin `/dev/null` or the input pipe,
//! stdout and stderr on `out`, descriptor 3 on the replies pipe if it has one (and no
//! descriptor 3 at all if not); `cwd` if given; the helper's environment plus `env`;
//! its limits: its own cgroup, nice value and resource limits (set by the child, see
//! `child`) and its oom_score_adj (the helper's own at the clone, see
//! `Launcher::set_oom`).
//!
//! How: a `clone` that shares the helper's memory (CLONE_VM: cheap whatever the
//! helper's size) and descriptor table (CLONE_FILES), and whose child first calls
//! `close_range(SLOTS_END, ~0, CLOSE_RANGE_UNSHARE)`: it gets a private table
//! holding only the descriptors below `SLOTS_END`. The helper holds one output pipe
//! per run, so with 10,000 runs a plain `posix_spawn` copied 10,000 descriptors at
//! the clone and walked them again at the exec (`dup_fd`, `do_close_on_exec`: most
//! of the helper's time when starting many runs). The run's pipe ends are dup2'ed
//! onto a set of slots (out, in, replies) reserved at start, below `SLOTS_END`, just
//! before the clone.
//!
//! The helper does not wait for the exec (no CLONE_VFORK). With more runs than
//! cores, a new child waits its turn behind the running ones, and a vfork-style
//! helper waited with it: spawning was serialized behind the scheduler (a clone took
//! 0.2 ms at the median and 1 ms at p90 with 8 stream jobs on 2 cores). Instead each
//! launch keeps what its child reads (stack, argv, slots) in a `Launch` until the
//! kernel clears the launch's `tid` word (CLONE_CHILD_CLEARTID): the child has
//! exec'ed or exited and no longer uses the helper's memory. `settled` then says
//! whether the exec happened. The child makes raw system calls only (see `child`).
//!
//! Kernels before 5.9 (no close_range) get glibc's `posix_spawn` instead.
//!
//! A run that cannot start fails with an error naming what failed and its path (see
//! `naming`): `cwd /srv/x: No such file or directory`.

mod child;
mod naming;

use crate::protocol::{Limits, Rlimit, UNLIMITED};
use crate::sys::error_text;
use child::Child;
use naming::Names;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// How many runs may be between their clone and their exec at once; one more waits
/// for the oldest (each holds a stack and a set of slots until then). A few are
/// enough to keep the helper from waiting on the scheduler; more would only let a
/// burst of starts crowd the cores (and Redis) harder.
const LAUNCHES: usize = 8;
/// A child's stack, in 16-byte words (64 KiB).
const STACK_WORDS: usize = 4096;

/// One run between its clone and its exec: everything its child reads, kept at a
/// fixed address (boxed) until the kernel clears `tid`.
struct Launch {
    pid: i32,
    /// 1 from before the clone; the kernel writes 0 (and wakes futex waiters) when
    /// the child leaves this memory: at its exec, or at its exit.
    tid: AtomicI32,
    child: Child,
    /// Its index in `Launcher::slots`.
    set: usize,
    stack: Vec<u128>,
    /// Its limits (the child reads the cgroup's path), and for the error's words.
    setup: Setup,
    _strings: Vec<CString>,
    _pointers: [Vec<*const c_char>; 2],
}

/// What a run's child sets before its exec besides its descriptors and signals.
#[derive(Default)]
struct Setup {
    limits: Limits,
    /// `cgroup.procs` of the run's own cgroup.
    cgroup_procs: Option<CString>,
    /// Its program and working directory, as its errors name them.
    names: Names,
}

impl Setup {
    /// Why the child failed at `step` (a `child::STEP_*`) with `errno`: what failed
    /// named, e.g. `nice -5: Permission denied`, `cwd /srv/x: No such file or
    /// directory`, `program ./w.py (resolved to /etc/sw/w.py): Permission denied`.
    fn error(&self, step: i32, errno: i32) -> io::Error {
        let os = io::Error::from_raw_os_error(errno);
        let named = |what: String| naming::named(what, &os);
        let l = &self.limits;
        match step {
            child::STEP_EXEC => self.names.exec_error(&os),
            child::STEP_CWD => self.names.cwd_error(&os),
            child::STEP_FDS => named("the run's descriptors".into()),
            child::STEP_CGROUP => {
                let option = l.cgroup.as_ref().map_or("cgroup", crate::cgroup::options);
                let procs = self.cgroup_procs.as_deref().unwrap_or_default();
                named(format!("{option}: {}", procs.to_string_lossy()))
            }
            child::STEP_NICE => named(format!("nice {}", l.nice.unwrap_or_default())),
            s if s >= child::STEP_RLIMIT => {
                match l.rlimits.get((s - child::STEP_RLIMIT) as usize) {
                    Some((r, v)) => named(format!("{} {}", r.option(), shown(*v))),
                    None => os,
                }
            }
            _ => os,
        }
    }

    /// The child's copy of its limits.
    fn for_child(&self) -> (c_int, [child::KernelRlimit; 5], usize, *const c_char) {
        let mut rlimits = [child::KernelRlimit::default(); 5];
        for (slot, (r, v)) in rlimits.iter_mut().zip(&self.limits.rlimits) {
            *slot = child::KernelRlimit {
                resource: resource(*r),
                limit: [*v, *v],
            };
        }
        let procs = self
            .cgroup_procs
            .as_ref()
            .map_or(std::ptr::null(), |p| p.as_ptr());
        let nice = self.limits.nice.unwrap_or(child::NO_NICE);
        (nice, rlimits, self.limits.rlimits.len().min(5), procs)
    }
}

/// A limit as an error shows it.
fn shown(v: u64) -> String {
    match v {
        UNLIMITED => "unlimited".into(),
        v => v.to_string(),
    }
}

fn resource(r: Rlimit) -> c_uint {
    (match r {
        Rlimit::As => libc::RLIMIT_AS,
        Rlimit::Nofile => libc::RLIMIT_NOFILE,
        Rlimit::Cpu => libc::RLIMIT_CPU,
        Rlimit::Nproc => libc::RLIMIT_NPROC,
        Rlimit::Core => libc::RLIMIT_CORE,
    }) as c_uint
}

/// Writes the helper's own oom_score_adj.
fn write_oom_score_adj(v: i32) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/oom_score_adj")?
        .write_all(v.to_string().as_bytes())
}

/// The clone path's state (the helper is single-threaded).
struct Launcher {
    /// Whether the clone path works here (close_range with UNSHARE exists).
    fast: bool,
    null: c_int,
    /// The descriptors a child's stdout, stdin and replies pipe are dup2'ed onto for
    /// its clone; parked on /dev/null, close-on-exec, while free.
    slots: Vec<Slots>,
    free_slots: Vec<usize>,
    keep_below: c_uint,
    /// Boxed: a child reads its launch at a fixed address while the list changes.
    #[allow(clippy::vec_box)]
    launches: Vec<Box<Launch>>,
    stacks: Vec<Vec<u128>>,
    /// Launches over: (pid, the error if the exec did not happen).
    settled: Vec<(i32, Option<io::Error>)>,
    /// The helper's own oom_score_adj as it last wrote it (`None`: never written).
    oom: Option<i32>,
}

thread_local! {
    static LAUNCHER: RefCell<Launcher> = const {
        RefCell::new(Launcher {
            fast: false,
            null: -1,
            slots: Vec::new(),
            free_slots: Vec::new(),
            keep_below: 0,
            launches: Vec::new(),
            stacks: Vec::new(),
            settled: Vec::new(),
            oom: None,
        })
    };
}

/// One launch's slots.
#[derive(Clone, Copy)]
struct Slots {
    out: c_int,
    inp: c_int,
    replies: c_int,
}

fn open_null() -> c_int {
    // SAFETY: a NUL-terminated path; no mode is needed without O_CREAT.
    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_CLOEXEC) }
}

/// `dup3(2)`: -1 on error (errno set).
fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: no pointer arguments; `new` is always one of the launcher's slots,
    // which no Rust object owns.
    unsafe { libc::dup3(fd, new, flags) }
}

/// Reserves the slots; called at start, when the lowest descriptors are free.
pub fn reserve() {
    let has_close_range = child::has_close_range();
    let null = open_null();
    let mut slots = Vec::new();
    for _ in 0..LAUNCHES {
        let (out, inp, replies) = (open_null(), open_null(), open_null());
        if out < 0 || inp < 0 || replies < 0 {
            return;
        }
        slots.push(Slots { out, inp, replies });
    }
    if null < 0 || !has_close_range {
        return;
    }
    let top = slots
        .iter()
        .map(|s| s.out.max(s.inp).max(s.replies))
        .max()
        .unwrap_or(null);
    LAUNCHER.with_borrow_mut(|l| {
        l.keep_below = (top.max(null) + 1) as c_uint;
        l.null = null;
        l.free_slots = (0..slots.len()).rev().collect();
        l.slots = slots;
        l.fast = true;
    });
}

/// `program` as execve needs it: as given if it has a slash, else the first
/// executable `dir/program` along the helper's PATH (what posix_spawnp does).
fn resolve(program: &[u8]) -> io::Result<CString> {
    resolve_in(program, std::env::var_os("PATH").as_deref())
}

/// `resolve` along `path` (`None`: no PATH set, then `/bin:/usr/bin`).
/// A file of that name that is not executable is taken when no executable one is
/// found (its exec then fails with EACCES, as posix_spawnp's would).
fn resolve_in(program: &[u8], path: Option<&OsStr>) -> io::Result<CString> {
    if program.contains(&b'/') {
        return cstring(program);
    }
    let mut not_executable = None;
    for dir in path_dirs(path).split(|&b| b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let full = cstring(&[dir, b"/", program].concat())?;
        let is_file =
            std::fs::metadata(OsStr::from_bytes(full.as_bytes())).is_ok_and(|m| m.is_file());
        if is_file && executable(&full) {
            return Ok(full);
        }
        if is_file && not_executable.is_none() {
            not_executable = Some(full);
        }
    }
    // ENOENT: as posix_spawnp says.
    not_executable.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// The directories a bare program name is looked for in: PATH, or `/bin:/usr/bin`.
fn path_dirs(path: Option<&OsStr>) -> &[u8] {
    path.map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes())
}

fn executable(path: &CStr) -> bool {
    // SAFETY: a NUL-terminated path the call only reads.
    unsafe { libc::access(path.as_ptr(), libc::X_OK) == 0 }
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
        let slots = self.slots[l.set];
        dup3(self.null, slots.inp, libc::O_CLOEXEC);
        dup3(self.null, slots.out, libc::O_CLOEXEC);
        if l.child.slot_replies >= 0 {
            dup3(self.null, slots.replies, libc::O_CLOEXEC);
        }
        self.free_slots.push(l.set);
        let error = (l.child.failed.load(Ordering::Acquire) != 0).then(|| {
            let step = l.child.step.load(Ordering::Relaxed);
            l.setup.error(step, l.child.errno.load(Ordering::Relaxed))
        });
        self.stacks.push(std::mem::take(&mut l.stack));
        self.settled.push((l.pid, error));
    }

    /// Waits until the oldest launch is over (all slots taken).
    fn wait_oldest(&mut self) {
        let Some(oldest) = self.launches.first() else {
            return;
        };
        while oldest.tid.load(Ordering::Acquire) != 0 {
            child::futex_wait_while_one(&oldest.tid);
        }
        let l = self.launches.remove(0);
        self.finish(*l);
    }

    /// Gives the helper the oom_score_adj a run is to start with: a clone child gets
    /// the helper's value, and cannot set its own before its exec, because the kernel
    /// gives a value written then to every process sharing its memory (the helper and
    /// the other launches too). So the helper takes the run's value before the clone,
    /// once every launch that started with another one is over; it keeps it after
    /// (runs of one value, the usual case, cost nothing more).
    fn set_oom(&mut self, v: i32) -> io::Result<()> {
        if self.oom == Some(v) {
            return Ok(());
        }
        while !self.launches.is_empty() {
            self.wait_oldest();
        }
        write_oom_score_adj(v).map_err(|e| {
            io::Error::new(e.kind(), format!("oom-score-adj {v}: {}", error_text(&e)))
        })?;
        self.oom = Some(v);
        Ok(())
    }

    fn launch(
        &mut self,
        path: CString,
        strings: Vec<CString>,
        pointers: [Vec<*const c_char>; 2],
        dir: Option<CString>,
        fds: Fds,
        setup: Setup,
    ) -> io::Result<i32> {
        let Fds {
            stdin,
            out,
            replies,
        } = fds;
        self.collect();
        if self.free_slots.is_empty() {
            self.wait_oldest();
        }
        let set = self.free_slots.pop().expect("a set of slots is free");
        let Slots {
            out: slot_out,
            inp: slot_in,
            replies: slot_replies,
        } = self.slots[set];
        let stack = self
            .stacks
            .pop()
            .unwrap_or_else(|| vec![0u128; STACK_WORDS]);
        let (nice, rlimits, n_rlimits, cgroup_procs) = setup.for_child();
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
                slot_replies: if replies.is_some() { slot_replies } else { -1 },
                keep_below: self.keep_below,
                reset: child::non_default_signals(),
                parent: std::process::id() as c_int,
                cgroup_procs,
                nice,
                rlimits,
                n_rlimits,
                step: AtomicI32::new(child::STEP_EXEC),
                errno: AtomicI32::new(0),
                failed: AtomicI32::new(0),
            },
            set,
            stack,
            setup,
            _strings: strings.into_iter().chain([path]).chain(dir).collect(),
            _pointers: pointers,
        });
        let null = self.null;
        let park = |e: io::Error, free: &mut Vec<usize>| {
            dup3(null, slot_in, libc::O_CLOEXEC);
            dup3(null, slot_out, libc::O_CLOEXEC);
            dup3(null, slot_replies, libc::O_CLOEXEC);
            free.push(set);
            Err(e)
        };
        // Not close-on-exec while in use: the child dup2s them to 0 to 3, and a slot
        // that is 3 already is kept as it is.
        if dup3(stdin.unwrap_or(null), slot_in, 0) < 0
            || dup3(out, slot_out, 0) < 0
            || replies.is_some_and(|r| dup3(r, slot_replies, 0) < 0)
        {
            return park(io::Error::last_os_error(), &mut self.free_slots);
        }
        let top = l.stack.as_mut_ptr_range().end.cast::<c_void>();
        let old_mask = child::block_all_signals();
        let arg: *mut Child = &mut l.child;
        // SAFETY: `child` runs on the launch's own stack (`top` is its end, 16-byte
        // aligned) and reads only `*arg`, which with the strings, pointer arrays and
        // stack it points into stays alive and in place (boxed, kept in `launches`)
        // until the kernel clears `tid` (CLONE_CHILD_CLEARTID, the 7th argument) at
        // the child's exec or exit. The parent and tls arguments are unused.
        let pid = unsafe {
            libc::clone(
                child::child,
                top,
                libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
                arg.cast(),
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<c_void>(),
                l.tid.as_ptr(),
            )
        };
        let clone_error = io::Error::last_os_error();
        child::restore_signal_mask(old_mask);
        if pid < 0 {
            self.stacks.push(std::mem::take(&mut l.stack));
            return park(clone_error, &mut self.free_slots);
        }
        // Its own group from now on, whether or not the child got there yet
        // (a stop sent before then reaches it); fails harmlessly after its exec.
        // SAFETY: no pointer arguments.
        unsafe { libc::setpgid(pid, pid) };
        l.pid = pid;
        self.launches.push(l);
        Ok(pid)
    }
}

/// A close-on-exec copy of `fd` numbered above 3.
fn dup_above_3(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: no pointer arguments.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 4) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just opened here and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
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
/// `fds`: its descriptors; `limits`: what it is limited to, set before its exec, with
/// `cgroup` the directory of its own cgroup (made by `cgroup::make`) if it has one.
/// A limit that cannot be set fails the run with an error naming the option; a
/// program or working directory that cannot be used, one naming it and its path
/// (`written`: the program as the handler wrote it, if `argv[0]` is its resolution).
pub fn run(
    argv: &[Vec<u8>],
    written: Option<&[u8]>,
    env: &[(Vec<u8>, Vec<u8>)],
    cwd: Option<&[u8]>,
    fds: Fds,
    limits: &Limits,
    cgroup: Option<&Path>,
) -> io::Result<i32> {
    let program = argv
        .first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let mut names = Names {
        written: written.map(<[u8]>::to_vec),
        argv0: program.clone(),
        exec_path: Vec::new(),
        cwd: cwd.map(<[u8]>::to_vec),
    };
    let mut strings: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
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
    let path = resolve(program).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => names.not_in_path(path_dirs(std::env::var_os("PATH").as_deref())),
        _ => e,
    })?;
    names.exec_path = path.as_bytes().to_vec();
    let setup = Setup {
        limits: limits.clone(),
        cgroup_procs: cgroup
            .map(|d| cstring(d.join("cgroup.procs").as_os_str().as_bytes()))
            .transpose()?,
        names,
    };
    let fast = LAUNCHER.with_borrow(|l| l.fast);
    if !fast {
        // posix_spawn sets none of these in the child.
        let clone_only = [
            limits.cgroup.as_ref().map(crate::cgroup::options),
            limits.nice.map(|_| "nice"),
            limits.rlimits.first().map(|(r, _)| r.option()),
        ];
        if let Some(option) = clone_only.into_iter().flatten().next() {
            return Err(io::Error::other(format!(
                "{option}: this kernel has no close_range (Linux 5.9), so runs start \
                 with posix_spawn, which cannot set it"
            )));
        }
    }
    if let Some(v) = limits.oom_score_adj {
        LAUNCHER.with_borrow_mut(|l| l.set_oom(v))?;
    }
    if fast {
        return LAUNCHER
            .with_borrow_mut(|l| l.launch(path, strings, [argp, envp], dir, fds, setup));
    }
    let pid = posix_spawn_run(&path, &argp, &envp, dir.as_ref(), fds)
        .map_err(|e| setup.names.posix_spawn_error(e))?;
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

/// A `sigset_t` holding the signals of `mask` (bit `n - 1` for signal `n`, 1 to 64).
///
/// Not with `sigaddset`: glibc's refuses its internal signals 32 and 33, which a run
/// must get at their defaults too (glibc's posix_spawn resets whatever the set holds).
fn sigset_of(mask: u64) -> libc::sigset_t {
    const _: () = assert!(std::mem::size_of::<libc::sigset_t>() >= 8);
    // SAFETY: sigset_t is plain data (an array of unsigned longs), all zeroes is the
    // empty set; glibc keeps signal `n` at bit `n - 1` of its first 64 bits on 64-bit
    // Linux, which is within the type (asserted above) and aligned for a u64.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        (&mut set as *mut libc::sigset_t).cast::<u64>().write(mask);
        set
    }
}

/// A run's descriptors as `run` takes them: `stdin` its 0 (`None`: /dev/null), `out`
/// its 1 and 2, `replies` its 3 (`None`: it has no descriptor 3).
pub struct Fds {
    pub stdin: Option<RawFd>,
    pub out: RawFd,
    pub replies: Option<RawFd>,
}

/// glibc's `posix_spawn` of `path`, where the clone path is not available (it
/// returns once the child has exec'ed, or with why it could not).
fn posix_spawn_run(
    path: &CString,
    argp: &[*const c_char],
    envp: &[*const c_char],
    dir: Option<&CString>,
    fds: Fds,
) -> io::Result<i32> {
    let Fds {
        stdin,
        out,
        replies,
    } = fds;
    // dup2(3, 3) would leave it close-on-exec (older glibc does not clear the flag):
    // a replies pipe that is 3 here is passed from a copy above it.
    let moved = match replies {
        Some(3) => Some(dup_above_3(3)?),
        _ => None,
    };
    let replies = moved.as_ref().map(|m| m.as_raw_fd()).or(replies);
    let mut all = 0u64;
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            all |= 1 << (sig - 1);
        }
    }
    let defaults = sigset_of(all);
    let empty = sigset_of(0);
    let flags =
        libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK;
    let mut pid: libc::pid_t = 0;
    // SAFETY: both are plain data that the init calls below set up before any use.
    let (mut attr, mut actions): (libc::posix_spawnattr_t, libc::posix_spawn_file_actions_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: `attr` and `actions` are initialized before use and destroyed once on
    // every path after a successful init; every pointer passed is to a live local or
    // to NUL-terminated strings and NULL-terminated arrays the caller keeps alive.
    unsafe {
        check(libc::posix_spawnattr_init(&mut attr))?;
        check(libc::posix_spawn_file_actions_init(&mut actions)).inspect_err(|_| {
            libc::posix_spawnattr_destroy(&mut attr);
        })?;
        let result = (|| {
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                flags as libc::c_short,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &defaults))?;
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            match stdin {
                Some(fd) => check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, 0))?,
                None => check(libc::posix_spawn_file_actions_addopen(
                    &mut actions,
                    0,
                    c"/dev/null".as_ptr(),
                    libc::O_RDONLY,
                    0,
                ))?,
            }
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, out, 1))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, out, 2))?;
            // After the others, which may come from 3: the replies pipe, or no 3 at all
            // (closing a descriptor that is not open is no error for glibc).
            match replies {
                Some(fd) => check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, 3))?,
                None => check(libc::posix_spawn_file_actions_addclose(&mut actions, 3))?,
            }
            if let Some(dir) = dir {
                check(libc::posix_spawn_file_actions_addchdir_np(
                    &mut actions,
                    dir.as_ptr(),
                ))?;
            }
            // The path `resolve` found (posix_spawnp's search, done by the helper).
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argp.as_ptr().cast(),
                envp.as_ptr().cast(),
            ))
        })();
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        result?;
    }
    Ok(pid)
}

#[cfg(test)]
mod tests;
