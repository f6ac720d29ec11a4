//! What the commands check themselves, beyond the server's own ACL checks (command
//! permissions, and the key arguments declared in `lib.rs`: JOB reads its key, RESTART
//! updates it, both in the connection's database):
//! * `DB n` for a database other than the connection's needs the right to `SELECT` it
//!   (`ACL DRYRUN user SELECT n`: on Valkey 9 that includes its `db=` rules), and the
//!   command must be allowed on its key in that database (`ACL DRYRUN` of the command,
//!   run in database `n`: the server judges command, key and database within one
//!   selector, as it does for the command itself);
//! * `JOBS KEY k` needs the right to run `STREAMWATCH.JOB k`, and `JOBS` lists the jobs
//!   of a key only where the caller could run `STREAMWATCH.JOB` on it, in the job's
//!   database (see [`JobJudge`]);
//! * `REPLAY` moves entries out of dead-letter streams, keys it does not name: the caller
//!   must be allowed to read and write each;
//! * `WATCH` and `UNWATCH` write the watches store, so the caller must be allowed to
//!   write that key (the pattern is not a key: the commands are `@admin`, and every
//!   job's data is still guarded by JOB and JOBS);
//! * on servers where modules cannot put commands into ACL categories (Redis 7.0), the
//!   commands that change what runs are judged as if they were in `@admin` and
//!   `@dangerous`, as they are elsewhere: a user given `+@all -@dangerous` or `-@admin`
//!   may not run them (see [`grants`]).
//!
//! A context without a user (the server's own clients) is not restricted.

use crate::ffi::{self, AclUser, CmdError};
use redis_module::{Context, RedisValue};
use std::collections::HashMap;

/// The ACL user a command runs as; `None` for the server's own clients.
#[derive(Clone)]
pub struct Caller(Option<Vec<u8>>);

impl Caller {
    pub fn current(ctx: &Context) -> Caller {
        Caller(ffi::current_user(ctx))
    }

    /// The user's name, if a user restricts this caller.
    pub fn name(&self) -> Option<&[u8]> {
        self.0.as_deref()
    }

    fn may(&self, key: &[u8], write: bool) -> bool {
        match &self.0 {
            None => true,
            Some(name) => AclUser::by_name(name).is_some_and(|u| u.may(key, write)),
        }
    }

    /// Puts a refusal into `ACL LOG`, as the server does for its own.
    fn log(&self, ctx: &Context, object: &[u8], key: bool) {
        if let Some(u) = self.0.as_deref().and_then(AclUser::by_name) {
            u.log_refusal(ctx, object, key);
        }
    }

    /// `NOPERM` naming the key unless the caller may write it.
    pub fn check_write(&self, ctx: &Context, key: &[u8], what: &str) -> Result<(), CmdError> {
        self.check_key(ctx, key, true, what)
    }

    /// `NOPERM` naming the key unless the caller may read it.
    pub fn check_read(&self, ctx: &Context, key: &[u8], what: &str) -> Result<(), CmdError> {
        self.check_key(ctx, key, false, what)
    }

    fn check_key(
        &self,
        ctx: &Context,
        key: &[u8],
        write: bool,
        what: &str,
    ) -> Result<(), CmdError> {
        if self.may(key, write) {
            return Ok(());
        }
        self.log(ctx, key, true);
        Err(CmdError::Msg(format!(
            "NOPERM this user has no permissions to {} {what} '{}'",
            if write { "write" } else { "read" },
            String::from_utf8_lossy(key)
        )))
    }
}

impl Caller {
    /// May the caller use database `db` by option, from a connection in `current`? Its
    /// own database, or one it may `SELECT`.
    pub fn may_use_db(&self, ctx: &Context, db: i32, current: i32) -> bool {
        match &self.0 {
            None => true,
            Some(_) if db == current => true,
            Some(user) => dry_run(ctx, user, &[b"SELECT", db.to_string().as_bytes()]),
        }
    }

    /// May the caller run `args` (a command and its arguments) in database `db`, as the
    /// server would judge it there (command, keys and, on Valkey 9, database, within one
    /// selector)?
    pub fn may_run_in(&self, ctx: &Context, db: i32, args: &[&[u8]]) -> bool {
        let Some(user) = &self.0 else {
            return true;
        };
        let selected = ffi::selected_db(ctx);
        if selected != db && !ffi::select_db(ctx, db) {
            return false;
        }
        let may = dry_run(ctx, user, args);
        if selected != db {
            ffi::select_db(ctx, selected);
        }
        may
    }

