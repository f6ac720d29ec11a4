//! Watch specs: what a watch is, as declared, and the one parser of its options.
//!
//! Three sources declare watches, each in its own syntax: the arguments of
//! `STREAMWATCH.WATCH` (`commands`), a `[[watch]]` table of the config file (`config`,
//! which adds line numbers to the errors) and a field of the watches store (`store`).
//! Each splits its syntax into (option, value) pairs and hands them to `Options`, which
//! checks every value and the options together and builds the spec. Every rule and
//! every error text is here, in each syntax's own words.
//!
//! The syntaxes differ where they always have: a command's values are words (`TYPE
//! Stream`, `DB all` in any case, a DB within `databases`); the file is strict about
//! its TOML values; the store is read leniently, because it holds what `store` wrote
//! from a checked spec (a user's own edit of it is taken as far as it can be).
//!
//! This module knows nothing of Redis, the registry, the config file or the store.

use crate::glob;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hash,
    Stream,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::Stream => "stream",
        }
    }
}

/// Options of a stream watch (ignored by hash watches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpts {
    /// The consumer group the module reads through.
    pub group: Vec<u8>,
    /// Runs at once per stream; with 1, entries run in stream order.
    pub concurrency: u32,
    /// Attempts before an entry is dead-lettered.
    pub max_attempts: u32,
    /// The dead-letter stream; `None` means `<key>:dead`.
    pub deadletter: Option<Vec<u8>>,
    /// Where a group the module creates starts: `0` (the whole backlog), `$` (entries
    /// added from then on) or an entry id (the entries after it), as XGROUP CREATE takes
    /// it; checked by `start_id`.
    pub start: Vec<u8>,
    /// What becomes of an entry once acknowledged or dead-lettered: kept in the stream
    /// (default) or deleted from it.
    pub ack: Ack,
}

impl Default for StreamOpts {
    fn default() -> Self {
        StreamOpts {
            group: b"streamwatch".to_vec(),
            concurrency: 1,
            max_attempts: 5,
            deadletter: None,
            start: b"0".to_vec(),
            ack: Ack::Keep,
        }
    }
}

impl StreamOpts {
    /// Where an entry of stream `key` goes after its last failed attempt.
    pub fn deadletter_of(&self, key: &[u8]) -> Vec<u8> {
        match &self.deadletter {
            Some(d) => d.clone(),
            None => [key, b":dead"].concat(),
        }
    }

    /// A dead-letter stream is never itself a queue of the watch that feeds it.
    pub fn is_deadletter(&self, key: &[u8]) -> bool {
        match &self.deadletter {
            Some(d) => d == key,
            None => key.ends_with(b":dead"),
        }
    }
}

/// What the `ACK` option does to an entry that is done (acknowledged or dead-lettered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// It stays in the stream (only the group forgets it).
    Keep,
    /// It is deleted from the stream too.
    Delete,
}

impl Ack {
    pub fn parse(s: &str) -> Option<Ack> {
        match s.to_ascii_lowercase().as_str() {
            "keep" => Some(Ack::Keep),
            "delete" => Some(Ack::Delete),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Ack::Keep => "keep",
            Ack::Delete => "delete",
        }
    }
}

/// Which databases a watch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSel {
    One(i32),
    All,
}

impl DbSel {
    pub fn covers(self, db: i32) -> bool {
        match self {
            DbSel::One(d) => d == db,
            DbSel::All => true,
        }
    }
}

/// What a value change does to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    Restart,
    Ignore,
}

impl OnChange {
    pub fn parse(s: &str) -> Option<OnChange> {
        match s.to_ascii_lowercase().as_str() {
            "restart" => Some(OnChange::Restart),
            "ignore" => Some(OnChange::Ignore),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OnChange::Restart => "restart",
            OnChange::Ignore => "ignore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Command,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Command => "command",
        }
    }
}

/// A watch as declared (config file or command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub pattern: Vec<u8>,
    pub handler: String,
    pub kind: Kind,
    pub db: DbSel,
    pub onchange: OnChange,
    pub source: Source,
    pub stream: StreamOpts,
}

/// Why a stream watch's dead-letter stream cannot be what it says: the one stream its
/// literal pattern names (that stream would be no queue at all, see `Watch::covers`).
pub fn deadletter_problem(spec: &WatchSpec) -> Option<String> {
    let dl = spec.stream.deadletter.as_ref()?;
    (spec.kind == Kind::Stream && glob::is_literal(&spec.pattern) && *dl == spec.pattern).then(
        || {
            format!(
                "the dead-letter stream '{}' is the stream the watch consumes; give another (DEADLETTER)",
                String::from_utf8_lossy(dl)
            )
        },
    )
}

