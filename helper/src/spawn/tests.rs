//! Real runs through both spawn paths (the clone path needs Linux 5.9; where it is
//! missing, its tests check the fallback twice).

use super::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// `super::run` without limits, its descriptors as arguments.
fn run(
    argv: &[Vec<u8>],
    env: &[(Vec<u8>, Vec<u8>)],
    cwd: Option<&[u8]>,
    stdin: Option<RawFd>,
    out: RawFd,
    replies: Option<RawFd>,
) -> io::Result<i32> {
    let fds = Fds {
        stdin,
        out,
        replies,
    };
    super::run(argv, None, env, cwd, fds, &Limits::default(), None)
}

fn strings(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Sets this thread's launcher up for the clone path (`fast`) or the posix_spawn
/// fallback (each test runs on a thread of its own).
fn launcher(fast: bool) {
    if fast && !LAUNCHER.with_borrow(|l| l.fast) {
        reserve();
    }
    if !fast {
        LAUNCHER.with_borrow_mut(|l| l.fast = false);
    }
    assert!(LAUNCHER.with_borrow(|l| l.fast) == (fast && child::has_close_range()));
}

thread_local! {
    /// Launches over that the test has not asked about yet.
    static SETTLED: std::cell::RefCell<Vec<(i32, Option<io::Error>)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Waits until the launch of `pid` is over: why its exec did not happen, if it did not.
fn settle(pid: i32) -> Option<io::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = SETTLED.with_borrow_mut(|s| {
            s.extend(settled());
            let i = s.iter().position(|(p, _)| *p == pid)?;
            Some(s.remove(i).1)
        });
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "launch of {pid} never settled");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a live local the kernel writes.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

struct Outcome {
    /// Why the run did not start: from `run` itself, or from its launch.
    error: Option<io::Error>,
    output: Vec<u8>,
    /// What it wrote to its descriptor 3, if it had one.
    replies: Vec<u8>,
    status: Option<i32>,
}

fn start(
    fast: bool,
    argv: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&str>,
    input: Option<&[u8]>,
) -> Outcome {
    start_with_replies(fast, argv, env, cwd, input, false)
}

/// `start`, the run given a replies pipe as its descriptor 3 if `replies`.
fn start_with_replies(
    fast: bool,
    argv: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&str>,
    input: Option<&[u8]>,
    replies: bool,
) -> Outcome {
    launcher(fast);
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let (mut reader, writer) = io::pipe().unwrap();
    let input = input.map(|data| {
        let (r, mut w) = io::pipe().unwrap();
        w.write_all(data).unwrap();
        r
    });
    let (mut replies_reader, replies_writer) = io::pipe().unwrap();
    let pid = run(
        &strings(argv),
        &env,
        cwd.map(str::as_bytes),
        input.as_ref().map(|r| r.as_raw_fd()),
        writer.as_raw_fd(),
        replies.then(|| replies_writer.as_raw_fd()),
    );
    drop((writer, input, replies_writer));
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            return Outcome {
                error: Some(e),
                output: Vec::new(),
                replies: Vec::new(),
                status: None,
            }
        }
    };
    let error = settle(pid);
    // The launch's slots are parked again: the run holds the last write ends (the
    // tests write little enough to the one not read first).
    let mut output = Vec::new();
    reader.read_to_end(&mut output).unwrap();
    let mut replies = Vec::new();
    replies_reader.read_to_end(&mut replies).unwrap();
    Outcome {
        error,
        output,
        replies,
        status: Some(wait(pid)),
    }
}

use std::os::fd::AsRawFd;

fn exit_code(status: Option<i32>) -> Option<i32> {
    let s = status?;
    libc::WIFEXITED(s).then(|| libc::WEXITSTATUS(s))
}

#[test]
fn true_and_false_report_their_exit_status() {
    for fast in [true, false] {
        let ok = start(fast, &["/bin/true"], &[], None, None);
        assert!(ok.error.is_none() && ok.output.is_empty());
        assert_eq!(exit_code(ok.status), Some(0), "fast: {fast}");
        let fails = start(fast, &["false"], &[], None, None);
        assert!(fails.error.is_none());
        assert_eq!(exit_code(fails.status), Some(1), "fast: {fast}");
    }
}

