//! A handler's limits (`nice`, `oom-score-adj`, `limit-*`, `memory-max`, `cpu-max`):
//! their values as the config file gives them, checked at load, and what a run's spawn
//! request carries. The helper sets them in the run before its exec (see
//! `helper/src/spawn.rs`); what each means is in docs/configuration.md.
//!
//! `memory-max` and `cpu-max` need a cgroup v2 subtree the server may write: where one
//! is (`cgroup_parent`) is found at load, and a handler asking for them where there is
//! none is a load error that says why.

use crate::protocol::{self, Cgroup, Rlimit, UNLIMITED};
use std::path::{Path, PathBuf};

/// A worker's `oom_score_adj` unless its handler says otherwise: the most likely
/// process for the kernel to kill when memory runs out, so a worker goes before Redis.
pub const DEFAULT_OOM_SCORE_ADJ: i32 = 1000;
/// The `cpu.max` period of a run's cgroup, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// What a handler's runs are limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub nice: Option<i32>,
    pub oom_score_adj: i32,
    /// In the order of `Rlimit::ALL`, only those set.
    pub rlimits: Vec<(Rlimit, u64)>,
    /// Bytes.
    pub memory_max: Option<u64>,
    /// Percent of one CPU.
    pub cpu_max: Option<u64>,
    /// Where the runs' cgroups are made (found at load) when `memory_max` or `cpu_max`.
    pub cgroup_parent: Option<String>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nice: None,
            oom_score_adj: DEFAULT_OOM_SCORE_ADJ,
            rlimits: Vec::new(),
            memory_max: None,
            cpu_max: None,
            cgroup_parent: None,
        }
    }
}

impl Limits {
    /// The value of `r`, if the handler sets it (`UNLIMITED`: "unlimited").
    pub fn rlimit(&self, r: Rlimit) -> Option<u64> {
        self.rlimits.iter().find(|(x, _)| *x == r).map(|(_, v)| *v)
    }

    /// What a spawn request carries.
    pub fn wire(&self) -> protocol::Limits {
        protocol::Limits {
            nice: self.nice,
            oom_score_adj: Some(self.oom_score_adj),
            rlimits: self.rlimits.clone(),
            cgroup: self.cgroup_parent.as_ref().map(|parent| Cgroup {
                parent: parent.as_bytes().to_vec(),
                memory_max: self.memory_max,
                cpu_max: self
                    .cpu_max
                    .map(|pct| (pct * CPU_PERIOD_US / 100, CPU_PERIOD_US)),
            }),
        }
    }
}

/// A value of the file: a number or a word.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Num(i64),
    Text(&'a str),
}

