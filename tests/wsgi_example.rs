//! examples/wsgi end to end: the server runs with the example's own config and job
//! (`streamwatch.toml`, `job.py`), the example's web app (`app.py`, redis-py) runs in
//! front of it, and the test is its HTTP client: it enqueues a job that succeeds and
//! one that fails, waits for both through the app (STREAMWATCH.WAIT), reads their
//! status (STREAMWATCH.JOB), and checks what the job wrote back to the server through
//! `STREAMWATCH_REDIS_URL`. redis-py comes from `.deps/py` (`make deps`).

mod common;

use common::*;
use serde_json::{json, Value as Json};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The stream of the example's config (and the app's default).
const STREAM: &str = "thumbs";

/// The example's `max-attempts`: a failing entry is dead after this many.
const MAX_ATTEMPTS: i64 = 3;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wsgi")
        .join(name)
}

/// `PYTHONPATH` with redis-py: `.deps/py`, where `make deps` installs it.
fn python_path() -> String {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/py");
    let found = Command::new("python3")
        .args(["-c", "import redis"])
        .env("PYTHONPATH", &deps)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "python3 cannot import redis-py: `make deps` installs it into {}",
        deps.display()
    );
    deps.display().to_string()
}

/// A server with the example's config verbatim; `job.py` is copied next to the
/// config file the harness writes (the config runs it from its own directory).
fn server(python_path: &str) -> Server {
    let dir = TempDir::new();
    fs::copy(example("job.py"), dir.path().join("job.py")).expect("copy job.py");
    let toml = fs::read_to_string(example("streamwatch.toml")).expect("read streamwatch.toml");
    Server::builder(&toml)
        .dir(dir.clone())
        .env("PYTHONPATH", python_path)
        .start()
}

/// `python3 examples/wsgi/app.py --port N`, killed on drop.
struct App {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl App {
    /// Starts the app on a free port against `redis_url` and waits until it listens
    /// (its first line says so, after the bind).
    fn start(redis_url: &str, dir: &Path, python_path: &str) -> App {
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let log = dir.join(format!("app-{port}.log"));
            let out = fs::File::create(&log).expect("create app log");
            let mut cmd = Command::new("python3");
            cmd.arg(example("app.py"))
                .args(["--port", &port.to_string()])
                .env("REDIS_URL", redis_url)
                .env("PYTHONPATH", python_path)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            // If the test process dies without running destructors, the app goes too.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let mut app = App {
                child: cmd.spawn().expect("spawn python3 app.py"),
                port,
                log,
            };
            let listening = format!("http://127.0.0.1:{port}/");
            let deadline = Instant::now() + WAIT;
            loop {
                last = app.log_text();
                if last.contains(&listening) {
                    return app;
                }
                if let Ok(Some(status)) = app.child.try_wait() {
                    if last.contains("Address already in use") {
                        break; // the port was taken in the meantime: another one
                    }
                    panic!("app.py exited ({status}); its output:\n{last}");
                }
                if Instant::now() > deadline {
                    panic!("app.py did not listen within {WAIT:?}; its output:\n{last}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start app.py on a free port; its last output:\n{last}");
    }

    fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- app.py output ----\n{}\n----", self.log_text());
        }
    }
}

/// One HTTP/1.0 request to the app on `port`; `body` is (content type, text). Returns
/// the status code and the JSON body.
fn request(port: u16, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Json) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to app.py");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some((ctype, text)) = body {
        req += &format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            text.len()
        );
    }
    req += "\r\n";
    req += body.map_or("", |(_, text)| text);
    s.write_all(req.as_bytes()).expect("send request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, text) = resp
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP response: {resp:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line: {head:?}"));
    let json = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {resp:?}"));
    (code, json)
}

/// POST /jobs; returns the new entry's id.
fn enqueue(port: u16, ctype: &str, body: &str) -> String {
    let (code, reply) = request(port, "POST", "/jobs", Some((ctype, body)));
    assert_eq!(code, 202, "POST /jobs {body}: {reply}");
    let id = reply["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {reply}"));
    assert_eq!(reply["status"], format!("/jobs/{id}"), "{reply}");
    id.to_string()
}

/// GET /jobs/<id>/wait in a thread of its own, so that both waits block at once.
fn wait_in_thread(port: u16, id: &str) -> std::thread::JoinHandle<(u16, Json)> {
    let path = format!("/jobs/{id}/wait?timeout=30000");
    std::thread::spawn(move || request(port, "GET", &path, None))
}

fn output(job: &Json) -> &str {
    job["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output text: {job}"))
}

