//! Per-handler limits of real workers: `nice`, `oom-score-adj` (1000 unless said),
//! the rlimits `limit-as`, `limit-nofile`, `limit-cpu`, `limit-nproc`, `limit-core`
//! (read back from `/proc/PID/limits`), a worker that allocates past `limit-as`, limits
//! that cannot be set (a spawn error naming the option), bad values (a load error
//! naming the handler and the option), and `memory-max` / `cpu-max`, which need a
//! delegated cgroup v2 subtree: refused at load where there is none (as on the test
//! machines), used where there is.

mod common;

use common::*;
use std::collections::HashMap;

/// A long-running worker of handler `name` with `extra` options, on hashes `pattern`.
fn cfg(name: &str, extra: &str, pattern: &str) -> String {
    format!(
        "{}\n{}",
        long_handler(name, extra),
        watch_toml(pattern, name, None)
    )
}

/// The worker of job (key, field), once running.
fn worker(c: &mut redis::Connection, key: &str, field: &str) -> u32 {
    wait_for(&format!("worker of {key} {field}"), WAIT, || {
        let j = job(c, key, field)?;
        let pid = get_int(&j, "pid")? as u32;
        // Past its exec: the shell's own command line, not the helper's.
        (cmdline(pid).first().map(Vec::as_slice) == Some(b"/bin/sh")).then_some(pid)
    })
}

