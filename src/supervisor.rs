//! The supervisor: one module thread that owns every job.
//!
//! Everything arrives on one channel, in order: key hints from the keyspace callback,
//! commands from clients (answered through blocked clients), role changes, and the
//! helper's reports (started, output, exited). The supervisor is level-triggered: a
//! hint only says "look at this key again"; it then reads the key under the GIL,
//! compares its fields and values with its jobs, and starts, stops or restarts the
//! difference. A burst of hints for one key is coalesced into one look, and a lost
//! hint is repaired by the next look or by a full reconcile.
//!
//! Only a primary runs jobs: the role is read under the GIL before every look, and a
//! demotion (or PAUSE) stops everything.
//!
//! Stream watches (one queue per watched stream, entries as jobs) live in the child
//! module `queue`; they share the runs, the timers and the helper with hash jobs.

mod events;
mod gil;
mod policy;
mod queue;
mod runs;
mod views;

use crate::cluster;
use crate::config;
use crate::ffi::{self, Replier, Reply};
use crate::glob;
use crate::protocol::{Report, Request};
use crate::runner::{self, Runner};
use crate::spec::{Kind, OnChange};
use crate::stats;
use crate::store;
use crate::watch::{self, Snapshot, Watch};
use events::LifecycleEvents;
use queue::{Queue, QueueKey, Sid};
use redis_module::{ContextFlags, ThreadSafeContext};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Filters of `STREAMWATCH.JOBS`.
#[derive(Debug, Default)]
pub struct JobFilter {
    pub watch: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub state: Option<&'static str>,
    pub count: Option<usize>,
}

/// Everything the supervisor is told.
pub enum Msg {
    Dirty {
        db: i32,
        key: Vec<u8>,
    },
    ReconcileAll {
        reply: Option<Replier>,
    },
    Watches(Snapshot),
    Unwatch {
        watches: Snapshot,
        reply: Option<Replier>,
    },
    Jobs {
        filter: JobFilter,
        reply: Replier,
    },
    Job {
        db: i32,
        key: Vec<u8>,
        field: Vec<u8>,
        reply: Replier,
    },
    Restart {
        db: i32,
        key: Vec<u8>,
        field: Vec<u8>,
        reply: Replier,
    },
    Pause,
    Resume,
    Role {
        primary: bool,
    },
    Report(Report),
    HelperGone,
}

static TX: OnceLock<Sender<Msg>> = OnceLock::new();
static QUEUED_HINTS: AtomicUsize = AtomicUsize::new(0);
static OVERFLOWED: AtomicBool = AtomicBool::new(false);
/// Hints beyond this many unprocessed ones are dropped and replaced by one full
/// reconcile, so a stalled supervisor cannot make the server's memory grow.
const MAX_QUEUED_HINTS: usize = 100_000;
/// A look at a key counts as costing at least this much (a look that takes no GIL
/// still costs the main thread a wake-up) when it paces that key's next look...
const PACE_MIN: Duration = Duration::from_micros(50);
/// ...to no sooner than this many times its cost later (about 10% of the GIL at most).
const PACE_FACTOR: u32 = 9;
/// A hint this soon after the key's last look counts as a write back to back...
const HOT_GAP: Duration = Duration::from_micros(500);
/// ...and this many such looks in a row start the pacing.
const HOT_STREAK: u32 = 4;
/// A key's pacing state is forgotten this long after its last look.
const PACE_KEEP: Duration = Duration::from_millis(20);
/// How often job counts are published while hints stream in.
const STATS_EVERY: Duration = Duration::from_millis(20);
/// Fields of a hash read per GIL hold (a bigger hash is read in slices).
const HASH_SLICE: usize = 256;
/// A helper that lived this long was not failing: its death starts the count again.
const HELPER_STABLE: Duration = Duration::from_secs(30);

/// How long to wait before starting a helper after `failures` in a row: at once after
/// the first, then 100 ms more per failure, at most 5 s.
fn helper_delay(failures: u32) -> Duration {
    if failures <= 1 {
        Duration::ZERO
    } else {
        Duration::from_millis(100 * u64::from(failures)).min(Duration::from_secs(5))
    }
}

/// The watches changed (what the store read, if anything changed): the supervisor
/// follows them.
pub fn follow_watches(changed: Option<Snapshot>) {
    if let Some(snapshot) = changed {
        send(Msg::Watches(snapshot));
    }
}

/// Sends a message to the supervisor; false if it is not running.
pub fn send(msg: Msg) -> bool {
    TX.get().is_some_and(|tx| tx.send(msg).is_ok())
}

/// Hash fields (or field/value pairs), in one buffer: the command filter notes them for
/// every write to a watched hash, so no allocation per field.
#[derive(Debug, Default)]
pub struct FieldList {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FieldList {
    pub const fn new() -> FieldList {
        FieldList {
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, field: &[u8]) {
        self.bytes.extend_from_slice(field);
        self.ends.push(self.bytes.len());
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(a, &b)| &self.bytes[a..b])
    }
}

/// What one command did to the hash fields it names, as the command filter saw it.
#[derive(Debug, Default)]
pub struct Written {
    pub what: Wrote,
    /// The fields; with `Wrote::Values`, each field followed by its new value.
    pub list: FieldList,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// The fields changed to values the command computed (HINCRBY): read them.
    #[default]
    Unknown,
    /// The fields now hold the values in the command (HSET, HMSET, HSETNX: their event
    /// fires only if they wrote).
    Values,
    /// The fields are gone (HDEL).
    Deleted,
}

/// A look at a key is bounded by this many named fields; past it, the whole key.
pub const MAX_LOOK_FIELDS: usize = 1024;

/// What the look at a field will find there, from the commands since the last look.
#[derive(Debug)]
enum Known {
    Value(Vec<u8>),
    Gone,
    /// Not known without reading it (under the GIL).
    Read,
}

/// What a hinted key's next look reads: the whole key, or only the fields that the
/// commands since the last look wrote (every hint must name them all, or it is `Key`).
/// When every named field's state is known from the commands themselves, the look
/// reads nothing at all and takes no GIL.
#[derive(Debug)]
enum Look {
    Key,
    Fields(BTreeMap<Vec<u8>, Known>),
}

impl Look {
    fn of(written: Option<Written>) -> Look {
        let mut look = Look::Fields(BTreeMap::new());
        look.add(written);
        look
    }

