//! The ACL side of the C API: the calling client's user, a user's key permissions and
//! its `ACL LOG` entries, and the key specs and ACL categories of the module's commands.
//! Apart from the rest of `ffi` as it serves one purpose: the ACL checks the module
//! makes itself (`crate::acl`) and those the server makes on the module's commands.

use super::string_bytes;
use redis_module::{raw, Context};
use std::ffi::{c_int, CString};
use std::ptr;

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
