//! How a run reaches the server that runs it: the `STREAMWATCH_REDIS_URL` of its
//! environment, derived from the server's own config, never with a password.
//!
//! * `unixsocket` set: `unix://PATH?db=N` (a relative path is taken from the server's
//!   `dir` when first read, where the server created the socket);
//! * else `port` not 0: `redis://HOST:PORT/N`;
//! * else `tls-port` not 0: `rediss://HOST:TLS-PORT/N`;
//! * else (no listener a run could use): no URL.
//!
//! HOST is the first `bind` address (a `-` prefix, "optional", dropped); a wildcard
//! (`*`, `0.0.0.0`, none) is `127.0.0.1`, an IPv6 wildcard (`::`, `::*`) is `[::1]`
//! (Redis binds IPv6 sockets IPv6-only), other IPv6 addresses go in brackets. Bytes a
//! URL cannot hold as they are (in the path, say) are percent-encoded, as URL parsers
//! (redis-py's `from_url`, redis-rs) decode them. `N` is omitted for a pool worker,
//! which serves entries of any database (each entry line says its `db`).
//!
//! The supervisor reads the config under the GIL it holds anyway (at its start and at
//! every full reconcile), and the config-change server event reads it again on every
//! `CONFIG SET` of `port`, `tls-port`, `bind` or `unixsocket`, so the URL follows the
//! server: runs started afterwards get the new one. Each node derives its own, so after
//! a failover the new primary's runs point at it.

use redis_module::{CallOptionsBuilder, CallReply, CallResult, Context};
use std::sync::{Arc, Mutex, OnceLock};

/// The configs the URL is made of: a change of one of them means reading them again.
pub const CONFIGS: [&str; 4] = ["port", "tls-port", "bind", "unixsocket"];

/// The server's listeners, as its config says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listen {
    pub unixsocket: Vec<u8>,
    pub port: i64,
    pub tls_port: i64,
    pub bind: Vec<u8>,
    /// The directory a relative `unixsocket` is in.
    pub dir: Vec<u8>,
}

/// Where runs connect to, without the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `unix://` and the percent-encoded absolute path.
    Unix(String),
    /// `redis://` or `rediss://`, and `host:port` (host bracketed if IPv6).
    Tcp {
        scheme: &'static str,
        authority: String,
    },
}

impl Base {
    /// The URL for database `db` (`None`: no database in it).
    pub fn url(&self, db: Option<i32>) -> String {
        match (self, db) {
            (Base::Unix(path), Some(db)) => format!("unix://{path}?db={db}"),
            (Base::Unix(path), None) => format!("unix://{path}"),
            (Base::Tcp { scheme, authority }, Some(db)) => format!("{scheme}://{authority}/{db}"),
            (Base::Tcp { scheme, authority }, None) => format!("{scheme}://{authority}"),
        }
    }
}

/// Where runs connect to, by the rules at the top of the file.
pub fn base(l: &Listen) -> Option<Base> {
    if !l.unixsocket.is_empty() {
        let path = if l.unixsocket.starts_with(b"/") || l.dir.is_empty() {
            l.unixsocket.clone()
        } else {
            let dir = l.dir.strip_suffix(b"/").unwrap_or(&l.dir);
            [dir, b"/", &l.unixsocket].concat()
        };
        return Some(Base::Unix(encode(&path, b"/")));
    }
    let (scheme, port) = match (l.port, l.tls_port) {
        (p, _) if p > 0 => ("redis", p),
        (_, p) if p > 0 => ("rediss", p),
        _ => return None,
    };
    // The first address the server must have bound; an optional one (`-`) only if
    // all are optional (it may not be listening: `-::1` on a host without IPv6).
    let mut addresses = l
        .bind
        .split(u8::is_ascii_whitespace)
        .filter(|a| !a.is_empty());
    let first = addresses
        .clone()
        .find(|a| !a.starts_with(b"-"))
        .or_else(|| addresses.next())
        .unwrap_or_default();
    let first = first.strip_prefix(b"-").unwrap_or(first);
    let host = match first {
        b"" | b"*" | b"0.0.0.0" => "127.0.0.1".to_string(),
        b"::" | b"::*" => "[::1]".to_string(),
        a if a.contains(&b':') => format!("[{}]", encode(a, b":")),
        a => encode(a, b""),
    };
    Some(Base::Tcp {
        scheme,
        authority: format!("{host}:{port}"),
    })
}

/// `bytes` with every byte but the unreserved ones (RFC 3986) and `keep`
/// percent-encoded.
fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

static CURRENT: Mutex<Option<Arc<Base>>> = Mutex::new(None);

/// The `dir` a relative `unixsocket` is taken from: the first one read (the server
/// created its socket there, before any `CONFIG SET dir`).
static SOCKET_DIR: OnceLock<Vec<u8>> = OnceLock::new();

