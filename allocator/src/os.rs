//! The platform layer: the only module that calls the kernel.
//!
//! # Contract
//!
//! - Every address and length passed in is a multiple of [`PAGE_SIZE`] and every length is
//!   non-zero; callers own the ranges they pass (they came from a mapping made here, or from
//!   the break extended here).
//! - Nothing here allocates, panics or unwinds. Failures come back as `None` / `false`:
//!   `None` from a mapping call means the kernel refused (`ENOMEM`, `RLIMIT_AS`, map count),
//!   and the caller must treat it as "out of memory" and go on.
//! - Advice calls (`decommit`, `guard_install`) are best effort: a `false` tells the caller
//!   that the range is still committed / not guarded, never that it is corrupt.
//! - Calls go through rustix (`default-features = false`), except where rustix has no
//!   binding: `sbrk` (libc) and the guard advice `MADV_GUARD_INSTALL`/`REMOVE` (raw
//!   `madvise` through libc, since rustix's `Advice` does not name them yet).
//! - The clock is read through rustix's vDSO `clock_gettime`.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use rustix::mm::{self, MapFlags, MprotectFlags, MremapFlags, ProtFlags};

/// The size of a hardware page on x86-64 Linux.
pub const PAGE_SIZE: usize = 4096;

/// `MADV_GUARD_INSTALL` (Linux 6.13): make a range fault on access without a new VMA.
const MADV_GUARD_INSTALL: i32 = 102;
/// `MADV_GUARD_REMOVE` (Linux 6.13): undo `MADV_GUARD_INSTALL`.
const MADV_GUARD_REMOVE: i32 = 103;

/// Calls made, for statistics (relaxed atomic adds: each sits beside a system call).
static CALLS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
const MMAP: usize = 0;
const MUNMAP: usize = 1;
const MADVISE: usize = 2;
const MPROTECT: usize = 3;
const MREMAP: usize = 4;
const GUARDS: usize = 5;

#[inline]
fn count(which: usize) {
    CALLS[which].fetch_add(1, Ordering::Relaxed);
}

/// The kernel calls made so far, and the guard pages installed.
pub fn calls() -> (crate::stats::OsCalls, u64) {
    let get = |i: usize| CALLS[i].load(Ordering::Relaxed);
    let os = crate::stats::OsCalls {
        mmap: get(MMAP),
        munmap: get(MUNMAP),
        madvise: get(MADVISE),
        mprotect: get(MPROTECT),
        mremap: get(MREMAP),
    };
    (os, get(GUARDS))
}

/// Maps `len` bytes of fresh, zeroed, read-write anonymous memory anywhere.
pub fn map(len: usize) -> Option<NonNull<u8>> {
    count(MMAP);
    // SAFETY: a null hint with no MAP_FIXED cannot replace an existing mapping.
    let p = unsafe {
        mm::mmap_anonymous(
            ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    };
    p.ok().and_then(|p| NonNull::new(p.cast()))
}

/// Maps `len` bytes of zeroed read-write memory whose start is aligned to `align` (a power of
/// two, at least a page), by mapping `len + align` and trimming both ends.
pub fn map_aligned(len: usize, align: usize) -> Option<NonNull<u8>> {
    if align <= PAGE_SIZE {
        return map(len);
    }
    let span = len.checked_add(align)?;
    let raw = map(span)?.as_ptr() as usize;
    let start = (raw + align - 1) & !(align - 1);
    let head = start - raw;
    let tail = span - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping just made and are page-aligned.
    unsafe {
        if head != 0 {
            unmap(raw as *mut u8, head);
        }
        if tail != 0 {
            unmap((start + len) as *mut u8, tail);
        }
    }
    NonNull::new(start as *mut u8)
}

/// Unmaps a range. Failure (only possible if the map count is exhausted by a split) leaves the
/// memory mapped; it is reported as `false` and costs only address space.
///
/// # Safety
/// The range must be owned by the caller and never touched again.
pub unsafe fn unmap(addr: *mut u8, len: usize) -> bool {
    count(MUNMAP);
    // SAFETY: the caller owns the range and gives it up.
    unsafe { mm::munmap(addr.cast(), len).is_ok() }
}

/// Returns the pages of a range to the kernel; they read as zero afterwards (`MADV_DONTNEED`).
///
/// # Safety
/// The range must be owned by the caller and hold nothing it still needs.
pub unsafe fn decommit(addr: *mut u8, len: usize) -> bool {
    count(MADVISE);
    // SAFETY: the caller owns the range and discards its contents.
    unsafe { mm::madvise(addr.cast(), len, mm::Advice::LinuxDontNeed).is_ok() }
}

/// Advises transparent huge pages for a range (`MADV_HUGEPAGE`); best effort.
///
/// # Safety
/// The range is owned by the caller.
pub unsafe fn advise_hugepage(addr: *mut u8, len: usize) -> bool {
    count(MADVISE);
    // SAFETY: the caller owns the range; the advice does not change its contents.
    unsafe { mm::madvise(addr.cast(), len, mm::Advice::LinuxHugepage).is_ok() }
}

/// Whether the kernel accepted `MADV_GUARD_INSTALL` (0 unknown, 1 yes, 2 no).
static GUARD_ADVICE: AtomicU8 = AtomicU8::new(0);

/// Makes a range fault on any access. Uses `MADV_GUARD_INSTALL` where the kernel has it (no new
/// VMA), else `mprotect(PROT_NONE)`. Returns `false` if neither worked (the range stays
/// accessible).
///
/// # Safety
/// The range must be owned by the caller, hold nothing it needs, and not be touched until
/// [`guard_remove`].
pub unsafe fn guard_install(addr: *mut u8, len: usize) -> bool {
    if GUARD_ADVICE.load(Ordering::Relaxed) != 2 {
        count(MADVISE);
        let saved = errno();
        // SAFETY: the caller owns the range; the advice discards its contents.
        let rc = unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_INSTALL) };
        set_errno(saved);
        if rc == 0 {
            GUARD_ADVICE.store(1, Ordering::Relaxed);
            count(GUARDS);
            return true;
        }
        GUARD_ADVICE.store(2, Ordering::Relaxed);
    }
    count(MPROTECT);
    // SAFETY: as above; the range is the caller's.
    let ok = unsafe { mm::mprotect(addr.cast(), len, MprotectFlags::empty()).is_ok() };
    if ok {
        count(GUARDS);
    }
    ok
}

