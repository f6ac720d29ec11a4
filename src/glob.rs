//! Key patterns with Redis's own glob rules (`KEYS`, `SCAN MATCH`): `*`, `?`, `[abc]`,
//! `[^a-z]` and `\` escapes, on raw bytes. Redis does not export its matcher to
//! modules, so this is a port of its semantics (not its code): Redis's
//! `stringmatchlen`, case-sensitive (its `nocase` flag is for other commands).
//!
//! The matcher runs on Redis's main thread for every write to any key, so its cost is
//! bounded whatever a pattern is. A pattern is parsed once into tokens (a class into
//! the set of bytes it matches), then matched in one pass that, on a mismatch, goes
//! back only to the last `*` (the classic glob algorithm): at most tokens × key steps
//! of constant cost. A backtracking matcher that tries every split at every `*` is
//! exponential in the number of `*`s (Redis's own was, until CVE-2022-36021).
//!
//! Redis's rules, quirks included, as `stringmatchlen` has them:
//! * a token is a byte, `?`, `*`, `\` and the byte it escapes (a lone `\` that ends the
//!   pattern is itself), or a class `[...]`; each token but `*` matches one byte;
//! * a class is `[`, an optional `^` (negation), then until `]`: `\` and a byte (that
//!   byte; not at the pattern's very end), `a-z` (a range, either way round, its bounds
//!   compared as C `char`s: signed on x86; any byte can end it, `]` too), or a byte. A
//!   class missing its `]` runs to the end of the pattern;
//! * an empty key matches only the empty pattern, except that `*` alone matches every
//!   key (`KEYS` and `SCAN` take it so, without matching);
//! * Redis recurses once per group of `*`s and gives up, no match, beyond 1000 levels:
//!   a pattern with more than 1000 groups of `*`s before its last other token matches
//!   no key but the empty one (if at all).
//!
//! Whether two patterns can match one key, on the same tokens: `overlap`.

use std::ffi::c_char;

mod overlap;
pub use overlap::may_overlap;

/// Redis's limit on nested `*`s (see the top of the file).
const MAX_NESTING: usize = 1000;

/// True when `pattern` has no special characters, so it names exactly one key.
pub fn is_literal(pattern: &[u8]) -> bool {
    !pattern.iter().copied().any(is_special)
}

/// Does `b` mean more than itself in a pattern?
fn is_special(b: u8) -> bool {
    matches!(b, b'*' | b'?' | b'[' | b'\\')
}

/// Does `key` match `pattern`? (Parses it each time: the module keeps a parsed `Glob`;
/// this is for the tests and the fuzz harness.)
#[cfg(any(test, fuzzing))]
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    Glob::new(pattern).matches(key)
}

/// One token of a parsed pattern; all but `Star` match exactly one byte.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// One or more `*`s in a row (Redis takes them as one).
    Star,
    Any,
    Byte(u8),
    /// The bytes a class matches (its negation applied), one bit each.
    Class([u64; 4]),
}

impl Token {
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(b) => *b == c,
            Token::Class(bits) => bits[usize::from(c >> 6)] & (1 << (c & 63)) != 0,
        }
    }
}

/// A pattern parsed for matching: its literal prefix (compared first, as most keys
/// differ there) and the tokens of the rest.
#[derive(Debug)]
pub struct Glob {
    prefix: Box<[u8]>,
    tokens: Box<[Token]>,
    /// The pattern is `*` alone.
    star_alone: bool,
    /// More `*`s than Redis nests (see the top of the file).
    too_deep: bool,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        let split = pattern
            .iter()
            .position(|&b| is_special(b))
            .unwrap_or(pattern.len());
        let (prefix, rest) = pattern.split_at(split);
        let tokens = tokens(rest);
        let stars = tokens.iter().filter(|t| **t == Token::Star).count();
        let final_star = tokens.last() == Some(&Token::Star);
        Glob {
            prefix: prefix.into(),
            star_alone: pattern == b"*",
            too_deep: stars - usize::from(final_star) > MAX_NESTING,
            tokens: tokens.into(),
        }
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        if key.is_empty() {
            return self.star_alone || (self.prefix.is_empty() && self.tokens.is_empty());
        }
        !self.too_deep
            && key.starts_with(&self.prefix)
            && glob(&self.tokens, &key[self.prefix.len()..])
    }
}

