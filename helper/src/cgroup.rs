//! A run's own cgroup v2, for its handler's `memory-max` and `cpu-max`: made with its
//! limits before the run's launch (the run's child moves itself in before its exec,
//! see `spawn`), and removed once the run is over: everything still in it is killed
//! (`cgroup.kill`), then the directory goes. One that is still busy (its processes
//! not gone yet) is tried again later (`Leftovers`).
//!
//! Where such cgroups can be made the module found at load (`src/limits.rs`).

use crate::protocol::Cgroup;
use crate::sys::error_text as text;
use std::io;
use std::path::{Path, PathBuf};

/// Makes run `run`'s cgroup in `c.parent`, with its limits written: its directory. The
/// error names the option and the file.
pub fn make(c: &Cgroup, run: u64) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let parent = Path::new(std::ffi::OsStr::from_bytes(&c.parent));
    let dir = parent.join(format!("streamwatch-{}-run-{run}", std::process::id()));
    let option = options(c);
    std::fs::create_dir(&dir).map_err(|e| {
        io::Error::other(format!("{option}: cgroup {}: {}", dir.display(), text(&e)))
    })?;
    let mut files = Vec::new();
    if let Some(bytes) = c.memory_max {
        files.push(("memory-max", "memory.max", format!("{bytes}\n")));
    }
    if let Some((quota, period)) = c.cpu_max {
        files.push(("cpu-max", "cpu.max", format!("{quota} {period}\n")));
    }
    for (option, file, value) in files {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, value.as_bytes()) {
            let _ = std::fs::remove_dir(&dir);
            return Err(io::Error::other(format!(
                "{option} {}: {}: {}",
                value.trim(),
                path.display(),
                text(&e)
            )));
        }
    }
    Ok(dir)
}

/// The options that asked for a cgroup, for error messages (`memory-max`, ...).
pub fn options(c: &Cgroup) -> &'static str {
    match (c.memory_max.is_some(), c.cpu_max.is_some()) {
        (true, true) => "memory-max/cpu-max",
        (true, false) => "memory-max",
        _ => "cpu-max",
    }
}

/// Removes a run's cgroup: whatever is left in it killed first. False while it is
/// still busy (killed processes not gone yet).
pub fn remove(dir: &Path) -> bool {
    // Linux 5.14; before it the run's group was killed already, and a process that left
    // the group keeps the cgroup busy until it ends.
    let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() != Some(libc::EBUSY),
    }
}

/// Run cgroups still busy when their run ended.
#[derive(Default)]
pub struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    /// Removes `dir`, or keeps it for a later `retry`.
    pub fn remove(&mut self, dir: PathBuf) {
        if !remove(&dir) {
            self.0.push(dir);
        }
    }

    /// Tries the busy ones again.
    pub fn retry(&mut self) {
        self.0.retain(|d| !remove(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_cgroup_is_made_with_its_limits_and_removed() {
        // On a plain directory: the files the kernel would have are written as asked.
        let parent = std::env::temp_dir().join(format!("sw-cg-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let c = Cgroup {
            parent: parent.to_str().unwrap().as_bytes().to_vec(),
            memory_max: Some(1 << 20),
            cpu_max: Some((50_000, 100_000)),
        };
        let dir = make(&c, 7).unwrap();
        assert_eq!(
            dir.file_name().unwrap().to_str().unwrap(),
            format!("streamwatch-{}-run-7", std::process::id())
        );
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "1048576\n");
        assert_eq!(read("cpu.max"), "50000 100000\n");
        let e = make(&c, 7).unwrap_err().to_string();
        assert!(
            e.starts_with("memory-max/cpu-max: cgroup ") && e.ends_with(": File exists"),
            "{e}"
        );
        // A plain directory with files is not empty: not removed, and not "busy".
        std::fs::remove_file(dir.join("memory.max")).unwrap();
        std::fs::remove_file(dir.join("cpu.max")).unwrap();
        let mut left = Leftovers::default();
        left.remove(dir.clone());
        // `cgroup.kill` was written (a plain file here), so the directory stays.
        assert!(dir.join("cgroup.kill").exists());
        assert!(left.0.is_empty(), "only EBUSY is tried again");
        std::fs::remove_dir_all(&parent).unwrap();
        let gone = Cgroup {
            parent: b"/nonexistent/cgroup".to_vec(),
            memory_max: None,
            cpu_max: Some((1000, 100_000)),
        };
        let e = make(&gone, 1).unwrap_err().to_string();
        assert!(
            e.starts_with("cpu-max: cgroup /nonexistent/cgroup/streamwatch-")
                && e.ends_with(": No such file or directory"),
            "{e}"
        );
    }
}
