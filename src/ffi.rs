//! Every place streamwatch touches the Redis module C API or libc directly.
//!
//! Kept in one small file so the `unsafe` surface is easy to audit. What lives here:
//! the panic guard for every entry point from Redis, replies (ordered RESP3 maps that
//! RESP2 clients see as flat arrays), blocked clients answered from the supervisor
//! thread, the selected database, the server events the `redis-module` crate does not
//! wrap (SWAPDB), keyspace events without the crate's per-event UTF-8 check, the command
//! filter that names the fields a hash command writes, reading a hash (whole, in
//! slices, or some fields), and launching the embedded helper binary from a memfd.

use redis_module::{raw, Context, NotifyEvent, RedisError, RedisResult, RedisValue};
use std::ffi::{c_char, c_int, c_long, c_void, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
                BLOCK_TIMEOUT_MS,
            )
        };
        (!bc.is_null()).then_some(Replier { bc, filter: None })
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

extern "C" fn blocked_free(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        drop(unsafe { Box::from_raw(data.cast::<Unblocked>()) });
    }
}

// ---- ACL ----

/// The name of the ACL user the calling client is authenticated as; `None` when the
/// context has no user (the server's own clients: AOF loading, a primary's stream),
/// which no ACL restricts.
pub fn current_user(ctx: &Context) -> Option<Vec<u8>> {
    unsafe {
        let s = raw::RedisModule_GetCurrentUserName.unwrap()(ctx.ctx);
        if s.is_null() {
            return None;
        }
        let name = string_bytes(s).to_vec();
        raw::RedisModule_FreeString.unwrap()(ctx.ctx, s);
        Some(name)
    }
}

/// An ACL user looked up by name, for key permission checks; main thread only, and
/// only for the duration of one command or reply (freed on drop).
pub struct AclUser(*mut raw::RedisModuleUser);

impl AclUser {
    /// `None`: no such user (deleted).
    pub fn by_name(name: &[u8]) -> Option<AclUser> {
        unsafe {
            let s = new_string(name);
            let u = raw::RedisModule_GetModuleUserFromUserName.unwrap()(s);
            raw::RedisModule_FreeString.unwrap()(ptr::null_mut(), s);
            (!u.is_null()).then_some(AclUser(u))
        }
    }

    /// May the user read (`write == false`: the key's value is returned) or write
    /// (insert, update and delete) `key`? Key patterns, `%R~`/`%W~` and selectors apply.
    pub fn may(&self, key: &[u8], write: bool) -> bool {
        let flags = if write {
            raw::REDISMODULE_CMD_KEY_INSERT
                | raw::REDISMODULE_CMD_KEY_UPDATE
                | raw::REDISMODULE_CMD_KEY_DELETE
        } else {
            raw::REDISMODULE_CMD_KEY_ACCESS
        };
        unsafe {
            let s = new_string(key);
            let r = raw::RedisModule_ACLCheckKeyPermissions.unwrap()(self.0, s, flags as c_int);
            raw::RedisModule_FreeString.unwrap()(ptr::null_mut(), s);
            r == raw::REDISMODULE_OK as c_int
        }
    }
}

impl AclUser {
    /// Adds an entry to `ACL LOG` for a refusal the module decided itself: `object` is
    /// the key (`key`) or the command refused.
    pub fn log_refusal(&self, ctx: &Context, object: &[u8], key: bool) {
        let reason = if key {
            raw::RedisModuleACLLogEntryReason_REDISMODULE_ACL_LOG_KEY
        } else {
            raw::RedisModuleACLLogEntryReason_REDISMODULE_ACL_LOG_CMD
        };
        let add = unsafe { raw::RedisModule_ACLAddLogEntry };
        if let Some(add) = add {
            unsafe {
                let s = new_string(object);
                add(ctx.ctx, self.0, s, reason);
                raw::RedisModule_FreeString.unwrap()(ptr::null_mut(), s);
            }
        }
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        unsafe { raw::RedisModule_FreeModuleUser.unwrap()(self.0) };
    }
}

/// A Redis string outside any context (the caller frees it).
unsafe fn new_string(bytes: &[u8]) -> *mut raw::RedisModuleString {
    raw::RedisModule_CreateString.unwrap()(ptr::null_mut(), bytes.as_ptr().cast(), bytes.len())
}

