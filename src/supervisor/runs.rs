//! One run's spawn request, for both kinds of job (a hash job's run, a stream entry's
//! run): the handler's command and environment with the placeholders substituted, the
//! `STREAMWATCH_*` variables after them, and the check that execve can take the result.
//! A pure function, so it is tested by a table here; the supervisor counts the run and
//! sends the request (or ends the run with the reason it cannot be spawned).

use crate::config::Handler;
use crate::protocol::Request;
use crate::template::{substitute, unspawnable};

/// The request that starts run `run` of `h`. `vars` are the placeholders and their
/// values (the first that matches wins); `extra_env` (the `STREAMWATCH_*` variables)
/// comes after the handler's own environment. `Err` is why execve could not take it.
pub(super) fn spawn_request(
    h: &Handler,
    run: u64,
    vars: &[(&str, &[u8])],
    extra_env: Vec<(Vec<u8>, Vec<u8>)>,
    stdin: Option<Vec<u8>>,
) -> Result<Request, String> {
    let argv: Vec<Vec<u8>> = h.command.iter().map(|a| substitute(a, vars)).collect();
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = h
        .env
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), substitute(v, vars)))
        .collect();
    env.extend(extra_env);
    if let Some(problem) = unspawnable(&argv, &env) {
        return Err(problem);
    }
    Ok(Request::Spawn {
        run,
        argv,
        env,
        cwd: h.cwd.as_ref().map(|c| c.as_bytes().to_vec()),
        stdin,
        stop_signal: h.stop_signal,
        stop_grace_ms: h.stop_grace.as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Restart;
    use std::time::Duration;

    fn handler(command: &[&str], env: &[(&str, &str)], cwd: Option<&str>) -> Handler {
        Handler {
            name: "h".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: cwd.map(str::to_string),
            restart: Restart::Always,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_millis(1000),
            stable_after: Duration::from_secs(10),
            max_failures: 0,
            stop_signal: 15,
            stop_signal_name: "TERM".into(),
            stop_grace: Duration::from_millis(1500),
            timeout: Duration::ZERO,
            log_lines: None,
        }
    }

    fn bytes(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_request_of_a_run() {
        // (command, handler env, vars, STREAMWATCH_* env, stdin) -> (argv, env)
        type Row<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a [u8])],
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
        );
        let table: [Row; 4] = [
            // A hash job: key, field, value, db; in argv and in the handler's env.
            (
                &["run", "{key}/{field}", "--v={value}", "{db}", "{nope}"],
                &[("V", "{value}"), ("PLAIN", "x")],
                &[
                    ("{key}", b"k"),
                    ("{field}", b"f"),
                    ("{value}", b"val"),
                    ("{db}", b"0"),
                ],
                &[
                    ("STREAMWATCH_KEY", "k"),
                    ("STREAMWATCH_DB", "0"),
                    ("STREAMWATCH_FIELD", "f"),
                ],
                None,
                &["run", "k/f", "--v=val", "0", "{nope}"],
                &[
                    ("V", "val"),
                    ("PLAIN", "x"),
                    ("STREAMWATCH_KEY", "k"),
                    ("STREAMWATCH_DB", "0"),
                    ("STREAMWATCH_FIELD", "f"),
                ],
            ),
            // A stream entry: key, id, db and its fields; stdin is passed on.
            (
                &["w", "{id}", "{field:a}"],
                &[("A", "{field:a}-{key}")],
                &[
                    ("{key}", b"s"),
                    ("{id}", b"1-0"),
                    ("{db}", b"2"),
                    ("{field:a}", b"1"),
                ],
                &[
                    ("STREAMWATCH_KEY", "s"),
                    ("STREAMWATCH_DB", "2"),
                    ("STREAMWATCH_ID", "1-0"),
                ],
                Some("{\"a\":\"1\"}"),
                &["w", "1-0", "1"],
                &[
                    ("A", "1-s"),
                    ("STREAMWATCH_KEY", "s"),
                    ("STREAMWATCH_DB", "2"),
                    ("STREAMWATCH_ID", "1-0"),
                ],
            ),
            // A value holding a placeholder is not expanded again.
            (
                &["{value}"],
                &[],
                &[("{value}", b"{key}"), ("{key}", b"k")],
                &[],
                None,
                &["{key}"],
                &[],
            ),
            // No handler env: only the STREAMWATCH_* variables.
            (
                &["x"],
                &[],
                &[],
                &[("STREAMWATCH_KEY", "k")],
                None,
                &["x"],
                &[("STREAMWATCH_KEY", "k")],
            ),
        ];
        for (i, (command, env, vars, extra, stdin, argv_out, env_out)) in
            table.into_iter().enumerate()
        {
            let h = handler(command, env, Some("/tmp"));
            let stdin = stdin.map(|s| s.as_bytes().to_vec());
            let got = spawn_request(&h, 7 + i as u64, vars, pairs(extra), stdin.clone());
            let want = Request::Spawn {
                run: 7 + i as u64,
                argv: bytes(argv_out),
                env: pairs(env_out),
                cwd: Some(b"/tmp".to_vec()),
                stdin,
                stop_signal: 15,
                stop_grace_ms: 1500,
            };
            assert_eq!(got, Ok(want), "row {i}");
        }
    }

    #[test]
    fn no_cwd_stays_none() {
        let h = handler(&["x"], &[], None);
        match spawn_request(&h, 1, &[], Vec::new(), None) {
            Ok(Request::Spawn { cwd, .. }) => assert_eq!(cwd, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_cannot_be_spawned_says_why() {
        let nul: &[u8] = b"a\0b";
        // (command, handler env, STREAMWATCH_* env) -> the reason
        type Row<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], Env, &'a str);
        type Env = Vec<(Vec<u8>, Vec<u8>)>;
        let table: [Row; 3] = [
            (
                &["run", "{value}"],
                &[],
                Vec::new(),
                "argument 1 contains a NUL byte, which no argv can carry",
            ),
            (
                &["run"],
                &[("V", "{value}")],
                Vec::new(),
                "environment variable V contains a NUL byte, which no environment can carry",
            ),
            (
                &["run"],
                &[],
                vec![(b"STREAMWATCH_KEY".to_vec(), nul.to_vec())],
                "environment variable STREAMWATCH_KEY contains a NUL byte, which no environment can carry",
            ),
        ];
        for (command, env, extra, why) in table {
            let h = handler(command, env, None);
            let got = spawn_request(&h, 1, &[("{value}", nul)], extra, None);
            assert_eq!(got, Err(why.to_string()));
        }
    }
}