    /// A later command's writes: they win over what earlier ones said of a field.
    fn add(&mut self, written: Option<Written>) {
        match (&mut *self, written) {
            (Look::Key, _) => {}
            (Look::Fields(_), None) => *self = Look::Key,
            (Look::Fields(map), Some(w)) => {
                let mut put = |f: &[u8], k: Known| match map.get_mut(f) {
                    Some(old) => *old = k,
                    None => {
                        map.insert(f.to_vec(), k);
                    }
                };
                match w.what {
                    Wrote::Values => {
                        let mut it = w.list.iter();
                        while let (Some(f), Some(v)) = (it.next(), it.next()) {
                            put(f, Known::Value(v.to_vec()));
                        }
                    }
                    Wrote::Deleted => w.list.iter().for_each(|f| put(f, Known::Gone)),
                    Wrote::Unknown => w.list.iter().for_each(|f| put(f, Known::Read)),
                }
                if map.len() > MAX_LOOK_FIELDS {
                    *self = Look::Key;
                }
            }
        }
    }
}

/// Keys hinted and not looked at yet: a burst of writes to one key sends one message
/// (and wakes the supervisor once), not one per write. The keyspace callback adds a
/// key (or more fields to it); the supervisor takes it just before it looks at the key
/// (`take_pending`), so a write after that point always sends a new hint.
type Pending = HashMap<i32, HashMap<Vec<u8>, Look>>;
static PENDING: LazyLock<Mutex<Pending>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to read of a key about to be looked at; the whole key if it is not pending
/// (a full reconcile cleared it).
fn take_pending(db: i32, key: &[u8]) -> Look {
    pending()
        .get_mut(&db)
        .and_then(|keys| keys.remove(key))
        .unwrap_or(Look::Key)
}

/// Main thread, from the keyspace callback: O(1) apart from copying the key name (and
/// the fields and values the command wrote, when the command filter named them).
pub fn hint(db: i32, key: &[u8], written: Option<Written>) {
    stats::bump(&stats::EVENTS);
    if let Some(look) = pending().get_mut(&db).and_then(|keys| keys.get_mut(key)) {
        look.add(written); // the supervisor has not looked yet: that look will see this
        return;
    }
    if QUEUED_HINTS.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_HINTS {
        QUEUED_HINTS.fetch_sub(1, Ordering::Relaxed);
        stats::bump(&stats::EVENTS_DROPPED);
        if !OVERFLOWED.swap(true, Ordering::Relaxed) {
            send(Msg::ReconcileAll { reply: None });
        }
        return;
    }
    // Marked before sending, so the supervisor's take always comes after the mark.
    pending()
        .entry(db)
        .or_default()
        .insert(key.to_vec(), Look::of(written));
    if !send(Msg::Dirty {
        db,
        key: key.to_vec(),
    }) {
        take_pending(db, key);
        QUEUED_HINTS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the supervisor thread (once, at module load).
pub fn start(watches: Snapshot) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    TX.set(tx.clone())
        .map_err(|_| "the supervisor is already running".to_string())?;
    std::thread::Builder::new()
        .name("streamwatch".into())
        .spawn(move || {
            let mut sup = Supervisor::new(watches, tx);
            sup.run(rx);
        })
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
    Ok(())
}

/// What a look at a key found to do.
#[derive(Default)]
struct Plan {
    stop: Vec<JobKey>,
    /// (job, revived, new value)
    change: Vec<(JobKey, bool, Vec<u8>)>,
    /// (index of the covering watch, field, value)
    new: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct JobKey {
    db: i32,
    key: Vec<u8>,
    watch: u64,
    field: Vec<u8>,
}

struct Run {
    id: u64,
    pid: Option<i32>,
    /// The worker's start time (`/proc`), to recognise it after the helper is gone.
    start_time: Option<u64>,
    started: Instant,
    started_ms: i64,
    stopping: bool,
}

impl Run {
    fn new(id: u64) -> Run {
        Run {
            id,
            pid: None,
            start_time: None,
            started: Instant::now(),
            started_ms: now_ms(),
            stopping: false,
        }
    }
}

/// How hot a key with costly looks is (see `flush_dirty`).
struct Pace {
    /// No look before this time.
    at: Option<Instant>,
    /// Hot looks in a row.
    streak: u32,
    last_end: Instant,
    /// Hinted while waiting for `at`.
    hot: bool,
}

/// Whose run a run id is: a hash job's, or a stream entry's.
#[derive(Clone)]
enum RunOf {
    Job(JobKey),
    Entry(QueueKey, Sid),
}

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A hash job's backoff is over.
    Job(JobKey),
    /// A stream entry's backoff is over.
    Entry(QueueKey, Sid),
    /// A stream entry's run reached the handler's `timeout-ms`.
    Timeout(u64),
    /// Time to start a helper again (see `on_helper_gone`).
    Helper,
}

/// The last lines a run wrote (stdout and stderr merged).
#[derive(Default)]
struct Log {
    lines: VecDeque<Vec<u8>>,
    partial: Vec<u8>,
    /// Bytes in `lines` (counted in `KEPT_OUTPUT`).
    bytes: usize,
}

/// Bytes of output kept in all logs together, and the most there may be: past it, a
/// log that gets a line gives up its own oldest lines (keeping at least the newest),
/// so however many jobs write however much, what the module keeps stays bounded.
static KEPT_OUTPUT: AtomicUsize = AtomicUsize::new(0);
const MAX_KEPT_OUTPUT: usize = 32 << 20;

impl Drop for Log {
    fn drop(&mut self) {
        KEPT_OUTPUT.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Log {
    /// Longer lines are cut into pieces of this many bytes.
    const MAX_LINE: usize = 4096;

    fn push(&mut self, mut data: &[u8], cap: usize) {
        while let Some(&first) = data.first() {
            if self.partial.len() >= Log::MAX_LINE {
                // A full line: a newline here ends it, anything else starts the next.
                if first == b'\n' {
                    data = &data[1..];
                }
                self.end_line(cap);
                continue;
            }
            let window = &data[..data.len().min(Log::MAX_LINE - self.partial.len())];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&window[..i]);
                    data = &data[i + 1..];
                    self.end_line(cap);
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                }
            }
        }
    }

    fn end_line(&mut self, cap: usize) {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.bytes += line.len();
        KEPT_OUTPUT.fetch_add(line.len(), Ordering::Relaxed);
        self.lines.push_back(line);
        self.trim(cap);
        while self.lines.len() > 1 && KEPT_OUTPUT.load(Ordering::Relaxed) > MAX_KEPT_OUTPUT {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.lines.pop_front() {
            self.bytes -= old.len();
            KEPT_OUTPUT.fetch_sub(old.len(), Ordering::Relaxed);
        }
    }

    /// The run has ended: an unterminated last line counts.
    fn finish(&mut self, cap: usize) {
        if !self.partial.is_empty() {
            self.end_line(cap);
        }
    }

    fn trim(&mut self, cap: usize) {
        while self.lines.len() > cap {
            self.pop_oldest();
        }
    }

    fn reply(&self) -> Reply {
        Reply::Array(self.lines.iter().map(Reply::str).collect())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Finished {
    Exited,
    Failed,
}

struct Job {
    watch: Arc<Watch>,
    /// The value the job should run with (the field's current value).
    value: Vec<u8>,
    /// False once the field is gone: the job is removed when its run has ended.
    wanted: bool,
    run: Option<Run>,
    /// The current run is being stopped to start again with `value`.
    restart_pending: bool,
    backoff_until: Option<Instant>,
    finished: Option<Finished>,
    runs: u64,
    failures: u32,
    last_exit: Option<i64>,
    log: Log,
}

impl Job {
    fn state(&self) -> &'static str {
        match (&self.run, self.finished) {
            (Some(r), _) if r.stopping => "stopping",
            (Some(r), _) if r.pid.is_none() => "starting",
            (Some(_), _) => "running",
            (None, _) if self.backoff_until.is_some() => "backoff",
            (None, Some(Finished::Failed)) => "failed",
            (None, Some(Finished::Exited)) => "exited",
            (None, None) => "starting",
        }
    }
}

/// Why a run ended.
enum End {
    Status(i32),
    SpawnError(String),
}

#[derive(Default)]
struct Tally {
    started: i64,
    stopped: i64,
    restarted: i64,
}

/// What a look at a key found.
enum Observed {
    /// Not a primary: act on nothing, stop everything.
    NotActive,
    /// The dataset is being loaded: leave the key alone; the end of loading brings a
    /// full reconcile.
    Loading,
    Fields(Vec<(Vec<u8>, Vec<u8>)>),
}

struct Supervisor {
    tx: Sender<Msg>,
    tsc: ThreadSafeContext<redis_module::DetachedFromClient>,
    watches: Snapshot,
    jobs: BTreeMap<JobKey, Job>,
    /// Stream watches: one queue per (watch, stream), see `queue`.
    queues: BTreeMap<QueueKey, Queue>,
    /// Queues with work for the next `flush_queues` (one GIL hold for all).
    dirty_queues: BTreeSet<QueueKey>,
    /// This node's consumer name in stream watches' groups.
    consumer: Vec<u8>,
    /// When a queue's group figures are next due (see `publish_queue_stats`).
    stats_due: Option<Instant>,
    /// Hot keys: no look before this time (see `flush_dirty`).
    pace: HashMap<(i32, Vec<u8>), Pace>,
    /// Publishing the counts: asked for now, when last done, skipped since.
    stats_now: bool,
    stats_published: Instant,
    stats_stale: bool,
    /// How long the current look held the GIL.
    look_hold: Duration,
    /// Hinted keys waiting for their pace, and when the first is due.
    deferred: BTreeSet<(i32, Vec<u8>)>,
    next_deferred: Option<Instant>,
    runs: HashMap<u64, RunOf>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    runner: Option<Runner>,
    next_run: u64,
    primary: bool,
    paused: bool,
    databases: i32,
    events: LifecycleEvents,
    /// Keys with fields not started because of `max-jobs`, and how many each.
    over_limit: BTreeMap<(i32, Vec<u8>), usize>,
    /// Helpers in a row that died (or could not start) soon after they started.
    helper_failures: u32,
    /// When the current helper started.
    helper_started: Instant,
    /// Live runs on disk, for the next load if the helper dies with the server.
    record: runner::RunRecord,
    /// In cluster mode, the slots this node owns (only their keys have jobs).
    owned: Option<cluster::Owned>,
    next_poll: Instant,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Exit status as one number: the exit code, or minus the signal (like Python).
fn exit_number(status: i32) -> i64 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as i64
    } else if libc::WIFSIGNALED(status) {
        -(libc::WTERMSIG(status) as i64)
    } else {
        -1
    }
}

impl Supervisor {
    fn new(watches: Snapshot, tx: Sender<Msg>) -> Supervisor {
        Supervisor {
            tx,
            tsc: ThreadSafeContext::new(),
            watches,
            jobs: BTreeMap::new(),
            queues: BTreeMap::new(),
            dirty_queues: BTreeSet::new(),
            consumer: b"streamwatch".to_vec(),
            stats_due: None,
            pace: HashMap::new(),
            deferred: BTreeSet::new(),
            next_deferred: None,
            look_hold: Duration::ZERO,
            stats_now: true,
            stats_published: Instant::now(),
            stats_stale: false,
            runs: HashMap::new(),
            timers: BinaryHeap::new(),
            runner: None,
            next_run: 1,
            primary: false,
            paused: false,
            databases: 16,
            events: LifecycleEvents::default(),
            over_limit: BTreeMap::new(),
            helper_failures: 0,
            helper_started: Instant::now(),
            record: runner::RunRecord::new(None),
            owned: None,
            next_poll: Instant::now(),
        }
    }

    /// How long the loop may wait for a message before it has work of its own: the
    /// soonest of
    /// - the first timer (a backoff over, a `timeout-ms` reached, a helper restart; an
    ///   hour when there is none),
    /// - the run record's pending write (`record.due_in`),
    /// - in cluster mode, the next poll of the owned slots (`next_poll`),
    /// - now, when queues are dirty or lifecycle events are pending,
    /// - the queues' group figures (`stats_due`),
    /// - the first hinted key waiting for its pace (`next_deferred`),
    /// - the skipped publishing of the counts (`stats_stale`, `STATS_EVERY` after the
    ///   last).
    fn next_wakeup(&self, now: Instant) -> Duration {
        let until = |t: Instant| t.saturating_duration_since(now);
        self.timers
            .peek()
            .map(|Reverse((at, _))| until(*at))
            .unwrap_or(Duration::from_secs(3600))
            .min(self.record.due_in(now).unwrap_or(Duration::MAX))
            .min(match self.owned {
                Some(_) => until(self.next_poll),
                None => Duration::MAX,
            })
            .min(if self.dirty_queues.is_empty() && self.events.is_empty() {
                Duration::MAX
            } else {
                Duration::ZERO
            })
            .min(self.stats_due.map_or(Duration::MAX, until))
            .min(self.next_deferred.map_or(Duration::MAX, until))
            .min(if self.stats_stale {
                STATS_EVERY.saturating_sub(now.saturating_duration_since(self.stats_published))
            } else {
                Duration::MAX
            })
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        let dir = self.read_server_facts();
        self.record = runner::RunRecord::new(dir.as_deref());
        let killed = self.record.kill_leftovers();
        if killed > 0 {
            ffi::log_warning(format!(
                "streamwatch: killed {killed} workers left running by a previous instance"
            ));
        }
        self.start_helper();
        self.guarded("reconcile", |s| {
            s.reconcile_all();
        });
        let mut dirty: BTreeSet<(i32, Vec<u8>)> = BTreeSet::new();
        loop {
            // One clock reading per turn: a turn per job is the common case, and a
            // dozen readings were a seventh of this thread's time on short stream jobs.
            let now = Instant::now();
            let timeout = self.next_wakeup(now);
            let first = match rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Handle everything already queued; coalesce hints, keep order otherwise.
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    Msg::Dirty { db, key } => {
                        QUEUED_HINTS.fetch_sub(1, Ordering::Relaxed);
                        dirty.insert((db, key));
                    }
                    Msg::Report(r) => {
                        self.flush_dirty(&mut dirty, false);
                        self.guarded("message", |s| s.handle(Msg::Report(r)));
                    }
                    other => {
                        self.stats_now = true;
                        // What came before this message is seen first, paced keys
                        // included (a client that writes a key and then asks about
                        // jobs sees its write).
                        self.flush_dirty(&mut dirty, true);
                        self.guarded("queues", |s| s.flush_queues());
                        self.guarded("message", |s| s.handle(other));
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush_dirty(&mut dirty, false);
            let paced = self.due_deferred(&mut dirty);
            self.flush_dirty(&mut dirty, false);
            self.next_deferred = paced;
            if self.owned.is_some() && Instant::now() >= self.next_poll {
                self.guarded("slot ownership", |s| s.poll_slots());
            }
            self.guarded("timers", |s| s.fire_timers());
            self.guarded("queues", |s| s.flush_queues());
            self.guarded("events", |s| s.events.flush(&s.tsc, s.owned.is_some()));
            // Counts for STATUS/INFO: O(jobs), so at most every STATS_EVERY while hints
            // stream in, and at once after a command (which may be followed by STATUS).
            let done = Instant::now();
            if self.stats_now || done.saturating_duration_since(self.stats_published) >= STATS_EVERY
            {
                self.publish_stats();
                self.stats_now = false;
                self.stats_published = done;
                self.stats_stale = false;
            } else {
                self.stats_stale = true;
            }
            let runs = self.jobs.values().filter_map(|j| j.run.as_ref()).chain(
                self.queues
                    .values()
                    .flat_map(|q| q.entries.values().filter_map(|e| e.run.as_ref())),
            );
            self.record
                .write_if_due(done, runs.filter_map(|r| Some((r.pid?, r.start_time?))));
        }
    }

    /// Runs one step with panics caught, so a bug costs one step, not the supervisor.
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut Supervisor)) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if let Err(p) = r {
            ffi::log_warning(format!(
                "streamwatch: internal error in supervisor ({what}): {}",
                ffi::panic_text(&p)
            ));
        }
    }