#[test]
fn the_wsgi_app_enqueues_shows_status_and_waits() {
    let python_path = python_path();
    let s = server(&python_path);
    let dir = s.dir();
    let redis_url = format!("redis://127.0.0.1:{}/0", s.port);
    let app = App::start(&redis_url, dir.path(), &python_path);
    let mut c = s.conn();

    // Enqueue a job (a JSON body) and a job that fails every attempt (a form), and wait
    // for both at once, as two browsers would.
    let good = enqueue(
        app.port,
        "application/json",
        r#"{"url": "https://example.com/cat.jpg"}"#,
    );
    let bad = enqueue(
        app.port,
        "application/x-www-form-urlencoded",
        "url=https%3A%2F%2Fexample.com%2Fbroken.jpg&fail=1",
    );
    let good_wait = wait_in_thread(app.port, &good);
    let bad_wait = wait_in_thread(app.port, &bad);
    // The app still answers while they wait (a thread per request).
    let (code, index) = request(app.port, "GET", "/", None);
    assert_eq!((code, &index["stream"]), (200, &json!(STREAM)), "{index}");

    // They are entries of the stream, with the fields that were posted.
    let entries = stream_entries(&mut c, STREAM);
    let fields: Vec<(&str, &str, Option<&str>)> = entries
        .iter()
        .map(|e| {
            let f = |k: &str| e.get(k).map(String::as_str);
            (f("_id").unwrap(), f("url").unwrap_or("-"), f("fail"))
        })
        .collect();
    assert_eq!(
        fields,
        [
            (good.as_str(), "https://example.com/cat.jpg", None),
            (bad.as_str(), "https://example.com/broken.jpg", Some("1")),
        ]
    );

    // job.py ran and wrote back through STREAMWATCH_REDIS_URL.
    let thumb_key = format!("thumb:{good}");
    let thumb = wait_for(&format!("{thumb_key} written by job.py"), WAIT, || {
        let v = run(&mut c, &["GET", &thumb_key]).ok()?;
        (v != Value::Nil).then(|| vstr(&v))
    });
    let thumb: Json = serde_json::from_str(&thumb).expect("thumb is JSON");
    assert_eq!(
        thumb,
        json!({"url": "https://example.com/cat.jpg", "size": "128x128"})
    );
    // The failing job was dead-lettered after its attempts, with what it printed.
    let dead = wait_for(&format!("{bad} in {STREAM}:dead"), WAIT, || {
        let dead = stream_entries(&mut c, &format!("{STREAM}:dead"));
        dead.into_iter().find(|e| e.get("id") == Some(&bad))
    });
    assert_eq!(dead["attempts"], MAX_ATTEMPTS.to_string(), "{dead:?}");
    let printed = format!("thumb {bad}: https://example.com/broken.jpg");
    assert!(dead["output"].contains(&printed), "{dead:?}");

    // The waits end with the outcomes (STREAMWATCH.WAIT).
    let (code, done) = good_wait.join().expect("wait thread");
    assert_eq!(code, 200, "wait for {good}: {done}");
    assert_eq!(done["state"], "acked", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(
        done["result"],
        json!({"key": thumb_key, "size": "128x128"}),
        "{done}"
    );
    assert_eq!(done["error"], Json::Null, "{done}");
    assert_eq!(done["progress"], json!({"percent": 100}), "{done}");
    assert!(
        output(&done).contains(&format!("thumb {good}: stored {thumb_key}")),
        "{done}"
    );

    let (code, failed) = bad_wait.join().expect("wait thread");
    assert_eq!(code, 200, "wait for {bad}: {failed}");
    assert_eq!(failed["state"], "dead", "{failed}");
    assert_eq!(failed["attempts"], MAX_ATTEMPTS, "{failed}");
    assert_eq!(failed["result"], Json::Null, "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "a dead job says why: {failed}");
    assert!(output(&failed).contains(&printed), "{failed}");

    // The status page (STREAMWATCH.JOB) shows a finished job as the wait did.
    for (id, waited) in [(&good, &done), (&bad, &failed)] {
        let (code, status) = request(app.port, "GET", &format!("/jobs/{id}"), None);
        assert_eq!(code, 200, "{status}");
        assert_eq!(&status, waited);
        for k in ["key", "db", "id", "watch", "state", "attempts", "result"] {
            assert!(status.get(k).is_some(), "no {k}: {status}");
        }
        for k in ["error", "output", "progress", "finished_ms", "duration_ms"] {
            assert!(status.get(k).is_some(), "no {k}: {status}");
        }
        assert_eq!(status["key"], STREAM, "{status}");
        assert_eq!(status["id"], id.as_str(), "{status}");
        assert_eq!(status["db"], 0, "{status}");
        assert_eq!(status["watch"], STREAM, "{status}");
        assert!(status["finished_ms"].as_i64().is_some(), "{status}");
        assert!(status["duration_ms"].as_i64().is_some(), "{status}");
    }

    // The app reads the replies the same over RESP3 (maps) as over RESP2 (flat arrays).
    let app3 = App::start(&format!("{redis_url}?protocol=3"), dir.path(), &python_path);
    for (id, waited) in [(&good, &done), (&bad, &failed)] {
        let (code, status) = request(app3.port, "GET", &format!("/jobs/{id}"), None);
        assert_eq!((code, &status), (200, waited), "RESP3");
    }

    // What is not a job, and requests the app refuses.
    let (code, reply) = request(app.port, "GET", "/jobs/1-0", None);
    assert_eq!(code, 404, "an id the stream does not have: {reply}");
    let (code, reply) = request(app.port, "GET", "/jobs/not-an-id", None);
    assert_eq!(code, 404, "{reply}");
    let (code, reply) = request(app.port, "POST", "/jobs", Some(("application/json", "")));
    assert_eq!(code, 400, "no fields: {reply}");
    let (code, reply) = request(
        app.port,
        "GET",
        &format!("/jobs/{good}/wait?timeout=x"),
        None,
    );
    assert_eq!(code, 400, "{reply}");
}