    /// `NOPERM` naming the database unless the caller may use it (see [`may_use_db`]).
    ///
    /// [`may_use_db`]: Caller::may_use_db
    pub fn check_db(&self, ctx: &Context, db: i32, current: i32) -> Result<(), CmdError> {
        if self.may_use_db(ctx, db, current) {
            return Ok(());
        }
        self.log(ctx, b"select", false);
        Err(CmdError::Msg(format!(
            "NOPERM this user has no permissions to access database {db}"
        )))
    }

    /// `NOPERM` naming the key and the database unless the caller may run `args`, whose
    /// key is `key`, in database `db` (see [`may_run_in`]).
    ///
    /// [`may_run_in`]: Caller::may_run_in
    pub fn check_run_in(
        &self,
        ctx: &Context,
        db: i32,
        args: &[&[u8]],
        key: &[u8],
    ) -> Result<(), CmdError> {
        if self.may_run_in(ctx, db, args) {
            return Ok(());
        }
        self.log(ctx, key, true);
        Err(CmdError::Msg(format!(
            "NOPERM this user has no permissions to run '{}' on key '{}' in database {db}",
            String::from_utf8_lossy(args[0]).to_lowercase(),
            String::from_utf8_lossy(key)
        )))
    }
}

/// `ACL DRYRUN user args...` in the context's database: `OK`, or a sentence saying why
/// not (any error, such as a deleted user, refuses too).
fn dry_run(ctx: &Context, user: &[u8], args: &[&[u8]]) -> bool {
    let mut argv: Vec<&[u8]> = Vec::with_capacity(args.len() + 2);
    argv.extend([b"DRYRUN".as_slice(), user]);
    argv.extend_from_slice(args);
    match ctx.call("ACL", &argv[..]) {
        Ok(RedisValue::SimpleStringStatic(s)) => s == "OK",
        Ok(RedisValue::SimpleString(s)) => s == "OK",
        _ => false,
    }
}

/// Whether the caller could run `STREAMWATCH.JOB` on a job's key in the job's database,
/// for the `JOBS` list: asked once per database and once per key and database, however
/// many jobs share them.
pub struct JobJudge {
    caller: Caller,
    current: i32,
    /// Whether the caller may do anything anywhere (then nothing is asked per key).
    unrestricted: Option<bool>,
    dbs: HashMap<i32, bool>,
    keys: HashMap<i32, HashMap<Vec<u8>, bool>>,
}

