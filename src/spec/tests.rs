//! The tests of `spec`: parsing a watch's options in each syntax (command, config
//! file, store), their errors, and the checks on a finished spec.

use super::*;

const CMD: Syntax = Syntax::Command { databases: 16 };

type Pairs<'a> = Vec<(Opt, Value<'a>)>;

fn parse(syntax: Syntax, pairs: &[(Opt, Value)]) -> Result<Parsed, String> {
    let mut o = Options::new(syntax);
    for &(opt, value) in pairs {
        o.set(opt, value)?;
    }
    o.finish()
}

fn t(s: &str) -> Value<'_> {
    Value::Text(s.as_bytes())
}

#[test]
fn good_options_in_every_syntax() {
    use Opt::{Concurrency, Db, Deadletter, Group, Handler, MaxAttempts, Type};
    let stream = |group: &str, c, m, dl: Option<&str>| StreamOpts {
        group: group.as_bytes().to_vec(),
        concurrency: c,
        max_attempts: m,
        deadletter: dl.map(|d| d.as_bytes().to_vec()),
        start: b"0".to_vec(),
        ack: Ack::Keep,
    };
    let hash = |db, onchange| Parsed {
        handler: "h".into(),
        kind: Kind::Hash,
        db,
        onchange,
        stream: StreamOpts::default(),
    };
    let cases: Vec<(Syntax, Pairs, Parsed)> = vec![
        (CMD, vec![(Handler, t("h"))], hash(None, OnChange::Restart)),
        (
            CMD,
            vec![(Handler, t("x")), (Handler, t("h")), (Db, t("ALL"))],
            hash(Some(DbSel::All), OnChange::Restart),
        ),
        (
            CMD,
            vec![
                (Handler, t("h")),
                (Type, t("Hash")),
                (Db, t("15")),
                (Opt::OnChange, t("IGNORE")),
            ],
            hash(Some(DbSel::One(15)), OnChange::Ignore),
        ),
        (
            CMD,
            vec![
                (Group, t("g")),
                (Type, t("STREAM")),
                (Handler, t("h")),
                (Concurrency, t("4294967295")),
                (MaxAttempts, t("2")),
                (Deadletter, t("dl")),
                (Opt::OnChange, t("restart")),
            ],
            Parsed {
                kind: Kind::Stream,
                stream: stream("g", u32::MAX, 2, Some("dl")),
                ..hash(None, OnChange::Restart)
            },
        ),
        (
            Syntax::File,
            vec![(Handler, t("h")), (Db, Value::Int(2_147_483_647))],
            hash(Some(DbSel::One(i32::MAX)), OnChange::Restart),
        ),
        (
            Syntax::File,
            vec![
                (Handler, t("h")),
                (Db, t("All")),
                (Opt::OnChange, t("ignore")),
            ],
            hash(Some(DbSel::All), OnChange::Ignore),
        ),
        (
            // The file, unlike a command, lets a stream watch say onchange.
            Syntax::File,
            vec![
                (Handler, t("h")),
                (Type, t("stream")),
                (Opt::OnChange, t("ignore")),
                (Concurrency, Value::Int(3)),
            ],
            Parsed {
                kind: Kind::Stream,
                stream: stream("streamwatch", 3, 5, None),
                ..hash(None, OnChange::Ignore)
            },
        ),
        (
            Syntax::Stored,
            vec![
                (Handler, t("h")),
                (Type, t("hash")),
                (Db, Value::Int(-1)),
                (Opt::OnChange, t("restart")),
            ],
            hash(Some(DbSel::One(-1)), OnChange::Restart),
        ),
        (
            // The store is read as written: no minimum but 1, no stream-only check.
            Syntax::Stored,
            vec![
                (Handler, t("h")),
                (Type, t("hash")),
                (Db, t("all")),
                (Opt::OnChange, t("ignore")),
                (Group, t("")),
                (Concurrency, Value::Int(0)),
            ],
            Parsed {
                stream: stream("", 1, 5, None),
                ..hash(Some(DbSel::All), OnChange::Ignore)
            },
        ),
    ];
    for (syntax, pairs, want) in cases {
        assert_eq!(parse(syntax, &pairs), Ok(want), "{syntax:?} {pairs:?}");
    }
}

