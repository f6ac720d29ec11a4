//! Key patterns with Redis's own glob rules (`KEYS`, `SCAN MATCH`): `*`, `?`, `[abc]`,
//! `[^a-z]` and `\` escapes, on raw bytes. Redis does not export its matcher to
//! modules, so this is a faithful port of its semantics (not its code).

/// True when `pattern` has no special characters, so it names exactly one key.
pub fn is_literal(pattern: &[u8]) -> bool {
    !pattern
        .iter()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

/// Does `key` match `pattern`?
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    match_from(pattern, key, 0)
}

fn match_from(mut p: &[u8], mut s: &[u8], depth: u32) -> bool {
    // Redis bounds recursion the same way to stay safe on hostile patterns.
    if depth > 1000 {
        return false;
    }
    while let Some(&c) = p.first() {
        match c {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                for i in 0..=s.len() {
                    if match_from(&p[1..], &s[i..], depth + 1) {
                        return true;
                    }
                }
                return false;
            }
            b'?' => {
                if s.is_empty() {
                    return false;
                }
                s = &s[1..];
                p = &p[1..];
            }
            b'[' => {
                let Some(&ch) = s.first() else {
                    return false;
                };
                let mut q = &p[1..];
                let not = q.first() == Some(&b'^');
                if not {
                    q = &q[1..];
                }
                let mut hit = false;
                loop {
                    match q {
                        [] => break,
                        [b']', ..] => break,
                        [b'\\', e, rest @ ..] => {
                            hit |= *e == ch;
                            q = rest;
                        }
                        [a, b'-', z, rest @ ..] if *z != b']' => {
                            let (lo, hi) = if a <= z { (*a, *z) } else { (*z, *a) };
                            hit |= (lo..=hi).contains(&ch);
                            q = rest;
                        }
                        [x, rest @ ..] => {
                            hit |= *x == ch;
                            q = rest;
                        }
                    }
                }
                if hit == not {
                    return false;
                }
                // Skip the closing bracket (a pattern missing it ends the class).
                p = q.get(1..).unwrap_or(&[]);
                s = &s[1..];
            }
            b'\\' if p.len() >= 2 => {
                if s.first() != Some(&p[1]) {
                    return false;
                }
                s = &s[1..];
                p = &p[2..];
            }
            _ => {
                if s.first() != Some(&c) {
                    return false;
                }
                s = &s[1..];
                p = &p[1..];
            }
        }
    }
    s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_rules() {
        let t = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes());
        assert!(t("cams", "cams"));
        assert!(!t("cams", "cams2"));
        assert!(t("cam*", "cams"));
        assert!(t("cam*", "cam"));
        assert!(t("*", ""));
        assert!(t("c?ms", "cams"));
        assert!(!t("c?ms", "cms"));
        assert!(t("h[ae]llo", "hello"));
        assert!(!t("h[ae]llo", "hillo"));
        assert!(t("h[^e]llo", "hallo"));
        assert!(!t("h[^e]llo", "hello"));
        assert!(t("h[a-c]llo", "hbllo"));
        assert!(t("a\\*b", "a*b"));
        assert!(!t("a\\*b", "axb"));
        assert!(t("user:*:cams", "user:42:cams"));
        assert!(!t("user:*:cams", "user:42:cam"));
        assert!(t("**a", "bba"));
    }

    #[test]
    fn literal_patterns() {
        assert!(is_literal(b"cams"));
        assert!(!is_literal(b"cam*"));
        assert!(!is_literal(b"c[a]ms"));
    }
}
