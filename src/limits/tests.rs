//! The limits' values, checked by tables, and where runs' cgroups go, on files made up
//! for the purpose.

use super::*;

fn no_cgroups(_: &[&str]) -> Result<String, String> {
    Err("not here".into())
}

#[test]
fn sizes_counts_and_unlimited() {
    use Value::*;
    // (limit, value) -> Ok(value) or the start of the error
    let table: [(Rlimit, Value, Result<u64, &str>); 17] = [
        (Rlimit::As, Text("512M"), Ok(512 << 20)),
        (Rlimit::As, Text("100m"), Ok(100 << 20)),
        (Rlimit::As, Text("2G"), Ok(2 << 30)),
        (Rlimit::As, Text("1T"), Ok(1 << 40)),
        (Rlimit::As, Text("64k"), Ok(64 << 10)),
        (Rlimit::As, Num(4096), Ok(4096)),
        (Rlimit::As, Text("4096"), Ok(4096)),
        (Rlimit::As, Text("unlimited"), Ok(UNLIMITED)),
        (Rlimit::Core, Text("Infinity"), Ok(UNLIMITED)),
        (Rlimit::Core, Num(0), Ok(0)),
        (
            Rlimit::As,
            Text("1.5G"),
            Err("limit-as must be a number of bytes"),
        ),
        (Rlimit::As, Text("99999999999T"), Err("limit-as must be")),
        (Rlimit::As, Num(-1), Err("limit-as must be")),
        (Rlimit::Nofile, Num(1024), Ok(1024)),
        (
            Rlimit::Nofile,
            Text("1K"),
            Err("limit-nofile must be a non-negative integer"),
        ),
        (
            Rlimit::Cpu,
            Text("10s"),
            Err("limit-cpu must be a number of seconds"),
        ),
        (Rlimit::Nproc, Text(""), Err("limit-nproc must be")),
    ];
    for (r, v, want) in table {
        match (rlimit(r, v), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{r:?} {v}"),
            (Err(e), Err(want)) => assert!(e.starts_with(want), "{r:?} {v}: {e}"),
            (got, _) => panic!("{r:?} {v}: {got:?}"),
        }
    }
}

#[test]
fn every_option_checked_and_carried() {
    use Value::*;
    let raw = Raw {
        nice: Some((10, 1)),
        oom_score_adj: Some((-500, 2)),
        rlimits: vec![
            (Rlimit::Core, Num(0), 3),
            (Rlimit::As, Text("100M"), 4),
            (Rlimit::Nofile, Text("unlimited"), 5),
        ],
        memory_max: Some((Text("1G"), 6)),
        cpu_max: Some((Text("50%"), 7)),
    };
    let asked = std::cell::RefCell::new(Vec::new());
    let finder = |c: &[&str]| {
        asked.borrow_mut().extend(c.iter().map(|s| s.to_string()));
        Ok("/sys/fs/cgroup/redis".to_string())
    };
    let l = check(&raw, &finder).unwrap();
    assert_eq!(*asked.borrow(), ["memory", "cpu"]);
    assert_eq!(l.nice, Some(10));
    assert_eq!(l.oom_score_adj, -500);
    // In the order of Rlimit::ALL, whatever the file's.
    assert_eq!(
        l.rlimits,
        [
            (Rlimit::As, 100 << 20),
            (Rlimit::Nofile, UNLIMITED),
            (Rlimit::Core, 0)
        ]
    );
    assert_eq!(l.rlimit(Rlimit::Cpu), None);
    let w = l.wire();
    assert_eq!(
        (w.nice, w.oom_score_adj, w.rlimits.len()),
        (Some(10), Some(-500), 3)
    );
    assert_eq!(
        w.cgroup,
        Some(Cgroup {
            parent: b"/sys/fs/cgroup/redis".to_vec(),
            memory_max: Some(1 << 30),
            cpu_max: Some((50_000, 100_000)),
        })
    );
    // Nothing set: only the default oom_score_adj, no cgroup looked for.
    let l = check(&Raw::default(), &|_: &[&str]| panic!("not asked")).unwrap();
    assert_eq!(l, Limits::default());
    assert_eq!(l.wire().oom_score_adj, Some(DEFAULT_OOM_SCORE_ADJ));
    assert_eq!(l.wire().cgroup, None);
}

