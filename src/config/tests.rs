//! The config file's parser: what it accepts, and errors naming file, line and problem.

use super::*;
use crate::limits::Limits;
use crate::spec::{Kind, OnChange};

#[test]
fn parses_the_spec_example() {
    let text = r#"
[handler.transcode]
command = ["/usr/local/bin/transcode", "--id", "{field}", "--url", "{value}"]
env = { STREAM_ID = "{field}" }
cwd = "/var/lib/transcode"
restart = "always"
backoff-initial-ms = 250
backoff-max-ms = 30000
stable-after-ms = 10000
max-failures = 0
stop-signal = "TERM"
stop-grace-ms = 5000
timeout-ms = 0
log-lines = 100

[[watch]]
pattern = "cams"
handler = "transcode"
type = "hash"
db = 0
"#;
    let c = parse("x.toml", text).unwrap();
    assert_eq!(c.handlers["transcode"].stop_signal, libc::SIGTERM);
    assert_eq!(c.watches.len(), 1);
    assert_eq!(c.watches[0].db, DbSel::One(0));
}

#[test]
fn a_placeholder_may_pick_the_program_only_when_allowed() {
    for (program, found) in [
        ("{value}", Some("{value}")),
        ("/bin/{key}-run", Some("{key}")),
        ("/opt/{field:tool}/run", Some("{field:tool}")),
        ("/usr/bin/env", None),
        ("/bin/{x}", None),
    ] {
        assert_eq!(program_placeholder(program), found, "{program}");
    }
    let text = "[handler.a]\ncommand = [\"{value}\", \"x\"]\n";
    let e = parse("f.toml", text).unwrap_err();
    assert!(
        e.starts_with("f.toml: line 2: handler 'a' has the placeholder {value}"),
        "{e}"
    );
    let allowed = format!("{text}allow-program-placeholder = true\n");
    assert!(parse("f.toml", &allowed).is_ok());
}

#[test]
fn a_dead_letter_stream_cannot_be_the_queue_itself() {
    let text = "[handler.a]\ncommand = [\"x\"]\n[[watch]]\npattern = \"q\"\nhandler = \"a\"\n\
                type = \"stream\"\ndeadletter = \"q\"\n";
    let e = parse("f.toml", text).unwrap_err();
    assert!(
        e.starts_with("f.toml: line 7: the dead-letter stream 'q'"),
        "{e}"
    );
    let glob = text.replace("pattern = \"q\"", "pattern = \"q*\"");
    assert!(
        parse("f.toml", &glob).is_ok(),
        "a glob's dead letters are excluded"
    );
}

#[test]
fn two_watches_cannot_share_a_group_on_one_stream() {
    let w = |pattern: &str, extra: &str| {
        format!("[[watch]]\npattern = \"{pattern}\"\nhandler = \"a\"\ntype = \"stream\"\n{extra}")
    };
    let head = "[handler.a]\ncommand = [\"x\"]\n";
    let text = format!("{head}{}{}", w("q:*", ""), w("q:1", "start = \"$\"\n"));
    let e = parse("f.toml", &text).unwrap_err();
    assert!(
        e.starts_with("f.toml: line 7: watch 'q:1' would consume the same streams as watch 'q:*' through the same group 'streamwatch'"),
        "{e}"
    );
    for ok in [
        format!("{head}{}{}", w("q:*", ""), w("q:1", "group = \"other\"\n")),
        format!("{head}{}{}", w("q:*", ""), w("r:*", "")),
        format!("{head}{}{}", w("q:*", "db = 1\n"), w("q:1", "db = 2\n")),
    ] {
        assert!(parse("f.toml", &ok).is_ok(), "{ok}");
    }
    let text = format!("{head}{}", w("q", "start = 0\n"));
    assert_eq!(
        parse("f.toml", &text).unwrap().watches[0].stream.start,
        b"0"
    );
    let text = format!("{head}{}", w("q", "start = \"x\"\n"));
    let e = parse("f.toml", &text).unwrap_err();
    assert!(e.starts_with("f.toml: line 7: start must be 0"), "{e}");
    let text = format!("{head}{}", w("q", "ack = \"delete\"\n"));
    assert_eq!(
        parse("f.toml", &text).unwrap().watches[0].stream.ack,
        crate::spec::Ack::Delete
    );
    let text = format!("{head}{}", w("q", "ack = \"drop\"\n"));
    let e = parse("f.toml", &text).unwrap_err();
    assert!(
        e.starts_with("f.toml: line 7: ack must be \"keep\" or \"delete\""),
        "{e}"
    );
    let text = format!("{head}[[watch]]\npattern = \"h\"\nhandler = \"a\"\nack = \"delete\"\n");
    let e = parse("f.toml", &text).unwrap_err();
    assert!(
        e.contains("ack applies only to type \"stream\" watches"),
        "{e}"
    );
}

