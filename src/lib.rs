//! streamwatch: a Redis module that keeps one supervised worker per field of a watched
//! hash, reconciling on every change Redis can make to a key, and runs one job per entry
//! of a watched stream, at least once, through a consumer group.
//!
//! This file only declares the module: its configs, commands and event callbacks.
//! Each command is a one-line delegation to the file that owns it:
//! * `commands` — parsing and replies (main thread); `acl` — the ACL checks they make
//!   themselves, beyond the server's;
//! * `events` — keyspace and server event callbacks (main thread, O(1));
//! * `supervisor` — the module thread that owns every job (`supervisor/queue` for the
//!   stream jobs);
//! * `spec` — what a watch is and the one parser of its options; `watch` + `store` —
//!   the watch registry and where command watches persist;
//! * `replay` — `STREAMWATCH.REPLAY`: dead-lettered entries back onto their stream;
//! * `cluster` — slot ownership in Redis Cluster;
//! * `template` — a handler's command template turned into one run's argv;
//! * `runner` + `helper/` (crate `streamwatch-helper`) — the helper process that is the workers' parent;
//! * `ffi` — every `unsafe` call into Redis or libc.

mod acl;
mod address;
mod cluster;
mod commands;
mod config;
mod events;
mod ffi;
pub mod fuzzing;
mod glob;
mod limits;
mod outcomes;
#[allow(dead_code)] // shared with the helper: each side uses half of it
mod protocol;
mod replay;
mod reply;
mod runner;
mod spec;
mod stats;
mod store;
mod supervisor;
mod template;
mod watch;

use redis_module::configuration::ConfigurationFlags;
use redis_module::{
    redis_module, AclCategory, Context, InfoContext, RedisResult, RedisString, Status,
};

// The system's allocator, not Redis's: what the module holds (jobs, the output it
// keeps) is not data, so it must never count against `maxmemory` and evict user keys
// or refuse writes. It is bounded instead, and counted (`streamwatch_memory`).
type Allocator = ffi::ModuleAlloc;
const ALLOCATOR: Allocator = ffi::ModuleAlloc;

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    let mut ok = true;
    ffi::callback("module load", || ok = load(ctx).is_ok());
    if ok {
        Status::Ok
    } else {
        Status::Err
    }
}

