//! Runs that cannot start say what failed and its path: the working directory, or the
//! program as the handler wrote it and the file that was tried (`program ./w.sh
//! (resolved to /etc/sw/w.sh): Permission denied`), in the `spawn-error` event; and a
//! stream entry without the field a `{field:NAME}` names is a spawn error naming the
//! field, retried and dead-lettered like any other.

mod common;

use common::*;

/// The error of the first `spawn-error` event of `key`'s field `f`.
fn spawn_error(c: &mut redis::Connection, key: &str) -> String {
    let ev = wait_for(&format!("a spawn-error of {key}"), WAIT, || {
        events_of(c, "spawn-error", key, Some("f"))
            .into_iter()
            .next()
    });
    ev.get("error").cloned().unwrap_or_default()
}

/// A hash handler `name` running `program` (in `cwd`, if given), watching `name:*`.
fn handler_and_watch(name: &str, program: &str, cwd: Option<&str>) -> String {
    let cwd = cwd.map_or(String::new(), |d| format!("cwd = '{d}'\n"));
    format!(
        "[handler.{name}]\ncommand = ['{program}', '{TAG}', '{{value}}']\n{cwd}\
         restart = \"never\"\n{}",
        watch_toml(&format!("{name}:*"), name, None)
    )
}

#[test]
fn spawn_errors_name_the_program_or_cwd_and_the_path() {
    let dir = TempDir::new();
    let d = dir.path().to_path_buf();
    let plain = d.join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap(); // not executable
    let script = d.join("py.sh");
    std::fs::write(&script, "#!/nonexistent/python9\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (plain, script, d) = (plain.display(), script.display(), d.display());
    let missing_dir = format!("{d}/no-such-dir");
    let toml = [
        handler_and_watch("nodir", "/bin/sleep", Some(&missing_dir)),
        handler_and_watch("filedir", "/bin/sleep", Some(&plain.to_string())),
        handler_and_watch("rel", "./plain.sh", None),
        handler_and_watch("inwd", "sub/../plain.sh", Some(&d.to_string())),
        handler_and_watch("bare", "no-such-program-anywhere", None),
        handler_and_watch("through", &format!("{plain}/x"), None),
        handler_and_watch("missing", &format!("{d}/no-such-program"), None),
        handler_and_watch("interp", &script.to_string(), None),
    ]
    .concat();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    for name in [
        "nodir", "filedir", "rel", "inwd", "bare", "through", "missing", "interp",
    ] {
        ok(&mut c, &["HSET", &format!("{name}:k"), "f", "v"]);
    }
    let cases = [
        ("nodir", format!("cwd {missing_dir}: No such file or directory")),
        ("filedir", format!("cwd {plain}: Not a directory")),
        (
            "rel",
            format!("program ./plain.sh (resolved to {plain}): Permission denied"),
        ),
        (
            "inwd",
            format!("program sub/../plain.sh (resolved to {d}/sub/../plain.sh): Permission denied"),
        ),
        ("through", format!("program {plain}/x: Not a directory")),
        (
            "missing",
            format!("program {d}/no-such-program: No such file or directory"),
        ),
        (
            "interp",
            format!(
                "program {script}: its #! interpreter /nonexistent/python9: No such file or directory"
            ),
        ),
    ];
    for (name, want) in cases {
        let key = format!("{name}:k");
        assert_eq!(spawn_error(&mut c, &key), want, "{name}");
        // STREAMWATCH.JOB says it too, beside the state.
        let j = job(&mut c, &key, "f").expect("the job");
        assert_eq!(get_str(&j, "error"), want, "{name}: {j:?}");
    }
    let bare = spawn_error(&mut c, "bare:k");
    assert!(
        bare.starts_with("program no-such-program-anywhere (not found in PATH ")
            && bare.ends_with("): No such file or directory"),
        "{bare}"
    );
    // None of them started, and the job says it never ran.
    assert!(events_of(&mut c, "started", "nodir:k", None).is_empty());
    let j = job(&mut c, "rel:k", "f").expect("the job");
    assert_eq!(j.get("last_exit"), Some(&redis::Value::Nil), "{j:?}");
    assert!(s.tagged_procs().is_empty());
}

/// A `{field:NAME}` the entry does not have: each attempt is a spawn error naming the
/// field, and the entry is dead-lettered with it once its attempts are spent.
#[test]
fn a_missing_entry_field_is_a_spawn_error_naming_it() {
    let dir = TempDir::new();
    let toml = format!(
        "[handler.job]\ncommand = ['/bin/sh', '-c', 'echo \"$1\" >> \"$D/done\"', '{TAG}', \
         '{{field:url}}']\nenv = {{ D = '{}' }}\nbackoff-initial-ms = 10\n\n\
         [[watch]]\npattern = \"q\"\nhandler = \"job\"\ntype = \"stream\"\nmax-attempts = 2\n",
        dir.path().display()
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    let without = xadd(&mut c, "q", &[("name", "x")]);
    let with = xadd(&mut c, "q", &[("url", "http://a")]);
    wait_drained(&mut c, "q");
    let why = "the entry has no field 'url' (the handler's placeholder {field:url})";
    let dead = stream_entries(&mut c, "q:dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].get("error").map(String::as_str), Some(why));
    assert_eq!(dead[0].get("attempts").map(String::as_str), Some("2"));
    assert_eq!(dead[0].get("name").map(String::as_str), Some("x"));
    let errors: Vec<_> = events_of(&mut c, "spawn-error", "q", None)
        .into_iter()
        .map(|e| (e.get("id").cloned(), e.get("error").cloned()))
        .collect();
    let one = (Some(without.clone()), Some(why.to_string()));
    assert_eq!(errors, [one.clone(), one]);
    // The entry with the field ran.
    assert_eq!(lines(&dir.path().join("done")), ["http://a"]);
    let _ = with;
}

/// A hash job whose run failed to spawn (its cwd missing), then runs fine once the
/// directory exists: JOB's `error` names the spawn error during the backoff, and is
/// nil once the good run is up (an alert on it must not fire forever).
#[test]
fn job_error_of_a_spawn_error_does_not_outlive_a_healthy_run() {
    let dir = TempDir::new();
    let later = dir.path().join("later");
    let extra = format!(
        "cwd = '{}'\nbackoff-initial-ms = 50\nbackoff-max-ms = 100",
        later.display()
    );
    let toml = long_handler("w", &extra) + &watch_toml("se:*", "w", None);
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "se:k", "f", "x"]);
    wait_until("a spawn error in JOB", WAIT, || {
        job(&mut c, "se:k", "f").is_some_and(|j| get_str(&j, "error").starts_with("cwd "))
    });
    std::fs::create_dir_all(&later).expect("mkdir");
    wait_until("the job runs", WAIT, || {
        job(&mut c, "se:k", "f").is_some_and(|j| get_str(&j, "state") == "running")
    });
    let j = job(&mut c, "se:k", "f").expect("job");
    assert_eq!(
        j["error"],
        redis::Value::Nil,
        "a running, healthy job: {j:?}"
    );
}