/// A line of `/proc/PID/limits`: (soft, hard).
fn limit(pid: u32, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap();
    let f: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

fn both(s: &str) -> (String, String) {
    (s.to_string(), s.to_string())
}

/// Field 19 of `/proc/PID/stat`.
fn nice(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields from 3 on follow the command name's closing parenthesis.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

fn oom_score_adj(pid: u32) -> i32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    text.trim().parse().unwrap()
}

/// Whether this process has capability `cap` (effective): the servers the tests start
/// have the same.
fn capable(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(eff.trim(), 16).unwrap() & (1 << cap) != 0
}
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_RESOURCE: u32 = 24;

fn spawn_errors(c: &mut redis::Connection, key: &str) -> Vec<String> {
    events_of(c, "spawn-error", key, None)
        .into_iter()
        .map(|e| e.get("error").cloned().unwrap_or_default())
        .collect()
}

#[test]
fn a_worker_starts_with_its_nice_value_and_resource_limits() {
    let extra = "nice = 5\nlimit-as = \"1G\"\nlimit-nofile = 256\nlimit-cpu = 3600\n\
                 limit-nproc = 50000\nlimit-core = 0";
    let s = Server::start(&cfg("w", extra, "lim:*"));
    let mut c = s.conn();
    ok(&mut c, &["HSET", "lim:a", "f", "1"]);
    let pid = worker(&mut c, "lim:a", "f");
    assert_eq!(nice(pid), 5);
    assert_eq!(limit(pid, "Max address space"), both("1073741824"));
    assert_eq!(limit(pid, "Max open files"), both("256"));
    assert_eq!(limit(pid, "Max cpu time"), both("3600"));
    assert_eq!(limit(pid, "Max processes"), both("50000"));
    assert_eq!(limit(pid, "Max core file size"), both("0"));
    assert_eq!(oom_score_adj(pid), 1000, "the default");
    // The worker's own children inherit them; the server and the helper keep theirs.
    for other in [s.pid(), s.helper().unwrap()] {
        assert_eq!(nice(other), 0);
        assert_ne!(limit(other, "Max open files"), both("256"));
    }
    // A restart starts with them again.
    ok(&mut c, &["HSET", "lim:a", "f", "2"]);
    let again = wait_for("the restarted worker", WAIT, || {
        let p = worker(&mut c, "lim:a", "f");
        (p != pid).then_some(p)
    });
    assert_eq!(nice(again), 5);
    assert_eq!(limit(again, "Max open files"), both("256"));
}

#[test]
fn workers_get_oom_score_adj_1000_unless_their_handler_says_otherwise() {
    let text = format!(
        "{}\n{}\n{}\n{}",
        long_handler("plain", ""),
        long_handler("milder", "oom-score-adj = 300"),
        watch_toml("plain:*", "plain", None),
        watch_toml("milder:*", "milder", None)
    );
    let s = Server::start(&text);
    let mut c = s.conn();
    let server = oom_score_adj(s.pid());
    // Started together, many times: each with its own handler's value.
    for i in 0..6 {
        let f = format!("f{i}");
        ok(&mut c, &["HSET", "plain:a", &f, "1", "x", "1"]);
        ok(&mut c, &["HSET", "milder:a", &f, "1"]);
    }
    for i in 0..6 {
        let f = format!("f{i}");
        assert_eq!(oom_score_adj(worker(&mut c, "plain:a", &f)), 1000, "{f}");
        assert_eq!(oom_score_adj(worker(&mut c, "milder:a", &f)), 300, "{f}");
    }
    assert_eq!(oom_score_adj(s.pid()), server, "Redis keeps its own");
    let hs = parse_maps(&ok(&mut c, &["STREAMWATCH.HANDLERS"]));
    let of = |name: &str| hs.iter().find(|h| get_str(h, "name") == name).unwrap();
    assert_eq!(get_int(of("plain"), "oom-score-adj"), Some(1000));
    assert_eq!(get_int(of("milder"), "oom-score-adj"), Some(300));
}

#[test]
fn a_worker_that_allocates_past_limit_as_fails() {
    // The interpreter itself, not a shim in front of it (pyenv's is a shell script).
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let handler = |name: &str, extra: &str| {
        format!(
            "[handler.{name}]\ncommand = [\"{python}\", \"-c\", \"x = bytearray(200_000_000)\", \"{TAG}\", \"{{field}}\"]\nrestart = \"never\"\n{extra}\n"
        )
    };
    let text = format!(
        "{}\n{}\n{}\n{}",
        handler("capped", "limit-as = \"100M\""),
        handler("free", ""),
        watch_toml("capped:*", "capped", None),
        watch_toml("free:*", "free", None)
    );
    let s = Server::start(&text);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "capped:a", "f", "1"]);
    ok(&mut c, &["HSET", "free:a", "f", "1"]);
    let exited = |c: &mut redis::Connection, key: &str| {
        wait_for(&format!("{key} exited"), WAIT, || {
            let j = job(c, key, "f")?;
            (get_str(&j, "state") == "exited").then_some(j)
        })
    };
    let j = exited(&mut c, "capped:a");
    assert_eq!(get_int(&j, "last_exit"), Some(1), "MemoryError: {j:?}");
    assert_eq!(get_int(&j, "failures"), Some(1), "{j:?}");
    let log = job_log(&mut c, "capped:a", "f");
    assert!(log.iter().any(|l| l.contains("MemoryError")), "{log:?}");
    wait_eq("its exited event", WAIT, vec!["1".to_string()], || {
        events_of(&mut c, "exited", "capped:a", Some("f"))
            .iter()
            .map(|e| e.get("code").cloned().unwrap_or_default())
            .collect::<Vec<String>>()
    });
    // The same worker without the limit allocates and exits 0.
    let j = exited(&mut c, "free:a");
    assert_eq!(get_int(&j, "last_exit"), Some(0), "{j:?}");
}