/// Can modules put commands into ACL categories on this server (Redis 7.2+, Valkey)?
/// On Redis 7.0 they cannot, and `+@all` gives a user every module command.
pub fn module_acl_categories() -> bool {
    let f = unsafe { raw::RedisModule_SetCommandACLCategories };
    f.is_some()
}

/// Declares the key argument of command `name` (registered with first, last and step
/// key 1, which Redis 7 turns into a key spec with full access): argument 1 is one key,
/// read (`write == false`: RO ACCESS, the reply returns its data, so ACL read permission
/// is needed) or updated (RW UPDATE: ACL write permission). Load time only.
pub fn declare_key_arg(ctx: &Context, name: &str, write: bool) -> bool {
    let flags = if write {
        raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE
    } else {
        raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS
    };
    let Ok(cname) = CString::new(name) else {
        return false;
    };
    unsafe {
        let (get, set) = (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandInfo);
        let (Some(get), Some(set)) = (get, set) else {
            return false;
        };
        let cmd = get(ctx.ctx, cname.as_ptr());
        if cmd.is_null() {
            return false;
        }
        let mut specs: [raw::RedisModuleCommandKeySpec; 2] = std::mem::zeroed();
        specs[0].flags = u64::from(flags);
        specs[0].begin_search_type =
            raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
        specs[0].bs.index.pos = 1;
        specs[0].find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
        specs[0].fk.range = raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
            lastkey: 0,
            keystep: 1,
            limit: 0,
        };
        let version = raw::RedisModuleCommandInfoVersion {
            version: 1,
            sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
            sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
            sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
        };
        let mut info: raw::RedisModuleCommandInfo = std::mem::zeroed();
        info.version = &version;
        info.key_specs = specs.as_mut_ptr();
        set(cmd, &info) == raw::REDISMODULE_OK as c_int
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

/// Reads some fields of hash `key` (in the selected database) under the GIL, one
/// `RedisModule_HashGet` each. `None`: the key is not a hash (any more).
pub fn hash_get_fields<'f>(
    ctx: &Context,
    key: &[u8],
    fields: impl Iterator<Item = &'f [u8]>,
) -> Option<Vec<Option<Vec<u8>>>> {
    let k = HashKey::open(ctx, key)?;
    unsafe {
        let k = k.0;
        let mut values = Vec::new();
        for field in fields {
            let f = string(ctx, field);
            let mut v: *mut raw::RedisModuleString = ptr::null_mut();
            raw::RedisModule_HashGet.unwrap()(
                k,
                raw::REDISMODULE_HASH_NONE as c_int,
                f.inner,
                &mut v as *mut *mut raw::RedisModuleString,
                ptr::null_mut::<raw::RedisModuleString>(),
            );
            if v.is_null() {
                values.push(None);
            } else {
                values.push(Some(string_bytes(v).to_vec()));
                raw::RedisModule_FreeString.unwrap()(ctx.ctx, v);
            }
        }
        Some(values)
    }
}

/// A Redis string holding exactly `bytes`. The crate's `Context::create_string` goes
/// through a C string and panics on a NUL byte, which any client can put in a key or a
/// field name; this never does.
pub fn string(ctx: &Context, bytes: &[u8]) -> redis_module::RedisString {
    redis_module::RedisString::create_from_slice(ctx.ctx, bytes)
}

/// Hash `key` of the selected database, open for reading (closed on drop).
struct HashKey(*mut raw::RedisModuleKey);

impl HashKey {
    /// `None` if the key does not exist or is not a hash.
    fn open(ctx: &Context, key: &[u8]) -> Option<HashKey> {
        let name = string(ctx, key);
        let mode = raw::KeyMode::READ.bits() | redis_module::key::KeyFlags::NOTOUCH.bits();
        let k = unsafe {
            raw::RedisModule_OpenKey.unwrap()(ctx.ctx, name.inner, mode)
                .cast::<raw::RedisModuleKey>()
        };
        if k.is_null() {
            return None;
        }
        let k = HashKey(k);
        let hash = raw::REDISMODULE_KEYTYPE_HASH as c_int;
        (unsafe { raw::RedisModule_KeyType.unwrap()(k.0) } == hash).then_some(k)
    }
}