/// Reads the config file, registers its watches and starts the supervisor.
fn load(ctx: &Context) -> Result<(), ()> {
    let path = config::get(&config::CONFIG_PATH);
    let file = config::load(&path).map_err(|e| {
        ctx.log_warning(&format!("streamwatch: bad config file {e}"));
    })?;
    config::set_file(file);
    if let Ok(redis_module::RedisValue::Array(v)) = ctx.call("CONFIG", &["GET", "databases"]) {
        if let Some(Ok(n)) = v.get(1).map(|x| match x {
            redis_module::RedisValue::SimpleString(s) | redis_module::RedisValue::BulkString(s) => {
                s.parse::<i32>()
            }
            _ => "x".parse::<i32>(),
        }) {
            commands::DATABASES.store(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let keyed = [
        ("streamwatch.job", false),
        ("streamwatch.restart", true),
        ("streamwatch.wait", false),
        ("streamwatch.cancel", true),
        ("streamwatch.replay", true),
    ];
    for (name, write) in keyed {
        if !ffi::declare_key_arg(ctx, name, write) {
            // The spec Redis derived from the command table stays: full access.
            ctx.log_warning(&format!(
                "streamwatch: cannot declare the key spec of {name}"
            ));
        }
    }
    watch::set_reserved(watch::Reserved {
        store: store::is_store,
        events: config::is_events_key,
    });
    let mut snapshot = watch::snapshot();
    for spec in &config::file().watches {
        snapshot = watch::add_config(spec.clone()).map_err(|e| {
            ctx.log_warning(&format!("streamwatch: {path}: {e}"));
        })?;
    }
    if !ffi::register_command_filter(ctx, events::on_command) {
        ctx.log_warning("streamwatch: cannot register its command filter");
        return Err(());
    }
    if !ffi::subscribe_keyspace(ctx, events::KEYSPACE_EVENTS, events::on_keyspace) {
        ctx.log_warning("streamwatch: cannot subscribe to keyspace events");
        return Err(());
    }
    if !ffi::subscribe_swapdb(ctx, events::on_swapdb) {
        ctx.log_warning("streamwatch: cannot subscribe to SWAPDB events");
        return Err(());
    }
    supervisor::gate_at_load(ctx);
    supervisor::start(snapshot).map_err(|e| ctx.log_warning(&format!("streamwatch: {e}")))?;
    // Watches made by command, when the module is loaded into a server that has data.
    supervisor::follow_watches(store::sync(ctx));
    ctx.log_notice(&format!(
        "streamwatch {} loaded: {} handlers, {} watches",
        env!("CARGO_PKG_VERSION"),
        config::file().handlers.len(),
        config::file().watches.len()
    ));
    Ok(())
}

/// MODULE UNLOAD is refused: the supervisor thread and the helper cannot be torn down
/// safely under a running server. Upgrade by renaming the new .so into place and
/// restarting (or failing over).
fn deinit(ctx: &Context) -> Status {
    ctx.log_warning("streamwatch cannot be unloaded; restart the server to upgrade it");
    Status::Err
}

fn info(ctx: &InfoContext, _for_crash_report: bool) {
    ffi::callback("INFO", || commands::info(ctx));
}

macro_rules! command {
    ($fn_name:ident, $name:literal, $handler:path) => {
        fn $fn_name(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
            ffi::command(ctx, $name, || $handler(ctx, args))
        }
    };
}

command!(cmd_watch, "STREAMWATCH.WATCH", commands::watch);
command!(cmd_unwatch, "STREAMWATCH.UNWATCH", commands::unwatch);
command!(cmd_watches, "STREAMWATCH.WATCHES", commands::watches);
command!(cmd_handlers, "STREAMWATCH.HANDLERS", commands::handlers);
command!(cmd_jobs, "STREAMWATCH.JOBS", commands::jobs);
command!(cmd_job, "STREAMWATCH.JOB", commands::job);
command!(cmd_restart, "STREAMWATCH.RESTART", commands::restart);
command!(cmd_replay, "STREAMWATCH.REPLAY", commands::replay);
command!(cmd_pause, "STREAMWATCH.PAUSE", commands::pause);
command!(cmd_resume, "STREAMWATCH.RESUME", commands::resume);
command!(cmd_reconcile, "STREAMWATCH.RECONCILE", commands::reconcile);
command!(cmd_reload, "STREAMWATCH.RELOAD", commands::reload);
command!(cmd_status, "STREAMWATCH.STATUS", commands::status);
command!(cmd_pools, "STREAMWATCH.POOLS", commands::pools);
command!(cmd_wait, "STREAMWATCH.WAIT", commands::wait);
command!(cmd_cancel, "STREAMWATCH.CANCEL", commands::cancel);

redis_module! {
    name: "streamwatch",
    version: 1,
    allocator: (Allocator, ALLOCATOR),
    data_types: [],
    // Where the server supports module ACL categories (not Redis 7.0): `@streamwatch`.
    // Flags: the commands that control jobs are `admin`, in `@admin` and `@dangerous`
    // (not `@write`: a `+@write` user may not change what runs); on Redis 7.0, where
    // modules get no categories, `acl::check_admin` judges them as if they were. WATCH
    // and UNWATCH also write the watches store, REPLAY the user's streams (`write`: a
    // replica refuses them), and WATCH and REPLAY add data (`deny-oom`); the rest only
    // read (`readonly`).
    // Keys: JOB, WAIT, RESTART, CANCEL and REPLAY name one key, argument 1 (`load`
    // refines the key specs: JOB and WAIT read the key, RESTART, CANCEL and REPLAY
    // update it), so Redis checks key ACLs and slots; REPLAY checks the dead-letter
    // streams it takes from itself.
    acl_categories: ["streamwatch",],
    init: init,
    deinit: deinit,
    info: info,
    commands: [
        ["streamwatch.watch", cmd_watch, "admin write deny-oom", 0, 0, 0, "", "admin dangerous streamwatch"],
        ["streamwatch.unwatch", cmd_unwatch, "admin write", 0, 0, 0, "", "admin dangerous streamwatch"],
        ["streamwatch.watches", cmd_watches, "readonly", 0, 0, 0, "", "read streamwatch"],
        ["streamwatch.handlers", cmd_handlers, "readonly", 0, 0, 0, "", "read streamwatch"],
        ["streamwatch.jobs", cmd_jobs, "readonly", 0, 0, 0, "", "read streamwatch"],
        ["streamwatch.job", cmd_job, "readonly", 1, 1, 1, "", "read streamwatch"],
        ["streamwatch.restart", cmd_restart, "admin", 1, 1, 1, "", "admin dangerous streamwatch"],
        ["streamwatch.replay", cmd_replay, "admin write deny-oom", 1, 1, 1, "", "admin dangerous streamwatch"],
        ["streamwatch.pause", cmd_pause, "admin", 0, 0, 0, "", "admin dangerous streamwatch"],
        ["streamwatch.resume", cmd_resume, "admin", 0, 0, 0, "", "admin dangerous streamwatch"],
        ["streamwatch.reconcile", cmd_reconcile, "admin", 0, 0, 0, "", "admin dangerous streamwatch"],
        ["streamwatch.reload", cmd_reload, "admin", 0, 0, 0, "", "admin dangerous streamwatch"],
        ["streamwatch.status", cmd_status, "readonly", 0, 0, 0, "", "read streamwatch"],
        ["streamwatch.pools", cmd_pools, "readonly", 0, 0, 0, "", "read streamwatch"],
        ["streamwatch.wait", cmd_wait, "readonly", 1, 1, 1, "", "read streamwatch"],
        ["streamwatch.cancel", cmd_cancel, "admin", 1, 1, 1, "", "admin dangerous streamwatch"],
    ],
    configurations: [
        i64: [
            ["events-maxlen", &config::EVENTS_MAXLEN, 10000, 0, i64::MAX, ConfigurationFlags::DEFAULT, None],
            ["max-jobs", &config::MAX_JOBS, 10000, 0, 100_000_000, ConfigurationFlags::DEFAULT, None],
            ["log-lines", &config::LOG_LINES, 100, 0, 1_000_000, ConfigurationFlags::DEFAULT, None],
            ["outcomes-max", &config::OUTCOMES_MAX, 10000, 0, 10_000_000, ConfigurationFlags::DEFAULT, None],
            ["outcomes-ttl-ms", &config::OUTCOMES_TTL_MS, 86_400_000, 0, i64::MAX, ConfigurationFlags::DEFAULT, None],
            ["reload-batch", &config::RELOAD_BATCH, 0, 0, 1_000_000, ConfigurationFlags::DEFAULT, None],
        ],
        string: [
            ["config", &config::CONFIG_PATH, "", ConfigurationFlags::IMMUTABLE, None],
            ["events-key", &config::EVENTS_KEY, "streamwatch:events", ConfigurationFlags::DEFAULT, None],
        ],
        bool: [],
        enum: [
            ["start-paused", &config::START_PAUSED, config::StartPaused::No, ConfigurationFlags::IMMUTABLE, None],
        ],
        module_args_as_configuration: true,
    ]
}
