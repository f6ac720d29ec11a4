//! Configuration: the TOML file (a bad file refuses the load with one log line
//! naming file, line and problem; handler env/cwd are applied), and the module
//! configs (`CONFIG GET/SET streamwatch.*`: defaults, immutable `config`,
//! `events-maxlen` trimming, `events-key`).

mod common;

use common::*;

/// Start with a bad file; the log must have one line with "streamwatch", the file
/// path, "line N" and `problem`.
fn assert_refused(toml: &str, problem: &str) {
    let dir = TempDir::new();
    let log = Server::builder(toml)
        .dir(dir.clone())
        .start_expect_failure();
    let path = dir.path().join("streamwatch.toml");
    let path = path.to_string_lossy();
    let has_line_number = |l: &str| {
        l.match_indices("line ").any(|(i, m)| {
            l[i + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    };
    assert!(
        log.lines().any(|l| l.contains("streamwatch")
            && l.contains(path.as_ref())
            && has_line_number(l)
            && l.contains(problem)),
        "no log line with 'streamwatch', {path}, 'line N' and {problem:?}; log:\n{log}"
    );
}

#[test]
fn syntax_error_refuses_load() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"\nrestart = \"always\"\n",
        "",
    );
}

#[test]
fn unknown_key_in_handler_refuses_load() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"]\ncomand = [\"/bin/false\"]\n",
        "comand",
    );
}

#[test]
fn unknown_top_level_key_refuses_load() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"]\n\n[handlerz.x]\ncommand = [\"/bin/true\"]\n",
        "handlerz",
    );
}

#[test]
fn unknown_key_in_watch_refuses_load() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"]\n\n[[watch]]\npattern = \"a:*\"\nhandler = \"w\"\npatern = \"b\"\n",
        "patern",
    );
}

#[test]
fn unknown_handler_in_watch_refuses_load() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"]\n\n[[watch]]\npattern = \"a:*\"\nhandler = \"nope\"\n",
        "nope",
    );
}

#[test]
fn empty_command_refuses_load() {
    assert_refused("[handler.w]\ncommand = []\n", "command");
}

#[test]
fn bad_restart_value_refuses_load() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"]\nrestart = \"sometimes\"\n",
        "sometimes",
    );
}

#[test]
fn missing_config_file_refuses_load() {
    let dir = TempDir::new();
    let missing = dir.path().join("does-not-exist.toml");
    let so = module_path();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log_path = dir.path().join("redis.log");
    let mut child = std::process::Command::new(redis_server_binary())
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(&log_path)
        .arg("--loadmodule")
        .arg(&so)
        .arg("config")
        .arg(&missing)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut exited = false;
    wait_until("server refuses to start", WAIT, || {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        exited
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("streamwatch") && l.contains(&*missing.to_string_lossy())),
        "no log line naming the missing file; log:\n{log}"
    );
}

#[test]
fn handler_env_and_cwd_are_applied() {
    let dir = TempDir::new();
    let cwd = dir.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    let toml = format!(
        "{}\n{}",
        long_handler(
            "w",
            &format!(
                "env = {{ SW_VALUE = \"v={{value}}\", SW_WHERE = \"{{key}}@{{db}}\", SW_FIXED = \"x\" }}\ncwd = \"{}\"",
                cwd.display()
            )
        ),
        watch_toml("env:*", "w", None)
    );
    let s = Server::builder(&toml).dir(dir.clone()).start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "env:k", "f", "hello world"]);
    let pid = running_pid(&mut c, "env:k", "f");
    let env = environ(pid);
    for want in [
        "SW_VALUE=v=hello world",
        "SW_WHERE=env:k@0",
        "SW_FIXED=x",
        "STREAMWATCH_KEY=env:k",
        "STREAMWATCH_DB=0",
        "STREAMWATCH_FIELD=f",
    ] {
        assert!(
            env.contains(&want.as_bytes().to_vec()),
            "worker environment lacks {want:?}: {:?}",
            env.iter()
                .map(|e| String::from_utf8_lossy(e))
                .collect::<Vec<_>>()
        );
    }
    // The inherited environment is kept.
    assert!(env.iter().any(|e| e.starts_with(b"PATH=")));
    let actual = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(actual, cwd.canonicalize().unwrap());
}

#[test]
fn module_configs_have_documented_defaults() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    let get = |c: &mut redis::Connection, name: &str| -> String {
        let v = to_array(&ok(c, &["CONFIG", "GET", &format!("streamwatch.{name}")]));
        assert_eq!(v.len(), 2, "CONFIG GET streamwatch.{name} -> {v:?}");
        vstr(&v[1])
    };
    assert_eq!(get(&mut c, "config"), s.config_path().to_string_lossy());
    assert_eq!(get(&mut c, "events-key"), "streamwatch:events");
    assert_eq!(get(&mut c, "events-maxlen"), "10000");
    assert_eq!(get(&mut c, "max-jobs"), "10000");
    assert_eq!(get(&mut c, "log-lines"), "100");
}

