//! A pool worker's reply line (one JSON line on its descriptor 3), read by one
//! function on both sides: the helper, to know when the worker has answered and may be
//! given the entry it holds for it, and the module, to settle the entry. Compiled into
//! both (the helper includes it with `#[path]`), so the two can never disagree on what
//! is an answer.

/// One line a worker wrote on fd 3.
#[derive(Debug, PartialEq)]
pub enum Said {
    /// The entry is done: `error` is `None` if it succeeded.
    Done {
        id: String,
        error: Option<String>,
    },
    Progress {
        id: String,
    },
}

#[derive(serde::Deserialize)]
struct ReplyLine {
    id: String,
    ok: Option<bool>,
    error: Option<serde_json::Value>,
    progress: Option<serde_json::Value>,
    #[allow(dead_code)]
    result: Option<serde_json::Value>,
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
            })
        }
        (None, Some(_)) => Ok(Said::Progress { id: r.id }),
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
            })
        };
        let table: [(&str, Result<Said, String>); 6] = [
            (r#"{"id":"1-0","ok":true}"#, done("1-0", None)),
            (
                r#"{"id":"1-0","ok":true,"result":{"a":[1]}}"#,
                done("1-0", None),
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
                Ok(Said::Progress { id: "1-0".into() }),
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
}
