//! `STREAMWATCH.PAUSE [pattern]` and `STREAMWATCH.RESUME [pattern]`.
//!
//! Without a pattern: the whole node, as it always was (not saved: a restart or a
//! failover runs everything). With a pattern: one watch, config-file or command, by its
//! exact pattern as `UNWATCH` takes it. Its paused state is data (`store::paused`),
//! written here on the main thread like `WATCH` writes the store, so it is saved and
//! replicated; the registry follows it and the supervisor stops the watch's jobs (or,
//! on resume, reconciles). Both are idempotent: pausing a paused watch writes nothing.
//!
//! The commands are not `write` commands (the node-wide form works on a replica), so
//! the checks a server makes of a write are made here: a replica refuses the pattern
//! form, and so does a primary while writes are paused (`CLIENT PAUSE WRITE`,
//! `FAILOVER`: a write then would stop the server); the write itself is made as a
//! script's would be, so `min-replicas-to-write` and a failed save refuse it too.

use super::{admin, err, reply, CmdError, CmdResult};
use crate::acl::Caller;
use crate::ffi::Reply;
use crate::stats;
use crate::store;
use crate::supervisor::{self, Msg};
use crate::watch;
use redis_module::{Context, ContextFlags, RedisString};
use std::sync::atomic::Ordering;

/// `STREAMWATCH.PAUSE [pattern]` / `STREAMWATCH.RESUME [pattern]`: the pattern, if any.
pub fn parse_pause(args: &[&[u8]]) -> Result<Option<Vec<u8>>, CmdError> {
    match args {
        [_] => Ok(None),
        [_, pattern] => Ok(Some(pattern.to_vec())),
        _ => Err(CmdError::Arity),
    }
}

/// `PAUSE` (`paused`) or `RESUME`, of the node or of one watch.
pub fn pause_or_resume(ctx: &Context, args: Vec<RedisString>, paused: bool) -> CmdResult {
    let argv: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    let pattern = parse_pause(&argv)?;
    let command = if paused {
        "streamwatch.pause"
    } else {
        "streamwatch.resume"
    };
    admin(ctx, command, false)?;
    let Some(pattern) = pattern else {
        supervisor::send(if paused { Msg::Pause } else { Msg::Resume });
        stats::PAUSED.store(paused, Ordering::Relaxed);
        return reply(Reply::Ok);
    };
    if let Some(key) = store::paused::name(ctx) {
        Caller::current(ctx).check_write(ctx, &key, "the paused watches key")?;
    }
    if watch::find(&pattern).is_none() {
        // At most 200 bytes of it back: the client has the rest.
        let shown = String::from_utf8_lossy(&pattern[..pattern.len().min(200)]);
        let more = if pattern.len() > 200 { "..." } else { "" };
        return err(format!(
            "ERR no watch with pattern '{shown}{more}' (pattern)"
        ));
    }
    if ctx.get_flags().contains(ContextFlags::LUA) {
        // A script (EVAL_RO too) must not write through a command that is not `write`.
        return err("ERR PAUSE or RESUME of one watch cannot be used inside a script (pattern)");
    }
    if watch::is_paused(&pattern) == paused {
        return reply(Reply::Ok); // already so: nothing to write
    }
    if !ctx.get_flags().contains(ContextFlags::MASTER) {
        return err(
            "ERR this node is a replica: pause or resume one watch on its primary, which replicates it",
        );
    }
    if ctx.avoid_replication_traffic() {
        return err(
            "ERR writes are paused (CLIENT PAUSE WRITE or FAILOVER): try again when they resume",
        );
    }
    let watches = store::paused::write(ctx, &pattern, paused)?;
    supervisor::send(Msg::WatchPaused {
        pattern,
        paused,
        watches,
    });
    reply(Reply::Ok)
}

/// `UNWATCH` removed a watch: its paused state goes with it (after the watch, so the
/// watch is never seen unpaused). A failure leaves a field no watch has, which changes
/// nothing, so it is only logged.
pub fn forget(ctx: &Context, pattern: &[u8]) {
    if watch::is_paused(pattern) {
        if let Err(e) = store::paused::write(ctx, pattern, false) {
            crate::ffi::log_warning(format!("streamwatch: {e}"));
        }
    }
}

/// `WATCH` makes a watch where none was: a paused state left for its pattern (by hand,
/// or for a config watch no longer in the file) is removed first, so a new watch runs.
/// `WATCH ... REPLACE` of an existing watch keeps its state.
pub fn clear_stale(ctx: &Context, pattern: &[u8]) -> Result<(), CmdError> {
    if watch::find(pattern).is_none() && watch::is_paused(pattern) {
        store::paused::write(ctx, pattern, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_optional() {
        assert!(matches!(parse_pause(&[b"STREAMWATCH.PAUSE"]), Ok(None)));
        assert!(matches!(
            parse_pause(&[b"STREAMWATCH.PAUSE", b"cams:*"]),
            Ok(Some(p)) if p == b"cams:*"
        ));
        assert!(matches!(
            parse_pause(&[b"STREAMWATCH.RESUME", b"a", b"b"]),
            Err(CmdError::Arity)
        ));
    }
}
