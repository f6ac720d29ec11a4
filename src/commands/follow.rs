//! `STREAMWATCH.WAIT key id [TIMEOUT ms] [DB n]` and `STREAMWATCH.CANCEL key id [DB n]`:
//! parsing, and their main-thread side. WAIT answers at once from the outcome kept in
//! Redis when there is one (also on a replica: outcomes are replicated); otherwise it
//! blocks the calling client (never the server) and the supervisor answers it.

use super::{admin, ask, check_other_db, err, CmdError, CmdResult, KeyFieldArgs, Opts};
use crate::ffi::{self, Replier, Reply};
use crate::outcomes;
use crate::supervisor::Msg;
use redis_module::{Context, ContextFlags, RedisString};
use std::time::Duration;

/// `STREAMWATCH.WAIT`, parsed: `timeout` 0 waits without end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitArgs {
    pub key: Vec<u8>,
    pub id: Vec<u8>,
    pub timeout_ms: u64,
    pub db: Option<i32>,
}

/// The most a WAIT may wait (a year): past it, a client is better served by no timeout.
const MAX_TIMEOUT_MS: u64 = 365 * 86_400_000;

/// `key id [TIMEOUT ms] [DB n]`.
pub fn parse_wait(args: &[&[u8]]) -> Result<WaitArgs, CmdError> {
    let (key, id) = match args {
        [_, key, id, ..] if args.len() <= 7 => (key.to_vec(), entry_id(id)?),
        _ => return Err(CmdError::Arity),
    };
    let (mut timeout_ms, mut db) = (0, None);
    let mut o = Opts::new(args, 3);
    while let Some(name) = o.next_name() {
        match name.as_str() {
            "TIMEOUT" => {
                let v = super::text(o.value("TIMEOUT")?);
                timeout_ms = match v.parse::<u64>() {
                    Ok(n) if n <= MAX_TIMEOUT_MS => n,
                    _ => {
                        return err(format!(
                            "ERR TIMEOUT must be milliseconds from 0 (no timeout) to {MAX_TIMEOUT_MS}, got '{v}'"
                        ))
                    }
                };
            }
            "DB" => db = Some(o.db()?),
            _ => return err(format!("ERR unknown option '{name}'")),
        }
    }
    Ok(WaitArgs {
        key,
        id,
        timeout_ms,
        db,
    })
}

/// `key id [DB n]` of CANCEL: JOB's arguments, with an entry id.
pub fn parse_cancel(args: &[&[u8]]) -> Result<KeyFieldArgs, CmdError> {
    let a = super::parse_key_field(args)?;
    entry_id(&a.field)?;
    Ok(a)
}

/// An entry id as XADD gives them: `<ms>-<seq>`.
fn entry_id(id: &[u8]) -> Result<Vec<u8>, CmdError> {
    let s = std::str::from_utf8(id).unwrap_or("");
    let ok = s
        .split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok());
    match ok {
        true => Ok(id.to_vec()),
        false => err(format!(
            "ERR '{}' is not a stream entry id (<ms>-<seq>, as XADD returns it)",
            String::from_utf8_lossy(&id[..id.len().min(64)])
        )),
    }
}

/// The outcome kept for entry `id` of `key` in database `db`, read on the main thread.
fn kept_outcome(ctx: &Context, db: i32, key: &[u8], id: &[u8]) -> Option<Reply> {
    let current = ffi::selected_db(ctx);
    if db != current && !ffi::select_db(ctx, db) {
        return None;
    }
    let found = outcomes::find(ctx, key, &String::from_utf8_lossy(id), None);
    if db != current {
        ffi::select_db(ctx, current);
    }
    found.map(|o| o.reply(db, key))
}

pub fn wait(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let a = parse_wait(&super::argv(&args))?;
    let db = check_other_db(ctx, a.db, &[b"STREAMWATCH.WAIT", &a.key, &a.id])?;
    if let Some(done) = kept_outcome(ctx, db, &a.key, &a.id) {
        return super::reply(done);
    }
    if !ctx.get_flags().contains(ContextFlags::MASTER) {
        return err(crate::supervisor::NOT_PRIMARY);
    }
    let gone = |token| {
        crate::supervisor::send(Msg::WaiterGone { token });
    };
    let r = Replier::block_waiting(ctx, gone).ok_or_else(|| {
        CmdError::Msg("ERR STREAMWATCH.WAIT cannot be used inside MULTI or a script".into())
    })?;
    ask(Msg::Wait {
        db,
        key: a.key,
        id: a.id,
        timeout: (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms)),
        reply: r,
    })
}

pub fn cancel(ctx: &Context, args: Vec<RedisString>) -> CmdResult {
    let a = parse_cancel(&super::argv(&args))?;
    admin(ctx, "streamwatch.cancel", false)?;
    let db = check_other_db(ctx, a.db, &[b"STREAMWATCH.CANCEL", &a.key, &a.field])?;
    let r = super::block(ctx, "STREAMWATCH.CANCEL")?;
    ask(Msg::Cancel {
        db,
        key: a.key,
        id: a.field,
        reply: r,
    })
}