#[test]
fn a_limit_that_cannot_be_set_is_a_spawn_error_naming_it() {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let text = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        long_handler(
            "files",
            &format!("limit-nofile = {}\nrestart = \"never\"", nr_open + 1)
        ),
        long_handler("oom", "oom-score-adj = -500\nrestart = \"never\""),
        long_handler("nice", "nice = -5\nrestart = \"never\""),
        watch_toml("files:*", "files", None),
        watch_toml("oom:*", "oom", None),
        watch_toml("nice:*", "nice", None),
    );
    let s = Server::start(&text);
    let mut c = s.conn();
    // Above fs.nr_open: no one may, privileged or not.
    ok(&mut c, &["HSET", "files:a", "f", "1"]);
    wait_eq("a spawn error", WAIT, 1, || {
        spawn_errors(&mut c, "files:a").len()
    });
    assert_eq!(
        spawn_errors(&mut c, "files:a"),
        [format!(
            "limit-nofile {}: Operation not permitted",
            nr_open + 1
        )]
    );
    let j = job(&mut c, "files:a", "f").unwrap();
    assert_eq!(get_str(&j, "state"), "exited", "{j:?}");
    assert_eq!(get_int(&j, "last_exit"), None, "it never ran: {j:?}");
    // Lowering oom_score_adj below the server's needs CAP_SYS_RESOURCE; a negative
    // nice, CAP_SYS_NICE. Without them the run does not start.
    for (key, cap, want) in [
        (
            "oom:a",
            CAP_SYS_RESOURCE,
            "oom-score-adj -500: Permission denied",
        ),
        ("nice:a", CAP_SYS_NICE, "nice -5: Permission denied"),
    ] {
        ok(&mut c, &["HSET", key, "f", "1"]);
        if capable(cap) {
            let pid = worker(&mut c, key, "f");
            match key {
                "oom:a" => assert_eq!(oom_score_adj(pid), -500),
                _ => assert_eq!(nice(pid), -5),
            }
            println!("{key}: privileged here, so the limit was set");
        } else {
            wait_eq("a spawn error", WAIT, 1, || spawn_errors(&mut c, key).len());
            assert_eq!(spawn_errors(&mut c, key), [want]);
        }
    }
    // Other handlers are not affected: workers still start with 1000.
    ok(&mut c, &["HSET", "files:b", "f", "1"]);
    wait_eq("another spawn error", WAIT, 1, || {
        spawn_errors(&mut c, "files:b").len()
    });
}

#[test]
fn a_stream_job_runs_with_its_handlers_limits() {
    let dir = TempDir::new();
    let out = dir.path().join("seen");
    let script = format!(
        "read -r entry; echo \"$(cat /proc/$$/oom_score_adj) $(ulimit -n) $(ulimit -c)\" > {}",
        out.display()
    );
    let text = format!(
        "[handler.job]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''', \"{TAG}\"]\n\
         oom-score-adj = 700\nlimit-nofile = 100\nlimit-core = 0\n\n\
         [[watch]]\npattern = \"q\"\nhandler = \"job\"\ntype = \"stream\"\n"
    );
    let s = Server::builder(&text).dir(dir.clone()).start();
    let mut c = s.conn();
    ok(&mut c, &["XADD", "q", "*", "url", "x"]);
    let seen = wait_for("the job's report", WAIT, || {
        let s = std::fs::read_to_string(&out).ok()?;
        s.ends_with('\n').then_some(s)
    });
    assert_eq!(seen, "700 100 0\n");
}

#[test]
fn bad_values_are_load_errors_naming_the_handler_and_the_option() {
    for (extra, want) in [
        ("nice = 20", "line 3: handler 'w' has nice must be an integer from -20 to 19, got 20"),
        (
            "oom-score-adj = -1001",
            "line 3: handler 'w' has oom-score-adj must be an integer from -1000 to 1000, got -1001",
        ),
        (
            "limit-as = \"lots\"",
            "line 3: handler 'w' has limit-as must be a number of bytes",
        ),
        (
            "limit-nproc = -1",
            "line 3: handler 'w' has limit-nproc must be a non-negative integer or \"unlimited\", got -1",
        ),
        ("cpu-max = 50", "line 3: handler 'w' has cpu-max must be a percentage"),
    ] {
        let text = format!("[handler.w]\ncommand = [\"/bin/true\"]\n{extra}\n");
        let log = Server::start_expect_failure(&text);
        assert!(log.contains(want), "{extra}: {log}");
    }
}