    /// Looks at every hinted key, except a hot key whose last look was costly: its next
    /// look waits (`deferred`) so that looking at one key never holds the GIL more than
    /// about 1/`PACE_FACTOR` of the time; a burst of writes to a big hash cannot starve
    /// the main thread, and the look that follows still sees the latest state.
    fn flush_dirty(&mut self, dirty: &mut BTreeSet<(i32, Vec<u8>)>, force: bool) {
        if force {
            dirty.append(&mut self.deferred);
        }
        if dirty.is_empty() {
            return;
        }
        let keys = std::mem::take(dirty);
        self.guarded("reconcile key", |s| {
            let mut tally = Tally::default();
            let now = Instant::now();
            for k in keys {
                let state = s.pace.get_mut(&k);
                if let Some(p) = state {
                    if !force && p.at.is_some_and(|at| now < at) {
                        p.hot = true; // hinted again before its pace: still hot
                        s.deferred.insert(k);
                        continue;
                    }
                }
                s.look_hold = Duration::ZERO;
                let look = take_pending(k.0, &k.1);
                s.reconcile_key_guarded(k.0, &k.1, look, &mut tally);
                // What the look cost the server: the time it held the GIL, and at least
                // PACE_MIN: a look that reads nothing (an HSET's own values) still cost
                // the main thread a wake-up of this thread for every write to the key.
                let cost = s.look_hold.max(PACE_MIN);
                let end = Instant::now();
                let p = s.pace.entry(k).or_insert(Pace {
                    at: None,
                    streak: 0,
                    last_end: end - HOT_GAP,
                    hot: false,
                });
                // A key written back to back (hinted during its pace, or right after
                // its last look) is hot; a few hot looks in a row and it is paced.
                // Writes a millisecond apart are each looked at at once.
                if p.hot || now.saturating_duration_since(p.last_end) < HOT_GAP {
                    p.streak += 1;
                } else {
                    p.streak = 0;
                }
                p.hot = false;
                p.last_end = end;
                p.at = (p.streak >= HOT_STREAK).then(|| end + cost * PACE_FACTOR);
            }
        });
    }

