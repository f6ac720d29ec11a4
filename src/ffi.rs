//! Every place streamwatch touches the Redis module C API or libc directly.
//!
//! Kept in this one module (this file and its children in `ffi/`) so the `unsafe`
//! surface is easy to audit. Everything is re-exported here: callers name `ffi::X`
//! whichever file `X` lives in.
//!
//! Here: the panic guard for every entry point from Redis, replies (ordered RESP3 maps
//! that RESP2 clients see as flat arrays), blocked clients answered from the supervisor
//! thread, and the selected database. `events`: the server events the `redis-module`
//! crate does not wrap (SWAPDB), keyspace events without the crate's per-event UTF-8
//! check, and the command filter that names the fields a hash command writes. `hash`:
//! reading a hash (whole, in slices, or some fields). `acl`: the caller's ACL user, a
//! user's key permissions, and the key specs of the module's commands. `process`:
//! launching the embedded helper binary from a memfd, reaping and killing processes,
//! and the module's counting allocator.

mod acl;
mod events;
mod hash;
mod process;

pub use acl::{current_user, declare_key_arg, module_acl_categories, AclUser};
pub use events::{
    register_command_filter, subscribe_keyspace, subscribe_swapdb, CommandArgs, EventName,
};
pub use hash::{hash_get_fields, hash_len, string, HashScan};
pub use process::{
    allocated, fd_path, helper_memfd, kill_hard, reap_child, reap_nohang, send_nonblocking,
    ModuleAlloc,
};

use redis_module::{raw, Context, RedisError, RedisResult, RedisValue};
use std::ffi::{c_char, c_int, c_long, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// A reply, built anywhere (main thread or supervisor) and emitted on the main thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok,
    Nil,
    Int(i64),
    Bool(bool),
    Bulk(Vec<u8>),
    Error(String),
    Array(Vec<Reply>),
    /// Keys keep their order (RESP2 clients get a flat array).
    Map(Vec<(String, Reply)>),
}

impl Reply {
    pub fn str(s: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(s.as_ref().to_vec())
    }

    pub fn opt_int(v: Option<i64>) -> Reply {
        v.map_or(Reply::Nil, Reply::Int)
    }

    fn emit(&self, ctx: *mut raw::RedisModuleCtx) {
        unsafe {
            match self {
                Reply::Ok => {
                    raw::RedisModule_ReplyWithSimpleString.unwrap()(ctx, c"OK".as_ptr());
                }
                Reply::Nil => {
                    raw::RedisModule_ReplyWithNull.unwrap()(ctx);
                }
                Reply::Int(i) => {
                    raw::RedisModule_ReplyWithLongLong.unwrap()(ctx, *i);
                }
                Reply::Bool(b) => {
                    raw::RedisModule_ReplyWithBool.unwrap()(ctx, c_int::from(*b));
                }
                Reply::Bulk(b) => {
                    raw::RedisModule_ReplyWithStringBuffer.unwrap()(
                        ctx,
                        b.as_ptr().cast::<c_char>(),
                        b.len(),
                    );
                }
                Reply::Error(e) => {
                    let msg = CString::new(e.replace(['\0', '\r', '\n'], " "))
                        .unwrap_or_else(|_| c"ERR internal error".to_owned());
                    raw::RedisModule_ReplyWithError.unwrap()(ctx, msg.as_ptr());
                }
                Reply::Array(items) => {
                    raw::RedisModule_ReplyWithArray.unwrap()(ctx, items.len() as c_long);
                    items.iter().for_each(|i| i.emit(ctx));
                }
                Reply::Map(pairs) => {
                    raw::RedisModule_ReplyWithMap.unwrap()(ctx, pairs.len() as c_long);
                    for (k, v) in pairs {
                        raw::RedisModule_ReplyWithStringBuffer.unwrap()(
                            ctx,
                            k.as_ptr().cast::<c_char>(),
                            k.len(),
                        );
                        v.emit(ctx);
                    }
                }
            }
        }
    }
}

/// What a command handler produced.
pub enum Outcome {
    Reply(Reply),
    /// The client is blocked; the supervisor answers through a [`Replier`].
    Blocked,
}