#[test]
fn a_run_gets_its_env_cwd_input_and_merged_output() {
    let script = r#"printf '%s|%s|' "$SW_TEST" "$(pwd)"; cat; echo err >&2"#;
    for fast in [true, false] {
        let o = start(
            fast,
            &["sh", "-c", script],
            &[("SW_TEST", "yes")],
            Some("/"),
            Some(b"entry"),
        );
        assert!(o.error.is_none());
        assert_eq!(o.output, b"yes|/|entryerr\n", "fast: {fast}");
        assert_eq!(exit_code(o.status), Some(0));
        // No input: /dev/null.
        let o = start(fast, &["cat"], &[], None, None);
        assert_eq!((o.output.len(), exit_code(o.status)), (0, Some(0)));
    }
}

#[test]
fn a_failing_exec_or_chdir_reports_why() {
    for fast in [true, false] {
        let error = |o: Outcome| o.error.map(|e| (e.kind(), e.to_string()));
        let o = start(fast, &["/nonexistent/program"], &[], None, None);
        let child_says = fast && child::has_close_range();
        if child_says {
            // The child tells why, then exits 127 (reaped as no run's by the helper).
            assert_eq!(exit_code(o.status), Some(127));
        }
        let not_found = io::ErrorKind::NotFound;
        let e = error(o);
        let want = "program /nonexistent/program: No such file or directory";
        assert_eq!(e, Some((not_found, want.into())), "fast: {fast}");
        let o = start(fast, &["no-such-program-anywhere"], &[], None, None);
        let (kind, text) = error(o).unwrap();
        assert_eq!(kind, not_found);
        assert!(
            text.starts_with("program no-such-program-anywhere (not found in PATH ")
                && text.ends_with("): No such file or directory"),
            "{text}"
        );
        let o = start(fast, &["true"], &[], Some("/nonexistent/dir"), None);
        let want = "cwd /nonexistent/dir: No such file or directory";
        assert_eq!(error(o), Some((not_found, want.into())), "fast: {fast}");
        let o = start(fast, &["true"], &[], Some("/dev/null"), None);
        let want = "cwd /dev/null: Not a directory";
        assert_eq!(error(o).map(|e| e.1), Some(want.into()), "fast: {fast}");
        // Not executable, and a path through a file: the program and its path.
        let dir = std::env::temp_dir().join(format!("sw-spawn-{}-{fast}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plain"), "not a program").unwrap();
        let plain = dir.join("plain");
        let plain = plain.to_str().unwrap();
        let o = start(fast, &[plain], &[], None, None);
        let want = format!("program {plain}: Permission denied");
        assert_eq!(error(o), Some((io::ErrorKind::PermissionDenied, want)));
        let through = format!("{plain}/x");
        let o = start(fast, &[&through], &[], None, None);
        let want = format!("program {through}: Not a directory");
        assert_eq!(error(o).map(|e| e.1), Some(want), "fast: {fast}");
        // Relative to the working directory.
        let o = start(fast, &["./plain"], &[], dir.to_str(), None);
        let want = format!("program ./plain (resolved to {plain}): Permission denied");
        assert_eq!(error(o).map(|e| e.1), Some(want), "fast: {fast}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(run(&[], &[], None, None, 1, None).is_err());
    assert!(run(&strings(&["a\0b"]), &[], None, None, 1, None).is_err());
}

#[test]
fn a_run_leads_its_own_group_with_default_signals_unblocked() {
    for fast in [true, false] {
        launcher(fast);
        let (reader, writer) = io::pipe().unwrap();
        let pid = run(
            &strings(&["sleep", "30"]),
            &[],
            None,
            None,
            writer.as_raw_fd(),
            None,
        )
        .unwrap();
        drop(writer);
        assert!(settle(pid).is_none());
        // SAFETY: no pointer arguments.
        assert_eq!(unsafe { libc::getpgid(pid) }, pid);
        // The test harness ignores SIGPIPE (Rust's runtime does); the run must not.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for field in ["SigIgn:", "SigBlk:"] {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.ends_with("0000000000000000"), "fast: {fast}: {line}");
        }
        // None of the test's descriptors: the pipes it holds are only the run's 1 and 2.
        // (Only the clone path closes what it is not to pass; posix_spawn relies on
        // close-on-exec, as the helper closes what it inherited at start, and a test
        // inherits descriptors without it. What the worker opens itself, as `sleep`
        // its locale, may show up too.)
        if fast {
            let mut pipes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let link = std::fs::read_link(e.path()).ok()?;
                    link.to_str()?
                        .starts_with("pipe:")
                        .then(|| e.file_name().into_string().unwrap())
                })
                .collect();
            pipes.sort();
            assert_eq!(pipes, ["1", "2"]);
        }
        // SAFETY: no pointer arguments.
        assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
        let status = wait(pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        drop(reader);
    }
}

