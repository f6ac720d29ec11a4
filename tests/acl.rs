//! ACL: what a restricted user can do with the STREAMWATCH.* commands, on Redis 7.0
//! (no module ACL categories) and on Valkey alike.
//!
//! It exists because an adversarial probe found the commands ignoring ACLs: a user
//! limited to `~app:*` read `secret:tokens` through `JOB` and listed its jobs with
//! `JOBS`; `WATCH`/`UNWATCH` rewrote the watches key the user could not write; on
//! Redis 7.0 `+@all -@dangerous` and `-@admin` users could still run the commands that
//! change what runs; and the documented viewer could edit the watches key by hand.
//! Every test here failed before the fix. The last one runs the recipe as
//! docs/commands.md documents it ("Access control").

mod common;

use common::*;

/// Two hashes under the same watch, one the restricted users may read.
fn server_with_secret() -> Server {
    let s = Server::start(&simple_config("*:tokens"));
    let mut admin = s.conn();
    ok(&mut admin, &["HSET", "secret:tokens", "api", "s3cr3t"]);
    ok(&mut admin, &["HSET", "app:tokens", "web", "hello"]);
    assert_workers(
        &s,
        &mut admin,
        &[
            ("secret:tokens", "api", "s3cr3t"),
            ("app:tokens", "web", "hello"),
        ],
    );
    s
}

fn user(s: &Server, name: &str, rules: &[&str]) -> redis::Connection {
    let mut admin = s.conn();
    let mut args = vec!["ACL", "SETUSER", name, "reset", "on", ">pw"];
    args.extend_from_slice(rules);
    ok(&mut admin, &args);
    let mut c = s.conn();
    ok(&mut c, &["AUTH", name, "pw"]);
    c
}

/// The error of a command refused by ACL: `NOPERM`, naming `what`.
fn noperm(c: &mut redis::Connection, args: &[&str], what: &str) -> String {
    let e = match run(c, args) {
        Ok(v) => panic!("{args:?} should have been refused, got {v:?}"),
        Err(e) => e,
    };
    let text = format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""));
    assert_eq!(e.code(), Some("NOPERM"), "{args:?}: {e}");
    assert!(
        text.to_lowercase().contains(&what.to_lowercase()),
        "{args:?}: {text:?} does not name {what:?}"
    );
    text
}

/// The `(reason, object)` of every `ACL LOG` entry of user `name`.
fn acl_log(admin: &mut redis::Connection, name: &str) -> Vec<(String, String)> {
    to_array(&ok(admin, &["ACL", "LOG"]))
        .iter()
        .map(to_map)
        .filter(|e| e.get("username").map(vstr).as_deref() == Some(name))
        .map(|e| (get_str(&e, "reason"), get_str(&e, "object")))
        .collect()
}

fn patterns(c: &mut redis::Connection) -> Vec<String> {
    let mut p: Vec<String> = parse_maps(&ok(c, &["STREAMWATCH.WATCHES"]))
        .iter()
        .map(|w| get_str(w, "pattern"))
        .collect();
    p.sort();
    p
}

fn keys_of(list: &[Map]) -> Vec<String> {
    let mut k: Vec<String> = list.iter().map(|j| get_str(j, "key")).collect();
    k.sort();
    k
}

const ADMIN_COMMANDS: [&[&str]; 6] = [
    &["STREAMWATCH.WATCH", "x:*", "HANDLER", "w"],
    &["STREAMWATCH.UNWATCH", "cmd:*"],
    &["STREAMWATCH.PAUSE"],
    &["STREAMWATCH.RESUME"],
    &["STREAMWATCH.RECONCILE"],
    &["STREAMWATCH.RESTART", "app:tokens", "web"],
];

#[test]
fn job_needs_read_permission_on_its_key() {
    let s = server_with_secret();
    let mut c = user(&s, "pub", &["~app:*", "+@all"]);
    let j = job(&mut c, "app:tokens", "web").expect("a readable job");
    assert_eq!(get_str(&j, "value"), "hello");
    for args in [
        &["STREAMWATCH.JOB", "secret:tokens", "api"][..],
        &["STREAMWATCH.JOB", "secret:tokens", "api", "DB", "0"],
    ] {
        noperm(&mut c, args, "key");
    }
    // RESTART updates its key: read permission is not enough.
    let mut ro = user(&s, "ro", &["%R~*", "+@all"]);
    assert!(job(&mut ro, "secret:tokens", "api").is_some());
    noperm(
        &mut ro,
        &["STREAMWATCH.RESTART", "secret:tokens", "api"],
        "key",
    );
    let mut rw = user(&s, "rw", &["~*", "+@all"]);
    assert_eq!(
        vint(&ok(
            &mut rw,
            &["STREAMWATCH.RESTART", "secret:tokens", "api"]
        )),
        Some(1)
    );
}