#[test]
fn watch_option_errors_name_their_line() {
    let head = "[handler.a]\ncommand = [\"x\"]\n[[watch]]\npattern = \"p\"\nhandler = \"a\"\n";
    for (rest, want) in [
        (
            "type = \"list\"\n",
            "line 6: type must be \"hash\" or \"stream\", got \"list\"",
        ),
        (
            "db = -1\n",
            "line 6: db must be a database number or \"all\"",
        ),
        (
            "onchange = \"x\"\n",
            "line 6: onchange must be \"restart\" or \"ignore\"",
        ),
        (
            "group = \"\"\ndeadletter = \"d\"\n",
            "line 6: group applies only to type \"stream\" watches",
        ),
        (
            "deadletter = \"\"\nconcurrency = 0\n",
            "line 7: concurrency applies only to type \"stream\" watches",
        ),
        (
            "type = \"stream\"\nconcurrency = 0\ndeadletter = \"\"\n",
            "line 8: deadletter must not be empty",
        ),
        (
            "type = \"stream\"\nmax-attempts = 4294967296\n",
            "line 7: max-attempts must be a positive integer",
        ),
    ] {
        let text = format!("{head}{rest}");
        let e = parse("f.toml", &text).unwrap_err();
        assert!(e.starts_with(&format!("f.toml: {want}")), "{rest:?}: {e}");
    }
    let text = format!("{head}type = \"stream\"\ndb = \"ALL\"\nonchange = \"ignore\"\n");
    let w = &parse("f.toml", &text).unwrap().watches[0];
    assert_eq!(
        (w.kind, w.db, w.onchange),
        (Kind::Stream, DbSel::All, OnChange::Ignore)
    );
    assert_eq!(w.source, Source::Config);
}

#[test]
fn string_configs_refuse_nul_bytes() {
    assert!(checked_config_value(b"a\0b").is_err());
    assert!(checked_config_value(&[0xff]).is_err());
    assert_eq!(checked_config_value(b"events").ok(), Some("events"));
}

#[test]
fn errors_name_file_line_and_problem() {
    let e = parse("f.toml", "[handler.a]\ncommand = [\"x\"]\ncomand = 1\n").unwrap_err();
    assert!(e.starts_with("f.toml: line 3:"), "{e}");
    assert!(e.contains("comand"), "{e}");
    let e = parse(
        "f.toml",
        "[handler.a]\ncommand = [\"x\"]\n\n[[watch]]\npattern = \"p\"\nhandler = \"b\"\n",
    )
    .unwrap_err();
    assert!(e.starts_with("f.toml: line 6:") && e.contains("'b'"), "{e}");
    let e = parse("f.toml", "[handler.a]\ncommand = []\n").unwrap_err();
    assert!(
        e.starts_with("f.toml: line 2:") && e.contains("empty"),
        "{e}"
    );
    let e = parse("f.toml", "[handler.a\n").unwrap_err();
    assert!(e.starts_with("f.toml: line 1:"), "{e}");
}