/// `pattern` as tokens, by Redis's rules.
fn tokens(p: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let (token, next) = match p[i] {
            b'*' => (Token::Star, i + 1),
            b'?' => (Token::Any, i + 1),
            b'[' => class(p, i),
            b'\\' if i + 1 < p.len() => (Token::Byte(p[i + 1]), i + 2),
            b => (Token::Byte(b), i + 1),
        };
        if !(token == Token::Star && tokens.last() == Some(&Token::Star)) {
            tokens.push(token);
        }
        i = next;
    }
    tokens
}

/// The class that starts with the `[` at `p[i]`, and where the next token starts.
fn class(p: &[u8], i: usize) -> (Token, usize) {
    let mut bits = [0u64; 4];
    let mut set = |b: u8| bits[usize::from(b >> 6)] |= 1 << (b & 63);
    let mut j = i + 1;
    let negated = p.get(j) == Some(&b'^');
    if negated {
        j += 1;
    }
    let end = loop {
        // Escapes and ranges may run past the `]` that would end the class.
        match p[j..] {
            [] => break j,
            [b'\\', e, ..] => {
                set(e);
                j += 2;
            }
            [b']', ..] => break j + 1,
            [a, b'-', z, ..] => {
                // C `char`s, as Redis compares them.
                let (a, z) = (a as c_char, z as c_char);
                for c in a.min(z)..=a.max(z) {
                    set(c as u8);
                }
                j += 3;
            }
            [b, ..] => {
                set(b);
                j += 1;
            }
        }
    };
    if negated {
        bits = bits.map(|w| !w);
    }
    (Token::Class(bits), end)
}

/// The glob match proper, of a non-empty key or the rest of one after a prefix.
///
/// Left to right, each `*` first matching nothing. On a mismatch, the last `*` seen
/// takes one more byte and the tokens resume after it: earlier `*`s never need to
/// change, since whatever a longer match of theirs would leave for the rest of the
/// pattern, the last `*` can cover as well. Each retry starts one byte further on and
/// walks at most the tokens again: tokens × key steps at worst.
fn glob(tokens: &[Token], s: &[u8]) -> bool {
    let (mut ti, mut si) = (0, 0);
    // After the last `*` seen: the token its pattern resumes at, and the key byte it
    // was last resumed at.
    let mut last_star: Option<(usize, usize)> = None;
    while si < s.len() {
        match tokens.get(ti) {
            Some(Token::Star) => {
                ti += 1;
                last_star = Some((ti, si));
                continue;
            }
            Some(t) if t.matches(s[si]) => {
                ti += 1;
                si += 1;
                continue;
            }
            _ => {}
        }
        let Some((resume, from)) = last_star else {
            return false;
        };
        last_star = Some((resume, from + 1));
        ti = resume;
        si = from + 1;
    }
    // The key is used up: what is left of the pattern must be a `*` or nothing.
    tokens[ti..].iter().all(|t| *t == Token::Star)
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
    /// Other patterns, parsed.
    globs: Vec<(Glob, u8)>,
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
                set.globs.push((Glob::new(pattern), tag));
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
        for (glob, tag) in &self.globs {
            if tags & tag != *tag && glob.matches(key) {
                tags |= tag;
            }
        }
        tags
    }
}