#[test]
fn bad_options_are_named_in_each_syntax() {
    use Opt::{Concurrency, Db, Deadletter, Group, Handler, MaxAttempts, Type};
    let cases: Vec<(Syntax, Pairs, &str)> = vec![
        (CMD, vec![], "HANDLER is required"),
        (
            CMD,
            vec![(Type, t("list"))],
            "TYPE must be hash or stream, got 'list'",
        ),
        (
            CMD,
            vec![(Db, t("16"))],
            "DB must be a database number or ALL, got '16'",
        ),
        (
            CMD,
            vec![(Db, t("-1"))],
            "DB must be a database number or ALL, got '-1'",
        ),
        (
            Syntax::Command { databases: 4 },
            vec![(Db, t("4"))],
            "DB must be a database number or ALL, got '4'",
        ),
        (
            CMD,
            vec![(Opt::OnChange, t("later"))],
            "ONCHANGE must be restart or ignore, got 'later'",
        ),
        (CMD, vec![(Group, t(""))], "GROUP must not be empty"),
        (
            CMD,
            vec![(Deadletter, Value::Text(b"\xff"))],
            "DEADLETTER must be valid UTF-8",
        ),
        (
            CMD,
            vec![(Concurrency, t("0"))],
            "CONCURRENCY must be a positive integer up to 4294967295, got '0'",
        ),
        (
            CMD,
            vec![(MaxAttempts, t("4294967296"))],
            "MAX-ATTEMPTS must be a positive integer up to 4294967295, got '4294967296'",
        ),
        (
            CMD,
            vec![(Handler, t("h")), (Deadletter, t("d")), (Group, t("g"))],
            "DEADLETTER applies only to TYPE stream watches",
        ),
        (
            CMD,
            vec![
                (Handler, t("h")),
                (Type, t("stream")),
                (Opt::OnChange, t("ignore")),
            ],
            "ONCHANGE applies only to TYPE hash watches",
        ),
        (
            Syntax::File,
            vec![(Type, t("Stream"))],
            "type must be \"hash\" or \"stream\", got \"Stream\"",
        ),
        (
            Syntax::File,
            vec![(Db, Value::Int(-1))],
            "db must be a database number or \"all\"",
        ),
        (
            Syntax::File,
            vec![(Db, t("3"))],
            "db must be a database number or \"all\"",
        ),
        (
            Syntax::File,
            vec![(Opt::OnChange, t("x"))],
            "onchange must be \"restart\" or \"ignore\", got \"x\"",
        ),
        (
            Syntax::File,
            vec![(Deadletter, t(""))],
            "deadletter must not be empty",
        ),
        (
            Syntax::File,
            vec![(Concurrency, Value::Int(0))],
            "concurrency must be a positive integer",
        ),
        (
            Syntax::File,
            vec![(MaxAttempts, Value::Int(1 << 32))],
            "max-attempts must be a positive integer",
        ),
        (
            Syntax::File,
            vec![(Handler, t("h")), (MaxAttempts, Value::Int(3))],
            "max-attempts applies only to type \"stream\" watches",
        ),
        (
            Syntax::Stored,
            vec![(Type, t("list"))],
            "unsupported type 'list'",
        ),
        (
            Syntax::Stored,
            vec![(Type, t("Hash"))],
            "unsupported type 'Hash'",
        ),
        (
            Syntax::Stored,
            vec![(Db, Value::Int(1 << 31))],
            "bad db 2147483648",
        ),
        (Syntax::Stored, vec![(Db, t("ALL"))], "bad db 'ALL'"),
        (
            Syntax::Stored,
            vec![(Opt::OnChange, t("x"))],
            "bad onchange 'x'",
        ),
    ];
    for (syntax, pairs, want) in cases {
        assert_eq!(
            parse(syntax, &pairs),
            Err(want.to_string()),
            "{syntax:?} {pairs:?}"
        );
    }
}

#[test]
fn names_and_patterns() {
    for o in Opt::ALL {
        assert_eq!(Opt::from_word(&o.key().to_ascii_uppercase()), Some(o));
        assert_eq!(Opt::from_word(o.key()), Some(o));
    }
    assert_eq!(Opt::from_word("REPLACE"), None);
    assert_eq!(pattern_problem(CMD, b""), Some("pattern must not be empty"));
    assert_eq!(
        pattern_problem(Syntax::File, b""),
        Some("watch has an empty pattern")
    );
    assert_eq!(pattern_problem(Syntax::Stored, b""), Some("empty pattern"));
    assert_eq!(pattern_problem(Syntax::Stored, b"p"), None);
}