/// Could stream watches `a` and `b` both consume one stream through one consumer group
/// (every entry would then run twice)? Both are stream watches with the same `GROUP`,
/// their databases meet, and some key could match both patterns (`glob::may_overlap`:
/// exact, but it does not count the keys a watch leaves out, such as its dead-letter
/// streams, so it may refuse a pair that could never meet in practice).
pub fn same_group(a: &WatchSpec, b: &WatchSpec) -> bool {
    let dbs_meet = match (a.db, b.db) {
        (DbSel::One(x), DbSel::One(y)) => x == y,
        _ => true,
    };
    a.kind == Kind::Stream
        && b.kind == Kind::Stream
        && a.stream.group == b.stream.group
        && dbs_meet
        && glob::may_overlap(&a.pattern, &b.pattern)
}

/// Why watch `new` cannot be added next to `old` (see `same_group`), naming both.
pub fn same_group_problem(new: &WatchSpec, old: &WatchSpec) -> String {
    format!(
        "watch '{}' would consume the same streams as watch '{}' through the same group '{}' \
         (their patterns can match the same key): give one of them another GROUP",
        String::from_utf8_lossy(&new.pattern),
        String::from_utf8_lossy(&old.pattern),
        String::from_utf8_lossy(&new.stream.group),
    )
}

// ---- the option parser ----

/// Where a watch's options come from; it decides their names, strictness and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `STREAMWATCH.WATCH` arguments; a DB number is below `databases`.
    Command { databases: i32 },
    /// A `[[watch]]` table of the config file.
    File,
    /// A value of the watches store.
    Stored,
}

/// A watch's options, by the names all syntaxes share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    Handler,
    Type,
    Db,
    OnChange,
    Group,
    Deadletter,
    Concurrency,
    MaxAttempts,
    Start,
    Ack,
}

impl Opt {
    pub const ALL: [Opt; 10] = [
        Opt::Handler,
        Opt::Type,
        Opt::Db,
        Opt::OnChange,
        Opt::Group,
        Opt::Deadletter,
        Opt::Concurrency,
        Opt::MaxAttempts,
        Opt::Start,
        Opt::Ack,
    ];

    /// The name in a TOML table (config file and store).
    pub fn key(self) -> &'static str {
        match self {
            Opt::Handler => "handler",
            Opt::Type => "type",
            Opt::Db => "db",
            Opt::OnChange => "onchange",
            Opt::Group => "group",
            Opt::Deadletter => "deadletter",
            Opt::Concurrency => "concurrency",
            Opt::MaxAttempts => "max-attempts",
            Opt::Start => "start",
            Opt::Ack => "ack",
        }
    }

    /// The option a command's argument names (any case), if any.
    pub fn from_word(word: &str) -> Option<Opt> {
        Opt::ALL
            .into_iter()
            .find(|o| o.key().eq_ignore_ascii_case(word))
    }

    /// Only stream watches take it.
    pub fn stream_only(self) -> bool {
        matches!(
            self,
            Opt::Group
                | Opt::Deadletter
                | Opt::Concurrency
                | Opt::MaxAttempts
                | Opt::Start
                | Opt::Ack
        )
    }

    /// The name errors use: upper-case in a command, as in the table otherwise.
    fn name(self, syntax: Syntax) -> String {
        match syntax {
            Syntax::Command { .. } => self.key().to_ascii_uppercase(),
            Syntax::File | Syntax::Stored => self.key().to_string(),
        }
    }
}

/// An option's value: a command's argument or a TOML string is `Text`, a TOML integer
/// `Int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Text(&'a [u8]),
    Int(i64),
}

impl Value<'_> {
    /// As the errors quote it.
    fn show(self) -> String {
        match self {
            Value::Text(t) => String::from_utf8_lossy(t).into_owned(),
            Value::Int(n) => n.to_string(),
        }
    }
}

/// Why a pattern cannot be a watch's (it is checked where each syntax always has).
pub fn pattern_problem(syntax: Syntax, pattern: &[u8]) -> Option<&'static str> {
    pattern.is_empty().then_some(match syntax {
        Syntax::Command { .. } => "pattern must not be empty",
        Syntax::File => "watch has an empty pattern",
        Syntax::Stored => "empty pattern",
    })
}

/// A watch's options as parsed: a spec without pattern and source. `db: None` means
/// none was given (a command's then is the client's database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub handler: String,
    pub kind: Kind,
    pub db: Option<DbSel>,
    pub onchange: OnChange,
    pub stream: StreamOpts,
}

