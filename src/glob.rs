//! Key patterns with Redis's own glob rules (`KEYS`, `SCAN MATCH`): `*`, `?`, `[abc]`,
//! `[^a-z]` and `\` escapes, on raw bytes. Redis does not export its matcher to
//! modules, so this is a faithful port of its semantics (not its code).

/// True when `pattern` has no special characters, so it names exactly one key.
pub fn is_literal(pattern: &[u8]) -> bool {
    !pattern.iter().copied().any(is_special)
}

/// Does `b` mean more than itself in a pattern?
fn is_special(b: u8) -> bool {
    matches!(b, b'*' | b'?' | b'[' | b'\\')
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

/// Patterns, each with a tag, indexed for the question the main thread asks of every
/// command and keyspace event (and a full reconcile of every key it scans): which tags'
/// patterns match this key? The answer is almost always "none", so a literal pattern costs one binary search (not a pass over its
/// bytes) and any other one a prefix comparison before it is matched.
#[derive(Debug, Default)]
pub struct Set {
    /// Literal patterns, sorted by length and then bytes (`by_length`: most keys are
    /// told apart without reading them), with the tags of all watches that have them.
    literals: Vec<(Box<[u8]>, u8)>,
    /// Other patterns, with the length of their literal prefix.
    globs: Vec<(Box<[u8]>, usize, u8)>,
}

impl Set {
    /// `patterns`: each with a tag bit (or bits).
    pub fn new<'a>(patterns: impl IntoIterator<Item = (&'a [u8], u8)>) -> Set {
        let mut set = Set::default();
        for (pattern, tag) in patterns {
            if is_literal(pattern) {
                match set
                    .literals
                    .binary_search_by(|(p, _)| by_length(p, pattern))
                {
                    Ok(i) => set.literals[i].1 |= tag,
                    Err(i) => set.literals.insert(i, (pattern.into(), tag)),
                }
            } else {
                let prefix = pattern
                    .iter()
                    .position(|&b| is_special(b))
                    .unwrap_or(pattern.len());
                set.globs.push((pattern.into(), prefix, tag));
            }
        }
        set
    }

    /// The tags of the patterns `key` matches, OR-ed (0: none).
    pub fn tags(&self, key: &[u8]) -> u8 {
        let mut tags = match self.literals.binary_search_by(|(p, _)| by_length(p, key)) {
            Ok(i) => self.literals[i].1,
            Err(_) => 0,
        };
        for (pattern, prefix, tag) in &self.globs {
            if tags & tag != *tag
                && key.starts_with(&pattern[..*prefix])
                && match_from(&pattern[*prefix..], &key[*prefix..], 0)
            {
                tags |= tag;
            }
        }
        tags
    }
}

fn by_length(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
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
    fn set_answers_as_matching_each_pattern_would() {
        let patterns: [&[u8]; 9] = [
            b"cams", b"cam*", b"c?ms", b"*s", b"a\\*b", b"[^c]*", b"cams", b"", b"x",
        ];
        let set = Set::new(
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, 1u8 << (i % 8))),
        );
        let keys: [&[u8]; 12] = [
            b"cams", b"cam", b"cms", b"cxms", b"s", b"a*b", b"axb", b"", b"x", b"y", b"ca", b"zzs",
        ];
        for key in keys {
            let want = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| matches(p, key))
                .fold(0u8, |t, (i, _)| t | 1 << (i % 8));
            assert_eq!(set.tags(key), want, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(Set::default().tags(b"cams"), 0);
    }

    #[test]
    fn literal_patterns() {
        assert!(is_literal(b"cams"));
        assert!(!is_literal(b"cam*"));
        assert!(!is_literal(b"c[a]ms"));
    }
}
