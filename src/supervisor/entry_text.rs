//! A stream entry as its worker sees it: one JSON object on the stdin of a run of its
//! own (`entry_json`), or one JSON line given to a pool worker (`entry_line`). JSON is
//! Unicode: bytes that are not UTF-8 become U+FFFD (a run's `{field:NAME}` placeholder
//! passes them exactly).

use super::stream::{Fields, QueueKey, Sid};

/// The entry as a JSON object (`{"field":"value",...}`, in stream order). JSON text is
/// Unicode: bytes that are not UTF-8 become U+FFFD here (`{field:NAME}` in the command
/// passes them exactly).
pub(super) fn entry_json(fields: &Fields) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.push(b'"');
        for c in String::from_utf8_lossy(b).chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out.push(b'"');
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (i, (f, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(&mut out, f);
        out.push(b':');
        string(&mut out, v);
    }
    out.extend_from_slice(b"}\n");
    out
}

/// The line that gives an entry to a pool worker: `{"key", "id", "db", "attempt",
/// "fields"}`, fields in stream order (bytes that are not UTF-8 become U+FFFD).
pub(super) fn entry_line(
    qk: &QueueKey,
    sid: Sid,
    attempt: u32,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Vec<u8> {
    let text = |b: &[u8]| serde_json::to_string(&String::from_utf8_lossy(b)).unwrap_or_default();
    let mut out = format!(
        "{{\"key\":{},\"id\":\"{sid}\",\"db\":{},\"attempt\":{attempt},\"fields\":{{",
        text(&qk.key),
        qk.db
    );
    for (i, (f, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&text(f));
        out.push(':');
        out.push_str(&text(v));
    }
    out.push_str("}}\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        let fields = vec![
            (b"url".to_vec(), b"a\"b\\c\n\x01".to_vec()),
            (b"n".to_vec(), b"\xff\xc3\xa9".to_vec()),
        ];
        assert_eq!(
            String::from_utf8(entry_json(&fields)).unwrap(),
            "{\"url\":\"a\\\"b\\\\c\\n\\u0001\",\"n\":\"\u{fffd}é\"}\n"
        );
        assert_eq!(entry_json(&vec![]), b"{}\n");
    }

    #[test]
    fn the_line_of_an_entry() {
        let qk = QueueKey {
            db: 2,
            key: b"q".to_vec(),
            watch: 1,
        };
        let fields = vec![
            (b"url".to_vec(), b"a\"b".to_vec()),
            (b"n".to_vec(), b"\xff".to_vec()),
        ];
        let line = entry_line(&qk, Sid(17, 3), 2, &fields);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"key\":\"q\",\"id\":\"17-3\",\"db\":2,\"attempt\":2,\"fields\":{\"url\":\"a\\\"b\",\"n\":\"\u{fffd}\"}}\n"
        );
    }
}