/// The pipes among `pid`'s descriptors, in order: (descriptor, "pipe:[inode]").
fn pipes_of(pid: i32) -> Vec<(u32, String)> {
    let mut pipes: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?.into_os_string();
            let link = link.into_string().ok()?;
            link.starts_with("pipe:")
                .then(|| (e.file_name().to_str().unwrap().parse().unwrap(), link))
        })
        .collect();
    pipes.sort();
    pipes
}

fn inode_of(fd: &impl AsRawFd) -> String {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live local the kernel fills.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    format!("pipe:[{}]", st.st_ino)
}

#[test]
fn replies_are_descriptor_3_and_without_them_there_is_none() {
    // Written to 1, 2 and 3, read back apart; a run without replies has no 3 at all
    // (the test process may have a 3 of its own, without close-on-exec).
    let script = r#"echo out; echo reply >&3; echo err >&2; printf 'more' >&3"#;
    let has_3 = r#"if [ -e /proc/self/fd/3 ]; then echo open; else echo none; fi"#;
    for fast in [true, false] {
        let o = start_with_replies(fast, &["sh", "-c", script], &[], None, None, true);
        assert!(o.error.is_none());
        assert_eq!(o.output, b"out\nerr\n", "fast: {fast}");
        assert_eq!(o.replies, b"reply\nmore", "fast: {fast}");
        assert_eq!(exit_code(o.status), Some(0));
        let o = start_with_replies(fast, &["sh", "-c", has_3], &[], None, None, false);
        assert_eq!(o.output, b"none\n", "fast: {fast}");
        assert!(o.replies.is_empty());
        // Writing to it fails (sh reports a bad descriptor, exit status not 0).
        let o = start(fast, &["sh", "-c", "echo x >&3"], &[], None, None);
        assert_ne!(exit_code(o.status), Some(0), "fast: {fast}");
        let o = start_with_replies(fast, &["sh", "-c", has_3], &[], None, None, true);
        assert_eq!(o.output, b"open\n", "fast: {fast}");
    }
}

#[test]
fn a_run_with_replies_holds_exactly_its_three_pipes() {
    for fast in [true, false] {
        launcher(fast);
        let (reader, writer) = io::pipe().unwrap();
        let (replies_reader, replies_writer) = io::pipe().unwrap();
        let (stdin_reader, stdin_writer) = io::pipe().unwrap();
        let pid = run(
            &strings(&["sleep", "30"]),
            &[],
            None,
            Some(stdin_reader.as_raw_fd()),
            writer.as_raw_fd(),
            Some(replies_writer.as_raw_fd()),
        )
        .unwrap();
        drop((writer, replies_writer, stdin_reader));
        assert!(settle(pid).is_none());
        let want = [
            (0, inode_of(&stdin_writer)),
            (1, inode_of(&reader)),
            (2, inode_of(&reader)),
            (3, inode_of(&replies_reader)),
        ];
        let pipes = pipes_of(pid);
        if fast {
            assert_eq!(pipes, want);
        } else {
            // posix_spawn relies on close-on-exec, and the test's own descriptors
            // may lack it: 0 to 3 at least are these.
            assert_eq!(pipes[..4], want, "{pipes:?}");
        }
        // 3 is not close-on-exec in the run (a close-on-exec 3 would not be there
        // after `sleep`'s exec at all): its flags say so too.
        let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
        let flags = fdinfo.lines().find(|l| l.starts_with("flags:")).unwrap();
        let flags = u32::from_str_radix(flags.split_whitespace().nth(1).unwrap(), 8).unwrap();
        assert_eq!(flags & libc::O_CLOEXEC as u32, 0, "fast: {fast}");
        // SAFETY: no pointer arguments.
        assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
        wait(pid);
    }
}

