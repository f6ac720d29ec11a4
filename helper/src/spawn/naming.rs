//! The words of a spawn error: what failed, and its path. `cwd /srv/x: No such file
//! or directory`, `program ./worker.py (resolved to /etc/streamwatch/worker.py):
//! Permission denied`: the program as the handler wrote it, and the file the exec
//! was given when that differs (resolved relative to the config file by the module,
//! along PATH for a bare name, or relative to the run's working directory).

use crate::sys::error_text;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a run's errors name: its program and working directory.
#[derive(Default)]
pub(super) struct Names {
    /// The program as the handler wrote it (`./worker.py`), when `argv0` is its
    /// resolution.
    pub written: Option<Vec<u8>>,
    /// The command's first element.
    pub argv0: Vec<u8>,
    /// What the exec is given (`argv0`, or where PATH found it).
    pub exec_path: Vec<u8>,
    pub cwd: Option<Vec<u8>>,
}

fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// `what: why`, of the kind of `os`.
pub(super) fn named(what: String, os: &io::Error) -> io::Error {
    io::Error::new(os.kind(), format!("{what}: {}", error_text(os)))
}

impl Names {
    /// The file the exec is given, as a path a user can find: relative to the run's
    /// working directory (or the helper's, which is the server's) if it is relative.
    fn resolved(&self) -> PathBuf {
        let path = Path::new(OsStr::from_bytes(&self.exec_path));
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let base = match &self.cwd {
            Some(c) => PathBuf::from(OsStr::from_bytes(c)),
            None => std::env::current_dir().unwrap_or_default(),
        };
        let rest = path.strip_prefix("./").unwrap_or(path);
        base.join(rest)
    }

    /// The program as errors name it: `./worker.py (resolved to /etc/w/worker.py)`,
    /// or just its path when it was written as one.
    pub fn program(&self) -> String {
        let written = self.written.as_deref().unwrap_or(&self.argv0);
        let resolved = self.resolved();
        if resolved.as_os_str().as_bytes() == written {
            format!("program {}", text(written))
        } else {
            format!(
                "program {} (resolved to {})",
                text(written),
                resolved.display()
            )
        }
    }

    /// The working directory could not be entered.
    pub fn cwd_error(&self, os: &io::Error) -> io::Error {
        let cwd = self.cwd.as_deref().unwrap_or_default();
        named(format!("cwd {}", text(cwd)), os)
    }

    /// The exec failed: the program named, and for a script whose `#!` interpreter
    /// is missing (the exec says ENOENT of a file that is there), the interpreter.
    pub fn exec_error(&self, os: &io::Error) -> io::Error {
        let program = self.program();
        if os.raw_os_error() == Some(libc::ENOENT) {
            if let Some(interpreter) = interpreter(&self.resolved()) {
                return named(
                    format!("{program}: its #! interpreter {}", text(&interpreter)),
                    os,
                );
            }
        }
        named(program, os)
    }

    /// posix_spawn's error, which does not say which step failed: the cwd's if the
    /// cwd cannot be entered, else the program's.
    pub fn posix_spawn_error(&self, e: io::Error) -> io::Error {
        let enterable = |d: &[u8]| {
            let is_dir = std::fs::metadata(OsStr::from_bytes(d)).is_ok_and(|m| m.is_dir());
            let c = std::ffi::CString::new(d).ok();
            // SAFETY: a NUL-terminated path the call only reads.
            is_dir && c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
        };
        match (e.raw_os_error(), &self.cwd) {
            (None, _) => e,
            (Some(_), Some(d)) if !enterable(d) => self.cwd_error(&e),
            (Some(_), _) => self.exec_error(&e),
        }
    }

    /// A bare name that no directory of PATH has.
    pub fn not_in_path(&self, path: &[u8]) -> io::Error {
        let os = io::Error::from_raw_os_error(libc::ENOENT);
        named(
            format!(
                "program {} (not found in PATH {})",
                text(&self.argv0),
                text(path)
            ),
            &os,
        )
    }
}

/// The interpreter a `#!` script names on its first line, if `path` is one.
fn interpreter(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let word = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    Some(word.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(written: Option<&str>, argv0: &str, exec: &str, cwd: Option<&str>) -> Names {
        Names {
            written: written.map(|w| w.as_bytes().to_vec()),
            argv0: argv0.as_bytes().to_vec(),
            exec_path: exec.as_bytes().to_vec(),
            cwd: cwd.map(|c| c.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_program_is_named_as_written_and_as_resolved() {
        let n = names(Some("./w.py"), "/etc/sw/w.py", "/etc/sw/w.py", None);
        assert_eq!(n.program(), "program ./w.py (resolved to /etc/sw/w.py)");
        let n = names(None, "/bin/x", "/bin/x", Some("/srv"));
        assert_eq!(n.program(), "program /bin/x");
        let n = names(None, "sh", "/usr/bin/sh", Some("/srv"));
        assert_eq!(n.program(), "program sh (resolved to /usr/bin/sh)");
        let n = names(None, "bin/w", "bin/w", Some("/srv"));
        assert_eq!(n.program(), "program bin/w (resolved to /srv/bin/w)");
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        let e = n.exec_error(&eacces);
        assert_eq!(
            e.to_string(),
            "program bin/w (resolved to /srv/bin/w): Permission denied"
        );
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let enotdir = io::Error::from_raw_os_error(libc::ENOTDIR);
        assert_eq!(
            n.cwd_error(&enotdir).to_string(),
            "cwd /srv: Not a directory"
        );
        assert_eq!(
            n.not_in_path(b"/a:/b").to_string(),
            "program bin/w (not found in PATH /a:/b): No such file or directory"
        );
    }

    #[test]
    fn a_script_with_a_missing_interpreter_names_it() {
        let dir = std::env::temp_dir().join(format!("sw-naming-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s");
        std::fs::write(&script, "#! /nonexistent/python9 -u\nprint(1)\n").unwrap();
        let path = script.to_str().unwrap();
        let n = names(None, path, path, None);
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            n.exec_error(&enoent).to_string(),
            format!(
                "program {path}: its #! interpreter /nonexistent/python9: No such file or directory"
            )
        );
        let missing = names(None, "/nonexistent/x", "/nonexistent/x", None);
        assert_eq!(
            missing.exec_error(&enoent).to_string(),
            "program /nonexistent/x: No such file or directory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