/// One handler's limit options as the file has them, each with its byte offset.
#[derive(Default)]
pub struct Raw<'a> {
    pub nice: Option<(i64, usize)>,
    pub oom_score_adj: Option<(i64, usize)>,
    pub rlimits: Vec<(Rlimit, Value<'a>, usize)>,
    pub memory_max: Option<(Value<'a>, usize)>,
    pub cpu_max: Option<(Value<'a>, usize)>,
}

/// Where runs' cgroups can be made with the given controllers, or why not (see
/// `cgroup_parent`; tests pass their own).
pub type CgroupFinder<'a> = &'a dyn Fn(&[&str]) -> Result<String, String>;

/// Checks one handler's limits; the error is where in the file, and the problem
/// naming the option.
pub fn check(raw: &Raw, cgroups: CgroupFinder) -> Result<Limits, (usize, String)> {
    let mut l = Limits::default();
    if let Some((n, at)) = raw.nice {
        l.nice = Some(in_range("nice", n, -20, 19).map_err(|e| (at, e))?);
    }
    if let Some((n, at)) = raw.oom_score_adj {
        l.oom_score_adj = in_range("oom-score-adj", n, -1000, 1000).map_err(|e| (at, e))?;
    }
    for r in Rlimit::ALL {
        if let Some((_, v, at)) = raw.rlimits.iter().find(|(x, ..)| *x == r) {
            l.rlimits.push((r, rlimit(r, *v).map_err(|e| (*at, e))?));
        }
    }
    if let Some((v, at)) = raw.memory_max {
        let bytes = size(v).filter(|&b| b > 0 && b != UNLIMITED);
        l.memory_max = Some(bytes.ok_or_else(|| {
            (
                at,
                format!("memory-max must be a positive number of bytes {SIZES}, got {v}"),
            )
        })?);
    }
    if let Some((v, at)) = raw.cpu_max {
        l.cpu_max = Some(percent(v).ok_or_else(|| {
            (
                at,
                format!(
                    "cpu-max must be a percentage of one CPU from 1% to 100000% (\"50%\", \
                     \"200%\" for two CPUs), got {v}"
                ),
            )
        })?);
    }
    let (option, at, controllers): (&str, usize, &[&str]) = match (raw.memory_max, raw.cpu_max) {
        (Some((_, a)), Some(_)) => ("memory-max", a, &["memory", "cpu"]),
        (Some((_, a)), None) => ("memory-max", a, &["memory"]),
        (None, Some((_, a))) => ("cpu-max", a, &["cpu"]),
        (None, None) => return Ok(l),
    };
    l.cgroup_parent = Some(cgroups(controllers).map_err(|why| {
        (
            at,
            format!(
                "{option}, which needs a cgroup v2 subtree the server may write \
                 (docs/configuration.md, \"Limits\"), and there is none: {why}"
            ),
        )
    })?);
    Ok(l)
}

const SIZES: &str = "(a K, M, G or T suffix is 1024 times the one before: 512M)";

impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Value::Num(n) => write!(f, "{n}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

fn in_range(option: &str, n: i64, lo: i32, hi: i32) -> Result<i32, String> {
    i32::try_from(n)
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| format!("{option} must be an integer from {lo} to {hi}, got {n}"))
}

fn is_unlimited(v: Value) -> bool {
    matches!(v, Value::Text(s) if ["unlimited", "infinity"].contains(&s.trim().to_ascii_lowercase().as_str()))
}

/// A resource limit's value: bytes for `limit-as` and `limit-core` (suffixes allowed),
/// a count for the others (seconds for `limit-cpu`), or "unlimited".
pub fn rlimit(r: Rlimit, v: Value) -> Result<u64, String> {
    if is_unlimited(v) {
        return Ok(UNLIMITED);
    }
    let (n, what) = match r {
        Rlimit::As | Rlimit::Core => (size(v), format!("a number of bytes {SIZES}")),
        Rlimit::Cpu => (count(v), "a number of seconds".to_string()),
        Rlimit::Nofile | Rlimit::Nproc => (count(v), "a non-negative integer".to_string()),
    };
    n.filter(|&n| n != UNLIMITED)
        .ok_or_else(|| format!("{} must be {what} or \"unlimited\", got {v}", r.option()))
}

/// A plain non-negative integer (a number, or digits in a string).
fn count(v: Value) -> Option<u64> {
    match v {
        Value::Num(n) => u64::try_from(n).ok(),
        Value::Text(s) => digits(s.trim()),
    }
}

fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Bytes: a number, or digits with an optional K, M, G or T suffix (powers of 1024).
pub fn size(v: Value) -> Option<u64> {
    let s = match v {
        Value::Num(n) => return u64::try_from(n).ok(),
        Value::Text(s) => s.trim(),
    };
    let (num, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    digits(num)?.checked_mul(1 << shift)
}

/// "N%" with N from 1 to 100000.
fn percent(v: Value) -> Option<u64> {
    let Value::Text(s) = v else { return None };
    digits(s.trim().strip_suffix('%')?).filter(|n| (1..=100_000).contains(n))
}

// ---- where runs' cgroups go ----

/// The directory in which each run that has `memory-max` or `cpu-max` gets a cgroup of
/// its own, or why there is none. It is the parent of the server's cgroup (the
/// server's own if that is the root): the server must sit in a leaf of a subtree
/// delegated to its user, whose top enables the controllers for its children. Checked:
/// the server is in a cgroup v2 hierarchy; `controllers` are available there
/// (`cgroup.controllers`) and enabled for the children (`cgroup.subtree_control`); the
/// server may make a cgroup there and move a process into it (`cgroup.procs`).
pub fn cgroup_parent(controllers: &[&str]) -> Result<String, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let (dir, root) = server_cgroup(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
    let parent = if root {
        dir
    } else {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    };
    usable(&parent, controllers)?;
    Ok(parent.to_string_lossy().into_owned())
}

/// The server's cgroup v2 directory, and whether it is the root of the hierarchy
/// mounted, from `/proc/self/cgroup` and `/proc/self/mountinfo`.
pub fn server_cgroup(proc_cgroup: &str, mountinfo: &str) -> Result<(PathBuf, bool), String> {
    let path = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("the server is in no cgroup v2 hierarchy (cgroup v1 only)")?;
    let (root, mount) = mountinfo
        .lines()
        .find_map(cgroup2_mount)
        .ok_or("no cgroup2 filesystem is mounted")?;
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| {
                format!("the server's cgroup {path} is not under the cgroup2 mount {mount}")
            })?
    };
    let rel = rel.trim_start_matches('/');
    let dir = match rel {
        "" => PathBuf::from(mount),
        rel => Path::new(&mount).join(rel),
    };
    Ok((dir, rel.is_empty()))
}

/// A mountinfo line's (root, mount point) if it mounts cgroup2.
fn cgroup2_mount(line: &str) -> Option<(String, String)> {
    let (head, tail) = line.split_once(" - ")?;
    if tail.split(' ').next()? != "cgroup2" {
        return None;
    }
    let mut f = head.split(' ');
    let root = f.nth(3)?;
    let mount = f.next()?;
    Some((unescape(root), unescape(mount)))
}

/// mountinfo's octal escapes (`\040` for a space) decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether runs' cgroups can be made in `dir` with `controllers`; why not.
pub fn usable(dir: &Path, controllers: &[&str]) -> Result<(), String> {
    let d = dir.display();
    let list = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{d}/{file}: {e}"))
    };
    let available = list("cgroup.controllers")?;
    let enabled = list("cgroup.subtree_control")?;
    for c in controllers {
        if !available.split_whitespace().any(|x| x == *c) {
            return Err(format!(
                "the {c} controller is not available in {d} (its cgroup.controllers has \
                 '{available}'; a cgroup v1 hierarchy may hold it)"
            ));
        }
        if !enabled.split_whitespace().any(|x| x == *c) {
            return Err(format!(
                "{d}/cgroup.subtree_control does not enable {c} for the runs' cgroups \
                 (it has '{enabled}')"
            ));
        }
    }
    let probe = dir.join(format!("streamwatch-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir(&probe);
    std::fs::create_dir(&probe).map_err(|e| format!("cannot make a cgroup in {d}: {e}"))?;
    let _ = std::fs::remove_dir(&probe);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| format!("cannot move a run into a cgroup of {d}: cgroup.procs: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