#[test]
fn config_set_config_fails_immutable() {
    let s = Server::start(&long_handler("w", ""));
    let mut c = s.conn();
    let e = err(
        &mut c,
        &["CONFIG", "SET", "streamwatch.config", "/tmp/other.toml"],
    );
    assert!(e.to_lowercase().contains("immutable"), "{e}");
    let v = to_array(&ok(&mut c, &["CONFIG", "GET", "streamwatch.config"]));
    assert_eq!(vstr(&v[1]), s.config_path().to_string_lossy());
}

#[test]
fn events_maxlen_get_set_and_trims_the_stream() {
    let s = Server::builder(&simple_config("ml:*"))
        .module_arg("events-maxlen", "100")
        .redis_args(&["--stream-node-max-entries", "10"])
        .start();
    let mut c = s.conn();
    let get = |c: &mut redis::Connection| {
        vstr(&to_array(&ok(c, &["CONFIG", "GET", "streamwatch.events-maxlen"]))[1])
    };
    assert_eq!(get(&mut c), "100");
    assert_eq!(
        ok(
            &mut c,
            &["CONFIG", "SET", "streamwatch.events-maxlen", "30"]
        ),
        Value::Okay
    );
    assert_eq!(get(&mut c), "30");
    err(
        &mut c,
        &["CONFIG", "SET", "streamwatch.events-maxlen", "abc"],
    );
    assert_eq!(get(&mut c), "30");

    // Each restart writes several events (exited, started, ...): far more than 30.
    for i in 0..60 {
        ok(&mut c, &["HSET", "ml:k", "f", &i.to_string()]);
        assert_workers(&s, &mut c, &[("ml:k", "f", &i.to_string())]);
    }
    let xinfo = to_map(&ok(&mut c, &["XINFO", "STREAM", "streamwatch:events"]));
    let added = get_int(&xinfo, "entries-added").unwrap();
    assert!(added >= 100, "only {added} events written");
    let xlen = vint(&ok(&mut c, &["XLEN", "streamwatch:events"])).unwrap();
    // MAXLEN ~ trims whole nodes of 10 entries.
    assert!(xlen <= 30 + 10, "XLEN {xlen} with events-maxlen 30");
    assert!(xlen > 0);
}

#[test]
fn events_key_config_redirects_events() {
    let s = Server::builder(&simple_config("ek:*"))
        .module_arg("events-key", "my:events")
        .start();
    let mut c = s.conn();
    ok(&mut c, &["HSET", "ek:a", "f", "1"]);
    running_pid(&mut c, "ek:a", "f");
    wait_until("started event in my:events", WAIT, || {
        stream_entries(&mut c, "my:events")
            .iter()
            .any(|e| e.get("event").map(String::as_str) == Some("started"))
    });
    assert_eq!(
        vint(&ok(&mut c, &["EXISTS", "streamwatch:events"])),
        Some(0)
    );

    ok(
        &mut c,
        &["CONFIG", "SET", "streamwatch.events-key", "other:events"],
    );
    ok(&mut c, &["HSET", "ek:b", "g", "1"]);
    running_pid(&mut c, "ek:b", "g");
    wait_until("started event for ek:b in other:events", WAIT, || {
        stream_entries(&mut c, "other:events")
            .iter()
            .any(|e| e.get("key").map(String::as_str) == Some("ek:b"))
    });
    assert!(!stream_entries(&mut c, "my:events")
        .iter()
        .any(|e| e.get("key").map(String::as_str) == Some("ek:b")));
}

#[test]
fn a_pool_handler_takes_no_placeholder_and_no_hash_watch() {
    assert_refused(
        "[handler.p]\ncommand = [\"/bin/cat\", \"{id}\"]\npool = 2\n",
        "handler 'p' is a pool (pool = 2) but uses the placeholder {id}",
    );
    assert_refused(
        "[handler.p]\ncommand = [\"/bin/cat\"]\nenv = { F = \"{field:url}\" }\npool = 2\n",
        "uses the placeholder {field:url}",
    );
    assert_refused(
        "[handler.p]\ncommand = [\"/bin/cat\"]\npool = 2\n[[watch]]\npattern = \"h\"\nhandler = \"p\"\n",
        "serves stream watches only",
    );
    assert_refused(
        "[handler.p]\ncommand = [\"/bin/cat\"]\npool = 5000\n",
        "has pool = 5000; at most 1024",
    );
}