#[test]
fn jobs_lists_only_the_keys_the_user_may_read() {
    let s = server_with_secret();
    let mut c = user(&s, "pub", &["~app:*", "+@all"]);
    assert_eq!(keys_of(&jobs(&mut c)), ["app:tokens"]);
    assert_eq!(
        keys_of(&jobs_filtered(&mut c, &["WATCH", "*:tokens"])),
        ["app:tokens"]
    );
    // COUNT counts what the user may see.
    assert_eq!(
        keys_of(&jobs_filtered(&mut c, &["COUNT", "1"])),
        ["app:tokens"]
    );
    assert_eq!(
        keys_of(&jobs_filtered(&mut c, &["KEY", "app:tokens"])),
        ["app:tokens"]
    );
    let e = noperm(
        &mut c,
        &["STREAMWATCH.JOBS", "KEY", "secret:tokens"],
        "secret:tokens",
    );
    assert!(!e.contains("s3cr3t"), "{e}");
    // The default user sees everything.
    assert_eq!(
        keys_of(&jobs(&mut s.conn())),
        ["app:tokens", "secret:tokens"]
    );
}

#[test]
fn watch_and_unwatch_need_write_permission_on_the_watches_key() {
    let s = Server::start(&long_handler("w", ""));
    let mut admin = s.conn();
    ok(&mut admin, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    let mut c = user(&s, "pub", &["~app:*", "%R~*", "+@all"]);
    noperm(
        &mut c,
        &["STREAMWATCH.WATCH", "app:*", "HANDLER", "w"],
        "streamwatch:watches",
    );
    noperm(
        &mut c,
        &["STREAMWATCH.UNWATCH", "cmd:*"],
        "streamwatch:watches",
    );
    assert_eq!(patterns(&mut admin), ["cmd:*"]);
    assert_eq!(
        vint(&ok(&mut admin, &["HLEN", "streamwatch:watches"])),
        Some(1)
    );
    // Logged as the server logs its own refusals.
    let log = acl_log(&mut admin, "pub");
    assert!(
        log.contains(&("key".into(), "streamwatch:watches".into())),
        "{log:?}"
    );
    // With write permission on the key, the same user may.
    let mut c = user(&s, "op", &["~app:*", "~streamwatch:watches", "+@all"]);
    ok(&mut c, &["STREAMWATCH.WATCH", "app:*", "HANDLER", "w"]);
    ok(&mut c, &["STREAMWATCH.UNWATCH", "cmd:*"]);
    assert_eq!(patterns(&mut admin), ["app:*"]);
}

#[test]
fn users_without_admin_or_dangerous_cannot_change_what_runs() {
    let s = server_with_secret();
    let mut admin = s.conn();
    ok(&mut admin, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    for (name, rules) in [
        ("nodangerous", &["~*", "+@all", "-@dangerous"][..]),
        ("noadmin", &["~*", "+@all", "-@admin"]),
        ("readwrite", &["~*", "+@read", "+@write"]),
    ] {
        let mut c = user(&s, name, rules);
        for args in ADMIN_COMMANDS {
            noperm(&mut c, args, &args[0].to_lowercase());
        }
        let log = acl_log(&mut admin, name);
        assert!(
            log.contains(&("command".into(), "streamwatch.pause".into())),
            "{name}: {log:?}"
        );
        // Reading is still allowed where the rules give it.
        if name != "readwrite" {
            assert_eq!(jobs(&mut c).len(), 2, "{name}");
            ok(&mut c, &["STREAMWATCH.STATUS"]);
        }
    }
    assert_eq!(patterns(&mut admin), ["*:tokens", "cmd:*"]);
    let status = to_map(&ok(&mut admin, &["STREAMWATCH.STATUS"]));
    let paused = status.get("paused").map(vstr).unwrap_or_default();
    assert!(paused == "0" || paused == "false", "paused: {paused}");
    assert_workers(
        &s,
        &mut admin,
        &[
            ("secret:tokens", "api", "s3cr3t"),
            ("app:tokens", "web", "hello"),
        ],
    );
    // Granted by name (or with `+@admin`), they run.
    for (name, rules) in [
        (
            "byname",
            &["~*", "+streamwatch.pause", "+streamwatch.resume"][..],
        ),
        ("admins", &["~*", "+@all", "-@admin", "+@admin"]),
    ] {
        let mut c = user(&s, name, rules);
        ok(&mut c, &["STREAMWATCH.PAUSE"]);
        ok(&mut c, &["STREAMWATCH.RESUME"]);
    }
}

/// The `ACL SETUSER` lines of docs/commands.md's "Access control" section that this
/// server can run (`@streamwatch` needs module ACL categories).
fn documented_recipes(admin: &mut redis::Connection) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md"))
        .expect("docs/commands.md");
    let section = doc
        .split("\n## Access control")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an Access control section");
    let categories = run(admin, &["ACL", "CAT", "streamwatch"]).is_ok();
    let recipes: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .filter(|r: &Vec<String>| categories || !r.iter().any(|w| w.contains("@streamwatch")))
        .collect();
    assert!(!recipes.is_empty(), "no recipe in:\n{section}");
    recipes
}

#[test]
fn the_documented_users_read_what_they_may_and_change_nothing() {
    let s = server_with_secret();
    let mut admin = s.conn();
    ok(&mut admin, &["STREAMWATCH.WATCH", "cmd:*", "HANDLER", "w"]);
    for recipe in documented_recipes(&mut admin) {
        let args: Vec<&str> = recipe.iter().map(String::as_str).collect();
        ok(&mut admin, &args);
        let name = args[2];
        let password = args
            .iter()
            .find_map(|a| a.strip_prefix('>'))
            .expect("a password");
        let mut c = s.conn();
        ok(&mut c, &["AUTH", name, password]);
        // The viewer reads every job; the application the jobs of its own keys.
        let (readable, secret) = match name {
            "viewer" => (vec!["app:tokens", "secret:tokens"], true),
            "app" => (vec!["app:tokens"], false),
            _ => panic!("a recipe for an unknown user {name}"),
        };
        assert_eq!(keys_of(&jobs(&mut c)), readable, "{recipe:?}");
        let j = job(&mut c, "app:tokens", "web").expect("a readable job");
        assert_eq!(get_str(&j, "value"), "hello");
        if secret {
            let j = job(&mut c, "secret:tokens", "api").expect("the viewer reads a job");
            assert_eq!(get_str(&j, "value"), "s3cr3t");
        } else {
            noperm(&mut c, &["STREAMWATCH.JOB", "secret:tokens", "api"], "key");
        }
        assert_eq!(patterns(&mut c), ["*:tokens", "cmd:*"]);
        ok(&mut c, &["STREAMWATCH.HANDLERS"]);
        ok(&mut c, &["STREAMWATCH.STATUS"]);
        if secret {
            ok(&mut c, &["INFO", "streamwatch"]);
        }
        for cmd in ADMIN_COMMANDS {
            noperm(&mut c, cmd, &cmd[0].to_lowercase());
        }
        // Nor by hand: the watches key is not writable.
        for cmd in [
            &["HDEL", "streamwatch:watches", "cmd:*"][..],
            &[
                "HSET",
                "streamwatch:watches",
                "x:*",
                "handler = \"w\"\ntype = \"hash\"\ndb = 0\nonchange = \"restart\"",
            ],
            &["DEL", "streamwatch:watches"],
        ] {
            let e = run(&mut c, cmd).unwrap_err();
            assert_eq!(e.code(), Some("NOPERM"), "{recipe:?} {cmd:?}: {e}");
        }
        assert_eq!(patterns(&mut admin), ["*:tokens", "cmd:*"]);
    }
}

/// A hash watch on `h:*` in every database, with `h:db0 f1` in db 0 and
/// `h:db5secret f1` in db 5, both running.
fn server_with_db5_secret() -> Server {
    let s = Server::start(&format!(
        "{}\n{}",
        long_handler("w", ""),
        watch_toml("h:*", "w", Some("\"all\""))
    ));
    let mut admin = s.conn();
    ok(&mut admin, &["HSET", "h:db0", "f1", "v0"]);
    let mut db5 = s.conn_db(5);
    ok(&mut db5, &["HSET", "h:db5secret", "f1", "topsecretvalue"]);
    for (c, key) in [(&mut admin, "h:db0"), (&mut db5, "h:db5secret")] {
        running_pid(c, key, "f1");
    }
    s
}

/// `(db, key)` of every job listed.
fn db_keys(list: &[Map]) -> Vec<(i64, String)> {
    let mut k: Vec<(i64, String)> = list
        .iter()
        .map(|j| (get_int(j, "db").expect("db"), get_str(j, "key")))
        .collect();
    k.sort();
    k
}

/// Found by an adversarial review: `DB n` reached databases the user may not use
/// (Valkey 9's `db=` rules), and `JOBS` listed their jobs. `DB n` for a database other
/// than the connection's needs the right to `SELECT` it, on every server.
#[test]
fn db_option_needs_permission_on_the_database() {
    let s = server_with_db5_secret();
    let mut admin = s.conn();
    let db_rules = run(&mut admin, &["ACL", "SETUSER", "probe", "resetdbs", "db=0"]).is_ok();
    let mut users = Vec::new();
    if db_rules {
        users.push(("d0", vec!["~*", "+@all", "resetdbs", "db=0"]));
        // db 5 through a selector that grants other keys only.
        users.push((
            "d0sel",
            vec!["~*", "+@all", "resetdbs", "db=0", "(~other:* +@all db=5)"],
        ));
    }
    // Redis and Valkey: no SELECT, so only the connection's own database.
    users.push(("nosel", vec!["~*", "+@all", "-select"]));
    for (name, rules) in users {
        let mut c = user(&s, name, &rules);
        for args in [
            &["STREAMWATCH.JOB", "h:db5secret", "f1", "DB", "5"][..],
            &["STREAMWATCH.RESTART", "h:db5secret", "f1", "DB", "5"],
        ] {
            let e = noperm(&mut c, args, "database 5");
            assert!(!e.contains("topsecret"), "{name}: {e}");
        }
        // Nor may it watch the keys of a database it may not use (d0sel may use db 5,
        // for other keys).
        if name != "d0sel" {
            noperm(
                &mut c,
                &["STREAMWATCH.WATCH", "x:*", "HANDLER", "w", "DB", "5"],
                "database 5",
            );
            noperm(
                &mut c,
                &["STREAMWATCH.WATCH", "x:*", "HANDLER", "w", "DB", "ALL"],
                "database",
            );
        }
        assert_eq!(db_keys(&jobs(&mut c)), [(0, "h:db0".to_string())], "{name}");
        // Its own database, named or not.
        for args in [
            &["STREAMWATCH.JOB", "h:db0", "f1"][..],
            &["STREAMWATCH.JOB", "h:db0", "f1", "DB", "0"],
        ] {
            let j = to_map(&ok(&mut c, args));
            assert_eq!(get_str(&j, "value"), "v0", "{name}");
        }
        assert_eq!(
            vint(&ok(
                &mut c,
                &["STREAMWATCH.RESTART", "h:db0", "f1", "DB", "0"]
            )),
            Some(1),
            "{name}"
        );
    }
    // A user who may use db 5 sees it.
    let mut c = user(&s, "all", &["~*", "+@all"]);
    let j = to_map(&ok(
        &mut c,
        &["STREAMWATCH.JOB", "h:db5secret", "f1", "DB", "5"],
    ));
    assert_eq!(get_str(&j, "value"), "topsecretvalue");
    assert_eq!(db_keys(&jobs(&mut c)).len(), 2);
    if db_rules {
        // On Valkey a user limited to db 5 sees db 5 only (the server refuses its
        // commands in db 0).
        let mut c = user(&s, "d5", &["~*", "+@all", "resetdbs", "db=5"]);
        ok(&mut c, &["SELECT", "5"]);
        assert_eq!(
            db_keys(&jobs(&mut c)),
            [(5, "h:db5secret".to_string())],
            "d5"
        );
    }
}

/// Found by an adversarial review: the key check accepted a key that any selector
/// grants, whatever commands that selector allows, so `JOBS` listed the jobs of a key
/// whose selector allows only `TYPE`. `JOBS` now lists a key's jobs only if the user
/// could run `STREAMWATCH.JOB` on it.
#[test]
fn jobs_lists_a_key_only_if_the_user_may_run_job_on_it() {
    let s = server_with_secret();
    let mut c = user(
        &s,
        "s1",
        &["~app:*", "+@all", "-@dangerous", "(~secret:tokens +type)"],
    );
    ok(&mut c, &["TYPE", "secret:tokens"]);
    noperm(&mut c, &["STREAMWATCH.JOB", "secret:tokens", "api"], "");
    noperm(
        &mut c,
        &["STREAMWATCH.JOBS", "KEY", "secret:tokens"],
        "secret:tokens",
    );
    assert_eq!(keys_of(&jobs(&mut c)), ["app:tokens"]);
    assert_eq!(
        keys_of(&jobs_filtered(&mut c, &["WATCH", "*:tokens"])),
        ["app:tokens"]
    );
    // A selector that grants JOB on the key grants its jobs.
    let mut c = user(
        &s,
        "s2",
        &[
            "~app:*",
            "+@all",
            "-@dangerous",
            "(~secret:tokens +streamwatch.job)",
        ],
    );
    let j = job(&mut c, "secret:tokens", "api").expect("a readable job");
    assert_eq!(get_str(&j, "value"), "s3cr3t");
    assert_eq!(keys_of(&jobs(&mut c)), ["app:tokens", "secret:tokens"]);
    assert_eq!(
        keys_of(&jobs_filtered(&mut c, &["KEY", "secret:tokens"])),
        ["secret:tokens"]
    );
    // Without JOB, no job is listed, even of readable keys.
    let mut c = user(&s, "nojob", &["~*", "+@all", "-streamwatch.job"]);
    assert!(jobs(&mut c).is_empty());
    noperm(
        &mut c,
        &["STREAMWATCH.JOBS", "KEY", "app:tokens"],
        "app:tokens",
    );
}