/// Why runs' cgroups cannot be made next to this process's cgroup, as the module
/// checks it (the servers the tests start are in the same cgroup); `None`: they can.
fn no_delegated_cgroup() -> Option<String> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Some("no cgroup v2 hierarchy".into());
    };
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let Some(mount) = mi.lines().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        (tail.split(' ').next()? == "cgroup2").then(|| head.split(' ').nth(4).unwrap().to_string())
    }) else {
        return Some("no cgroup2 mount".into());
    };
    let rel = path.trim_start_matches('/');
    let mut dir = std::path::PathBuf::from(&mount);
    if !rel.is_empty() {
        dir = dir.join(rel).parent().unwrap().to_path_buf();
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    for c in ["memory", "cpu"] {
        if !read("cgroup.subtree_control")
            .split_whitespace()
            .any(|x| x == c)
        {
            return Some(format!(
                "{} does not enable {c} for its children",
                dir.display()
            ));
        }
    }
    let probe = dir.join(format!("sw-test-probe-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&probe) {
        return Some(format!("{} is not writable: {e}", dir.display()));
    }
    let _ = std::fs::remove_dir(&probe);
    None
}

#[test]
fn memory_max_and_cpu_max_need_a_delegated_cgroup() {
    let extra = "memory-max = \"64M\"\ncpu-max = \"50%\"";
    let text = cfg("capped", extra, "cg:*");
    let Some(why) = no_delegated_cgroup() else {
        let s = Server::start(&text);
        let mut c = s.conn();
        ok(&mut c, &["HSET", "cg:a", "f", "1"]);
        let pid = worker(&mut c, "cg:a", "f");
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .to_string();
        assert!(
            path.contains("/streamwatch-") && path.contains("-run-"),
            "{path}"
        );
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mi
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4))
            .unwrap()
            .to_string();
        let dir = std::path::Path::new(&mount).join(path.trim_start_matches('/'));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max").trim(), "67108864");
        assert_eq!(read("cpu.max").trim(), "50000 100000");
        ok(&mut c, &["DEL", "cg:a"]);
        wait_until("the run's cgroup is removed", WAIT, || !dir.exists());
        return;
    };
    // Refused at load, saying which handler, which option and why.
    let log = Server::start_expect_failure(&text);
    assert!(
        log.contains(
            "handler 'capped' has memory-max, which needs a cgroup v2 subtree the server may write"
        ),
        "{log}"
    );
    let cpu_only = cfg("capped", "cpu-max = \"50%\"", "cg:*");
    let log = Server::start_expect_failure(&cpu_only);
    assert!(
        log.contains("handler 'capped' has cpu-max, which needs"),
        "{log}"
    );
    println!(
        "skipping the positive cgroup test: {why}; the module says: {}",
        {
            let line = log
                .lines()
                .find(|l| l.contains("cpu-max, which"))
                .unwrap_or("");
            line.split("and there is none: ")
                .nth(1)
                .unwrap_or(line)
                .to_string()
        }
    );
}

#[test]
fn handlers_lists_the_limits() {
    let extra = "nice = 3\nlimit-as = \"512M\"\nlimit-nofile = \"unlimited\"";
    let s = Server::start(&cfg("w", extra, "hl:*"));
    let mut c = s.conn();
    let hs = parse_maps(&ok(&mut c, &["STREAMWATCH.HANDLERS"]));
    let w: &HashMap<String, redis::Value> = &hs[0];
    assert_eq!(get_int(w, "nice"), Some(3));
    assert_eq!(get_int(w, "oom-score-adj"), Some(1000));
    assert_eq!(get_int(w, "limit-as"), Some(512 << 20));
    assert_eq!(get_str(w, "limit-nofile"), "unlimited");
    for unset in [
        "limit-cpu",
        "limit-nproc",
        "limit-core",
        "memory-max",
        "cpu-max",
    ] {
        assert_eq!(w.get(unset), Some(&redis::Value::Nil), "{unset}");
    }
}
