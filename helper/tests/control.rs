//! The helper binary driven as the module drives it: requests on its stdin (a Unix
//! socket), reports back on the same socket.

#[path = "../../src/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use protocol::{Report, Request};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_request(run: u64, argv: &[&str]) -> Request {
    Request::Spawn {
        run,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        program: None,
        env: vec![(b"SW_CONTROL_TEST".to_vec(), b"1".to_vec())],
        cwd: None,
        stdin: Some(b"from stdin".to_vec()),
        stop_signal: libc::SIGTERM,
        stop_grace_ms: 5000,
        keep_stdin: false,
        replies: false,
        limits: Default::default(),
    }
}

/// A run of `sh -c script`: a pool worker's stdin (kept open) and fd 3 as asked.
fn sh(run: u64, script: &str, stdin: Option<&[u8]>, keep_stdin: bool, replies: bool) -> Request {
    Request::Spawn {
        run,
        argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()],
        program: None,
        env: vec![],
        cwd: None,
        stdin: stdin.map(<[u8]>::to_vec),
        stop_signal: libc::SIGTERM,
        stop_grace_ms: 5000,
        keep_stdin,
        replies,
        limits: Default::default(),
    }
}

fn feed(run: u64, data: &[u8]) -> Request {
    Request::Feed {
        run,
        data: data.to_vec(),
    }
}

fn run_of(report: &Report) -> u64 {
    match report {
        Report::Started { run, .. }
        | Report::SpawnFailed { run, .. }
        | Report::Output { run, .. }
        | Report::Replies { run, .. }
        | Report::Unread { run }
        | Report::Fed { run, .. }
        | Report::Exited { run, .. } => *run,
    }
}

fn is_over(report: &Report) -> bool {
    matches!(report, Report::Exited { .. } | Report::SpawnFailed { .. })
}

/// The real helper binary on one end of a socket pair, as the module drives it.
struct Helper {
    sock: UnixStream,
    process: Child,
    /// Reports read while waiting for another run's, in order.
    stash: Vec<Report>,
}

impl Helper {
    fn start() -> Helper {
        let (sock, theirs) = UnixStream::pair().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_streamwatch-helper"))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()
            .unwrap();
        Helper {
            sock,
            process,
            stash: Vec::new(),
        }
    }

    fn send(&mut self, req: &Request) {
        protocol::write_frame(&mut self.sock, &req.encode()).unwrap();
    }

    /// The next report of `run` (other runs' wait in the stash).
    fn next_of(&mut self, run: u64) -> Report {
        if let Some(i) = self.stash.iter().position(|r| run_of(r) == run) {
            return self.stash.remove(i);
        }
        loop {
            let frame = protocol::read_frame(&mut self.sock)
                .unwrap()
                .expect("the helper is alive");
            let report = Report::decode(&frame).unwrap();
            if run_of(&report) == run {
                return report;
            }
            self.stash.push(report);
        }
    }

    /// The reports of `run` until it is over (exited, or failed to start).
    fn reports_of(&mut self, run: u64) -> Vec<Report> {
        let mut got = Vec::new();
        loop {
            let report = self.next_of(run);
            let over = is_over(&report);
            got.push(report);
            if over {
                assert!(
                    !self.stash.iter().any(|r| run_of(r) == run),
                    "reports of {run} after its end: {:?}",
                    self.stash
                );
                return got;
            }
        }
    }

    /// `reports_of` a run whose `Started` was taken already, with a stand-in for it.
    fn rest_of(&mut self, run: u64) -> Vec<Report> {
        let mut got = vec![Report::Started {
            run,
            pid: 0,
            start_ticks: 0,
        }];
        got.extend(self.reports_of(run));
        got
    }

