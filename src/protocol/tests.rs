//! The wire format's round trips and its refusals (compiled into both sides).

use super::*;

fn strip(frame: Vec<u8>) -> Vec<u8> {
    frame[4..].to_vec()
}

fn spawn(keep_stdin: bool, replies: bool) -> Request {
    Request::Spawn {
        run: 7,
        argv: vec![b"/bin/sh".to_vec(), vec![0xff, b';', b'\n']],
        program: Some(b"./sh".to_vec()),
        env: vec![(b"A".to_vec(), b"1".to_vec())],
        cwd: Some(b"/tmp".to_vec()),
        stdin: Some(b"{\"a\":\"1\"}".to_vec()),
        stop_signal: 15,
        stop_grace_ms: 5000,
        keep_stdin,
        replies,
        limits: Limits::default(),
    }
}

/// Every limit set, at the ends of their ranges.
fn every_limit() -> Limits {
    Limits {
        nice: Some(-20),
        oom_score_adj: Some(1000),
        rlimits: Rlimit::ALL
            .iter()
            .zip([100 << 20, 0, UNLIMITED, 1, u64::MAX - 1])
            .map(|(r, v)| (*r, v))
            .collect(),
        cgroup: Some(Cgroup {
            parent: b"/sys/fs/cgroup/redis".to_vec(),
            memory_max: Some(512 << 20),
            cpu_max: Some((50_000, 100_000)),
        }),
    }
}

fn limited(limits: Limits) -> Request {
    match spawn(true, true) {
        Request::Spawn {
            run,
            argv,
            program,
            env,
            cwd,
            stdin,
            stop_signal,
            stop_grace_ms,
            keep_stdin,
            replies,
            ..
        } => Request::Spawn {
            run,
            argv,
            program,
            env,
            cwd,
            stdin,
            stop_signal,
            stop_grace_ms,
            keep_stdin,
            replies,
            limits,
        },
        _ => unreachable!(),
    }
}

#[test]
fn requests_round_trip() {
    let some = Limits {
        nice: Some(19),
        rlimits: vec![(Rlimit::Core, 0)],
        cgroup: Some(Cgroup {
            parent: Vec::new(),
            memory_max: None,
            cpu_max: Some((1, 1)),
        }),
        ..Limits::default()
    };
    for r in [
        spawn(false, false),
        spawn(true, false),
        spawn(false, true),
        spawn(true, true),
        limited(every_limit()),
        limited(some),
        Request::Stop { run: 9 },
        Request::Feed {
            run: 10,
            data: b"line\n".to_vec(),
        },
        Request::Feed {
            run: u64::MAX,
            data: Vec::new(),
        },
        Request::CloseInput { run: 11 },
    ] {
        assert_eq!(Request::decode(&strip(r.encode())).unwrap(), r);
    }
}

#[test]
fn reports_round_trip() {
    for r in [
        Report::Started {
            run: 1,
            pid: 42,
            start_ticks: 123_456,
        },
        Report::SpawnFailed {
            run: 2,
            error: "No such file".into(),
        },
        Report::Output {
            run: 3,
            data: b"hi\n".to_vec(),
        },
        Report::Replies {
            run: 5,
            data: b"{\"ok\":1}\n{\"ok\"".to_vec(),
        },
        Report::Unread { run: 6 },
        Report::Fed { run: 7, count: 3 },
        Report::Exited {
            run: 4,
            status: 7 << 8,
        },
    ] {
        assert_eq!(Report::decode(&strip(r.encode())).unwrap(), r);
    }
}

#[test]
fn the_pool_flags_are_the_last_two_bytes_of_a_spawn() {
    let plain = strip(spawn(false, false).encode());
    let both = strip(spawn(true, true).encode());
    assert_eq!(plain.len(), both.len());
    assert_eq!(plain[plain.len() - 2..], [0, 0]);
    assert_eq!(both[both.len() - 2..], [1, 1]);
    assert_eq!(
        strip(spawn(true, false).encode())[plain.len() - 2..],
        [1, 0]
    );
    // A flag that is neither 0 nor 1 is not a frame either side wrote.
    let mut bad = both.clone();
    *bad.last_mut().unwrap() = 2;
    assert!(Request::decode(&bad).is_err());
    // Limits come before them, whatever they hold.
    let limited = strip(limited(every_limit()).encode());
    assert_eq!(limited[limited.len() - 2..], [1, 1]);
}

#[test]
fn bad_limits_are_errors() {
    let frame = strip(
        limited(Limits {
            rlimits: vec![(Rlimit::Nproc, 7)],
            ..Limits::default()
        })
        .encode(),
    );
    // The rlimit's code is 9 bytes before the cgroup flag and the two pool flags.
    let at = frame.len() - 3 - 9;
    assert_eq!(frame[at], Rlimit::Nproc as u8);
    let mut bad = frame.clone();
    bad[at] = 5;
    assert!(Request::decode(&bad).is_err());
    // More rlimits than there are.
    let mut bad = frame.clone();
    bad[at - 4..at].copy_from_slice(&6u32.to_le_bytes());
    assert!(Request::decode(&bad).is_err());
    assert!(Request::decode(&frame).is_ok());
}

#[test]
fn tags_are_distinct() {
    let tags = [
        T_SPAWN,
        T_STOP,
        T_FEED,
        T_CLOSE_INPUT,
        T_STARTED,
        T_SPAWN_FAILED,
        T_OUTPUT,
        T_EXITED,
        T_REPLIES,
        T_UNREAD,
        T_FED,
    ];
    for (i, a) in tags.iter().enumerate() {
        assert!(!tags[i + 1..].contains(a), "tag {a} twice");
    }
    // Requests and reports never decode as each other.
    let feed = strip(
        Request::Feed {
            run: 1,
            data: b"x".to_vec(),
        }
        .encode(),
    );
    assert!(Report::decode(&feed).is_err());
    let replies = strip(
        Report::Replies {
            run: 1,
            data: b"x".to_vec(),
        }
        .encode(),
    );
    assert!(Request::decode(&replies).is_err());
}

#[test]
fn truncated_frames_are_errors_not_panics() {
    let frames = [
        strip(limited(every_limit()).encode()),
        strip(
            Request::Spawn {
                run: 1,
                argv: vec![b"x".to_vec()],
                program: None,
                env: vec![],
                cwd: None,
                stdin: None,
                stop_signal: 15,
                stop_grace_ms: 1,
                keep_stdin: true,
                replies: true,
                limits: Limits::default(),
            }
            .encode(),
        ),
        strip(
            Request::Feed {
                run: 1,
                data: b"abc".to_vec(),
            }
            .encode(),
        ),
        strip(Request::CloseInput { run: 1 }.encode()),
    ];
    for frame in frames {
        for n in 0..frame.len() {
            assert!(Request::decode(&frame[..n]).is_err());
        }
    }
    let frame = strip(
        Report::Replies {
            run: 1,
            data: b"abc".to_vec(),
        }
        .encode(),
    );
    for n in 0..frame.len() {
        assert!(Report::decode(&frame[..n]).is_err());
    }
}