impl Drop for HashKey {
    fn drop(&mut self) {
        unsafe { raw::RedisModule_CloseKey.unwrap()(self.0) };
    }
}

/// Puts the embedded helper binary into an anonymous, sealed-off memory file and
/// returns it; `/proc/self/fd/N` of it can then be executed (posix_spawn, no fork).
pub fn helper_memfd(binary: &[u8]) -> std::io::Result<File> {
    let fd = unsafe { libc::memfd_create(c"streamwatch-helper".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(binary)?;
    Ok(file)
}

/// Path through which a memfd can be executed.
pub fn fd_path(file: &File) -> String {
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

/// Reaps the helper if it exited; Redis may already have reaped it (ECHILD), which
/// is fine: the helper's own status carries nothing we need.
pub fn reap_nohang(pid: i32) {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Reaps a child whose connection closed (module threads only: it may wait). It exits
/// right after closing its end, so it is waited for a little; one still alive after
/// that is killed (unreaped, its pid is still its own) and then reaped. Done when
/// reaped, or when Redis reaped it first (ECHILD).
pub fn reap_child(pid: i32) {
    let mut status = 0;
    for _ in 0..100 {
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}

/// The module's allocator: the system's (not Redis's: what the module holds is not
/// data and must not count against `maxmemory`), counting the bytes it holds, which
/// `INFO streamwatch` reports as `streamwatch_memory`. (The allocator's own statistics
/// will not do: a redis-server linked with jemalloc, as Debian's is, takes over
/// `malloc` for the whole process.)
pub struct ModuleAlloc;

static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call goes to `System` with the caller's arguments unchanged; only a
// counter is kept besides.
unsafe impl std::alloc::GlobalAlloc for ModuleAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc(layout);
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = std::alloc::System.alloc_zeroed(layout);
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout);
        ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        let p = std::alloc::System.realloc(ptr, layout, size);
        if !p.is_null() {
            ALLOCATED.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
}

/// Bytes the module holds (see `ModuleAlloc`).
pub fn allocated() -> u64 {
    ALLOCATED.load(std::sync::atomic::Ordering::Relaxed) as u64
}

/// SIGKILL to a process group (`-pgid`) or a process; errors (ESRCH) are ignored.
pub fn kill_hard(pid: i32, group: bool) {
    if pid > 0 {
        unsafe { libc::kill(if group { -pid } else { pid }, libc::SIGKILL) };
    }
}

/// A hash read in slices, each slice under its own GIL hold: the key is opened again
/// for every slice and the scan cursor carries on (`RedisModule_ScanKey` allows this),
/// so reading a 10,000-field hash never stalls the main thread for the whole read.
/// Like SCAN, a field present for the whole read is seen at least once (duplicates are
/// possible); a change in between is caught by the hint it fires.
pub struct HashScan(*mut raw::RedisModuleScanCursor);

impl HashScan {
    pub fn new() -> HashScan {
        HashScan(unsafe { raw::RedisModule_ScanCursorCreate.unwrap()() })
    }

    /// Appends at least `min` more fields of hash `key` (in the selected database) to
    /// `out`, or the rest. `None`: the key is not a hash (any more); `Some(more)`.
    pub fn step(
        &mut self,
        ctx: &Context,
        key: &[u8],
        min: usize,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Option<bool> {
        extern "C" fn push(
            _key: *mut raw::RedisModuleKey,
            field: *mut raw::RedisModuleString,
            value: *mut raw::RedisModuleString,
            data: *mut c_void,
        ) {
            let bytes = |s: *mut raw::RedisModuleString| unsafe { string_bytes(s) }.to_vec();
            let out = unsafe { &mut *data.cast::<Vec<(Vec<u8>, Vec<u8>)>>() };
            out.push((bytes(field), bytes(value)));
        }
        let k = HashKey::open(ctx, key)?;
        unsafe {
            let start = out.len();
            let mut more = true;
            while more && out.len() - start < min {
                more = raw::RedisModule_ScanKey.unwrap()(
                    k.0,
                    self.0,
                    Some(push),
                    (out as *mut Vec<(Vec<u8>, Vec<u8>)>).cast(),
                ) != 0;
            }
            Some(more)
        }
    }
}

impl Drop for HashScan {
    fn drop(&mut self) {
        unsafe { raw::RedisModule_ScanCursorDestroy.unwrap()(self.0) };
    }
}