#[test]
fn bad_values_name_the_option_and_where() {
    use Value::*;
    let one = |f: fn(&mut Raw<'static>)| {
        let mut raw = Raw::default();
        f(&mut raw);
        check(&raw, &no_cgroups).unwrap_err()
    };
    type Row = (fn(&mut Raw<'static>), usize, &'static str);
    let table: [Row; 8] = [
        (|r| r.nice = Some((20, 9)), 9, "nice must be an integer from -20 to 19, got 20"),
        (|r| r.nice = Some((-21, 9)), 9, "nice must be an integer from -20 to 19, got -21"),
        (
            |r| r.oom_score_adj = Some((1001, 3)),
            3,
            "oom-score-adj must be an integer from -1000 to 1000, got 1001",
        ),
        (
            |r| r.oom_score_adj = Some((i64::MIN, 3)),
            3,
            "oom-score-adj must be an integer from -1000 to 1000",
        ),
        (
            |r| r.rlimits = vec![(Rlimit::As, Text("lots"), 4)],
            4,
            "limit-as must be a number of bytes (a K, M, G or T suffix is 1024 times the one before: 512M) or \"unlimited\", got \"lots\"",
        ),
        (
            |r| r.memory_max = Some((Text("unlimited"), 5)),
            5,
            "memory-max must be a positive number of bytes",
        ),
        (
            |r| r.cpu_max = Some((Num(50), 6)),
            6,
            "cpu-max must be a percentage of one CPU",
        ),
        (
            |r| r.memory_max = Some((Text("1G"), 7)),
            7,
            "memory-max, which needs a cgroup v2 subtree the server may write (docs/configuration.md, \"Limits\"), and there is none: not here",
        ),
    ];
    for (i, (f, at, want)) in table.into_iter().enumerate() {
        let (got_at, e) = one(f);
        assert_eq!(got_at, at, "row {i}: {e}");
        assert!(e.starts_with(want), "row {i}: {e}");
    }
    for (s, ok) in [
        ("50%", Some(50)),
        ("100000%", Some(100_000)),
        (" 200% ", Some(200)),
        ("0%", None),
        ("100001%", None),
        ("50", None),
        ("%", None),
        ("1.5%", None),
    ] {
        assert_eq!(percent(Text(s)), ok, "{s}");
    }
    // cpu-max alone asks for the cpu controller only, and names itself.
    let raw = Raw {
        cpu_max: Some((Text("20%"), 1)),
        ..Raw::default()
    };
    let (_, e) = check(&raw, &|c: &[&str]| Err(c.join(","))).unwrap_err();
    assert!(
        e.starts_with("cpu-max, which") && e.ends_with(": cpu"),
        "{e}"
    );
}

#[test]
fn the_servers_cgroup_from_proc() {
    let mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let hybrid = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    // (/proc/self/cgroup, mountinfo) -> (the directory, is the root) or the error
    type Row = (
        &'static str,
        &'static str,
        Result<(&'static str, bool), &'static str>,
    );
    let table: [Row; 6] = [
        (
            "0::/system.slice/redis.service/server\n",
            mi,
            Ok(("/sys/fs/cgroup/system.slice/redis.service/server", false)),
        ),
        ("0::/\n", mi, Ok(("/sys/fs/cgroup", true))),
        // A hybrid machine (this kind): v1 controllers, an empty v2 hierarchy.
        (
            "4:memory:/x\n0::/\n",
            hybrid,
            Ok(("/sys/fs/cgroup/unified", true)),
        ),
        (
            "4:memory:/x\n1:cpu:/\n",
            mi,
            Err("the server is in no cgroup v2"),
        ),
        (
            "0::/a\n",
            "35 31 0:32 / /m rw - cgroup cgroup rw\n",
            Err("no cgroup2"),
        ),
        (
            "0::/a/b\n",
            "30 23 0:26 /other /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n",
            Err("the server's cgroup /a/b is not under the cgroup2 mount /mnt/cg x"),
        ),
    ];
    for (i, (cg, mi, want)) in table.into_iter().enumerate() {
        match (server_cgroup(cg, mi), want) {
            (Ok((dir, root)), Ok((d, r))) => assert_eq!((dir.to_str().unwrap(), root), (d, r)),
            (Err(e), Err(w)) => assert!(e.starts_with(w), "row {i}: {e}"),
            (got, _) => panic!("row {i}: {got:?}"),
        }
    }
    // A mount of a cgroup below the root (a container's view).
    let sub = "30 23 0:26 /lxc/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let (dir, root) = server_cgroup("0::/lxc/c1/redis\n", sub).unwrap();
    assert_eq!(
        (dir.to_str().unwrap(), root),
        ("/sys/fs/cgroup/redis", false)
    );
}

#[test]
fn a_delegated_directory_is_usable_and_others_say_why() {
    let dir = std::env::temp_dir().join(format!("sw-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |f: &str, s: &str| std::fs::write(dir.join(f), s).unwrap();
    let e = usable(&dir, &["memory"]).unwrap_err();
    assert!(e.contains("cgroup.controllers: No such file"), "{e}");
    write("cgroup.controllers", "hugetlb\n");
    write("cgroup.subtree_control", "\n");
    write("cgroup.procs", "");
    let e = usable(&dir, &["memory"]).unwrap_err();
    assert!(
        e.starts_with("the memory controller is not available in")
            && e.contains("has 'hugetlb'; a cgroup v1 hierarchy may hold it"),
        "{e}"
    );
    write("cgroup.controllers", "cpuset cpu io memory pids\n");
    let e = usable(&dir, &["memory", "cpu"]).unwrap_err();
    assert!(
        e.ends_with(
            "cgroup.subtree_control does not enable memory for the runs' cgroups (it has '')"
        ),
        "{e}"
    );
    write("cgroup.subtree_control", "memory pids\n");
    assert!(usable(&dir, &["memory"]).is_ok());
    let e = usable(&dir, &["memory", "cpu"]).unwrap_err();
    assert!(e.contains("does not enable cpu"), "{e}");
    write("cgroup.subtree_control", "cpu memory pids\n");
    assert!(usable(&dir, &["memory", "cpu"]).is_ok());
    // The probe cgroup is gone again.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