#[test]
fn replies_slots_go_back_to_dev_null_after_the_launch() {
    launcher(true);
    if !LAUNCHER.with_borrow(|l| l.fast) {
        return; // no clone path here
    }
    let (mut reader, writer) = io::pipe().unwrap();
    let (mut replies_reader, replies_writer) = io::pipe().unwrap();
    let pids: Vec<i32> = (0..2 * LAUNCHES)
        .map(|i| {
            let argv = strings(&["sh", "-c", &format!("echo {i} >&3")]);
            let replies = (i % 2 == 0).then(|| replies_writer.as_raw_fd());
            run(&argv, &[], None, None, writer.as_raw_fd(), replies).unwrap()
        })
        .collect();
    drop((writer, replies_writer));
    for &pid in &pids {
        assert!(settle(pid).is_none());
    }
    // Every slot is /dev/null again: the pipes reach their end of file.
    let mut replies = String::new();
    replies_reader.read_to_string(&mut replies).unwrap();
    let mut lines: Vec<usize> = replies.lines().map(|l| l.parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, (0..2 * LAUNCHES).step_by(2).collect::<Vec<_>>());
    let mut output = Vec::new();
    reader.read_to_end(&mut output).unwrap();
    for (i, pid) in pids.into_iter().enumerate() {
        // Without replies, `>&3` fails: a bad descriptor.
        let code = exit_code(Some(wait(pid)));
        assert_eq!(code == Some(0), i % 2 == 0, "run {i}: {code:?}");
    }
}

#[test]
fn more_runs_than_launch_slots() {
    launcher(true);
    let (mut reader, writer) = io::pipe().unwrap();
    let pids: Vec<i32> = (0..3 * LAUNCHES)
        .map(|i| {
            let argv = strings(&["sh", "-c", &format!("echo {i}")]);
            run(&argv, &[], None, None, writer.as_raw_fd(), None).unwrap()
        })
        .collect();
    drop(writer);
    for &pid in &pids {
        assert!(settle(pid).is_none());
    }
    assert!(!launching());
    let mut output = String::new();
    reader.read_to_string(&mut output).unwrap();
    let mut lines: Vec<usize> = output.lines().map(|l| l.parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, (0..3 * LAUNCHES).collect::<Vec<_>>());
    for pid in pids {
        assert_eq!(exit_code(Some(wait(pid))), Some(0));
    }
}

#[test]
fn resolve_follows_path_like_posix_spawnp() {
    let path = Some(OsStr::new("/nonexistent:/usr/bin:/bin"));
    let sh = resolve_in(b"sh", path).unwrap();
    assert!(sh.as_bytes().ends_with(b"/sh") && sh.as_bytes().starts_with(b"/"));
    // With a slash: as given, even if it does not exist (the exec says why).
    assert_eq!(resolve_in(b"./x/y", path).unwrap().as_bytes(), b"./x/y");
    let missing = resolve_in(b"no-such-program-anywhere", path).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    // A directory named like the program is not it.
    let dirs = Some(OsStr::new("/"));
    assert!(resolve_in(b"tmp", dirs).is_err());
    // No PATH: /bin:/usr/bin. An empty entry: the current directory.
    assert!(resolve_in(b"sh", None)
        .unwrap()
        .as_bytes()
        .ends_with(b"/sh"));
    assert_eq!(
        resolve_in(b"sh", Some(OsStr::new(":/nonexistent"))).is_ok(),
        std::path::Path::new("sh").is_file()
    );
    assert!(resolve_in(b"a\0b", path).is_err());
}

#[test]
fn sigsets_hold_what_the_mask_says() {
    let set = sigset_of(1 << (libc::SIGTERM - 1) | 1 << (libc::SIGCHLD - 1));
    // SAFETY: `set` is a valid sigset_t.
    let member = |sig| unsafe { libc::sigismember(&set, sig) };
    assert_eq!(member(libc::SIGTERM), 1);
    assert_eq!(member(libc::SIGCHLD), 1);
    assert_eq!(member(libc::SIGINT), 0);
    let empty = sigset_of(0);
    // SAFETY: `empty` is a valid sigset_t.
    assert_eq!(unsafe { libc::sigismember(&empty, libc::SIGTERM) }, 0);
}

/// Starts `sleep 30` with `limits` (and a cgroup directory): its pid, or why not.
fn start_limited(fast: bool, limits: &Limits, cgroup: Option<&Path>) -> Result<i32, io::Error> {
    launcher(fast);
    let (_reader, writer) = io::pipe().unwrap();
    let fds = Fds {
        stdin: None,
        out: writer.as_raw_fd(),
        replies: None,
    };
    let pid = super::run(
        &strings(&["sleep", "30"]),
        None,
        &[],
        None,
        fds,
        limits,
        cgroup,
    )?;
    drop(writer);
    if let Some(e) = settle(pid) {
        // The child exited 127 after saying why.
        assert_eq!(exit_code(Some(wait(pid))), Some(127));
        return Err(e);
    }
    Ok(pid)
}

fn kill_and_wait(pid: i32) {
    // SAFETY: no pointer arguments.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    wait(pid);
}