#[test]
fn an_unknown_placeholder_refuses_load_naming_it_and_its_line() {
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/echo\", \"{feild}\"]\n",
        "line 2: handler 'w' has an unknown placeholder {feild} in its command (argument 1); \
         the placeholders are {key} {db}, for hash jobs {field} {value}, for stream jobs {id} \
         {field:NAME}",
    );
    // Each argument of a command over several lines, and each env value, at its line.
    assert_refused(
        "[handler.w]\ncommand = [\n  \"/bin/echo\",\n  \"{key}\",\n  \"--url={field:}\",\n]\n",
        "line 5: handler 'w' has an unknown placeholder {field:} in its command (argument 2)",
    );
    assert_refused(
        "[handler.w]\ncommand = [\"/bin/true\"]\n[handler.w.env]\nA = \"{value}\"\nB = \"{Value}\"\n",
        "line 5: handler 'w' has an unknown placeholder {Value} in its env (B)",
    );
}

/// Braces that are no placeholder (JSON, a shell's `${NAME}`, `{}`) reach the worker
/// as written.
#[test]
fn other_braces_are_passed_on_as_written() {
    let toml = format!(
        "[handler.w]\ncommand = ['/bin/sh', '-c', 'sleep 1000', '{TAG}', '{{\"a\":1}}', \
         '${{HOME}}', '{{}}', '{{ key }}', '{{0}}', '{{key}}']\n{}",
        watch_toml("br:*", "w", None)
    );
    let s = Server::start(&toml);
    let mut c = s.conn();
    ok(&mut c, &["HSET", "br:k", "f", "v"]);
    let pid = running_pid(&mut c, "br:k", "f");
    let args: Vec<String> = cmdline(pid)[4..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(
        args,
        ["{\"a\":1}", "${HOME}", "{}", "{ key }", "{0}", "br:k"]
    );
}

/// `{field}` and `{value}` are hash jobs' only, `{id}` and `{field:NAME}` stream
/// jobs': a watch whose handler uses the other kind's is refused, naming both, from
/// the file (the load), a command (`ERR ... (HANDLER)`) or the store (skipped).
#[test]
fn a_placeholder_of_the_other_kind_of_job_refuses_the_watch_naming_both() {
    let stream_handler = "[handler.s]\ncommand = [\"/bin/true\"]\nenv = { U = \"{field:url}\" }\n";
    assert_refused(
        &format!(
            "{}[[watch]]\npattern = \"q\"\nhandler = \"w\"\ntype = \"stream\"\n",
            long_handler("w", "")
        ),
        "handler 'w' uses the placeholder {field}, which only hash jobs have, so stream \
         watch 'q' cannot use it",
    );
    assert_refused(
        &format!("{stream_handler}{}", watch_toml("h:*", "s", None)),
        "line 6: handler 's' uses the placeholder {field:url}, which only stream jobs have, \
         so hash watch 'h:*' cannot use it",
    );
    let s = Server::start(&format!("{}{stream_handler}", long_handler("w", "")));
    let mut c = s.conn();
    let w = "STREAMWATCH.WATCH";
    assert_eq!(
        err(&mut c, &[w, "q", "HANDLER", "w", "TYPE", "stream"]),
        "ERR handler 'w' uses the placeholder {field}, which only hash jobs have, so stream \
         watch 'q' cannot use it (HANDLER)"
    );
    assert_eq!(
        err(&mut c, &[w, "h:*", "HANDLER", "s"]),
        "ERR handler 's' uses the placeholder {field:url}, which only stream jobs have, so \
         hash watch 'h:*' cannot use it (HANDLER)"
    );
    ok(&mut c, &[w, "q", "HANDLER", "s", "TYPE", "stream"]);
    ok(&mut c, &[w, "h:*", "HANDLER", "w"]);
    // A stored watch that fails the check is skipped with a log line.
    ok(
        &mut c,
        &[
            "HSET",
            "streamwatch:watches",
            "bad",
            "handler = \"w\"\ntype = \"stream\"\ndb = 0\nonchange = \"restart\"\n",
        ],
    );
    ok(&mut c, &[w, "h2:*", "HANDLER", "w"]);
    let skipped = "stored watch 'bad' is ignored: handler 'w' uses the placeholder {field}, \
                   which only hash jobs have, so stream watch 'bad' cannot use it";
    wait_until("the skipped watch's log line", WAIT, || {
        s.log().contains(skipped)
    });
    let patterns: Vec<String> = to_array(&ok(&mut c, &["STREAMWATCH.WATCHES"]))
        .iter()
        .map(|w| get_str(&to_map(w), "pattern"))
        .collect();
    assert_eq!(patterns.len(), 3, "{patterns:?}");
    assert!(!patterns.contains(&"bad".to_string()), "{patterns:?}");
}