#[test]
fn only_a_regular_file_of_bounded_size_is_read() {
    let dir = std::env::temp_dir().join(format!("sw-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = dir.join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap(); // sparse
                                            // A FIFO with no writer would block a plain open forever.
    for path in [fifo.to_str().unwrap(), dir.to_str().unwrap(), "/dev/zero"] {
        let e = load(path).unwrap_err();
        assert!(e.contains("line 0: not a regular file"), "{e}");
    }
    let e = load(big.to_str().unwrap()).unwrap_err();
    assert!(e.contains("line 0: larger than 16 MiB"), "{e}");
    let ok = dir.join("ok.toml");
    std::fs::write(&ok, "[handler.a]\ncommand = [\"/bin/true\"]\n").unwrap();
    assert!(load(ok.to_str().unwrap()).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let c = parse(
        "/etc/sw/x.toml",
        "[handler.a]\ncommand = [\"./w.sh\", \"./arg\"]\ncwd = \"data\"\n",
    )
    .unwrap();
    let h = &c.handlers["a"];
    assert_eq!(h.command, ["/etc/sw/w.sh", "./arg"]);
    assert_eq!(h.program_as_written.as_deref(), Some("./w.sh"));
    assert_eq!(h.cwd.as_deref(), Some("/etc/sw/data"));
    let up = parse("/etc/sw/x.toml", "[handler.a]\ncommand = [\"../w.sh\"]\n").unwrap();
    assert_eq!(up.handlers["a"].command, ["/etc/sw/../w.sh"]);
    assert_eq!(
        up.handlers["a"].program_as_written.as_deref(),
        Some("../w.sh")
    );
    let absolute = parse("/etc/sw/x.toml", "[handler.a]\ncommand = [\"/bin/w\"]\n").unwrap();
    assert_eq!(absolute.handlers["a"].program_as_written, None);
}

#[test]
fn backoff_doubles_and_caps() {
    let c = parse(
        "f",
        "[handler.a]\ncommand=[\"x\"]\nbackoff-initial-ms=100\nbackoff-max-ms=350\n",
    )
    .unwrap();
    let h = &c.handlers["a"];
    let ms = |n| h.backoff(n).as_millis();
    assert_eq!(
        (ms(0), ms(1), ms(2), ms(3), ms(40)),
        (100, 100, 200, 350, 350)
    );
}

#[test]
fn limits_are_read_checked_and_named_with_their_line() {
    let fake = |c: &[&str]| Ok(format!("/cg/{}", c.join("+")));
    let text = "[handler.w]\ncommand = [\"x\"]\nnice = 5\noom-score-adj = -100\n\
                limit-as = \"512M\"\nlimit-nofile = 4096\nlimit-cpu = \"unlimited\"\n\
                limit-nproc = \"100\"\nlimit-core = 0\nmemory-max = \"1G\"\ncpu-max = \"150%\"\n";
    let c = parse_with("f.toml", text, &fake).unwrap();
    let l = &c.handlers["w"].limits;
    assert_eq!((l.nice, l.oom_score_adj), (Some(5), -100));
    assert_eq!(
        l.rlimits,
        [
            (Rlimit::As, 512 << 20),
            (Rlimit::Nofile, 4096),
            (Rlimit::Cpu, crate::protocol::UNLIMITED),
            (Rlimit::Nproc, 100),
            (Rlimit::Core, 0),
        ]
    );
    assert_eq!((l.memory_max, l.cpu_max), (Some(1 << 30), Some(150)));
    assert_eq!(l.cgroup_parent.as_deref(), Some("/cg/memory+cpu"));
    // Nothing said: the default oom_score_adj only, and no cgroup looked for.
    let c = parse_with(
        "f.toml",
        "[handler.w]\ncommand = [\"x\"]\n",
        &|_: &[&str]| panic!("no cgroup is needed"),
    )
    .unwrap();
    assert_eq!(c.handlers["w"].limits, Limits::default());
    assert_eq!(c.handlers["w"].limits.oom_score_adj, 1000);
    let head = "[handler.w]\ncommand = [\"x\"]\n";
    for (rest, want) in [
        ("nice = -21\n", "line 3: handler 'w' has nice must be an integer from -20 to 19, got -21"),
        ("oom-score-adj = 1001\n", "line 3: handler 'w' has oom-score-adj must be"),
        ("stop-grace-ms = 1\nlimit-as = \"1.5G\"\n", "line 4: handler 'w' has limit-as must be"),
        ("limit-nofile = -1\n", "line 3: handler 'w' has limit-nofile must be a non-negative integer or \"unlimited\", got -1"),
        ("cpu-max = \"half\"\n", "line 3: handler 'w' has cpu-max must be a percentage"),
        ("memory-max = \"1G\"\n", "line 3: handler 'w' has memory-max, which needs a cgroup v2 subtree the server may write (docs/configuration.md, \"Limits\"), and there is none: no"),
        ("nice = \"5\"\n", "line 3: invalid type: string \"5\", expected i64"),
        ("limit-cores = 0\n", "line 3: unknown field `limit-cores`"),
    ] {
        let text = format!("{head}{rest}");
        let e = parse_with("f.toml", &text, &|_: &[&str]| Err("no".into())).unwrap_err();
        assert!(e.starts_with(&format!("f.toml: {want}")), "{rest:?}: {e}");
    }
}
