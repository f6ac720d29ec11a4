//! The one reader of `/proc/PID/stat`, shared through `#[path]` (as `src/protocol.rs`
//! is) by the module (`src/runner.rs`), the helper (`helper/src/identity.rs`) and the
//! test and bench harness (`tests/common/mod.rs`); each takes the fields it needs.

/// The text of `/proc/<pid>/stat`; `None` if there is no such process.
pub fn read(pid: impl std::fmt::Display) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// The fields of a `/proc/PID/stat` line from field 3 (state) on: the `n`th field of
/// proc(5) is item `n - 3`. The command name (field 2) may contain spaces and
/// parentheses: the fields start past its last `)`.
pub fn fields(stat: &str) -> Option<std::str::Split<'_, char>> {
    Some(stat.get(stat.rfind(')')? + 2..)?.split(' '))
}