/// Undoes [`guard_install`]: the range becomes zeroed read-write memory again.
///
/// # Safety
/// The range must be owned by the caller and have been guarded with [`guard_install`].
pub unsafe fn guard_remove(addr: *mut u8, len: usize) -> bool {
    if GUARD_ADVICE.load(Ordering::Relaxed) == 1 {
        count(MADVISE);
        let saved = errno();
        // SAFETY: the caller owns the range.
        let ok = unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_REMOVE) } == 0;
        set_errno(saved);
        return ok;
    }
    count(MPROTECT);
    count(MADVISE);
    // SAFETY: the caller owns the range.
    unsafe {
        mm::mprotect(addr.cast(), len, MprotectFlags::READ | MprotectFlags::WRITE).is_ok()
            && mm::madvise(addr.cast(), len, mm::Advice::LinuxDontNeed).is_ok()
    }
}

/// Whether guard pages cost no VMA on this kernel (`MADV_GUARD_INSTALL` worked once).
pub fn guards_are_free() -> bool {
    GUARD_ADVICE.load(Ordering::Relaxed) == 1
}

/// Resizes a mapping in place (never moves it). Returns `false` if the kernel cannot.
///
/// # Safety
/// `[addr, addr + old_len)` must be one whole mapping owned by the caller.
pub unsafe fn remap_in_place(addr: *mut u8, old_len: usize, new_len: usize) -> bool {
    count(MREMAP);
    // SAFETY: the caller owns the mapping; without MAYMOVE it stays at `addr`.
    unsafe { mm::mremap(addr.cast(), old_len, new_len, MremapFlags::empty()).is_ok() }
}

/// Moves a mapping's pages to `new_addr` (which must be a range the caller reserved with
/// [`map`]/[`map_aligned`]; it is replaced), resizing it to `new_len` without copying.
///
/// # Safety
/// `[addr, addr + old_len)` must be one whole mapping owned by the caller and
/// `[new_addr, new_addr + new_len)` a reservation owned by the caller.
pub unsafe fn remap_to(addr: *mut u8, old_len: usize, new_len: usize, new_addr: *mut u8) -> bool {
    count(MREMAP);
    // SAFETY: both ranges are the caller's; MREMAP_FIXED replaces the reservation.
    unsafe {
        mm::mremap_fixed(
            addr.cast(),
            old_len,
            new_len,
            MremapFlags::MAYMOVE,
            new_addr.cast::<c_void>(),
        )
        .is_ok()
    }
}