impl JobJudge {
    /// For `caller`, whose connection is in database `current`.
    pub fn new(caller: Caller, current: i32) -> JobJudge {
        JobJudge {
            caller,
            current,
            unrestricted: None,
            dbs: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    pub fn may_see(&mut self, ctx: &Context, db: i32, key: &[u8]) -> bool {
        let (caller, current) = (&self.caller, self.current);
        let unrestricted = *self
            .unrestricted
            .get_or_insert_with(|| caller.name().is_none_or(|u| unrestricted(ctx, u)));
        if unrestricted {
            return true;
        }
        let db_ok = *self
            .dbs
            .entry(db)
            .or_insert_with(|| caller.may_use_db(ctx, db, current));
        if !db_ok {
            return false;
        }
        let keys = self.keys.entry(db).or_default();
        if let Some(&may) = keys.get(key) {
            return may;
        }
        let may = caller.may_run_in(ctx, db, &[b"STREAMWATCH.JOB", key, b"x"]);
        keys.insert(key.to_vec(), may);
        may
    }
}

/// Whether `user` may run every command on every key in every database, with no
/// selector (`ACL GETUSER`: `+@all`, `~*`, all databases where the server has them):
/// the common case of the `default` user, for which `JOBS` asks nothing per key (with
/// 10,000 keys that would be 10,000 `ACL DRYRUN`s on the main thread).
fn unrestricted(ctx: &Context, user: &[u8]) -> bool {
    let Ok(RedisValue::Array(fields)) = ctx.call("ACL", &[b"GETUSER".as_slice(), user][..]) else {
        return false;
    };
    let mut all = [false; 3]; // commands, keys, selectors
    for pair in fields.chunks(2) {
        let [name, value] = pair else { continue };
        match (text(name).as_deref(), value) {
            (Some("commands"), v) => all[0] = text(v).as_deref() == Some("+@all"),
            (Some("keys"), v) => all[1] = text(v).as_deref() == Some("~*"),
            (Some("selectors"), RedisValue::Array(list)) => all[2] = list.is_empty(),
            (Some("databases"), v) if text(v).as_deref() != Some("alldbs") => return false,
            _ => {}
        }
    }
    all.iter().all(|&a| a)
}

/// The categories the commands that change what runs are in, where modules can say so.
const ADMIN_CATEGORIES: [&str; 2] = ["admin", "dangerous"];

/// For the commands that change what runs (`command`: the name, lower case): where the
/// server could not put them into `@admin` and `@dangerous`, refuses the callers whose
/// ACL rules would refuse them if it had. The server has already checked the command
/// itself by name.
pub fn check_admin(ctx: &Context, caller: &Caller, command: &str) -> Result<(), CmdError> {
    if ffi::module_acl_categories() {
        return Ok(()); // the server enforces the categories itself
    }
    let Some(user) = caller.name() else {
        return Ok(());
    };
    let rules = command_rules(ctx, user);
    if rules.iter().any(|r| grants(r, command)) {
        return Ok(());
    }
    caller.log(ctx, command.as_bytes(), false);
    Err(CmdError::Msg(format!(
        "NOPERM this user has no permissions to run the '{command}' command \
         (it is treated as @admin and @dangerous)"
    )))
}

/// The command rules of `user` (`ACL GETUSER`): its own, then each selector's. Empty if
/// they cannot be read, which refuses.
fn command_rules(ctx: &Context, user: &[u8]) -> Vec<String> {
    let Ok(RedisValue::Array(fields)) = ctx.call("ACL", &[b"GETUSER".as_slice(), user][..]) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for pair in fields.chunks(2) {
        match pair {
            [name, value] if text(name).as_deref() == Some("commands") => {
                rules.extend(text(value));
            }
            [name, RedisValue::Array(selectors)] if text(name).as_deref() == Some("selectors") => {
                for s in selectors {
                    if let RedisValue::Array(f) = s {
                        for p in f.chunks(2) {
                            if let [n, v] = p {
                                if text(n).as_deref() == Some("commands") {
                                    rules.extend(text(v));
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    rules
}

fn text(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => Some(s.clone()),
        RedisValue::SimpleStringStatic(s) => Some(s.to_string()),
        RedisValue::StringBuffer(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RedisValue::BulkRedisString(s) => Some(String::from_utf8_lossy(s.as_slice()).into_owned()),
        _ => None,
    }
}

/// Would the command rules `rules` (as `ACL GETUSER` shows them: `+@all -@dangerous`)
/// allow `command` if it were in `@admin` and `@dangerous`? As the server does, the last
/// rule that concerns it decides: `+@all`/`-@all`, a rule on either category, or one
/// on the command's name. Rules on a first argument (`+cmd|arg`) grant nothing here.
pub fn grants(rules: &str, command: &str) -> bool {
    let mut allowed = false;
    for rule in rules.split_ascii_whitespace() {
        let rule = rule.to_ascii_lowercase();
        let (allow, what) = match rule.as_str() {
            "allcommands" => (true, "@all"),
            "nocommands" => (false, "@all"),
            r => match (r.strip_prefix('+'), r.strip_prefix('-')) {
                (Some(w), _) => (true, w),
                (_, Some(w)) => (false, w),
                _ => continue,
            },
        };
        let concerns = what == "@all"
            || what == command
            || what
                .strip_prefix('@')
                .is_some_and(|c| ADMIN_CATEGORIES.contains(&c));
        if concerns {
            allowed = allow;
        }
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::grants;

    #[test]
    fn the_last_rule_that_concerns_the_command_decides() {
        let c = "streamwatch.pause";
        for (rules, want) in [
            ("+@all", true),
            ("allcommands", true),
            ("+@all -@dangerous", false),
            ("+@all -@admin", false),
            ("+@all -@admin +@dangerous", true),
            ("-@all +@read +@write", false),
            ("-@all +streamwatch.pause", true),
            ("-@all +STREAMWATCH.PAUSE", true),
            ("+@all -streamwatch.pause", false),
            ("-@all +streamwatch.pause -@admin", false),
            ("-@all +@admin", true),
            ("-@all +streamwatch.pause|x", false),
            ("-@all +streamwatch.watch", false),
            ("+@all -@dangerous +streamwatch.pause", true),
            ("", false),
        ] {
            assert_eq!(grants(rules, c), want, "{rules:?}");
        }
    }
}
