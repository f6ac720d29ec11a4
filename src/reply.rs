//! A pool worker's reply line (one JSON line on its descriptor 3), read by one
//! function on both sides: the helper, to know when the worker has answered and may be
//! given the entry it holds for it, and the module, to settle the entry. Compiled into
//! both (the helper includes it with `#[path]`), so the two can never disagree on what
//! is an answer. A per-entry run's lines on its fd 3 (a result, progress: no id, no
//! answer) are read here too.

/// One line a worker wrote on fd 3.
#[derive(Debug, PartialEq)]
pub enum Said {
    /// The entry is done: `error` is `None` if it succeeded.
    Done {
        id: String,
        error: Option<String>,
        /// The `"result"`, as JSON text.
        result: Option<String>,
    },
    Progress {
        id: String,
        /// The `"progress"`, as JSON text.
        value: String,
    },
}

/// One line a per-entry run wrote on fd 3: its `"result"` and/or `"progress"`, as JSON
/// texts (its exit status decides success).
#[derive(Debug, PartialEq, Default)]
pub struct RunSaid {
    pub result: Option<String>,
    pub progress: Option<String>,
}

#[derive(serde::Deserialize)]
struct ReplyLine {
    id: String,
    ok: Option<bool>,
    error: Option<serde_json::Value>,
    progress: Option<serde_json::Value>,
    result: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct RunLine {
    result: Option<serde_json::Value>,
    progress: Option<serde_json::Value>,
}

/// Reads one line of a per-entry run (without its newline).
pub fn parse_run_line(line: &[u8]) -> Result<RunSaid, String> {
    let r: RunLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(RunSaid {
        result: r.result.map(|v| v.to_string()),
        progress: r.progress.map(|v| v.to_string()),
    })
}

/// Reads one reply line (without its newline).
pub fn parse_reply(line: &[u8]) -> Result<Said, String> {
    let cut = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned();
    let r: ReplyLine =
        serde_json::from_slice(line).map_err(|e| format!("{e} in '{}'", cut(line)))?;
    match (r.ok, r.progress) {
        (Some(true), _) => Ok(Said::Done {
            id: r.id,
            error: None,
            result: r.result.map(|v| v.to_string()),
        }),
        (Some(false), _) => {
            let error = match r.error {
                Some(serde_json::Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => "the worker said ok: false".into(),
            };
            Ok(Said::Done {
                id: r.id,
                error: Some(error),
                result: r.result.map(|v| v.to_string()),
            })
        }
        (None, Some(p)) => Ok(Said::Progress {
            id: r.id,
            value: p.to_string(),
        }),
        (None, None) => Err(format!(
            "neither \"ok\" nor \"progress\" in '{}'",
            cut(line)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        let done = |id: &str, error: Option<&str>| {
            Ok(Said::Done {
                id: id.into(),
                error: error.map(str::to_string),
                result: None,
            })
        };
        let table: [(&str, Result<Said, String>); 6] = [
            (r#"{"id":"1-0","ok":true}"#, done("1-0", None)),
            (
                r#"{"id":"1-0","ok":true,"result":{"a":[1]}}"#,
                Ok(Said::Done {
                    id: "1-0".into(),
                    error: None,
                    result: Some(r#"{"a":[1]}"#.into()),
                }),
            ),
            (
                r#"{"id":"1-0","ok":false,"error":"boom"}"#,
                done("1-0", Some("boom")),
            ),
            (
                r#"{"id":"1-0","ok":false,"error":{"code":3}}"#,
                done("1-0", Some(r#"{"code":3}"#)),
            ),
            (
                r#"{"id":"1-0","ok":false}"#,
                done("1-0", Some("the worker said ok: false")),
            ),
            (
                r#"{"id":"1-0","progress":50}"#,
                Ok(Said::Progress {
                    id: "1-0".into(),
                    value: "50".into(),
                }),
            ),
        ];
        for (line, want) in table {
            assert_eq!(parse_reply(line.as_bytes()), want, "{line}");
        }
        for bad in [
            "",
            "ok",
            r#"{"ok":true}"#,
            r#"{"id":"1-0"}"#,
            r#"{"id":1,"ok":true}"#,
        ] {
            assert!(parse_reply(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_lines() {
        let said = |r: Option<&str>, p: Option<&str>| RunSaid {
            result: r.map(str::to_string),
            progress: p.map(str::to_string),
        };
        let table = [
            (r#"{"result":{"a":1}}"#, said(Some(r#"{"a":1}"#), None)),
            (r#"{"progress":"half"}"#, said(None, Some(r#""half""#))),
            (r#"{"result":1,"progress":2}"#, said(Some("1"), Some("2"))),
            (r#"{"other":1}"#, said(None, None)),
        ];
        for (line, want) in table {
            assert_eq!(parse_run_line(line.as_bytes()), Ok(want), "{line}");
        }
        assert!(parse_run_line(b"not json").is_err());
    }
}
