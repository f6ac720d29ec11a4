//! Turning a handler's command template into the argv and environment of one run:
//! placeholder substitution, and the check that what comes out can reach execve.
//! Pure functions over bytes, so they are fuzzed on their own (`make fuzz`).

/// Replaces each placeholder in `template` with its bytes, in one left-to-right pass
/// (a value that contains a placeholder is not expanded again).
pub fn substitute(template: &str, vars: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len());
    let mut rest = template;
    'outer: while !rest.is_empty() {
        if rest.starts_with('{') {
            for (name, value) in vars {
                if let Some(after) = rest.strip_prefix(name) {
                    out.extend_from_slice(value);
                    rest = after;
                    continue 'outer;
                }
            }
        }
        let ch = rest.chars().next().map_or(1, char::len_utf8);
        out.extend_from_slice(&rest.as_bytes()[..ch]);
        rest = &rest[ch..];
    }
    out
}

/// Linux's per-argument limit (MAX_ARG_STRLEN, including the terminating NUL).
pub(crate) const MAX_ARG_STRLEN: usize = 128 * 1024;

/// Why this argv/environment cannot be passed to execve, if it cannot.
pub fn unspawnable(argv: &[Vec<u8>], env: &[(Vec<u8>, Vec<u8>)]) -> Option<String> {
    for (i, a) in argv.iter().enumerate() {
        if a.contains(&0) {
            return Some(format!(
                "argument {i} contains a NUL byte, which no argv can carry"
            ));
        }
        if a.len() >= MAX_ARG_STRLEN {
            return Some(format!(
                "argument {i} is {} bytes; Linux allows at most {} per argument",
                a.len(),
                MAX_ARG_STRLEN - 1
            ));
        }
    }
    for (k, v) in env {
        let name = String::from_utf8_lossy(k);
        if k.contains(&0) || v.contains(&0) {
            return Some(format!(
                "environment variable {name} contains a NUL byte, which no environment can carry"
            ));
        }
        if k.len() + v.len() + 1 >= MAX_ARG_STRLEN {
            return Some(format!(
                "environment variable {name} is longer than Linux's {} byte limit",
                MAX_ARG_STRLEN - 1
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_is_single_pass_and_byte_exact() {
        let v: &[u8] = b"{field};$(x)\xff";
        let out = substitute("--url={value}/{db}", &[("{value}", v), ("{db}", b"3")]);
        assert_eq!(out, b"--url={field};$(x)\xff/3".to_vec());
        assert_eq!(
            substitute("{nope}", &[("{value}", b"x")]),
            b"{nope}".to_vec()
        );
        assert_eq!(
            substitute("é{value}", &[("{value}", b"x")]),
            "éx".as_bytes()
        );
    }

    #[test]
    fn unspawnable_names_the_reason() {
        let nul = unspawnable(&[b"a\0b".to_vec()], &[]).unwrap();
        assert!(nul.contains("NUL"));
        let long = unspawnable(&[b"x".to_vec(), vec![b'a'; MAX_ARG_STRLEN]], &[]).unwrap();
        assert!(long.contains("argument 1"));
        assert!(unspawnable(&[vec![b'a'; MAX_ARG_STRLEN - 1]], &[]).is_none());
    }
}