/// A line of /proc/PID/limits: (soft, hard).
fn proc_limit(pid: i32, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap();
    let f: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

fn nice_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    // Field 19; `after` starts at field 3.
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn a_run_gets_its_nice_value_and_resource_limits() {
    if !child::has_close_range() {
        return; // the fallback refuses them (below)
    }
    let limits = Limits {
        nice: Some(7),
        rlimits: vec![
            (Rlimit::As, 1 << 30),
            (Rlimit::Nofile, 64),
            (Rlimit::Cpu, UNLIMITED),
            (Rlimit::Core, 0),
        ],
        ..Limits::default()
    };
    let pid = start_limited(true, &limits, None).unwrap();
    assert_eq!(nice_of(pid), 7);
    let both = |s: &str| (s.to_string(), s.to_string());
    assert_eq!(proc_limit(pid, "Max address space"), both("1073741824"));
    assert_eq!(proc_limit(pid, "Max open files"), both("64"));
    assert_eq!(proc_limit(pid, "Max cpu time"), both("unlimited"));
    assert_eq!(proc_limit(pid, "Max core file size"), both("0"));
    kill_and_wait(pid);
    // The helper's own are untouched (the child changed only itself).
    let me = std::process::id() as i32;
    assert_ne!(proc_limit(me, "Max open files"), both("64"));
    assert_ne!(nice_of(me), 7);
}

#[test]
fn a_limit_that_cannot_be_set_fails_the_run_naming_it() {
    if !child::has_close_range() {
        return;
    }
    // Above fs.nr_open (1048576 by default), which no one may pass.
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let limits = Limits {
        rlimits: vec![(Rlimit::Core, 0), (Rlimit::Nofile, nr_open + 1)],
        ..Limits::default()
    };
    let e = start_limited(true, &limits, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("limit-nofile {}: Operation not permitted", nr_open + 1)
    );
    // posix_spawn cannot set it: said before anything starts.
    let e = start_limited(false, &limits, None).unwrap_err().to_string();
    assert!(
        e.starts_with("limit-core: this kernel has no close_range (Linux 5.9)"),
        "{e}"
    );
    let nice = Limits {
        nice: Some(0),
        ..Limits::default()
    };
    let e = start_limited(false, &nice, None).unwrap_err().to_string();
    assert!(e.starts_with("nice: "), "{e}");
}

#[test]
fn a_run_moves_itself_into_its_cgroup() {
    if !child::has_close_range() {
        return;
    }
    // A plain directory stands in for the cgroup: the child writes "0" (itself) to
    // its cgroup.procs before its exec.
    let dir = std::env::temp_dir().join(format!("sw-procs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup.procs"), b"").unwrap();
    let limits = Limits {
        cgroup: Some(crate::protocol::Cgroup {
            parent: Vec::new(),
            memory_max: Some(1 << 30),
            cpu_max: None,
        }),
        ..Limits::default()
    };
    let pid = start_limited(true, &limits, Some(&dir)).unwrap();
    assert_eq!(std::fs::read(dir.join("cgroup.procs")).unwrap(), b"0");
    kill_and_wait(pid);
    std::fs::remove_file(dir.join("cgroup.procs")).unwrap();
    let e = start_limited(true, &limits, Some(&dir)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "memory-max: {}/cgroup.procs: No such file or directory",
            dir.display()
        )
    );
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_run_starts_with_its_oom_score_adj() {
    // The value is the helper's own (here the test process's) at the clone; raising it
    // needs no privilege. Every test of this process may now run with it: harmless.
    let read = |pid: i32| -> i32 {
        let p = format!("/proc/{pid}/oom_score_adj");
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    };
    let me = std::process::id() as i32;
    let target = read(me).max(900);
    for fast in [true, false] {
        let limits = Limits {
            oom_score_adj: Some(target),
            ..Limits::default()
        };
        let pid = start_limited(fast, &limits, None).unwrap();
        assert_eq!(read(pid), target, "fast: {fast}");
        kill_and_wait(pid);
    }
    // Lowering it below what the process may (oom_score_adj_min) needs
    // CAP_SYS_RESOURCE: without it the run does not start, and says why.
    let low = Limits {
        oom_score_adj: Some(-1000),
        ..Limits::default()
    };
    match start_limited(true, &low, None) {
        Ok(pid) => {
            assert_eq!(read(pid), -1000);
            kill_and_wait(pid);
        }
        Err(e) => assert_eq!(e.to_string(), "oom-score-adj -1000: Permission denied"),
    }
}