    /// The module goes away: the helper exits, and cleanly.
    fn finish(self) {
        let Helper {
            sock, mut process, ..
        } = self;
        drop(sock);
        let status = process.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// A run's reports put together: its output, its replies, its wait status.
#[derive(Debug)]
struct Whole {
    output: Vec<u8>,
    replies: Vec<u8>,
    status: i32,
    /// `Unread` came, just before `Exited`.
    unread: bool,
    /// What `Fed` said (runs with a kept-open stdin).
    fed: Option<u64>,
}

/// Checks the order of a run's reports (started first, then output and replies, then
/// the exit) and puts them together.
fn whole(reports: &[Report]) -> Whole {
    assert!(
        matches!(reports.first(), Some(Report::Started { .. })),
        "not started first: {reports:?}"
    );
    let Some(&Report::Exited { status, .. }) = reports.last() else {
        panic!("not exited last: {reports:?}");
    };
    let (mut output, mut replies, mut unread, mut fed) = (Vec::new(), Vec::new(), false, None);
    for r in &reports[1..reports.len() - 1] {
        match r {
            Report::Output { data, .. } => output.extend_from_slice(data),
            Report::Replies { data, .. } => replies.extend_from_slice(data),
            Report::Unread { .. } if r == &reports[reports.len() - 2] => unread = true,
            Report::Fed { count, .. } => fed = Some(*count),
            other => panic!("{other:?} between start and exit: {reports:?}"),
        }
    }
    Whole {
        output,
        replies,
        status,
        unread,
        fed,
    }
}

fn exit_code(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

/// The text of a run's replies, for messages.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn runs_report_start_output_and_exit_and_stop_on_request() {
    let mut h = Helper::start();

    let script = r#"cat; echo " $SW_CONTROL_TEST"; exit 3"#;
    h.send(&spawn_request(1, &["sh", "-c", script]));
    let reports = h.reports_of(1);
    let Report::Started {
        pid, start_ticks, ..
    } = reports[0]
    else {
        panic!("not started first: {reports:?}");
    };
    // A start time is 0 when it could not be read ("unknown", which the module
    // accepts): not asserted, it was seen once on a loaded machine.
    assert!(pid > 0, "pid {pid}, start {start_ticks}");
    let output: Vec<u8> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Output { data, .. } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(output, b"from stdin 1\n");
    let Some(Report::Exited { status, .. }) = reports.last() else {
        panic!("no exit: {reports:?}");
    };
    assert!(libc::WIFEXITED(*status) && libc::WEXITSTATUS(*status) == 3);

    h.send(&spawn_request(2, &["/nonexistent/x"]));
    let reports = h.reports_of(2);
    assert!(
        matches!(reports.last(), Some(Report::SpawnFailed { .. })),
        "{reports:?}"
    );

    h.send(&spawn_request(3, &["sleep", "30"]));
    std::thread::sleep(Duration::from_millis(100));
    h.send(&Request::Stop { run: 3 });
    let reports = h.reports_of(3);
    let Some(Report::Exited { status, .. }) = reports.last() else {
        panic!("no exit: {reports:?}");
    };
    assert!(libc::WIFSIGNALED(*status) && libc::WTERMSIG(*status) == libc::SIGTERM);

    // The module goes away: the helper exits.
    h.finish();
}

#[test]
fn a_kept_open_stdin_takes_three_feeds_and_replies_come_in_order_before_exited() {
    let mut h = Helper::start();
    let worker = r#"while read l; do echo "{\"id\":\"$l\",\"ok\":true}" >&3; done; echo bye"#;
    h.send(&sh(1, worker, None, true, true));
    assert!(matches!(h.next_of(1), Report::Started { .. }));
    // The pipe stays open between jobs: the first line is answered while the
    // worker waits for the next one.
    h.send(&feed(1, b"one\n"));
    let answer = |l: &str| format!("{{\"id\":\"{l}\",\"ok\":true}}\n");
    let mut replies = Vec::new();
    while text(&replies) != answer("one") {
        match h.next_of(1) {
            Report::Replies { data, .. } => replies.extend(data),
            other => panic!("{other:?} before the first reply ({})", text(&replies)),
        }
    }
    // Fed before their turn: each is written when the one before is answered.
    h.send(&feed(1, b"two\n"));
    h.send(&feed(1, b"three\n"));
    replies.clear();
    let want = answer("two") + &answer("three");
    while text(&replies) != want {
        match h.next_of(1) {
            Report::Replies { data, .. } => replies.extend(data),
            other => panic!("{other:?} before the answers ({})", text(&replies)),
        }
    }
    h.send(&Request::CloseInput { run: 1 });
    let w = whole(&h.rest_of(1));
    assert_eq!(text(&w.output), "bye\n");
    assert_eq!(exit_code(w.status), Some(0));
    h.finish();
}

#[test]
fn an_entry_fed_before_the_answer_waits_for_it_and_is_dropped_at_close() {
    let mut h = Helper::start();
    // `cat` echoes its stdin to fd 3: a line that is not an answer releases nothing.
    h.send(&sh(1, "cat >&3", None, true, true));
    h.send(&feed(1, b"first\n"));
    h.send(&feed(1, b"{\"id\":\"2\",\"ok\":true}\n"));
    h.send(&feed(1, b"third\n"));
    h.send(&Request::CloseInput { run: 1 });
    let w = whole(&h.reports_of(1));
    assert_eq!(text(&w.replies), "first\n");
    assert_eq!(exit_code(w.status), Some(0));

    // Answers release the entries held, one each, in order.
    h.send(&sh(2, "cat >&3", None, true, true));
    assert!(matches!(h.next_of(2), Report::Started { .. }));
    h.send(&feed(2, b"{\"id\":\"1\",\"ok\":true}\n"));
    h.send(&feed(2, b"{\"id\":\"2\",\"ok\":false}\n"));
    h.send(&feed(2, b"{\"id\":\"3\",\"progress\":3}\n"));
    h.send(&feed(2, b"never\n"));
    let mut replies = Vec::new();
    while !text(&replies).contains("progress") {
        match h.next_of(2) {
            Report::Replies { data, .. } => replies.extend(data),
            other => panic!("{other:?} before the replies ({})", text(&replies)),
        }
    }
    h.send(&Request::CloseInput { run: 2 });
    let w = whole(&h.rest_of(2));
    replies.extend(w.replies);
    let want =
        "{\"id\":\"1\",\"ok\":true}\n{\"id\":\"2\",\"ok\":false}\n{\"id\":\"3\",\"progress\":3}\n";
    assert_eq!(text(&replies), want);
    h.finish();
}

#[test]
fn stdin_data_comes_first_and_close_input_waits_for_everything_fed() {
    let mut h = Helper::start();
    // Reads nothing for a while: the 1 MiB fed waits in the helper, and the close
    // after it waits too; a feed after the close is ignored.
    h.send(&sh(
        1,
        "sleep 0.3; wc -c >&3",
        Some(b"0123456789"),
        true,
        true,
    ));
    h.send(&feed(1, &vec![b'x'; 1 << 20]));
    h.send(&Request::CloseInput { run: 1 });
    h.send(&feed(1, b"too late"));
    let w = whole(&h.reports_of(1));
    assert_eq!(text(&w.replies).trim(), ((1 << 20) + 10).to_string());
    assert_eq!(exit_code(w.status), Some(0));

    // The stdin data is no entry: the first entry fed follows it at once.
    h.send(&sh(2, "cat >&3", Some(b"first\n"), true, true));
    h.send(&feed(2, b"second\n"));
    h.send(&Request::CloseInput { run: 2 });
    let w = whole(&h.reports_of(2));
    assert_eq!(text(&w.replies), "first\nsecond\n");

    // Without keep_stdin, stdin closes after its data: feeds are ignored.
    h.send(&sh(3, "sleep 0.2; cat >&3", Some(b"entry"), false, true));
    h.send(&feed(3, b" and more"));
    let w = whole(&h.reports_of(3));
    assert_eq!(text(&w.replies), "entry");
    h.finish();
}

#[test]
fn replies_written_just_before_exit_come_after_started_and_before_exited() {
    let mut h = Helper::start();
    // One at a time, then 50 at once; each writes to fd 3 and exits at once.
    let script = |i: u64| format!("echo out{i}; printf 'reply %s\\n' {i} >&3");
    for i in 1..=50 {
        h.send(&sh(i, &script(i), None, false, true));
        let w = whole(&h.reports_of(i));
        assert_eq!(text(&w.replies), format!("reply {i}\n"), "run {i}");
        assert_eq!(exit_code(w.status), Some(0));
    }
    for i in 101..=150 {
        h.send(&sh(i, &script(i), None, false, true));
    }
    for i in 101..=150 {
        let w = whole(&h.reports_of(i));
        assert_eq!(text(&w.replies), format!("reply {i}\n"), "run {i}");
        assert_eq!(text(&w.output), format!("out{i}\n"), "run {i}");
    }
    // More than a pipe holds, written just before the exit (the worker waits on
    // the pipe until the helper reads).
    for i in 201..=205 {
        h.send(&sh(i, "head -c 300000 /dev/zero >&3", None, true, true));
    }
    for i in 201..=205 {
        let w = whole(&h.reports_of(i));
        assert_eq!(w.replies.len(), 300_000, "run {i}");
        assert!(w.replies.iter().all(|&b| b == 0));
    }
    h.finish();
}

#[test]
fn a_run_without_replies_has_no_descriptor_3() {
    let mut h = Helper::start();
    h.send(&sh(1, "test ! -e /proc/self/fd/3", None, false, false));
    assert_eq!(exit_code(whole(&h.reports_of(1)).status), Some(0));
    h.send(&sh(2, "test ! -e /proc/self/fd/3", None, true, false));
    assert_eq!(exit_code(whole(&h.reports_of(2)).status), Some(0));
    // With replies, 3 is a pipe (and nothing above it is open).
    let script = "test -p /proc/self/fd/3 && test ! -e /proc/self/fd/4";
    h.send(&sh(3, script, None, false, true));
    assert_eq!(exit_code(whole(&h.reports_of(3)).status), Some(0));
    h.finish();
}

#[test]
fn a_worker_that_does_not_read_its_stdin_blocks_no_one() {
    let mut h = Helper::start();
    h.send(&sh(1, "exec sleep 30", None, true, true));
    assert!(matches!(h.next_of(1), Report::Started { .. }));
    let started = Instant::now();
    // Far more than its pipe takes: the rest waits in the helper.
    h.send(&feed(1, &vec![b'x'; 1 << 20]));
    h.send(&feed(1, b"and more\n"));
    // Unknown runs: ignored.
    h.send(&feed(99, b"nobody\n"));
    h.send(&Request::CloseInput { run: 99 });
    h.send(&sh(2, "echo hi", None, false, false));
    let w = whole(&h.reports_of(2));
    assert_eq!(text(&w.output), "hi\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Closing waits for what is fed, which it never reads: the run goes on until
    // it is stopped.
    h.send(&Request::CloseInput { run: 1 });
    h.send(&sh(3, "echo hi again", None, false, false));
    assert_eq!(text(&whole(&h.reports_of(3)).output), "hi again\n");
    h.send(&Request::Stop { run: 1 });
    let w = whole(&h.rest_of(1));
    assert!(libc::WIFSIGNALED(w.status) && libc::WTERMSIG(w.status) == libc::SIGTERM);
    h.finish();
}

#[test]
fn feeding_a_run_that_closed_its_stdin_is_harmless() {
    let mut h = Helper::start();
    h.send(&sh(
        1,
        "exec 0<&-; sleep 0.3; echo done >&3",
        None,
        true,
        true,
    ));
    assert!(matches!(h.next_of(1), Report::Started { .. }));
    std::thread::sleep(Duration::from_millis(100));
    h.send(&feed(1, &vec![b'x'; 200_000]));
    h.send(&feed(1, b"more\n"));
    h.send(&Request::CloseInput { run: 1 });
    let w = whole(&h.rest_of(1));
    assert_eq!(text(&w.replies), "done\n");
    assert_eq!(exit_code(w.status), Some(0));
    h.finish();
}

#[test]
fn replies_share_the_runs_output_budget() {
    let mut h = Helper::start();
    // 1 MiB of output uses up the run's burst: the 1 MiB to fd 3 after it is read at
    // the run's rate, 1 MiB a second (a reply budget of its own would take no time).
    let started = Instant::now();
    let script = "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&3";
    h.send(&sh(1, script, None, false, true));
    let w = whole(&h.reports_of(1));
    let took = started.elapsed();
    assert_eq!((w.output.len(), w.replies.len()), (1 << 20, 1 << 20));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    h.finish();
}

#[test]
fn replies_still_in_the_pipe_at_exit_all_come_whatever_the_budget() {
    if Command::new("perl").arg("-e1").status().is_err() {
        eprintln!("no perl here: skipped");
        return;
    }
    let mut h = Helper::start();
    // Output past the run's budget (it is paused, fd 3 too), then 500 kB to fd 3 in a
    // pipe made large enough to take them at once, and the exit: all of it is still
    // in the pipe when the run is reaped, far more than one read.
    let script = r#"head -c 1200000 /dev/zero; exec perl -e '
        open(my $f, ">&=", 3) or die "no fd 3: $!";
        fcntl($f, 1031, 1048576) or die "F_SETPIPE_SZ: $!";
        syswrite($f, "r" x 500000) == 500000 or die "short write";'"#;
    for i in 1..=3 {
        h.send(&sh(i, script, None, false, true));
        let w = whole(&h.reports_of(i));
        assert_eq!(exit_code(w.status), Some(0), "{}", text(&w.output));
        assert_eq!(w.replies.len(), 500_000, "run {i}");
        assert!(w.replies.iter().all(|&b| b == b'r'));
    }
    h.finish();
}

#[test]
fn shutdown_closes_kept_open_stdins() {
    let mut h = Helper::start();
    // A stop signal that stops nothing (SIGCONT) and a long grace: the worker ends
    // because its stdin closes when the module goes away, not because it is killed.
    h.send(&Request::Spawn {
        run: 1,
        argv: vec![b"cat".to_vec()],
        program: None,
        env: vec![],
        cwd: None,
        stdin: None,
        stop_signal: libc::SIGCONT,
        stop_grace_ms: 60_000,
        keep_stdin: true,
        replies: false,
        limits: Default::default(),
    });
    assert!(matches!(h.next_of(1), Report::Started { .. }));
    let Helper {
        sock, mut process, ..
    } = h;
    drop(sock);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = process.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the helper waits for its worker");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_entry_released_to_a_worker_that_exits_without_reading_it_is_reported_unread() {
    let mut h = Helper::start();
    // Answers its one entry and exits: the entry held for it is written (or tried)
    // and never read.
    let answer_and_go = r#"read l; echo "{\"id\":\"$l\",\"ok\":true}" >&3; exit 0"#;
    h.send(&sh(1, answer_and_go, None, true, true));
    h.send(&feed(1, b"1\n"));
    h.send(&feed(1, b"2\n"));
    let w = whole(&h.reports_of(1));
    assert_eq!(text(&w.replies), "{\"id\":\"1\",\"ok\":true}\n");
    assert!(w.unread, "the second entry was never read");
    assert_eq!(w.fed, Some(2));

    // Reads its second entry before it exits: nothing unread.
    let reads_both = r#"read l; echo "{\"id\":\"$l\",\"ok\":true}" >&3; read m; exit 0"#;
    h.send(&sh(2, reads_both, None, true, true));
    h.send(&feed(2, b"1\n"));
    h.send(&feed(2, b"2\n"));
    let w = whole(&h.reports_of(2));
    assert!(!w.unread);

    // Exits before answering the entry it read: nothing unread (its attempt fails).
    h.send(&sh(3, "read l; exit 0", None, true, true));
    h.send(&feed(3, b"1\n"));
    let w = whole(&h.reports_of(3));
    assert!(!w.unread);
    assert_eq!(w.fed, Some(1));
    // A feed after the run's end is not taken.
    h.send(&feed(3, b"2\n"));
    h.finish();
}