/// Reads the listeners from the server's config (under the GIL: the main thread in a
/// callback, or a thread holding the lock) and makes them the current ones.
pub fn refresh(ctx: &Context) {
    let get = |name: &str| -> Vec<u8> {
        let opts = CallOptionsBuilder::new().build();
        let r: CallResult = ctx.call_ext("CONFIG", &opts, &[b"GET".as_slice(), name.as_bytes()]);
        let Ok(CallReply::Array(kv)) = &r else {
            return Vec::new();
        };
        let value = match kv.get(1) {
            Some(Ok(CallReply::String(s))) => s.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        value
    };
    let int = |name: &str| {
        std::str::from_utf8(&get(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let unixsocket = get("unixsocket");
    let dir = if unixsocket.is_empty() || unixsocket.starts_with(b"/") {
        Vec::new()
    } else {
        SOCKET_DIR.get_or_init(|| get("dir")).clone()
    };
    let listen = Listen {
        unixsocket,
        port: int("port"),
        tls_port: int("tls-port"),
        bind: get("bind"),
        dir,
    };
    let now = base(&listen).map(Arc::new);
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = now;
}

/// `STREAMWATCH_REDIS_URL` for a run in database `db` (`None`: a pool worker), if the
/// server has a listener a run can use.
pub fn url(db: Option<i32>) -> Option<String> {
    let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner()).clone();
    current.map(|b| b.url(db))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(unixsocket: &str, port: i64, tls_port: i64, bind: &str, dir: &str) -> Listen {
        Listen {
            unixsocket: unixsocket.into(),
            port,
            tls_port,
            bind: bind.into(),
            dir: dir.into(),
        }
    }

    #[test]
    fn urls_from_the_config() {
        let url = |l: Listen, db| base(&l).map(|b| b.url(db));
        let some = |s: &str| Some(s.to_string());
        let rows = [
            (
                listen("", 6379, 0, "* -::*", ""),
                Some(0),
                some("redis://127.0.0.1:6379/0"),
            ),
            (
                listen("", 6380, 0, "", ""),
                Some(3),
                some("redis://127.0.0.1:6380/3"),
            ),
            (
                listen("", 6379, 0, "0.0.0.0", ""),
                Some(1),
                some("redis://127.0.0.1:6379/1"),
            ),
            (
                listen("", 6379, 0, "-127.0.0.1 -::1", ""),
                Some(0),
                some("redis://127.0.0.1:6379/0"),
            ),
            (
                listen("", 6379, 0, "-192.0.2.1 127.0.0.1", ""),
                Some(0),
                some("redis://127.0.0.1:6379/0"),
            ),
            (
                listen("", 6379, 0, "10.1.2.3 127.0.0.1", ""),
                Some(0),
                some("redis://10.1.2.3:6379/0"),
            ),
            (
                listen("", 6379, 0, "::1", ""),
                Some(0),
                some("redis://[::1]:6379/0"),
            ),
            (
                listen("", 6379, 0, "-::*", ""),
                Some(0),
                some("redis://[::1]:6379/0"),
            ),
            (
                listen("", 6379, 0, "  ::  ", ""),
                Some(0),
                some("redis://[::1]:6379/0"),
            ),
            (
                listen("", 6379, 0, "fe80::1%eth0", ""),
                Some(0),
                some("redis://[fe80::1%25eth0]:6379/0"),
            ),
            (
                listen("", 6379, 0, "*", ""),
                None,
                some("redis://127.0.0.1:6379"),
            ),
            (
                listen("", 0, 6390, "*", ""),
                Some(2),
                some("rediss://127.0.0.1:6390/2"),
            ),
            (
                listen("", 6379, 6390, "*", ""),
                Some(2),
                some("redis://127.0.0.1:6379/2"),
            ),
            (listen("", 0, 0, "*", ""), Some(0), None),
            (
                listen("/tmp/r.sock", 6379, 0, "*", ""),
                Some(4),
                some("unix:///tmp/r.sock?db=4"),
            ),
            (
                listen("/tmp/r.sock", 0, 0, "", ""),
                None,
                some("unix:///tmp/r.sock"),
            ),
            (
                listen("r.sock", 0, 0, "", "/var/lib/redis/"),
                Some(0),
                some("unix:///var/lib/redis/r.sock?db=0"),
            ),
            (
                listen("/tmp/a b?#%.sock", 0, 0, "", ""),
                Some(0),
                some("unix:///tmp/a%20b%3F%23%25.sock?db=0"),
            ),
        ];
        for (l, db, want) in rows {
            assert_eq!(url(l.clone(), db), want, "{l:?}");
        }
        let l = Listen {
            unixsocket: b"/tmp/\xff.sock".to_vec(),
            ..Listen::default()
        };
        assert_eq!(url(l, Some(0)), some("unix:///tmp/%FF.sock?db=0"));
    }
}