/// A command's error: Redis's standard arity error, or a message starting with ERR.
#[derive(Debug)]
pub enum CmdError {
    Arity,
    Msg(String),
}

impl From<String> for CmdError {
    fn from(s: String) -> Self {
        CmdError::Msg(s)
    }
}

/// Runs a command handler with panics caught, and emits its reply.
pub fn command(
    ctx: &Context,
    name: &str,
    f: impl FnOnce() -> Result<Outcome, CmdError>,
) -> RedisResult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(Outcome::Reply(r))) => {
            r.emit(ctx.ctx);
            Ok(RedisValue::NoReply)
        }
        Ok(Ok(Outcome::Blocked)) => Ok(RedisValue::NoReply),
        Ok(Err(CmdError::Arity)) => Err(RedisError::WrongArity),
        // Error replies are written here, not by the crate: its error path turns every
        // char into one byte, so a message quoting non-ASCII input (say U+FFFD for a
        // byte that is not UTF-8) reached clients as invalid UTF-8.
        Ok(Err(CmdError::Msg(m))) => {
            Reply::Error(m).emit(ctx.ctx);
            Ok(RedisValue::NoReply)
        }
        Err(panic) => {
            let what = panic_text(&panic);
            log_warning(format!("streamwatch: internal error in {name}: {what}"));
            Reply::Error(format!("ERR streamwatch internal error in {name}: {what}")).emit(ctx.ctx);
            Ok(RedisValue::NoReply)
        }
    }
}

/// Runs an event callback with panics caught; a panic becomes a log line.
pub fn callback(name: &str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        log_warning(format!(
            "streamwatch: internal error in {name}: {}",
            panic_text(&panic)
        ));
    }
}

/// Writes a warning to the server's log. The crate's own logging goes through a C
/// string and panics on a NUL byte, which a key or field name quoted in the message may
/// hold (and a panic while reporting a panic is not caught): NULs are written as `\0`.
pub fn log_warning(message: impl Into<String>) {
    redis_module::logging::log_warning(message.into().replace('\0', "\\0"));
}

/// Writes a notice to the server's log (as `log_warning`).
pub fn log_notice(message: impl Into<String>) {
    redis_module::logging::log_notice(message.into().replace('\0', "\\0"));
}

pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// A blocked client that the supervisor thread answers exactly once.
pub struct Replier {
    bc: *mut raw::RedisModuleBlockedClient,
    filter: Option<FilterFn>,
}

/// Applied to a blocked client's reply on the main thread before it is sent, with the
/// reply callback's context, where the server can be asked (see [`Replier::filtered`]).
pub type FilterFn = Box<dyn FnOnce(&Context, Reply) -> Reply + Send>;

/// What a blocked client's reply callback receives.
struct Unblocked {
    reply: Reply,
    filter: Option<FilterFn>,
}

// The blocked-client handle is meant to be passed to another thread.
unsafe impl Send for Replier {}

/// How long a client waits for the supervisor before it gets an error instead.
const BLOCK_TIMEOUT_MS: i64 = 30_000;

impl Replier {
    /// Blocks the calling client; `None` inside MULTI, a script or any other context
    /// that cannot block.
    pub fn block(ctx: &Context) -> Option<Replier> {
        block_client(ctx, BLOCK_TIMEOUT_MS).map(|bc| Replier { bc, filter: None })
    }

    /// Blocks the calling client without a server-side timeout, as `STREAMWATCH.WAIT`
    /// does: its timeout is the supervisor's, which answers nil then. (A server-side
    /// timeout would race with the supervisor's answer: an `UnblockClient` that the
    /// server has not processed yet when the client times out leaves the client with
    /// no reply at all, on Redis 7.0.) `None` where the client cannot block.
    /// `gone` is called on the main thread with the client's `token` if it
    /// disconnects while it waits (the reply then goes nowhere).
    pub fn block_waiting(ctx: &Context, gone: fn(usize)) -> Option<Replier> {
        let bc = block_client(ctx, 0)?;
        let _ = WAITER_GONE.set(gone);
        unsafe { raw::RedisModule_SetDisconnectCallback.unwrap()(bc, Some(waiter_gone)) };
        Some(Replier { bc, filter: None })
    }

