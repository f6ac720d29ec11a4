//! Whether two key patterns can match one key (`may_overlap`): two stream watches of
//! one consumer group whose patterns can meet would run every entry of that stream
//! twice, so `WATCH` and the config file refuse them. Here, beside the matcher, because
//! it walks the matcher's tokens.

use super::{tokens, Token};

/// Product states `may_overlap` explores at most; past that it answers "maybe". It
/// runs on the main thread (WATCH), once per watch of the same group: a few ms at most.
const OVERLAP_STATES: usize = 1 << 18;

/// Could some key match both patterns? Exact for patterns whose tokens fit in
/// `OVERLAP_STATES` pairs, and otherwise `true`: an answer of `false` is always right.
/// (Redis's quirks lean the same way: the empty key and patterns with over 1000 `*`s
/// match less than their tokens say, so `true` may be too cautious there, never wrong.)
///
/// Both patterns as tokens walk one key together: a pair of positions (one in each)
/// is reachable if a key prefix takes both there; a `*` may take nothing (step past it)
/// or one byte (stay); any other token takes one byte it matches. The patterns
/// overlap if both can reach their ends together. At most (n+1)(m+1) pairs.
pub fn may_overlap(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (tokens(a), tokens(b));
    let (n, m) = (a.len(), b.len());
    let Some(states) = (n + 1).checked_mul(m + 1).filter(|s| *s <= OVERLAP_STATES) else {
        return true;
    };
    let nonempty = |t: &Token| match t {
        Token::Class(bits) => bits.iter().any(|w| *w != 0),
        _ => true,
    };
    let both = |x: &Token, y: &Token| match (x, y) {
        (Token::Star | Token::Any, t) | (t, Token::Star | Token::Any) => nonempty(t),
        (Token::Byte(c), t) | (t, Token::Byte(c)) => t.matches(*c),
        (Token::Class(p), Token::Class(q)) => p.iter().zip(q).any(|(p, q)| p & q != 0),
    };
    let mut seen = vec![false; states];
    let mut todo = vec![(0usize, 0usize)];
    seen[0] = true;
    while let Some((i, j)) = todo.pop() {
        if (i, j) == (n, m) {
            return true;
        }
        let (x, y) = (a.get(i), b.get(j));
        let mut next = Vec::with_capacity(3);
        if x == Some(&Token::Star) {
            next.push((i + 1, j));
        }
        if y == Some(&Token::Star) {
            next.push((i, j + 1));
        }
        if let (Some(x), Some(y)) = (x, y) {
            if both(x, y) {
                match (x == &Token::Star, y == &Token::Star) {
                    (true, true) => {}
                    (true, false) => next.push((i, j + 1)),
                    (false, true) => next.push((i + 1, j)),
                    (false, false) => next.push((i + 1, j + 1)),
                }
            }
        }
        for (i, j) in next {
            let k = i * (m + 1) + j;
            if !seen[k] {
                seen[k] = true;
                todo.push((i, j));
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::matches;

    #[test]
    fn overlapping_patterns() {
        let o = |a: &str, b: &str| may_overlap(a.as_bytes(), b.as_bytes());
        for (a, b) in [
            ("q", "q"),
            ("q:*", "q:1"),
            ("q:*", "*:1"),
            ("*", "x"),
            ("a?c", "[ab]bc"),
            ("jobs:[0-9]*", "jobs:7x"),
            ("a*b*c", "*bbb*"),
            ("\\*x", "\\*[x]"),
        ] {
            assert!(o(a, b) && o(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("q", "r"),
            ("q:*", "r:*"),
            ("a?", "a"),
            ("[ab]x", "[^ab]x"),
            ("*.jpg", "*.png"),
            ("\\*", "a*"),
            ("a*z", "b*"),
        ] {
            assert!(!o(a, b) && !o(b, a), "{a} {b}");
        }
        // Sound against brute force: every pair with a common key says so.
        let pats = [
            "a", "b", "*", "?", "a*", "*b", "[ab]", "[^a]*", "a?b", "*a*", "?*?", "ab",
        ];
        let mut keys = vec![Vec::new()];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = keys
                .iter()
                .flat_map(|k: &Vec<u8>| b"abc".iter().map(move |c| [k.as_slice(), &[*c]].concat()))
                .collect();
            keys.extend(longer);
        }
        keys.sort();
        keys.dedup();
        // A key as a literal pattern meets a pattern exactly when it matches it.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let parts: [&[u8]; 9] = [
            b"a", b"b", b"*", b"?", b"[ab]", b"[^a]", b"\\*", b"[a-c]", b"c",
        ];
        for _ in 0..20_000 {
            let pattern: Vec<u8> = (0..1 + next(6))
                .flat_map(|_| parts[next(9)].to_vec())
                .collect();
            let key: Vec<u8> = (0..1 + next(6)).map(|_| b"abc*"[next(4)]).collect();
            let literal: Vec<u8> = key
                .iter()
                .flat_map(|&b| if b == b'*' { vec![b'\\', b] } else { vec![b] })
                .collect();
            assert_eq!(
                may_overlap(&pattern, &literal),
                matches(&pattern, &key),
                "{} {}",
                pattern.escape_ascii(),
                key.escape_ascii()
            );
        }
        for a in pats {
            for b in pats {
                let common = keys
                    .iter()
                    .any(|k| !k.is_empty() && matches(a.as_bytes(), k) && matches(b.as_bytes(), k));
                assert_eq!(o(a, b), common, "{a} {b}");
            }
        }
    }
}