impl Parsed {
    pub fn into_spec(self, pattern: Vec<u8>, source: Source, default_db: DbSel) -> WatchSpec {
        WatchSpec {
            pattern,
            handler: self.handler,
            kind: self.kind,
            db: self.db.unwrap_or(default_db),
            onchange: self.onchange,
            source,
            stream: self.stream,
        }
    }
}

/// The one parser of a watch's options: `set` each (option, value) pair in the order
/// the source gives them (a later value of an option wins), then `finish`. Errors are
/// the problem alone; the source adds its own frame (`ERR `, the file and line).
#[derive(Debug)]
pub struct Options {
    syntax: Syntax,
    handler: Option<String>,
    kind: Kind,
    db: Option<DbSel>,
    onchange: OnChange,
    stream: StreamOpts,
    /// The first stream-only option given, refused on a hash watch.
    stream_only: Option<Opt>,
}

impl Options {
    pub fn new(syntax: Syntax) -> Options {
        Options {
            syntax,
            handler: None,
            kind: Kind::Hash,
            db: None,
            onchange: OnChange::Restart,
            stream: StreamOpts::default(),
            stream_only: None,
        }
    }

    /// Takes one option's value.
    pub fn set(&mut self, opt: Opt, value: Value) -> Result<(), String> {
        let syntax = self.syntax;
        if opt.stream_only() {
            self.stream_only.get_or_insert(opt);
        }
        match opt {
            Opt::Handler => self.handler = Some(value.show()),
            Opt::Type => self.kind = kind(syntax, value)?,
            Opt::Db => self.db = Some(db(syntax, value)?),
            Opt::OnChange => {
                let v = value.show();
                self.onchange = OnChange::parse(&v).ok_or_else(|| match syntax {
                    Syntax::Command { .. } => {
                        format!("ONCHANGE must be restart or ignore, got '{v}'")
                    }
                    Syntax::File => {
                        format!("onchange must be \"restart\" or \"ignore\", got \"{v}\"")
                    }
                    Syntax::Stored => format!("bad onchange '{v}'"),
                })?;
            }
            Opt::Group => self.stream.group = stream_name(syntax, opt, value)?,
            Opt::Deadletter => self.stream.deadletter = Some(stream_name(syntax, opt, value)?),
            Opt::Concurrency => self.stream.concurrency = count(syntax, opt, value)?,
            Opt::MaxAttempts => self.stream.max_attempts = count(syntax, opt, value)?,
            Opt::Start => self.stream.start = start(syntax, value)?,
            Opt::Ack => {
                let v = value.show();
                self.stream.ack = Ack::parse(&v).ok_or_else(|| match syntax {
                    Syntax::Command { .. } => format!("ACK must be keep or delete, got '{v}'"),
                    Syntax::File => format!("ack must be \"keep\" or \"delete\", got \"{v}\""),
                    Syntax::Stored => format!("bad ack '{v}'"),
                })?;
            }
        }
        Ok(())
    }

    /// Refuses `opt` if it is stream-only and the watch, as typed so far, is a hash
    /// watch. `finish` asks this of the first stream-only option given; a source that
    /// sets the type first may ask it earlier, in an order of its own.
    pub fn applies(&self, opt: Opt) -> Result<(), String> {
        if !(opt.stream_only() && self.kind == Kind::Hash) {
            return Ok(());
        }
        Err(match self.syntax {
            Syntax::Command { .. } => format!(
                "{} applies only to TYPE stream watches",
                opt.name(self.syntax)
            ),
            Syntax::File | Syntax::Stored => format!(
                "{} applies only to type \"stream\" watches",
                opt.name(self.syntax)
            ),
        })
    }

    /// The options together. The store's values are taken as they are.
    pub fn finish(self) -> Result<Parsed, String> {
        if self.syntax != Syntax::Stored {
            if let Some(opt) = self.stream_only {
                self.applies(opt)?;
            }
        }
        if let Syntax::Command { .. } = self.syntax {
            if self.kind == Kind::Stream && self.onchange != OnChange::Restart {
                return Err("ONCHANGE applies only to TYPE hash watches".into());
            }
        }
        let handler = self
            .handler
            .ok_or_else(|| format!("{} is required", Opt::Handler.name(self.syntax)))?;
        Ok(Parsed {
            handler,
            kind: self.kind,
            db: self.db,
            onchange: self.onchange,
            stream: self.stream,
        })
    }
}