fn by_length(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A second matcher, for the tests and the `glob` fuzz target only: Redis's
/// `stringmatchlen` step by step, recursive (one level per group of `*`s), with its
/// early exit (after a `*` from whose every position the rest fails, it gives up
/// altogether). `matches` must agree with it. `None` for inputs too large to bother:
/// it is polynomial, but recursive and slower.
#[cfg(any(test, fuzzing))]
pub fn reference(pattern: &[u8], key: &[u8]) -> Option<bool> {
    if pattern.len().saturating_mul(key.len().max(1)) > 1 << 22 {
        return None;
    }
    // `KEYS *` and `SCAN MATCH *` list every key, the empty one too, without matching.
    if pattern == b"*" {
        return Some(true);
    }
    let mut give_up = false;
    Some(stringmatch(pattern, key, 0, &mut give_up))
}

/// `p` and `s`: what is left of the pattern and the key; `nesting`: the `*`s above.
#[cfg(any(test, fuzzing))]
fn stringmatch(mut p: &[u8], mut s: &[u8], nesting: usize, give_up: &mut bool) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        let c = s[0];
        // What is left of the pattern past the token that matches `c`.
        let rest = match p[0] {
            b'*' => {
                while p.first() == Some(&b'*') {
                    p = &p[1..];
                }
                if p.is_empty() {
                    return true;
                }
                while !s.is_empty() {
                    if stringmatch(p, s, nesting + 1, give_up) {
                        return true;
                    }
                    if *give_up {
                        return false;
                    }
                    s = &s[1..];
                }
                *give_up = true;
                return false;
            }
            b'?' => &p[1..],
            b'[' => {
                let mut q = &p[1..];
                let negated = q.first() == Some(&b'^');
                if negated {
                    q = &q[1..];
                }
                let mut hit = false;
                loop {
                    if q.len() >= 2 && q[0] == b'\\' {
                        hit = hit || q[1] == c;
                        q = &q[2..];
                    } else if q.first() == Some(&b']') {
                        q = &q[1..];
                        break;
                    } else if q.is_empty() {
                        break;
                    } else if q.len() >= 3 && q[1] == b'-' {
                        let (mut lo, mut hi) = (q[0] as c_char, q[2] as c_char);
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        hit = hit || (lo <= c as c_char && c as c_char <= hi);
                        q = &q[3..];
                    } else {
                        hit = hit || q[0] == c;
                        q = &q[1..];
                    }
                }
                if hit == negated {
                    return false;
                }
                q
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != c {
                    return false;
                }
                &p[2..]
            }
            b => {
                if b != c {
                    return false;
                }
                &p[1..]
            }
        };
        p = rest;
        s = &s[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
        }
    }
    p.is_empty() && s.is_empty()
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

    /// Redis's rules where they are easy to get wrong, each case checked against
    /// the reference as well.
    #[test]
    fn redis_quirks() {
        let signed = c_char::MIN != 0;
        let cases: &[(&[u8], &[u8], bool)] = &[
            // An empty key: only the empty pattern, and `*` alone (KEYS, SCAN).
            (b"", b"", true),
            (b"*", b"", true),
            (b"**", b"", false),
            (b"*a", b"", false),
            (b"?", b"", false),
            (b"[", b"", false),
            (b"", b"a", false),
            // `*`s, consecutive or not, match nothing as well.
            (b"a*", b"a", true),
            (b"a**", b"a", true),
            (b"a*b*", b"ab", true),
            (b"*a*", b"a", true),
            (b"a*b", b"ab", true),
            (b"a*b", b"a", false),
            (b"*?", b"a", true),
            (b"*??", b"a", false),
            (b"*a*b", b"xaxxbxb", true),
            (b"*a*b", b"xaxxbxc", false),
            // Classes.
            (b"[abc]", b"b", true),
            (b"[^abc]", b"b", false),
            (b"[^abc]", b"d", true),
            (b"[c-a]", b"b", true),
            (b"[a-c-e]", b"-", true),
            (b"[a-c-e]", b"d", false),
            (b"[]", b"a", false),
            (b"[]]", b"]", false),
            (b"[^]", b"x", true),
            (b"[^]]", b"x]", true),
            (b"[\\]]", b"]", true),
            (b"[\\-]", b"-", true),
            (b"[a\\-z]", b"b", false),
            (b"[a\\-z]", b"-", true),
            (b"[*]", b"*", true),
            (b"[*]", b"a", false),
            (b"[?]", b"a", false),
            // A range may end with `]`, and then the class goes on.
            (b"[a-]", b"_", true),
            (b"[a-]", b"-", false),
            (b"[a-]x", b"x", true),
            (b"[a-]x", b"_x", false),
            (b"[!-]]x", b"#x", true),
            // A class without its `]` runs to the end of the pattern.
            (b"[abc", b"b", true),
            (b"[abc", b"bc", false),
            (b"a[", b"a", false),
            (b"a[", b"ab", false),
            (b"[^", b"x", true),
            (b"[\\", b"\\", true),
            (b"[a-", b"-", true),
            // Escapes, and a lone `\` at the end.
            (b"\\a", b"a", true),
            (b"\\*", b"*", true),
            (b"\\*", b"x", false),
            (b"\\?", b"x", false),
            (b"\\[a]", b"[a]", true),
            (b"a\\", b"a\\", true),
            (b"a\\", b"a", false),
            (b"\\", b"\\", true),
            (b"\\\\", b"\\", true),
            // Raw bytes.
            (b"a\0*", b"a\0\xff", true),
            (b"?", b"\xff", true),
            (b"[\x80-\xff]", b"\x90", true),
            // Range bounds are C chars: `a` to 0xff is -1 to `a` where they are signed.
            (b"[a-\xff]", b"\xff", true),
            (b"[a-\xff]", b"A", signed),
            (b"[a-\xff]", b"\0", signed),
            (b"[a-\xff]", b"b", !signed),
            (b"[a-\xff]", b"\x80", !signed),
        ];
        for &(pattern, key, want) in cases {
            let show = |b: &[u8]| b.escape_ascii().to_string();
            let (p, k) = (show(pattern), show(key));
            assert_eq!(matches(pattern, key), want, "{p} against {k}");
            assert_eq!(
                reference(pattern, key),
                Some(want),
                "reference: {p} against {k}"
            );
            let set = Set::new([(pattern, 1)]);
            assert_eq!(set.tags(key) == 1, want, "Set: {p} against {k}");
        }
    }

    /// Redis recurses once per group of `*`s and gives up beyond 1000 levels; a final
    /// `*` does not recurse.
    #[test]
    fn nesting_limit() {
        let key = b"a".repeat(1001);
        for (pattern, want) in [
            (b"*a".repeat(1000), true),
            (b"*a".repeat(1001), false),
            ([b"*a".repeat(1001), b"*".to_vec()].concat(), false),
            (b"a*".repeat(1001), true),
            (b"**a".repeat(1000), true),
            ([b"*a".repeat(1000), b"*".to_vec()].concat(), true),
            // Stars in a class or escaped are not `*`s.
            ([b"[*]a".repeat(1001), b"*".to_vec()].concat(), false),
            ([b"\\*".repeat(1001), b"*a*".to_vec()].concat(), false),
        ] {
            assert_eq!(matches(&pattern, &key), want, "{}", pattern.len());
            assert_eq!(reference(&pattern, &key), Some(want), "{}", pattern.len());
        }
        let stars = [b"*a".repeat(1001), b"*".to_vec()].concat();
        assert!(!matches(&stars, b"aa"));
        assert!(matches(&b"*".repeat(5000), b"a"));
    }

    /// Patterns that make a matcher trying every split at every `*` take hours on a
    /// long key. The test is that this returns at all (a hang fails the run).
    #[test]
    fn hostile_patterns_finish() {
        let stars = |n: usize| [b"*a".repeat(n), b"b".to_vec()].concat();
        let a = |n: usize| b"a".repeat(n);
        let cases: Vec<(Vec<u8>, Vec<u8>, bool)> = vec![
            (stars(12), a(36), false),
            (stars(30), a(100), false),
            (stars(30), a(10_000), false),
            (stars(30), [a(10_000), b"b".to_vec()].concat(), true),
            (stars(1000), a(10_000), false),
            (
                b"job:*:*:*:*:x".to_vec(),
                [b"job:".to_vec(), b":".repeat(400)].concat(),
                false,
            ),
            (
                b"job:*:*:*:*:x".to_vec(),
                [b"job:".to_vec(), b":".repeat(10_000)].concat(),
                false,
            ),
            (
                b"*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?!".to_vec(),
                a(10_000),
                false,
            ),
            (
                b"*[a-b]*[^c]*[ab]*\\a*a*a*a*a*a*a*a*a*ac".to_vec(),
                a(10_000),
                false,
            ),
        ];
        for (pattern, key, want) in cases {
            let p = String::from_utf8_lossy(&pattern);
            assert_eq!(
                matches(&pattern, &key),
                want,
                "{p} against {} bytes",
                key.len()
            );
            let set = Set::new([(&pattern[..], 1)]);
            assert_eq!(set.tags(&key) == 1, want, "Set: {p}");
            if let Some(r) = reference(&pattern, &key) {
                assert_eq!(r, want, "reference: {p} against {} bytes", key.len());
            }
        }
    }

    /// Random short patterns and keys over the bytes that matter, against the
    /// reference (and `Set` against `matches`).
    #[test]
    fn agrees_with_reference() {
        const PATTERN_BYTES: &[u8] = b"ab*?[]^-\\\xff";
        const KEY_BYTES: &[u8] = b"ab]-^\\*\xff";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..200_000 {
            let pattern: Vec<u8> = (0..next(10))
                .map(|_| PATTERN_BYTES[next(PATTERN_BYTES.len())])
                .collect();
            let key: Vec<u8> = (0..next(8))
                .map(|_| KEY_BYTES[next(KEY_BYTES.len())])
                .collect();
            let got = matches(&pattern, &key);
            assert_eq!(
                Some(got),
                reference(&pattern, &key),
                "{} against {}",
                pattern.escape_ascii(),
                key.escape_ascii()
            );
            let set = Set::new([(&pattern[..], 1)]);
            assert_eq!(set.tags(&key) == 1, got, "Set: {}", pattern.escape_ascii());
        }
    }

    #[test]
    fn literal_patterns() {
        assert!(is_literal(b"cams"));
        assert!(!is_literal(b"cam*"));
        assert!(!is_literal(b"c[a]ms"));
    }
}
