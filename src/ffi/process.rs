//! The libc side: the helper process launched from a memfd, reaping it and killing
//! runs, and the module's allocator that counts what it holds. None of it touches the
//! Redis module API; it is here to keep every `unsafe` call inside `ffi`.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

/// Writes what the socket takes now of `data`, without waiting (and without SIGPIPE if
/// the other end is gone); `WouldBlock` if it takes nothing. The socket's own blocking
/// mode is left alone: another thread reads it blocking.
pub fn send_nonblocking(socket: &impl AsRawFd, data: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `data` is a valid buffer of `data.len()` bytes for the whole call; the fd
    // is borrowed from a live socket.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