    /// What identifies this client's wait (for `block_waiting`'s `gone`).
    pub fn token(&self) -> usize {
        self.bc as usize
    }

    /// The reply will pass through `apply` on the main thread, which can ask the server
    /// (about ACL users, for instance: the supervisor thread cannot).
    pub fn filtered(mut self, apply: FilterFn) -> Replier {
        self.filter = Some(apply);
        self
    }

    pub fn reply(mut self, reply: Reply) {
        let bc = std::mem::replace(&mut self.bc, ptr::null_mut());
        let filter = self.filter.take();
        unblock(bc, Unblocked { reply, filter });
    }
}

/// Blocks the calling client, answered by `blocked_reply` (or an error after
/// `timeout_ms`, 0: none); `None` inside MULTI, a script or any other context that
/// cannot block.
fn block_client(ctx: &Context, timeout_ms: i64) -> Option<*mut raw::RedisModuleBlockedClient> {
    use redis_module::ContextFlags;
    let flags = ctx.get_flags();
    let deny = flags.bits() & raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING as c_int != 0;
    if deny || flags.intersects(ContextFlags::MULTI | ContextFlags::LUA) {
        return None;
    }
    let bc = unsafe {
        raw::RedisModule_BlockClient.unwrap()(
            ctx.ctx,
            Some(blocked_reply),
            Some(blocked_timeout),
            Some(blocked_free),
            timeout_ms,
        )
    };
    (!bc.is_null()).then_some(bc)
}

fn unblock(bc: *mut raw::RedisModuleBlockedClient, data: Unblocked) {
    let data = Box::into_raw(Box::new(data));
    unsafe { raw::RedisModule_UnblockClient.unwrap()(bc, data.cast::<c_void>()) };
}

impl Drop for Replier {
    fn drop(&mut self) {
        if !self.bc.is_null() {
            let reply = Reply::Error("ERR streamwatch could not complete the request".into());
            unblock(
                self.bc,
                Unblocked {
                    reply,
                    filter: None,
                },
            );
        }
    }
}

extern "C" fn blocked_reply(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    callback("reply", || unsafe {
        let data = raw::RedisModule_GetBlockedClientPrivateData.unwrap()(ctx) as *mut Unblocked;
        match data.as_mut() {
            Some(u) => {
                // Taken out here; `blocked_free` then drops what is left.
                let reply = std::mem::replace(&mut u.reply, Reply::Nil);
                match u.filter.take() {
                    Some(apply) => apply(&Context::new(ctx), reply).emit(ctx),
                    None => reply.emit(ctx),
                }
            }
            None => Reply::Nil.emit(ctx),
        }
    });
    raw::REDISMODULE_OK as c_int
}

extern "C" fn blocked_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    Reply::Error("ERR streamwatch supervisor did not answer in time".into()).emit(ctx);
    raw::REDISMODULE_OK as c_int
}

/// Told when a client blocked by `Replier::block_waiting` disconnects.
static WAITER_GONE: std::sync::OnceLock<fn(usize)> = std::sync::OnceLock::new();

extern "C" fn waiter_gone(_ctx: *mut raw::RedisModuleCtx, bc: *mut raw::RedisModuleBlockedClient) {
    if let Some(gone) = WAITER_GONE.get() {
        callback("disconnect", || gone(bc as usize));
    }
}

extern "C" fn blocked_free(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        drop(unsafe { Box::from_raw(data.cast::<Unblocked>()) });
    }
}

/// The database the context (client, callback or thread-safe context) has selected.
pub fn selected_db(ctx: &Context) -> i32 {
    unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx.ctx) }
}

/// Selects a database on a (locked) thread-safe context.
pub fn select_db(ctx: &Context, db: i32) -> bool {
    unsafe { raw::RedisModule_SelectDb.unwrap()(ctx.ctx, db) == raw::REDISMODULE_OK as c_int }
}

/// The bytes of a Redis string the caller keeps alive; empty for null.
unsafe fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    let mut len = 0usize;
    let p = raw::RedisModule_StringPtrLen.unwrap()(s, &mut len);
    if p.is_null() {
        return &[];
    }
    std::slice::from_raw_parts(p.cast::<u8>(), len)
}