    /// Deferred keys whose time has come, back into `dirty`; the next wake-up otherwise.
    fn due_deferred(&mut self, dirty: &mut BTreeSet<(i32, Vec<u8>)>) -> Option<Instant> {
        if self.deferred.is_empty() && self.pace.len() <= 1024 {
            return None; // nothing waits, nothing to trim (the check below)
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let pace = &self.pace;
        self.deferred
            .retain(|k| match pace.get(k).and_then(|p| p.at) {
                Some(at) if at > now => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
                _ => {
                    dirty.insert(k.clone());
                    false
                }
            });
        // Every key looked at has an entry; one not looked at for PACE_KEEP can be
        // neither hot nor waiting, so a stream of writes to many keys stays bounded.
        if self.pace.len() > 4 * self.deferred.len() + 1024 {
            self.pace.retain(|_, p| {
                p.at.is_some_and(|at| at > now)
                    || now.saturating_duration_since(p.last_end) < PACE_KEEP
            });
        }
        next
    }

    /// Cluster mode: keeps the shard's watches store in place, re-reads slot ownership;
    /// a change (reshard, failover) means a full reconcile, which starts the jobs of
    /// gained slots and stops those of lost ones.
    fn poll_slots(&mut self) {
        self.next_poll = Instant::now() + cluster::POLL;
        let now = {
            let ctx = gil::lock(&self.tsc);
            store::ensure(&ctx);
            cluster::owned(&ctx)
        };
        if self.owned.as_ref() != Some(&now) {
            self.reconcile_all();
        }
    }

    /// Reads the role and `databases`; returns the server's `dir`.
    fn read_server_facts(&mut self) -> Option<String> {
        let ctx = gil::lock(&self.tsc);
        self.primary = ctx.get_flags().contains(ContextFlags::MASTER);
        stats::PRIMARY.store(self.primary, Ordering::Relaxed);
        let config = |name: &str| match ctx.call("CONFIG", &["GET", name]) {
            Ok(redis_module::RedisValue::Array(v)) => match v.get(1) {
                Some(
                    redis_module::RedisValue::SimpleString(s)
                    | redis_module::RedisValue::BulkString(s),
                ) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        if let Some(n) = config("databases").and_then(|s| s.parse().ok()) {
            self.databases = n;
        }
        // One consumer per node, the same across its restarts.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let port = config("port").unwrap_or_default();
        self.consumer = format!("streamwatch@{}:{port}", host.trim()).into_bytes();
        config("dir")
    }

    fn start_helper(&mut self) {
        let tx = self.tx.clone();
        self.helper_started = Instant::now();
        match Runner::start(move |r| {
            let _ = tx.send(match r {
                Some(report) => Msg::Report(report),
                None => Msg::HelperGone,
            });
        }) {
            Ok(r) => {
                ffi::log_notice(format!(
                    "streamwatch: helper process started, pid {}",
                    r.pid()
                ));
                self.record.set_helper(Some(r.session()));
                self.runner = Some(r);
            }
            Err(e) => {
                ffi::log_warning(format!("streamwatch: cannot start the helper process: {e}"));
                self.record.set_helper(None);
                self.runner = None;
                self.helper_failed();
            }
        }
    }

    /// Starts a helper in place of one that is gone, and puts the jobs back.
    fn restart_helper(&mut self) {
        self.start_helper();
        if !self.active() {
            return;
        }
        self.reconcile_all();
        // Backoffs that ended while there was no helper found nothing to start then.
        let now = Instant::now();
        let due: Vec<JobKey> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.wanted && j.run.is_none())
            .filter(|(_, j)| j.backoff_until.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.start_run(&k);
        }
    }

    /// A helper died, or could not start: try again after a delay that grows with the
    /// failures in a row (never by sleeping: commands are still answered meanwhile).
    /// A helper that ran for `HELPER_STABLE` clears the count.
    fn helper_failed(&mut self) {
        if self.helper_started.elapsed() >= HELPER_STABLE {
            self.helper_failures = 0;
        }
        self.helper_failures += 1;
        let delay = helper_delay(self.helper_failures);
        self.timers
            .push(Reverse((Instant::now() + delay, Timer::Helper)));
    }

    fn active(&self) -> bool {
        self.primary && !self.paused && self.runner.is_some()
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Dirty { .. } => {}
            Msg::ReconcileAll { reply } => {
                OVERFLOWED.store(false, Ordering::Relaxed);
                // Everything is looked at now; hints still in flight only repeat it.
                pending().clear();
                let t = self.reconcile_all();
                if let Some(r) = reply {
                    r.reply(Reply::Map(vec![
                        ("started".into(), Reply::Int(t.started)),
                        ("stopped".into(), Reply::Int(t.stopped)),
                        ("restarted".into(), Reply::Int(t.restarted)),
                    ]));
                }
            }
            Msg::Watches(w) => {
                self.watches = w;
                self.reconcile_all();
            }
            Msg::Unwatch { watches, reply } => {
                self.watches = watches;
                let alive: BTreeSet<u64> = self.watches.iter().map(|w| w.id).collect();
                let mut stopped = 0;
                let keys: Vec<JobKey> = self
                    .jobs
                    .keys()
                    .filter(|k| !alive.contains(&k.watch))
                    .cloned()
                    .collect();
                for k in keys {
                    if self.jobs.get(&k).is_some_and(|j| j.run.is_some()) {
                        stopped += 1;
                    }
                    self.unwant(&k);
                }
                let queues: Vec<QueueKey> = self
                    .queues
                    .keys()
                    .filter(|k| !alive.contains(&k.watch))
                    .cloned()
                    .collect();
                for k in queues {
                    stopped += self.queues[&k]
                        .entries
                        .values()
                        .filter(|e| e.run.is_some())
                        .count() as i64;
                    self.drop_queue(&k);
                }
                if let Some(r) = reply {
                    r.reply(Reply::Int(stopped));
                }
            }
            Msg::Jobs { filter, reply } => {
                reply.reply(views::jobs_reply(&self.jobs, &self.queues, &filter))
            }
            Msg::Job {
                db,
                key,
                field,
                reply,
            } => {
                let found = self
                    .jobs
                    .iter()
                    .find(|(k, _)| k.db == db && k.key == key && k.field == field);
                let entry = || {
                    let sid = Sid::parse(&field)?;
                    self.queues.iter().find_map(|(qk, q)| {
                        let e = q
                            .entries
                            .get(&sid)
                            .filter(|_| qk.db == db && qk.key == key)?;
                        Some(views::entry_map(qk, &q.watch, sid, e, true))
                    })
                };
                reply.reply(match found {
                    Some((k, j)) => views::job_map(k, j, true),
                    None => entry().unwrap_or(Reply::Nil),
                });
            }
            Msg::Restart {
                db,
                key,
                field,
                reply,
            } => {
                let keys: Vec<JobKey> = self
                    .jobs
                    .keys()
                    .filter(|k| k.db == db && k.key == key && k.field == field)
                    .cloned()
                    .collect();
                let mut n = 0;
                for k in &keys {
                    if self.jobs.get(k).is_some_and(|j| j.wanted) {
                        self.restart(k);
                        n = 1;
                    }
                }
                reply.reply(Reply::Int(n));
            }
            Msg::Pause => {
                if !self.paused {
                    self.paused = true;
                    stats::PAUSED.store(true, Ordering::Relaxed);
                    self.stop_everything();
                    self.events.push_plain("paused");
                }
            }
            Msg::Resume => {
                if self.paused {
                    self.paused = false;
                    stats::PAUSED.store(false, Ordering::Relaxed);
                    self.events.push_plain("resumed");
                }
                self.reconcile_all();
            }
            Msg::Role { primary } => {
                self.primary = primary;
                stats::PRIMARY.store(primary, Ordering::Relaxed);
                if primary {
                    self.reconcile_all();
                } else {
                    self.stop_everything();
                }
            }
            Msg::Report(r) => self.on_report(r),
            Msg::HelperGone => self.on_helper_gone(),
        }
    }

    // ---- looking at keys ----

    /// Reads a key's hash fields under the GIL (checking the role first).
    fn observe(&mut self, db: i32, key: &[u8]) -> Observed {
        let mut scan = ffi::HashScan::new();
        let mut fields = Vec::new();
        let mut slices = 0;
        loop {
            let ctx = gil::lock(&self.tsc);
            let step = match self.check_locked(&ctx, db, key) {
                Err(observed) => Err(observed),
                Ok(()) => Ok(scan.step(&ctx, key, HASH_SLICE, &mut fields)),
            };
            self.look_hold += ctx.held();
            drop(ctx);
            slices += 1;
            match step {
                Err(observed) => return observed,
                Ok(None) => {
                    fields.clear(); // not a hash (any more): no fields
                    break;
                }
                Ok(Some(false)) => break,
                Ok(Some(true)) => {}
            }
        }
        if slices > 1 {
            // Read in several holds: a field can come twice (the last value wins).
            let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
            let mut unique: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(fields.len());
            for (f, v) in fields {
                match seen.get(&f) {
                    Some(&i) => unique[i].1 = v,
                    None => {
                        seen.insert(f.clone(), unique.len());
                        unique.push((f, v));
                    }
                }
            }
            fields = unique;
        }
        Observed::Fields(fields)
    }

    /// Under the GIL, before (each slice of) a look: `Err` if there is nothing to read.
    fn check_locked(
        &mut self,
        ctx: &redis_module::Context,
        db: i32,
        key: &[u8],
    ) -> Result<(), Observed> {
        let flags = ctx.get_flags();
        if !flags.contains(ContextFlags::MASTER) {
            self.primary = false;
            stats::PRIMARY.store(false, Ordering::Relaxed);
            return Err(Observed::NotActive);
        }
        if flags.contains(ContextFlags::LOADING) {
            return Err(Observed::Loading);
        }
        if let Some(owned) = &self.owned {
            // A key in a slot this node does not own (yet) has no jobs here.
            if !cluster::key_slot(ctx, key).is_some_and(|s| owned.contains(s)) {
                return Err(Observed::Fields(Vec::new()));
            }
        }
        if !ffi::select_db(ctx, db) {
            return Err(Observed::Fields(Vec::new()));
        }
        Ok(())
    }

    /// `reconcile_key` with a panic caught per key: a bug that one key triggers costs
    /// that key (and a log line), never the other keys of a batch or a full reconcile.
    fn reconcile_key_guarded(&mut self, db: i32, key: &[u8], look: Look, tally: &mut Tally) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.reconcile_key(db, key, look, tally)
        }));
        if let Err(p) = r {
            ffi::log_warning(format!(
                "streamwatch: internal error in supervisor (reconcile of '{}' in db {db}): {}",
                String::from_utf8_lossy(key),
                ffi::panic_text(&p)
            ));
        }
    }

    /// Makes the jobs of one key match its current fields: all of them, or (`look`) only
    /// those the commands since the last look wrote.
    fn reconcile_key(&mut self, db: i32, key: &[u8], look: Look, tally: &mut Tally) {
        #[cfg(feature = "panic-test")]
        if key == b"panic-test:supervisor" {
            panic!("panic-test: a bug in the supervisor");
        }
        let (streams, covering): (Vec<Arc<Watch>>, Vec<Arc<Watch>>) = self
            .watches
            .iter()
            .filter(|w| w.covers(db, key))
            .cloned()
            .partition(|w| w.spec.kind == Kind::Stream);
        let has_queue = self.queues.keys().any(|q| q.db == db && q.key == key);
        if self.active() && (!streams.is_empty() || has_queue) {
            self.reconcile_streams(db, key, &streams);
        }
        let from = JobKey {
            db,
            key: key.to_vec(),
            watch: 0,
            field: Vec::new(),
        };
        let has_jobs = self
            .jobs
            .range(&from..)
            .next()
            .is_some_and(|(k, _)| k.db == db && k.key == key);
        if covering.is_empty() && !has_jobs {
            self.over_limit.remove(&(db, key.to_vec()));
            return;
        }
        if !self.active() {
            return;
        }
        // Named fields are enough unless the key is also a queue, or some fields wait
        // for room under max-jobs (those are found by reading the whole key).
        let named = match look {
            Look::Fields(map) if streams.is_empty() && !has_queue && self.over_limit.is_empty() => {
                Some(map)
            }
            _ => None,
        };
        // `Err(None)`: the named fields are not enough; read the whole key.
        let by_fields = match named {
            Some(map) => self.plan_fields(db, key, &covering, &map),
            None => Err(None),
        };
        let plan = match by_fields {
            Ok(plan) => plan,
            Err(Some(observed)) => return self.not_observed(observed),
            Err(None) => match self.plan_key(db, key, &covering, &from) {
                Ok(plan) => plan,
                Err(observed) => return self.not_observed(observed),
            },
        };
        self.apply(db, key, &covering, plan, tally);
    }

    fn not_observed(&mut self, observed: Observed) {
        if let Observed::NotActive = observed {
            self.stop_everything();
        }
    }

    /// Reads the whole key and diffs it with the key's jobs: walks the fields and the
    /// jobs (both sorted by field) side by side, with no allocation unless something
    /// changed, so a look at a big hash whose fields are unchanged costs little besides
    /// reading it.
    fn plan_key(
        &mut self,
        db: i32,
        key: &[u8],
        covering: &[Arc<Watch>],
        from: &JobKey,
    ) -> Result<Plan, Observed> {
        let mut fields = match self.observe(db, key) {
            Observed::Fields(f) => f,
            other => return Err(other),
        };
        self.over_limit.remove(&(db, key.to_vec()));
        fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut plan = Plan::default();
        for (k, _) in self
            .jobs
            .range(from..)
            .take_while(|(k, _)| k.db == db && k.key == key)
        {
            if !covering.iter().any(|w| w.id == k.watch) {
                plan.stop.push(k.clone());
            }
        }
        for (wi, w) in covering.iter().enumerate() {
            let start = JobKey {
                db,
                key: key.to_vec(),
                watch: w.id,
                field: Vec::new(),
            };
            let mut jobs = self
                .jobs
                .range(start..)
                .take_while(|(k, _)| k.db == db && k.key == key && k.watch == w.id)
                .peekable();
            let mut fi = 0;
            loop {
                let field = fields.get(fi);
                match (jobs.peek(), field) {
                    (None, None) => break,
                    (Some((k, j)), Some((f, v))) if k.field == *f => {
                        if !j.wanted || j.value != *v {
                            plan.change.push(((*k).clone(), !j.wanted, v.clone()));
                        }
                        jobs.next();
                        fi += 1;
                    }
                    (None, Some((f, v))) => {
                        plan.new.push((wi, f.clone(), v.clone())); // no job yet
                        fi += 1;
                    }
                    (Some((k, _)), Some((f, v))) if k.field > *f => {
                        plan.new.push((wi, f.clone(), v.clone()));
                        fi += 1;
                    }
                    (Some((k, _)), _) => {
                        plan.stop.push((*k).clone()); // its field is gone
                        jobs.next();
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Diffs the named fields with their jobs. What the commands wrote is known for most
    /// (HSET, HDEL): then nothing is read and no GIL taken, outside a cluster (where
    /// slot ownership is checked under the GIL). Otherwise the named fields are read in
    /// one short GIL hold, whatever the size of the hash. `Err(None)`: the key is not a
    /// hash (any more), so the whole key must be looked at.
    fn plan_fields(
        &mut self,
        db: i32,
        key: &[u8],
        covering: &[Arc<Watch>],
        names: &BTreeMap<Vec<u8>, Known>,
    ) -> Result<Plan, Option<Observed>> {
        let known = self.owned.is_none() && !names.values().any(|k| matches!(k, Known::Read));
        let values: Vec<Option<Vec<u8>>> = if known {
            names
                .values()
                .map(|k| match k {
                    Known::Value(v) => Some(v.clone()),
                    _ => None,
                })
                .collect()
        } else {
            let ctx = gil::lock(&self.tsc);
            let values = match self.check_locked(&ctx, db, key) {
                Err(observed) => Err(Some(observed)),
                Ok(()) => {
                    ffi::hash_get_fields(&ctx, key, names.keys().map(|f| f.as_slice())).ok_or(None)
                }
            };
            self.look_hold += ctx.held();
            drop(ctx);
            values?
        };
        let mut plan = Plan::default();
        for (wi, w) in covering.iter().enumerate() {
            for (field, value) in names.keys().zip(&values) {
                let jk = JobKey {
                    db,
                    key: key.to_vec(),
                    watch: w.id,
                    field: field.clone(),
                };
                match (self.jobs.get(&jk), value) {
                    (Some(j), Some(v)) => {
                        if !j.wanted || j.value != *v {
                            plan.change.push((jk, !j.wanted, v.clone()));
                        }
                    }
                    (None, Some(v)) => plan.new.push((wi, field.clone(), v.clone())),
                    (Some(_), None) => plan.stop.push(jk),
                    (None, None) => {}
                }
            }
        }
        Ok(plan)
    }

    /// Carries out a plan: stops, restarts and starts jobs.
    fn apply(
        &mut self,
        db: i32,
        key: &[u8],
        covering: &[Arc<Watch>],
        plan: Plan,
        tally: &mut Tally,
    ) {
        for k in &plan.stop {
            if self.jobs.get(k).is_some_and(|j| j.wanted) {
                tally.stopped += 1;
                self.unwant(k);
            }
        }
        for (jk, revived, value) in plan.change {
            let restart = revived
                || covering
                    .iter()
                    .any(|w| w.id == jk.watch && w.spec.onchange == OnChange::Restart);
            if let Some(job) = self.jobs.get_mut(&jk) {
                job.wanted = true;
                job.value = value;
                if restart {
                    tally.restarted += 1;
                    self.restart(&jk);
                }
            }
        }
        for (wi, field, value) in plan.new {
            let w = &covering[wi];
            if self.jobs.len() >= config::max_jobs() {
                *self.over_limit.entry((db, key.to_vec())).or_default() += 1;
                continue;
            }
            let jk = JobKey {
                db,
                key: key.to_vec(),
                watch: w.id,
                field,
            };
            tally.started += 1;
            self.jobs.insert(
                jk.clone(),
                Job {
                    watch: w.clone(),
                    value,
                    wanted: true,
                    run: None,
                    restart_pending: false,
                    backoff_until: None,
                    finished: None,
                    runs: 0,
                    failures: 0,
                    last_exit: None,
                    log: Log::default(),
                },
            );
            w.jobs.fetch_add(1, Ordering::Relaxed);
            self.start_run(&jk);
        }
    }

    /// Every watched key in every watched database, plus every key that has jobs.
    fn reconcile_all(&mut self) -> Tally {
        stats::bump(&stats::RECONCILES);
        // The registry as of now, read under the GIL: a command that changes watches
        // and data together (DEBUG RELOAD, FLUSHALL) has finished, so the watches and
        // the keys read below agree.
        {
            let ctx = gil::lock(&self.tsc);
            self.watches = watch::snapshot();
            self.owned = cluster::enabled(&ctx).then(|| cluster::owned(&ctx));
            self.next_poll = Instant::now() + cluster::POLL;
        }
        let mut tally = Tally::default();
        let mut keys: BTreeSet<(i32, Vec<u8>)> =
            self.jobs.keys().map(|k| (k.db, k.key.clone())).collect();
        keys.extend(self.queues.keys().map(|q| (q.db, q.key.clone())));
        keys.extend(std::mem::take(&mut self.over_limit).into_keys());
        if self.active() {
            for db in 0..self.databases {
                let watches: Vec<Arc<Watch>> = self
                    .watches
                    .iter()
                    .filter(|w| w.spec.db.covers(db))
                    .cloned()
                    .collect();
                if watches.is_empty() {
                    continue;
                }
                let (literal, globs): (Vec<_>, Vec<_>) = watches
                    .iter()
                    .partition(|w| glob::is_literal(&w.spec.pattern));
                for w in literal {
                    keys.insert((db, w.spec.pattern.clone()));
                }
                if !globs.is_empty() {
                    let patterns = glob::Set::new(globs.iter().map(|w| (&w.spec.pattern[..], 1)));
                    for k in self.scan_db(db, &patterns) {
                        keys.insert((db, k));
                    }
                }
            }
        }
        for (db, key) in keys {
            self.reconcile_key_guarded(db, &key, Look::Key, &mut tally);
        }
        tally
    }

    /// Names of the keys in `db` matching any pattern; the GIL is released every few
    /// hundred keys so a large keyspace never stalls the server.
    fn scan_db(&mut self, db: i32, patterns: &glob::Set) -> Vec<Vec<u8>> {
        let cursor = redis_module::KeysCursor::new();
        let mut found = Vec::new();
        loop {
            let ctx = gil::lock(&self.tsc);
            if !ctx.get_flags().contains(ContextFlags::MASTER) || !ffi::select_db(&ctx, db) {
                return found;
            }
            let mut more = true;
            for _ in 0..64 {
                more = cursor.scan(&ctx, &|_ctx, name, _key| {
                    let n = name.as_slice();
                    if patterns.tags(n) != 0 {
                        found.push(n.to_vec());
                    }
                });
                if !more {
                    break;
                }
            }
            drop(ctx);
            if !more {
                return found;
            }
        }
    }

    // ---- runs ----

    fn start_run(&mut self, jk: &JobKey) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        job.backoff_until = None;
        job.finished = None;
        let db = jk.db.to_string();
        let id = self.next_run;
        self.next_run += 1;
        let req = runs::spawn_request(
            &job.watch.handler,
            id,
            &[
                ("{key}", &jk.key),
                ("{field}", &jk.field),
                ("{value}", &job.value),
                ("{db}", db.as_bytes()),
            ],
            vec![
                (b"STREAMWATCH_KEY".to_vec(), jk.key.clone()),
                (b"STREAMWATCH_DB".to_vec(), db.as_bytes().to_vec()),
                (b"STREAMWATCH_FIELD".to_vec(), jk.field.clone()),
            ],
            None,
        );
        job.runs += 1;
        job.run = Some(Run::new(id));
        self.runs.insert(id, RunOf::Job(jk.clone()));
        stats::bump(&stats::RUNS_STARTED);
        match req {
            Ok(req) => self.send_helper(&req),
            Err(problem) => self.run_ended(id, End::SpawnError(problem)),
        }
    }

    fn send_helper(&mut self, req: &Request) {
        let failed = match self.runner.as_mut() {
            Some(r) => r.send(req).is_err(),
            None => true,
        };
        if failed {
            if let Request::Spawn { run, .. } = req {
                self.run_ended(
                    *run,
                    End::SpawnError("the helper process is not running".into()),
                );
            }
        }
    }

    /// Stops the job's run, if any; the job then starts again with its current value.
    fn restart(&mut self, jk: &JobKey) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        job.failures = 0;
        match &mut job.run {
            Some(run) => {
                job.restart_pending = true;
                if !run.stopping {
                    run.stopping = true;
                    let id = run.id;
                    self.send_helper(&Request::Stop { run: id });
                }
            }
            None => self.start_run(jk),
        }
    }

    /// The job's field is gone: stop its run and forget it.
    fn unwant(&mut self, jk: &JobKey) {
        let Some(job) = self.jobs.get_mut(jk) else {
            return;
        };
        job.wanted = false;
        job.restart_pending = false;
        match &mut job.run {
            Some(run) => {
                if !run.stopping {
                    run.stopping = true;
                    let id = run.id;
                    self.send_helper(&Request::Stop { run: id });
                }
            }
            None => self.remove(jk),
        }
    }

    fn remove(&mut self, jk: &JobKey) {
        if let Some(job) = self.jobs.remove(jk) {
            job.watch.jobs.fetch_sub(1, Ordering::Relaxed);
            self.events.job("stopped", jk, &job, vec![]);
            if !self.over_limit.is_empty() && self.active() {
                let keys: Vec<_> = std::mem::take(&mut self.over_limit).into_keys().collect();
                let mut t = Tally::default();
                for (db, key) in keys {
                    self.reconcile_key_guarded(db, &key, Look::Key, &mut t);
                }
            }
        }
    }

    fn stop_everything(&mut self) {
        let keys: Vec<JobKey> = self.jobs.keys().cloned().collect();
        for k in keys {
            self.unwant(&k);
        }
        let queues: Vec<QueueKey> = self.queues.keys().cloned().collect();
        for k in queues {
            self.drop_queue(&k);
        }
        self.over_limit.clear();
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::Started {
                run,
                pid,
                start_ticks,
            } => {
                let start_time = (start_ticks != 0).then_some(start_ticks);
                match self.runs.get(&run).cloned() {
                    Some(RunOf::Job(jk)) => {
                        let Some(job) = self.jobs.get_mut(&jk) else {
                            return;
                        };
                        if let Some(r) = job.run.as_mut().filter(|r| r.id == run) {
                            r.pid = Some(pid);
                            r.start_time = start_time;
                            self.record.mark();
                        }
                        self.events.job(
                            "started",
                            &jk,
                            &self.jobs[&jk],
                            vec![("pid", pid.to_string().into_bytes())],
                        );
                    }
                    Some(RunOf::Entry(qk, sid)) => {
                        let run = self
                            .queues
                            .get_mut(&qk)
                            .and_then(|q| q.entries.get_mut(&sid))
                            .and_then(|e| e.run.as_mut().filter(|r| r.id == run));
                        if let Some(r) = run {
                            r.pid = Some(pid);
                            r.start_time = start_time;
                            self.record.mark();
                        }
                    }
                    None => {}
                }
            }
            Report::SpawnFailed { run, error } => self.run_ended(run, End::SpawnError(error)),
            Report::Output { run, data } => {
                runner::output_taken(data.len());
                self.on_output(run, &data);
            }
            Report::Exited { run, status } => self.run_ended(run, End::Status(status)),
        }
    }

    /// Output from a run: into its job's (or entry's) log.
    fn on_output(&mut self, run: u64, data: &[u8]) {
        match self.runs.get(&run) {
            Some(RunOf::Job(jk)) => {
                if let Some(job) = self.jobs.get_mut(jk) {
                    let cap = job.watch.handler.log_lines();
                    job.log.push(data, cap);
                }
            }
            Some(RunOf::Entry(qk, sid)) => {
                if let Some(q) = self.queues.get_mut(qk) {
                    let cap = q.watch.handler.log_lines();
                    if let Some(e) = q.entries.get_mut(sid) {
                        e.log.push(data, cap);
                    }
                }
            }
            None => {}
        }
    }

    fn run_ended(&mut self, run_id: u64, end: End) {
        let jk = match self.runs.remove(&run_id) {
            Some(RunOf::Job(jk)) => jk,
            Some(RunOf::Entry(qk, sid)) => {
                self.record.mark();
                self.entry_run_ended(qk, sid, run_id, end);
                return;
            }
            None => return,
        };
        self.record.mark();
        let Some(job) = self.jobs.get_mut(&jk) else {
            return;
        };
        let Some(run) = job.run.take().filter(|r| r.id == run_id) else {
            return;
        };
        let ran_for = run.started.elapsed();
        let h = job.watch.handler.clone();
        job.log.finish(h.log_lines());
        let failed = match &end {
            End::Status(status) => {
                stats::bump(&stats::EXITS);
                let n = exit_number(*status);
                job.last_exit = Some(n);
                let mut fields = vec![("pid", run.pid.unwrap_or(0).to_string().into_bytes())];
                if n >= 0 {
                    fields.push(("code", n.to_string().into_bytes()));
                } else {
                    fields.push(("signal", (-n).to_string().into_bytes()));
                }
                self.events.job("exited", &jk, &self.jobs[&jk], fields);
                n != 0
            }
            End::SpawnError(e) => {
                let error = vec![("error", e.clone().into_bytes())];
                self.events.job("spawn-error", &jk, &self.jobs[&jk], error);
                true
            }
        };
        let job = self.jobs.get_mut(&jk).expect("job present");
        let ended = policy::Ended {
            wanted: job.wanted && self.primary && !self.paused,
            restart_pending: job.restart_pending,
            failures: job.failures,
            failed,
            ran_for,
        };
        let (next, failures) = policy::after_run(&h, ended);
        job.failures = failures;
        match next {
            policy::Next::Remove => self.remove(&jk),
            policy::Next::Start => {
                job.restart_pending = false;
                self.start_run(&jk);
            }
            policy::Next::Exited => {
                stats::bump_if(&stats::FAILURES, failed);
                job.finished = Some(Finished::Exited);
            }
            policy::Next::Failed => {
                stats::bump(&stats::FAILURES);
                job.finished = Some(Finished::Failed);
                let failures = vec![("failures", failures.to_string().into_bytes())];
                self.events.job("failed", &jk, &self.jobs[&jk], failures);
            }
            policy::Next::Backoff(delay) => {
                stats::bump_if(&stats::FAILURES, failed);
                let at = Instant::now() + delay;
                job.backoff_until = Some(at);
                self.timers.push(Reverse((at, Timer::Job(jk.clone()))));
                let delay_ms = vec![("delay_ms", delay.as_millis().to_string().into_bytes())];
                self.events.job("backoff", &jk, &self.jobs[&jk], delay_ms);
            }
        }
    }

    fn fire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Job(jk) => {
                    let due = self.jobs.get(&jk).is_some_and(|j| {
                        j.run.is_none() && j.wanted && j.backoff_until == Some(at)
                    });
                    if due && self.active() {
                        self.start_run(&jk);
                    }
                }
                Timer::Entry(qk, sid) => self.entry_due(&qk, sid, at),
                Timer::Timeout(run) => self.time_out(run),
                Timer::Helper => {
                    if self.runner.is_none() {
                        self.restart_helper();
                    }
                }
            }
        }
    }

    fn on_helper_gone(&mut self) {
        ffi::log_warning("streamwatch: the helper process is gone; its runs are counted as failed");
        let helper = self.runner.take().map(|r| r.session());
        // Its workers were not stopped by it: kill them before starting new ones, or
        // every job would run twice. The runs it reported are known by pid; those it
        // started and had not reported yet, and the runs' own children, are found in
        // its session.
        let entries = self.queues.values().flat_map(|q| q.entries.values());
        let runs = self
            .jobs
            .values()
            .filter_map(|j| j.run.as_ref())
            .chain(entries.filter_map(|e| e.run.as_ref()));
        for run in runs {
            if let Some(pid) = run.pid {
                runner::kill_orphaned_run(pid, run.start_time);
            }
        }
        if let Some((sid, start)) = helper {
            runner::kill_session(sid, start);
        }
        self.record.set_helper(None);
        let lost: Vec<u64> = self.runs.keys().copied().collect();
        for id in lost {
            self.run_ended(id, End::SpawnError("the helper process exited".into()));
        }
        self.helper_failed();
    }

    fn publish_stats(&mut self) {
        let mut counts = [0u64; 6];
        for j in self.jobs.values() {
            if let Some(i) = stats::state_index(j.state()) {
                counts[i] += 1;
            }
        }
        self.publish_queue_stats(&mut counts);
        stats::set_states(counts);
        let over: usize = self.over_limit.values().sum();
        stats::JOBS_OVER_LIMIT.store(over as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(what: Wrote, items: &[&str]) -> Option<Written> {
        let mut list = FieldList::new();
        items.iter().for_each(|i| list.push(i.as_bytes()));
        Some(Written { what, list })
    }

    #[test]
    fn hints_merge_with_the_last_write_winning() {
        let mut look = Look::of(written(Wrote::Values, &["f", "1", "g", "x"]));
        look.add(written(Wrote::Values, &["f", "2"]));
        look.add(written(Wrote::Deleted, &["f", "g"]));
        look.add(written(Wrote::Values, &["f", "3"]));
        look.add(written(Wrote::Unknown, &["n"]));
        let Look::Fields(map) = &look else {
            panic!("a look at the whole key: {look:?}");
        };
        let seen: Vec<String> = map
            .iter()
            .map(|(f, k)| format!("{}={k:?}", String::from_utf8_lossy(f)))
            .collect();
        assert_eq!(seen, ["f=Value([51])", "g=Gone", "n=Read"]);
        look.add(None); // a write the filter did not name: the whole key
        assert!(matches!(look, Look::Key));
        look.add(written(Wrote::Values, &["f", "4"]));
        assert!(matches!(look, Look::Key), "the whole key stays the look");
        let many: Vec<String> = (0..=MAX_LOOK_FIELDS).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            Look::of(written(Wrote::Deleted, &many)),
            Look::Key
        ));
    }

    #[test]
    fn output_is_cut_into_lines_and_only_the_last_are_kept() {
        let lines = |chunks: &[&[u8]], cap: usize| {
            let mut log = Log::default();
            chunks.iter().for_each(|c| log.push(c, cap));
            log.finish(cap);
            log.lines
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&[b"a\nb\r\nc"], 10), ["a", "b", "c"]);
        assert_eq!(lines(&[b"a", b"b\n", b"\n", b"c\n"], 10), ["ab", "", "c"]);
        assert_eq!(lines(&[b"1\n2\n3\n4\n"], 2), ["3", "4"]);
        assert_eq!(lines(&[b"x\n"], 0), Vec::<String>::new());
        let long = vec![b'x'; Log::MAX_LINE];
        let got = lines(&[&long, b"\n", &long, b"yz\n"], 10);
        let sizes: Vec<usize> = got.iter().map(String::len).collect();
        assert_eq!(
            sizes,
            [Log::MAX_LINE, Log::MAX_LINE, 2],
            "a full line ends at its newline"
        );
    }

    #[test]
    fn helper_restarts_wait_longer_after_each_failure_in_a_row() {
        let ms = |n| helper_delay(n).as_millis();
        let table = [
            (1, 0),
            (2, 200),
            (3, 300),
            (10, 1000),
            (50, 5000),
            (1000, 5000),
        ];
        for (failures, want) in table {
            assert_eq!(ms(failures), want, "after {failures} failures");
        }
    }

    #[test]
    fn exit_numbers() {
        assert_eq!(exit_number(7 << 8), 7);
        assert_eq!(exit_number(9), -9);
    }

    #[test]
    fn dbsel_covers() {
        use crate::spec::DbSel;
        assert!(DbSel::All.covers(5));
        assert!(!DbSel::One(1).covers(0));
    }
}
