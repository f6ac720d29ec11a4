//! Reading a hash under the GIL: some fields by name, or the whole hash in slices
//! (`HashScan`); and the Redis string that holds a key or field name exactly, NUL
//! bytes included. Apart from the rest of `ffi` as it is about what a key holds, not
//! about the server's machinery (replies, events, processes).

use super::string_bytes;
use redis_module::{raw, Context};
use std::ffi::{c_int, c_void};
use std::ptr;

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

/// The number of fields of hash `key` (in the selected database), O(1); `None` if it is
/// not a hash.
pub fn hash_len(ctx: &Context, key: &[u8]) -> Option<usize> {
    let k = HashKey::open(ctx, key)?;
    Some(unsafe { raw::RedisModule_ValueLength.unwrap()(k.0) })
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