fn kind(syntax: Syntax, value: Value) -> Result<Kind, String> {
    let v = value.show();
    // A command's word in any case; a TOML value exactly.
    let word = match syntax {
        Syntax::Command { .. } => v.to_ascii_lowercase(),
        Syntax::File | Syntax::Stored => v.clone(),
    };
    match (value, word.as_str()) {
        (Value::Text(_), "hash") => Ok(Kind::Hash),
        (Value::Text(_), "stream") => Ok(Kind::Stream),
        _ => Err(match syntax {
            Syntax::Command { .. } => format!("TYPE must be hash or stream, got '{v}'"),
            Syntax::File => format!("type must be \"hash\" or \"stream\", got \"{v}\""),
            Syntax::Stored => format!("unsupported type '{v}'"),
        }),
    }
}

fn db(syntax: Syntax, value: Value) -> Result<DbSel, String> {
    match syntax {
        Syntax::Command { databases } => {
            let v = value.show();
            if v.eq_ignore_ascii_case("all") {
                return Ok(DbSel::All);
            }
            match v.parse::<i32>() {
                Ok(n) if (0..databases).contains(&n) => Ok(DbSel::One(n)),
                _ => Err(format!("DB must be a database number or ALL, got '{v}'")),
            }
        }
        Syntax::File => match value {
            Value::Int(n) if (0..=i32::MAX as i64).contains(&n) => Ok(DbSel::One(n as i32)),
            Value::Text(s) if s.eq_ignore_ascii_case(b"all") => Ok(DbSel::All),
            _ => Err("db must be a database number or \"all\"".into()),
        },
        Syntax::Stored => match value {
            Value::Int(n) => i32::try_from(n)
                .map(DbSel::One)
                .map_err(|_| format!("bad db {n}")),
            Value::Text(b"all") => Ok(DbSel::All),
            Value::Text(_) => Err(format!("bad db '{}'", value.show())),
        },
    }
}

/// A group or dead-letter stream name. A command's must be non-empty UTF-8 (it is
/// stored as TOML text), the file's non-empty.
fn stream_name(syntax: Syntax, opt: Opt, value: Value) -> Result<Vec<u8>, String> {
    let name = opt.name(syntax);
    let bytes = match value {
        Value::Text(t) => t.to_vec(),
        Value::Int(n) => n.to_string().into_bytes(),
    };
    match syntax {
        Syntax::Command { .. } if std::str::from_utf8(&bytes).is_err() => {
            Err(format!("{name} must be valid UTF-8"))
        }
        Syntax::Command { .. } | Syntax::File if bytes.is_empty() => {
            Err(format!("{name} must not be empty"))
        }
        _ => Ok(bytes),
    }
}

/// Is `s` where XGROUP CREATE can start a group: `$`, or an entry id `MS` or `MS-SEQ`
/// (decimal, each at most `u64::MAX`)? `0` is the id `0`.
pub fn start_id(s: &[u8]) -> bool {
    fn number(n: &[u8]) -> bool {
        !n.is_empty()
            && n.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(n).is_ok_and(|t| t.parse::<u64>().is_ok())
    }
    if s == b"$" {
        return true;
    }
    match s.iter().position(|&b| b == b'-') {
        Some(i) => number(&s[..i]) && number(&s[i + 1..]),
        None => number(s),
    }
}

/// START: `0`, `$` or an entry id; the file also takes an integer (`start = 0`).
fn start(syntax: Syntax, value: Value) -> Result<Vec<u8>, String> {
    let bytes = match value {
        Value::Text(t) => t.to_vec(),
        Value::Int(n) => n.to_string().into_bytes(),
    };
    if start_id(&bytes) {
        return Ok(bytes);
    }
    let v = value.show();
    Err(match syntax {
        Syntax::Command { .. } => {
            format!("START must be 0, $ or a stream entry id (MS or MS-SEQ), got '{v}'")
        }
        Syntax::File => {
            format!("start must be 0, \"$\" or a stream entry id (\"MS-SEQ\"), got \"{v}\"")
        }
        Syntax::Stored => format!("bad start '{v}'"),
    })
}

/// CONCURRENCY and MAX-ATTEMPTS: positive, up to `u32::MAX`. The store's is at least 1.
fn count(syntax: Syntax, opt: Opt, value: Value) -> Result<u32, String> {
    let name = opt.name(syntax);
    match syntax {
        Syntax::Command { .. } => {
            let v = value.show();
            match v.parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{name} must be a positive integer up to {}, got '{v}'",
                    u32::MAX
                )),
            }
        }
        Syntax::File => match value {
            Value::Int(n) => u32::try_from(n).ok().filter(|n| *n > 0),
            Value::Text(_) => None,
        }
        .ok_or_else(|| format!("{name} must be a positive integer")),
        Syntax::Stored => match value {
            Value::Int(n) => Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX)),
            Value::Text(_) => Err(format!("{name} must be a positive integer")),
        },
    }
}

#[cfg(test)]
mod tests;
