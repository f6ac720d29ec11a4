//! The supervision options of a handler (SPEC "Supervision"): `heartbeat-ms` (a run
//! silent that long is hung, see `supervisor/heartbeat.rs`) and `no-restart-exit-codes`
//! (checked here; what follows is `supervisor/policy.rs`'s for hash jobs and
//! `supervisor/queue/hung.rs`'s for stream entries).

use super::Handler;
use toml::Spanned;

impl Handler {
    /// Whether a run's exit (the code, or minus the signal) is one not to restart.
    pub fn no_restart(&self, exit: Option<i64>) -> bool {
        let code = exit.and_then(|n| u8::try_from(n).ok());
        code.is_some_and(|c| self.no_restart_exit_codes.contains(&c))
    }
}

/// A handler's `no-restart-exit-codes`: exit codes (0 to 255), and not for a pool (a
/// worker's exit is no entry's answer). `Err`: where and why.
pub(super) fn exit_codes(
    name: &str,
    pool: u32,
    codes: Option<Spanned<Vec<i64>>>,
) -> Result<Vec<u8>, (usize, String)> {
    let Some(codes) = codes else {
        return Ok(Vec::new());
    };
    let at = codes.span().start;
    let problem = |what: String| Err((at, format!("handler '{name}' {what}")));
    if pool > 0 {
        let why = "no-restart-exit-codes does not apply to its workers";
        return problem(format!("is a pool (pool = {pool}): {why}"));
    }
    let codes = codes.into_inner();
    match codes.iter().find(|c| u8::try_from(**c).is_err()) {
        Some(c) => problem(format!(
            "has {c} in no-restart-exit-codes: an exit code is 0 to 255"
        )),
        None => Ok(codes.into_iter().map(|c| c as u8).collect()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::time::Duration;

    #[test]
    fn heartbeat_and_no_restart_exit_codes() {
        let h = "[handler.a]\ncommand = [\"x\"]\n";
        let text = format!("{h}heartbeat-ms = 300\nno-restart-exit-codes = [0, 3, 255]\n");
        let a = &parse("f", &text).unwrap().handlers["a"];
        assert_eq!(a.heartbeat, Duration::from_millis(300));
        // The exit (the code, or minus the signal) -> not to restart.
        let table = [
            (None, false),
            (Some(0), true),
            (Some(3), true),
            (Some(4), false),
            (Some(-3), false),
            (Some(258), false),
        ];
        for (exit, want) in table {
            assert_eq!(a.no_restart(exit), want, "{exit:?}");
        }
        let b = &parse("f", h).unwrap().handlers["a"];
        assert_eq!(
            (b.heartbeat, b.no_restart(Some(0))),
            (Duration::ZERO, false)
        );
        for (rest, want) in [
            (
                "no-restart-exit-codes = [1, 256]",
                "line 3: handler 'a' has 256 in",
            ),
            (
                "no-restart-exit-codes = [-1]",
                "line 3: handler 'a' has -1 in",
            ),
            (
                "pool = 2\nno-restart-exit-codes = [3]",
                "line 4: handler 'a' is a pool",
            ),
        ] {
            let e = parse("f", &format!("{h}{rest}\n")).unwrap_err();
            assert!(e.starts_with(&format!("f: {want}")), "{rest:?}: {e}");
        }
    }
}