/// Extends the program break by `len` bytes and returns the old break, or `None` if the kernel
/// refused. Only the process's own malloc may call this (design.md: brk belongs to whoever is
/// the malloc); callers serialise calls with one lock.
///
/// # Safety
/// The caller must be the process's malloc and hold the break lock.
pub unsafe fn brk_extend(len: usize) -> Option<NonNull<u8>> {
    let incr = isize::try_from(len).ok()?;
    // SAFETY: sbrk has no memory-safety preconditions; the caller owns the break.
    let old = unsafe { libc::sbrk(incr) };
    if old as isize == -1 {
        None
    } else {
        NonNull::new(old.cast())
    }
}

/// Shrinks the program break by `len` bytes if it still ends at `expected_end` (nobody else
/// moved it). Returns whether it shrank.
///
/// # Safety
/// As for [`brk_extend`]; the memory given back must be unused.
pub unsafe fn brk_shrink(expected_end: *mut u8, len: usize) -> bool {
    // SAFETY: sbrk(0) only reads the break.
    let now = unsafe { libc::sbrk(0) };
    if now.cast::<u8>() != expected_end {
        return false;
    }
    let Ok(decr) = isize::try_from(len) else {
        return false;
    };
    // SAFETY: the break is where the caller left it and the range is unused.
    unsafe { libc::sbrk(-decr) as isize != -1 }
}

/// Blocks while `*word == expected` (or until woken). Spurious returns are allowed.
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    let _ =
        rustix::thread::futex::wait(word, rustix::thread::futex::Flags::PRIVATE, expected, None);
}

/// Wakes one waiter on `word`.
pub fn futex_wake_one(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::PRIVATE, 1);
}

/// Fills `buf` with random bytes from the kernel, without blocking. Returns `false` if the
/// kernel could not (the caller falls back to a weaker seed).
pub fn random_bytes(buf: &mut [u8]) -> bool {
    let len = buf.len();
    matches!(
        rustix::rand::getrandom(buf, rustix::rand::GetRandomFlags::NONBLOCK),
        Ok(n) if n == len
    )
}

/// Milliseconds of the monotonic clock (the vDSO's `clock_gettime`, no system call).
pub fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// A file descriptor opened by [`create_file`].
pub type Fd = i32;

/// Creates or truncates `path` for writing (mode 0644, close-on-exec). `Err(errno)` on
/// failure.
pub fn create_file(path: &core::ffi::CStr) -> Result<Fd, i32> {
    // SAFETY: `path` is NUL-terminated; open(2) neither allocates nor keeps the pointer.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// Writes all of `bytes` to `fd`, retrying partial writes and `EINTR`. `Err(errno)` on
/// failure (`EIO` if the file took nothing).
pub fn write_all(fd: Fd, bytes: &[u8]) -> Result<(), i32> {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: the buffer is valid for reads of its length.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n == 0 {
            return Err(libc::EIO);
        } else if errno() != libc::EINTR {
            return Err(errno());
        }
    }
    Ok(())
}

/// Closes a file from [`create_file`]. `Err(errno)` if the close reported an error (a
/// failed write-back).
pub fn close(fd: Fd) -> Result<(), i32> {
    // SAFETY: the caller gives up `fd`, which it opened.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The process id.
pub fn pid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Writes `bytes` to standard error with raw `write(2)` calls (no allocation, no locks).
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: the buffer is valid for reads of its length.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: __errno_location always returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = value }
}

/// Ends the process at once with `SIGABRT` (no unwinding, no allocation).
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Registers `fork` handlers (`pthread_atfork`). Failure (no memory for glibc's table) leaves
/// `fork` unprotected, which only matters to multi-threaded programs that fork.
pub fn atfork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: the handlers are plain functions that stay valid for the process's life.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// The key under which a thread's heap is registered for clean-up at thread exit.
pub type ThreadKey = libc::pthread_key_t;

/// Creates a thread-specific-data key with `dtor` as its destructor. Returns `None` if glibc
/// refused or the key is not below 32 (keys from 32 make glibc allocate on `setspecific`).
pub fn thread_key_create(dtor: unsafe extern "C" fn(*mut c_void)) -> Option<ThreadKey> {
    let mut key: ThreadKey = 0;
    // SAFETY: `key` is a valid out-pointer; pthread_key_create does not allocate.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(dtor)) };
    if rc != 0 {
        return None;
    }
    if key >= 32 {
        // SAFETY: the key was just created by us.
        unsafe { libc::pthread_key_delete(key) };
        return None;
    }
    Some(key)
}

/// Associates `value` with `key` for the calling thread (no allocation for keys below 32).
///
/// # Safety
/// `key` came from [`thread_key_create`] and its destructor accepts `value`.
pub unsafe fn thread_key_set(key: ThreadKey, value: *mut c_void) {
    // SAFETY: the key was created by `thread_key_create`; setspecific stores the pointer only.
    unsafe { libc::pthread_setspecific(key, value) };
}
