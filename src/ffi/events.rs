//! Subscriptions to what happens on the server: keyspace events, SWAPDB, and the
//! command filter that sees a command's arguments before it runs. Each registers a
//! plain Rust function once, at load, and calls it under the panic guard; what they
//! report is handled by `crate::events`.

use super::{callback, string_bytes};
use redis_module::{raw, Context, NotifyEvent};
use std::ffi::{c_char, c_int, c_void};

/// Subscribes to SWAPDB, which the `redis-module` crate does not wrap.
pub fn subscribe_swapdb(ctx: &Context, on_swap: fn(&Context)) -> bool {
    static HANDLER: std::sync::OnceLock<fn(&Context)> = std::sync::OnceLock::new();
    let _ = HANDLER.set(on_swap);
    extern "C" fn cb(
        ctx: *mut raw::RedisModuleCtx,
        _eid: raw::RedisModuleEvent,
        _sub: u64,
        _data: *mut c_void,
    ) {
        if let Some(f) = HANDLER.get() {
            let ctx = Context::new(ctx);
            callback("swapdb event", || f(&ctx));
        }
    }
    let status = unsafe {
        raw::RedisModule_SubscribeToServerEvent.unwrap()(
            ctx.ctx,
            raw::RedisModuleEvent {
                id: raw::REDISMODULE_EVENT_SWAPDB,
                dataver: 1,
            },
            Some(cb),
        )
    };
    status == raw::REDISMODULE_OK as c_int
}

/// The name of a keyspace event ("hset", "del", ...), read only when asked.
#[derive(Clone, Copy)]
pub struct EventName(*const c_char);

impl EventName {
    pub fn is(self, name: &str) -> bool {
        !self.0.is_null()
            && name.bytes().chain([0]).enumerate().all(|(i, b)| {
                // SAFETY: Redis passes a NUL-terminated name that lives for the callback;
                // the comparison stops at the first difference, so at its NUL at the latest.
                unsafe { *self.0.cast::<u8>().add(i) == b }
            })
    }
}

/// Subscribes `on_event` to the keyspace events of `types` this server has. The crate's
/// own wrapper would check every event name as UTF-8 (and unwrap that outside any panic
/// guard); this one hands the name on unread, since few events concern a watch.
pub fn subscribe_keyspace(
    ctx: &Context,
    types: NotifyEvent,
    on_event: fn(&Context, EventName, &[u8]),
) -> bool {
    static HANDLER: std::sync::OnceLock<fn(&Context, EventName, &[u8])> =
        std::sync::OnceLock::new();
    let _ = HANDLER.set(on_event);
    extern "C" fn cb(
        ctx: *mut raw::RedisModuleCtx,
        _type: c_int,
        event: *const c_char,
        key: *mut raw::RedisModuleString,
    ) -> c_int {
        if let Some(f) = HANDLER.get() {
            let ctx = Context::new(ctx);
            // SAFETY: Redis keeps the key alive for the callback.
            callback("keyspace event", || {
                f(&ctx, EventName(event), unsafe { string_bytes(key) })
            });
        }
        raw::REDISMODULE_OK as c_int
    }
    let types = types.intersection(raw::get_keyspace_notification_flags_all());
    let status = unsafe {
        raw::RedisModule_SubscribeToKeyspaceEvents.unwrap()(ctx.ctx, types.bits(), Some(cb))
    };
    status == raw::REDISMODULE_OK as c_int
}

/// The arguments of a command about to run, as a command filter sees them.
pub struct CommandArgs(*mut raw::RedisModuleCommandFilterCtx);

impl CommandArgs {
    pub fn len(&self) -> usize {
        let n = unsafe { raw::RedisModule_CommandFilterArgsCount.unwrap()(self.0) };
        usize::try_from(n).unwrap_or(0)
    }

    /// Argument `i` (0 is the command name); empty if there is none.
    pub fn get(&self, i: usize) -> &[u8] {
        let Ok(pos) = c_int::try_from(i) else {
            return &[];
        };
        unsafe {
            let s = raw::RedisModule_CommandFilterArgGet.unwrap()(self.0, pos);
            string_bytes(s)
        }
    }
}

/// Registers `on_command` as a command filter: Redis calls it on the main thread (or
/// whichever thread holds the GIL) before every command runs, client commands, the
/// commands of scripts and other modules' `RM_Call`s alike, but not streamwatch's own.
/// It only reads the arguments.
pub fn register_command_filter(ctx: &Context, on_command: fn(&CommandArgs)) -> bool {
    static HANDLER: std::sync::OnceLock<fn(&CommandArgs)> = std::sync::OnceLock::new();
    let _ = HANDLER.set(on_command);
    extern "C" fn cb(fctx: *mut raw::RedisModuleCommandFilterCtx) {
        if let Some(f) = HANDLER.get() {
            callback("command filter", || f(&CommandArgs(fctx)));
        }
    }
    let filter = unsafe {
        raw::RedisModule_RegisterCommandFilter.unwrap()(
            ctx.ctx,
            Some(cb),
            raw::REDISMODULE_CMDFILTER_NOSELF as c_int,
        )
    };
    !filter.is_null()
}
