//! Turning a handler's command template into the argv and environment of one run:
//! placeholder substitution, and the check that what comes out can reach execve.
//! Pure functions over bytes, so they are fuzzed on their own (`make fuzz`).
//!
//! What a placeholder is (`placeholders`, documented in docs/configuration.md): `{`, a
//! name, `}`. The names are `key`, `field`, `value`, `db`, `id` and `field:NAME`
//! (NAME: a stream entry's field, any text without braces). Anything else written
//! like a placeholder (`{` then an ASCII letter or `_`, then letters, digits, `_`, `-`,
//! `.` or `:`, then `}`: `{feild}`, `{Value}`, `{field:}`) is an unknown placeholder,
//! which the config file refuses; other braces are text (`{"a":1}`, `{}`, `{ x }`,
//! `{0}`), and so is a would-be placeholder right after `$` (`${HOME}` in a shell
//! script).

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

/// One placeholder of a template, as `placeholders` finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder<'a> {
    /// `{key}`, `{db}`: every job has them.
    Any(&'a str),
    /// `{field}`, `{value}`: hash jobs only.
    Hash(&'a str),
    /// `{id}`, `{field:NAME}`: stream jobs only.
    Stream(&'a str),
    /// Written like a placeholder, but none (`{feild}`).
    Unknown(&'a str),
}

impl<'a> Placeholder<'a> {
    /// The placeholder as written (`{field:url}`).
    pub fn text(self) -> &'a str {
        match self {
            Placeholder::Any(t)
            | Placeholder::Hash(t)
            | Placeholder::Stream(t)
            | Placeholder::Unknown(t) => t,
        }
    }

    /// The NAME of a `{field:NAME}`.
    pub fn entry_field(self) -> Option<&'a str> {
        match self {
            Placeholder::Stream(t) => t.strip_prefix("{field:")?.strip_suffix('}'),
            _ => None,
        }
    }
}

/// The placeholders in `template`, left to right (see the top of this file for what
/// is one).
pub fn placeholders(template: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = template[from..].find('{').map(|i| i + from) {
        let rest = &template[i..];
        // `{field:NAME}`: NAME is any text without braces.
        if let Some(name) = rest.strip_prefix("{field:") {
            if let Some(end) = name.find(['{', '}']).filter(|&e| e > 0) {
                if name.as_bytes()[end] == b'}' {
                    let len = "{field:".len() + end + 1;
                    found.push(Placeholder::Stream(&rest[..len]));
                    from = i + len;
                    continue;
                }
            }
        }
        let name_len = rest[1..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(b))
            .count();
        let looks_like_one = rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && rest.as_bytes().get(1 + name_len) == Some(&b'}');
        if !looks_like_one {
            from = i + 1;
            continue;
        }
        let text = &rest[..name_len + 2];
        let p = match text {
            "{key}" | "{db}" => Placeholder::Any(text),
            "{field}" | "{value}" => Placeholder::Hash(text),
            "{id}" => Placeholder::Stream(text),
            // After `$`: a shell's `${NAME}`, left as text.
            _ if template[..i].ends_with('$') => {
                from = i + 1;
                continue;
            }
            _ => Placeholder::Unknown(text),
        };
        found.push(p);
        from = i + text.len();
    }
    found
}

/// Why a run cannot be given these templates with these `vars` (the values
/// `substitute` puts in): the first placeholder with no value, such as the
/// `{field:NAME}` of a field the stream entry does not have. An unknown placeholder
/// is no reason (the config file refuses those; here it is text).
pub fn unfilled<'t>(
    templates: impl IntoIterator<Item = &'t str>,
    vars: &[(&str, &[u8])],
) -> Option<String> {
    let missing = templates
        .into_iter()
        .flat_map(placeholders)
        .filter(|p| !matches!(p, Placeholder::Unknown(_))) // refused at load; text here
        .find(|p| !vars.iter().any(|(name, _)| *name == p.text()))?;
    Some(match missing.entry_field() {
        Some(name) => format!(
            "the entry has no field '{name}' (the handler's placeholder {})",
            missing.text()
        ),
        None => format!("the placeholder {} has no value here", missing.text()),
    })
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
    fn placeholders_are_braced_names_and_other_braces_are_text() {
        use Placeholder::*;
        let found = |t: &'static str| placeholders(t);
        assert_eq!(
            found("--id={field}:{value}/{key}@{db}"),
            [Hash("{field}"), Hash("{value}"), Any("{key}"), Any("{db}")]
        );
        assert_eq!(
            found("{id} {field:url} {field:a b.c}"),
            [
                Stream("{id}"),
                Stream("{field:url}"),
                Stream("{field:a b.c}")
            ]
        );
        assert_eq!(
            found("{field:url}").first().and_then(|p| p.entry_field()),
            Some("url")
        );
        for unknown in [
            "{feild}",
            "{Value}",
            "{field:}",
            "{value:x}",
            "{a.b-c_d}",
            "{_x}",
        ] {
            assert_eq!(found(unknown), [Unknown(unknown)], "{unknown}");
        }
        for text in [
            r#"{"a":1}"#,
            "{}",
            "{ key }",
            "{0}",
            "{1x}",
            "${HOME}",
            "echo ${x:-y}",
            "{key",
            "key}",
            "{{",
            "{field:{x}",
        ] {
            let p = found(text);
            assert!(p.iter().all(|p| p.text() == "{x}"), "{text}: {p:?}");
        }
        assert_eq!(found("{field:{x}"), [Unknown("{x}")]);
        // A known one is a placeholder after `$` too (substitute puts it in there).
        assert_eq!(found("${value}"), [Hash("{value}")]);
        assert_eq!(found("{{key}}"), [Any("{key}")]);
        assert_eq!(found("é{id}ü"), [Stream("{id}")]);
    }

    #[test]
    fn unfilled_names_the_missing_entry_field() {
        let vars: &[(&str, &[u8])] = &[("{key}", b"q"), ("{field:url}", b"u")];
        assert_eq!(unfilled(["{key} {field:url}", "x"], vars), None);
        assert_eq!(
            unfilled(["{field:url}", "{field:name}"], vars).as_deref(),
            Some("the entry has no field 'name' (the handler's placeholder {field:name})")
        );
        assert_eq!(
            unfilled(["{value}"], vars).as_deref(),
            Some("the placeholder {value} has no value here")
        );
        assert_eq!(unfilled([r#"{"a":1} ${HOME} {nope}"#], &[]), None);
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