#[test]
fn a_literal_queue_is_not_its_own_dead_letter_stream() {
    let mut spec = WatchSpec {
        pattern: b"q".to_vec(),
        handler: "h".into(),
        kind: Kind::Stream,
        db: DbSel::One(0),
        onchange: OnChange::Restart,
        source: Source::Command,
        stream: StreamOpts {
            deadletter: Some(b"q".to_vec()),
            ..StreamOpts::default()
        },
    };
    let e = deadletter_problem(&spec).expect("a problem");
    assert!(e.ends_with("give another (DEADLETTER)"), "{e}");
    spec.pattern = b"q*".to_vec();
    assert_eq!(deadletter_problem(&spec), None);
    spec.pattern = b"q".to_vec();
    spec.kind = Kind::Hash;
    assert_eq!(deadletter_problem(&spec), None);
}

#[test]
fn dbsel_covers() {
    assert!(DbSel::All.covers(5));
    assert!(!DbSel::One(1).covers(0));
}

#[test]
fn start_takes_zero_dollar_or_an_id() {
    for good in [
        "0",
        "$",
        "0-0",
        "1700000000000",
        "1700000000000-5",
        "18446744073709551615-18446744073709551615",
    ] {
        assert!(start_id(good.as_bytes()), "{good}");
        let pairs = vec![
            (Opt::Handler, t("h")),
            (Opt::Type, t("stream")),
            (Opt::Start, t(good)),
        ];
        let p = parse(CMD, &pairs).expect(good);
        assert_eq!(p.stream.start, good.as_bytes());
    }
    for bad in [
        "",
        "$$",
        "-",
        "1-",
        "-1",
        "1-2-3",
        "x",
        "18446744073709551616",
        "+",
        "1-*",
        " 1",
    ] {
        assert!(!start_id(bad.as_bytes()), "{bad}");
        let pairs = vec![
            (Opt::Handler, t("h")),
            (Opt::Type, t("stream")),
            (Opt::Start, t(bad)),
        ];
        let e = parse(CMD, &pairs).expect_err(bad);
        assert!(e.starts_with("START must be 0, $ or"), "{e}");
    }
    // The file also takes an integer; a hash watch takes no START.
    let pairs = vec![
        (Opt::Handler, t("h")),
        (Opt::Type, t("stream")),
        (Opt::Start, Value::Int(0)),
    ];
    assert_eq!(
        parse(Syntax::File, &pairs).map(|p| p.stream.start),
        Ok(b"0".to_vec())
    );
    let pairs = vec![(Opt::Handler, t("h")), (Opt::Start, t("$"))];
    assert_eq!(
        parse(CMD, &pairs),
        Err("START applies only to TYPE stream watches".into())
    );
    assert_eq!(Opt::from_word("start"), Some(Opt::Start));
}

#[test]
fn ack_is_keep_or_delete() {
    let stream = |ack| {
        vec![
            (Opt::Handler, t("h")),
            (Opt::Type, t("stream")),
            (Opt::Ack, ack),
        ]
    };
    let p = parse(CMD, &stream(t("keep"))[..2]).unwrap();
    assert_eq!(p.stream.ack, Ack::Keep);
    for (syntax, word, want) in [
        (CMD, "keep", Ack::Keep),
        (CMD, "DELETE", Ack::Delete),
        (Syntax::File, "delete", Ack::Delete),
        (Syntax::Stored, "delete", Ack::Delete),
    ] {
        assert_eq!(
            parse(syntax, &stream(t(word))).map(|p| p.stream.ack),
            Ok(want)
        );
    }
    assert_eq!(
        parse(CMD, &stream(t("drop"))),
        Err("ACK must be keep or delete, got 'drop'".into())
    );
    assert_eq!(
        parse(Syntax::File, &stream(Value::Int(1))),
        Err("ack must be \"keep\" or \"delete\", got \"1\"".into())
    );
    assert_eq!(
        parse(Syntax::Stored, &stream(t(""))),
        Err("bad ack ''".into())
    );
    // A hash watch takes no ACK.
    let pairs = vec![(Opt::Handler, t("h")), (Opt::Ack, t("delete"))];
    assert_eq!(
        parse(CMD, &pairs),
        Err("ACK applies only to TYPE stream watches".into())
    );
    assert_eq!(Opt::from_word("ack"), Some(Opt::Ack));
}
