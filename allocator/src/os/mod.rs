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
//!   binding: the guard advice `MADV_GUARD_INSTALL`/`REMOVE` (raw `madvise` through libc,
//!   since rustix's `Advice` does not name them yet). The program break is not used yet
//!   (chunks must be 4 MiB-aligned, which the break is not).
//! - The clock is read through rustix's vDSO `clock_gettime`.
//! - For the guard modes: `sigaction` (libc: the fault handler, passing faults on to the
//!   action installed before), the fault context's error code, stack walks through libgcc's
//!   `_Unwind_Backtrace` (reads `.eh_frame`; does not allocate), `dladdr` for symbol names
//!   at report time, and small reads of `/proc` files (`vm.max_map_count`). None allocates.

use core::ffi::{c_void, CStr};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use rustix::mm::{self, MapFlags, MprotectFlags, MremapFlags, ProtFlags};

mod tls;
pub(crate) use tls::initial_exec_slot;

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

/// Calls into the kernel since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCalls {
    /// `mmap`.
    pub mmap: u64,
    /// `munmap`.
    pub munmap: u64,
    /// `madvise` (purging, trimming, guard pages, huge pages).
    pub madvise: u64,
    /// `mprotect`.
    pub mprotect: u64,
    /// `mremap`.
    pub mremap: u64,
}

/// The kernel calls made so far, and the guard pages installed.
pub fn calls() -> (KernelCalls, u64) {
    let get = |i: usize| CALLS[i].load(Ordering::Relaxed);
    let os = KernelCalls {
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

/// Maps `len` bytes of zeroed read-write memory at exactly `addr`, failing rather than
/// replacing anything there (`MAP_FIXED_NOREPLACE`): for tests that need a mapping where
/// another one was.
#[cfg(test)]
pub fn map_fixed_for_test(addr: usize, len: usize) -> Option<NonNull<u8>> {
    count(MMAP);
    // SAFETY: FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        mm::mmap_anonymous(
            addr as *mut core::ffi::c_void,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
        )
    };
    p.ok()
        .filter(|&p| p as usize == addr)
        .and_then(|p| NonNull::new(p.cast()))
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

/// Whether the kernel accepted `MADV_GUARD_INSTALL` (0 unknown, 1 yes, 2 no or not wanted).
/// Once it has worked it stays 1: a later refusal (an `mlock`ed range, say) falls back to
/// `mprotect` for that range only, and [`MPROTECT_GUARDS`] records that some exist.
static GUARD_ADVICE: AtomicU8 = AtomicU8::new(0);
/// Whether some guard was made with `mprotect` (so [`guard_remove`] must undo that too).
static MPROTECT_GUARDS: AtomicBool = AtomicBool::new(false);

/// Makes a range fault on any access. Uses `MADV_GUARD_INSTALL` where the kernel has it (no new
/// VMA), else `mprotect(PROT_NONE)`. Returns `false` if neither worked (the range stays
/// accessible).
///
/// # Safety
/// The range must be owned by the caller, hold nothing it needs, and not be touched until
/// [`guard_remove`].
pub unsafe fn guard_install(addr: *mut u8, len: usize) -> bool {
    let state = GUARD_ADVICE.load(Ordering::Relaxed);
    if state != 2 {
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
        if state == 0 {
            // Never worked: this kernel does not have it.
            GUARD_ADVICE.store(2, Ordering::Relaxed);
        }
    }
    MPROTECT_GUARDS.store(true, Ordering::Relaxed);
    count(MPROTECT);
    // SAFETY: the caller owns the range, needs nothing in it and leaves it alone until
    // guard_remove (guard_install's contract): it may become inaccessible.
    let ok = unsafe { mm::mprotect(addr.cast(), len, MprotectFlags::empty()).is_ok() };
    if ok {
        count(GUARDS);
    }
    ok
}

/// Undoes [`guard_install`]: the range becomes zeroed read-write memory again, whichever
/// way its guard was made.
///
/// # Safety
/// The range must be owned by the caller and have been guarded with [`guard_install`].
pub unsafe fn guard_remove(addr: *mut u8, len: usize) -> bool {
    let mut ok = true;
    if GUARD_ADVICE.load(Ordering::Relaxed) == 1 {
        count(MADVISE);
        let saved = errno();
        // SAFETY: the caller owns the range.
        ok = unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_REMOVE) } == 0;
        set_errno(saved);
    }
    if MPROTECT_GUARDS.load(Ordering::Relaxed) {
        count(MPROTECT);
        count(MADVISE);
        // SAFETY: the caller owns the range.
        ok &= unsafe {
            mm::mprotect(addr.cast(), len, MprotectFlags::READ | MprotectFlags::WRITE).is_ok()
                && mm::madvise(addr.cast(), len, mm::Advice::LinuxDontNeed).is_ok()
        };
    }
    ok
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

/// Blocks while `*word == expected` (or until woken). Spurious returns are allowed.
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    let _ =
        rustix::thread::futex::wait(word, rustix::thread::futex::Flags::PRIVATE, expected, None);
}

/// Blocks while `*word == expected`, for at most `ms` milliseconds (or until woken).
/// Spurious returns are allowed.
pub fn futex_wait_ms(word: &AtomicU32, expected: u32, ms: u64) {
    let t = rustix::thread::futex::Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    let _ = rustix::thread::futex::wait(
        word,
        rustix::thread::futex::Flags::PRIVATE,
        expected,
        Some(&t),
    );
}

/// Wakes one waiter on `word`.
pub fn futex_wake_one(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::PRIVATE, 1);
}

/// Milliseconds of the monotonic clock (the vDSO's `clock_gettime`, no system call).
pub fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// A file descriptor opened by [`create_file`].
pub type Fd = i32;

/// `ENAMETOOLONG`, for callers that build a path of their own.
pub const ENAMETOOLONG: i32 = libc::ENAMETOOLONG;

extern "C" {
    /// The process's environment block (glibc's `environ`).
    static environ: *const *const core::ffi::c_char;
}

/// Whether libc has set the environment block up (it has not, for allocations the dynamic
/// loader makes before libc's start-up).
pub fn environment_ready() -> bool {
    // SAFETY: reading the pointer value of libc's environ is always allowed.
    !unsafe { environ }.is_null()
}

/// Calls `f` with every `NAME=value` entry of the environment block, as bytes; nothing if
/// the block is not set up yet. Never allocates (unlike `std::env`).
pub fn for_each_env(mut f: impl FnMut(&[u8])) {
    // SAFETY: reading the pointer value of libc's environ is always allowed.
    let mut env = unsafe { environ };
    if env.is_null() {
        return;
    }
    // SAFETY: environ is a null-terminated array of NUL-terminated strings, which nothing
    // changes while the allocator reads its options (at start-up).
    unsafe {
        while !(*env).is_null() {
            f(CStr::from_ptr(*env).to_bytes());
            env = env.add(1);
        }
    }
}

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

/// Reserves `len` bytes of address space that faults on any access (`PROT_NONE`, no commit
/// charge), for [`commit_rw`] to open up piece by piece.
pub fn reserve(len: usize) -> Option<NonNull<u8>> {
    count(MMAP);
    // SAFETY: a null hint with no MAP_FIXED cannot replace an existing mapping.
    let p = unsafe {
        mm::mmap_anonymous(
            ptr::null_mut(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    };
    p.ok().and_then(|p| NonNull::new(p.cast()))
}

/// Makes part of a [`reserve`]d range read-write (it merges with a read-write neighbour, so a
/// range opened up front to back stays one mapping).
///
/// # Safety
/// The range lies in a reservation owned by the caller.
pub unsafe fn commit_rw(addr: *mut u8, len: usize) -> bool {
    count(MPROTECT);
    // SAFETY: the caller owns the range.
    unsafe { mm::mprotect(addr.cast(), len, MprotectFlags::READ | MprotectFlags::WRITE).is_ok() }
}

/// Makes [`guard_install`] use `mprotect` even where `MADV_GUARD_INSTALL` works (for
/// kernels before 6.13, and to measure what the advice saves). Call before any guard exists.
pub fn force_mprotect_guards() {
    GUARD_ADVICE.store(2, Ordering::Relaxed);
}

std::thread_local! {
    /// The calling thread's kernel id once asked (0 before): a const initialiser and no
    /// `Drop` (docs/architecture.md). Cleared in a `fork` child, whose one thread has a new
    /// id ([`forget_tid`]).
    static TID: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// The calling thread's kernel id (a system call the first time, then cached: the guarded
/// blocks' records name the threads that allocated and freed them).
pub fn gettid() -> u32 {
    let t = TID.get();
    if t != 0 {
        return t;
    }
    let t = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    TID.set(t);
    t
}

/// Forgets the cached thread id (in a `fork` child, from its atfork handler).
pub fn forget_tid() {
    TID.set(0);
}

/// Reads a small decimal number from a file such as `/proc/sys/vm/max_map_count`, or `None`.
pub fn read_number(path: &core::ffi::CStr) -> Option<u64> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 32];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return None;
    }
    buf[..n as usize]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
}

/// A memory access fault (SIGSEGV or SIGBUS raised by the kernel), as a fault callback is
/// told of it.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// The address the access touched.
    pub addr: usize,
    /// Whether the access was a write (the page-fault error code), where known.
    pub write: Option<bool>,
    /// The faulting instruction's address, where known.
    pub pc: Option<usize>,
}

/// What the fault handler calls for each fault: returns `true` when the fault was the
/// callback's own and is reported (the default action is then restored, so the instruction
/// faults again and the process dies with the signal), `false` to pass it on to the action
/// installed before ours. Runs in a signal handler: it must not allocate or take locks that
/// the faulting thread may hold.
pub type FaultCallback = fn(&Fault) -> bool;

/// The fault callback (a `FaultCallback` as an address; 0 before it is installed).
static FAULT_CALLBACK: AtomicUsize = AtomicUsize::new(0);

/// The actions SIGSEGV and SIGBUS had before ours.
struct SavedActions(core::cell::UnsafeCell<[Option<libc::sigaction>; 2]>);
// SAFETY: each entry is written once, by `install_fault_handlers`, before the handler that
// reads it is installed for that signal (a fault in between finds `None` and takes the
// default action); afterwards it is only read.
unsafe impl Sync for SavedActions {}
static PREV_ACTIONS: SavedActions = SavedActions(core::cell::UnsafeCell::new([None, None]));

/// Whether `install_fault_handlers` ran.
static FAULT_HANDLERS: AtomicBool = AtomicBool::new(false);

/// Installs our handler for SIGSEGV and SIGBUS, calling `callback` for every fault the
/// kernel raises; signals that are not ours go to the actions installed before (a signal
/// sent with `kill` or `raise` never reaches the callback). Once per process; later calls
/// do nothing. Returns whether both handlers are in place.
pub fn install_fault_handlers(callback: FaultCallback) -> bool {
    if FAULT_HANDLERS.swap(true, Ordering::AcqRel) {
        return true;
    }
    FAULT_CALLBACK.store(callback as usize, Ordering::Release);
    let mut ok = true;
    for (i, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
        // SAFETY: the entry is written once, here, before our handler for `sig` exists
        // (see SavedActions); nothing else writes it.
        let slot = unsafe { &mut (*PREV_ACTIONS.0.get())[i] };
        match install_fault_handler(sig, on_fault_signal) {
            Some(old) => *slot = Some(old),
            None => ok = false,
        }
    }
    ok
}

/// Our SIGSEGV / SIGBUS handler (see [`install_fault_handlers`]).
extern "C" fn on_fault_signal(sig: i32, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for a fault (not sent by kill, raise or sigqueue,
    // whose si_addr means nothing).
    let fault = code > 0;
    let callback = FAULT_CALLBACK.load(Ordering::Acquire);
    if fault && callback != 0 {
        // SAFETY: ctx is the context the kernel passed with this fault.
        let (write, pc) = unsafe { (fault_was_write(ctx), fault_pc(ctx)) };
        // SAFETY: the only value stored is a FaultCallback.
        let callback = unsafe { core::mem::transmute::<usize, FaultCallback>(callback) };
        if callback(&Fault { addr, write, pc }) {
            restore_default(sig);
            return;
        }
    }
    // SAFETY: the entry was written before this handler was installed (SavedActions).
    let prev = unsafe { &(*PREV_ACTIONS.0.get())[(sig == libc::SIGBUS) as usize] };
    match prev {
        // SAFETY: our own arguments, passed on.
        Some(action) => unsafe { pass_fault_on(action, sig, info, ctx, fault) },
        None => pass_default(sig, fault),
    }
}

/// A fault handler as `sigaction` calls it with `SA_SIGINFO`.
type FaultHandler = extern "C" fn(i32, *mut libc::siginfo_t, *mut c_void);

/// Installs `handler` for `sig` (on the alternate stack if the thread has one, with other
/// faults deferred while it runs) and returns the action it replaced, or `None` if the kernel
/// refused.
fn install_fault_handler(sig: i32, handler: FaultHandler) -> Option<libc::sigaction> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = handler as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: an all-zero sigaction is a valid value (sigaction overwrites it with the old
    // action).
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: both structs are valid; the handler is a plain function living for ever.
    let rc = unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(sig, &act, &mut old)
    };
    (rc == 0).then_some(old)
}

/// Passes a signal on to the action `prev` that was installed before ours: calls its
/// handler; for "ignore", ignores a signal that was sent (a fault cannot be ignored: it is
/// treated as the default); for the default action, see [`pass_default`].
///
/// # Safety
/// Called from a fault handler with the arguments it was given; `fault` says whether the
/// kernel raised the signal for a fault (`si_code > 0`).
unsafe fn pass_fault_on(
    prev: &libc::sigaction,
    sig: i32,
    info: *mut libc::siginfo_t,
    ctx: *mut c_void,
    fault: bool,
) {
    let h = prev.sa_sigaction;
    if h == libc::SIG_IGN && !fault {
        return;
    }
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        pass_default(sig, fault);
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this three-argument handler for `sig`.
        let f: FaultHandler = unsafe { core::mem::transmute::<usize, FaultHandler>(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the program installed this one-argument handler for `sig`.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute::<usize, extern "C" fn(i32)>(h) };
        f(sig);
    }
}

/// Takes the default action for `sig` from inside its handler: restores it, and, for a
/// signal that was sent rather than raised by a fault, sends it again (it is delivered when
/// the handler returns); a fault happens again when the faulting instruction runs again.
/// Either way the process dies with that signal.
fn pass_default(sig: i32, fault: bool) {
    restore_default(sig);
    if !fault {
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(sig) };
    }
}

/// Sets `sig` back to its default action (for a fault: the process dies with that signal
/// when the faulting instruction runs again).
fn restore_default(sig: i32) {
    // SAFETY: an all-zero sigaction is a valid value (no flags, an empty mask).
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `act` is a valid sigaction naming SIG_DFL, and a null old-action pointer is
    // allowed; sigaction neither allocates nor keeps the pointer.
    unsafe { libc::sigaction(sig, &act, ptr::null_mut()) };
}

/// Whether a page fault described by a handler's context was a write (bit 1 of the x86-64
/// page-fault error code), `None` if the context is missing.
///
/// # Safety
/// `ctx` is null or the `ucontext_t` a fault handler was given.
unsafe fn fault_was_write(ctx: *mut c_void) -> Option<bool> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: `ctx` is not null (tested above), so it is the `ucontext_t` the kernel gave
    // the fault handler (fault_was_write's contract).
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    Some(uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0)
}

/// The faulting instruction's address from a fault handler's context, `None` if the context
/// is missing.
///
/// # Safety
/// `ctx` is null or the `ucontext_t` a fault handler was given.
unsafe fn fault_pc(ctx: *mut c_void) -> Option<usize> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: `ctx` is not null (tested above), so it is the `ucontext_t` the kernel gave
    // the fault handler (fault_pc's contract).
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    Some(uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize)
}

#[repr(C)]
struct UnwindContext {
    _private: [u8; 0],
}

extern "C" {
    fn _Unwind_Backtrace(
        trace: extern "C" fn(*mut UnwindContext, *mut c_void) -> i32,
        arg: *mut c_void,
    ) -> i32;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
    fn _Unwind_GetCFA(ctx: *mut UnwindContext) -> usize;
}

/// Where a backtrace is written: the frames, how many were kept, how many to skip, and the
/// stack address at or below which frames are dropped (see [`backtrace_above`]; 0: none).
struct Trace<'a> {
    frames: &'a mut [usize],
    len: usize,
    skip: usize,
    marker: usize,
}

extern "C" fn trace_one(ctx: *mut UnwindContext, arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is the `Trace` passed by `walk` below, alive for the walk.
    let t = unsafe { &mut *(arg as *mut Trace<'_>) };
    // SAFETY: the unwinder hands us a live context.
    let (ip, sp) = unsafe { (_Unwind_GetIP(ctx), _Unwind_GetCFA(ctx)) };
    if ip == 0 {
        return 5; // _URC_END_OF_STACK
    }
    if sp <= t.marker {
        return 0;
    }
    if t.skip > 0 {
        t.skip -= 1;
        return 0;
    }
    if t.len == t.frames.len() {
        return 5;
    }
    t.frames[t.len] = ip;
    t.len += 1;
    0 // _URC_NO_REASON
}

/// One walk of libgcc's unwinder into `t`; returns the frames written.
fn walk(mut t: Trace<'_>) -> usize {
    // SAFETY: the callback only writes into `t`, which outlives the walk.
    unsafe { _Unwind_Backtrace(trace_one, (&raw mut t).cast()) };
    t.len
}

/// Writes the return addresses of the calling stack into `frames` (after skipping `skip`
/// frames of the caller's own), through libgcc's unwinder, which reads `.eh_frame` and does
/// not allocate. Returns how many were written.
pub fn backtrace(frames: &mut [usize], skip: usize) -> usize {
    walk(Trace {
        frames,
        len: 0,
        skip,
        marker: 0,
    })
}

/// Writes the return addresses of the frames *outside* the function whose stack frame holds
/// `marker` (the address of one of its locals): the frames of its callers, innermost first.
/// The frames inside it (the walk itself and everything between) and its own are dropped by
/// their stack addresses, so the result does not depend on what the compiler inlined.
/// Returns how many were written.
///
/// During libgcc's walk, `_Unwind_GetCFA` of the context whose IP lies in a function F
/// gives F's stack pointer at its call (the canonical frame address of the frame below F).
/// The frames whose stack pointer is at or below the marker are the marker's own function
/// and its callees; the first above it is its caller.
pub fn backtrace_above(frames: &mut [usize], marker: usize) -> usize {
    walk(Trace {
        frames,
        len: 0,
        skip: 0,
        marker,
    })
}

/// The address range of the loaded shared library (`.so`) holding the code address `pc`:
/// from its base to the end of its last `PT_LOAD` segment, read from its program headers in
/// memory. `None` when `pc` is in the main program (or unknown to the loader).
pub fn shared_object_range(pc: usize) -> Option<(usize, usize)> {
    // SAFETY: an all-zero Dl_info is valid to fill in.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and writes `info`.
    if unsafe { libc::dladdr(pc as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated name of a loaded object (dladdr's answer).
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
    if !name.ends_with(b".so") && !name.windows(4).any(|w| w == b".so.") {
        return None;
    }
    let base = info.dli_fbase as usize;
    // SAFETY: a loaded object's ELF header and program headers stay mapped at its base
    // (the loader maps the first page, which holds them, for every object).
    let (phoff, phnum) = unsafe {
        let ehdr = &*(base as *const libc::Elf64_Ehdr);
        (ehdr.e_phoff as usize, ehdr.e_phnum as usize)
    };
    let mut end = 0;
    for i in 0..phnum {
        // SAFETY: `i < e_phnum` program headers follow at `e_phoff` (see above).
        let ph = unsafe { &*((base + phoff) as *const libc::Elf64_Phdr).add(i) };
        if ph.p_type == libc::PT_LOAD {
            end = end.max((ph.p_vaddr + ph.p_memsz) as usize);
        }
    }
    (end > 0).then_some((base, base + end))
}

/// Eight random bytes from the kernel (`getrandom`, not blocking), or `None` when it has
/// none to give yet.
pub fn random_u64() -> Option<u64> {
    let mut b = [0u8; 8];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::NONBLOCK) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        _ => None,
    }
}

/// Bytes of stack of a helper thread from [`spawn_helper_thread`].
const HELPER_STACK: usize = 256 << 10;
/// Bytes of the stand-in thread-local area of a helper thread (see [`spawn_helper_thread`]).
const HELPER_TLS: usize = 128 << 10;

/// Starts a helper thread of the allocator's own (the background purger) running `entry(arg)`,
/// made with a raw `clone` instead of `pthread_create`, so that it can be started anywhere,
/// a lock of glibc's held or not: `pthread_create` allocates (the thread's TLS) and takes
/// glibc's stack-cache lock, which `free` can be called under. Returns whether it started.
///
/// The thread is not a pthread: it has its own stack and a zeroed stand-in thread-local
/// area (whose thread pointer points at itself, as the ABI wants), every signal blocked (so
/// no handler of the program ever runs on it), and it must call nothing that uses glibc's
/// thread state (`errno`, locks of libc) or Rust's thread-locals: only system calls through
/// rustix and the allocator's own atomics and futex locks. It ends with the process (at
/// `exit`, and when the last pthread exits, glibc ends the process: a helper never keeps
/// one alive), and does not exist in a `fork` child.
///
/// # Safety
/// `entry` keeps the rules above and never returns.
pub unsafe fn spawn_helper_thread(entry: extern "C" fn(usize) -> !, arg: usize) -> bool {
    let Some(stack) = map(HELPER_STACK + HELPER_TLS) else {
        return false;
    };
    let base = stack.as_ptr() as usize;
    // The thread pointer at the top of the TLS area (TLS blocks lie below it, the thread
    // control block above: both in our zeroed pages); its first and third words point at
    // itself (the TCB's self pointers).
    let tp = base + HELPER_STACK + HELPER_TLS / 2;
    // SAFETY: `tp` and the two words after it lie in the mapping just made, ours.
    unsafe {
        *(tp as *mut usize) = tp;
        *((tp + 16) as *mut usize) = tp;
    }
    let stack_top = (base + HELPER_STACK) & !15;
    // Block every signal around the clone: the thread inherits the mask.
    // SAFETY: an all-zero sigset is valid to fill; the calls only read and write the locals.
    let mut all: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: `all` and `old` are valid sigsets of ours.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS) as usize;
    let ret: isize;
    // SAFETY: clone(2) with a fresh stack and TLS area of ours; the child runs on that stack
    // and goes straight to `entry` (which never returns: `ud2` after it is never reached);
    // the parent goes on with its registers intact (syscall clobbers rcx and r11 only).
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone as isize => ret,
            in("rdi") flags,
            in("rsi") stack_top,
            in("rdx") 0usize,
            in("r10") 0usize,
            in("r8") tp,
            in("r12") entry as usize,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    if ret < 0 {
        // SAFETY: the mapping is ours and no thread uses it.
        unsafe { unmap(stack.as_ptr(), HELPER_STACK + HELPER_TLS) };
        return false;
    }
    true
}

/// Opens `path` for reading (close-on-exec). `Err(errno)` on failure.
pub fn open_read(path: &CStr) -> Result<Fd, i32> {
    // SAFETY: `path` is NUL-terminated; open(2) neither allocates nor keeps the pointer.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// Reads up to `buf.len()` bytes from `fd`, retrying `EINTR`: the count (0 at the end), or
/// `Err(errno)`.
pub fn read(fd: Fd, buf: &mut [u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if errno() != libc::EINTR {
            return Err(errno());
        }
    }
}

/// The target of the symbolic link `path` (e.g. `/proc/self/exe`), written into `buf`: its
/// length, or `None` (also when it does not fit).
pub fn read_link(path: &CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is NUL-terminated and `buf` valid for writes of its length.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0 && (n as usize) < buf.len()).then_some(n as usize)
}

/// Flushes every C stdio stream (`fflush(NULL)`), before [`exit_now`] skips libc's own flush.
pub fn flush_stdio() {
    // SAFETY: fflush(NULL) flushes all open output streams; it has no other precondition.
    unsafe { libc::fflush(ptr::null_mut()) };
}

/// Ends the process at once with `status`, running no more exit handlers (`_exit`).
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(status) }
}

/// Installs `handler` for the signal `sig` (with `SA_RESTART`, so that the program's system
/// calls are not interrupted), replacing the program's action for it. Returns whether the
/// kernel took it.
pub fn install_signal_handler(sig: i32, handler: extern "C" fn(i32)) -> bool {
    // SAFETY: an all-zero sigaction is valid to fill in.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is ours to fill; sigaction copies `sa` and keeps no pointer.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, ptr::null_mut()) == 0
    }
}

/// A code address's symbol and module: `(symbol, offset from it, module path, offset from the
/// module's base)`; either name may be missing.
pub type Symbol = (Option<&'static CStr>, usize, Option<&'static CStr>, usize);

/// The symbol and module of a code address, for a report (see [`Symbol`]). `dladdr` reads the
/// loader's tables without allocating (it knows only the dynamic symbols).
pub fn symbolize(pc: usize) -> Option<Symbol> {
    // SAFETY: an all-zero Dl_info is valid to fill in.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and writes `info`.
    if unsafe { libc::dladdr(pc as *const c_void, &mut info) } == 0 {
        return None;
    }
    let name = |p: *const core::ffi::c_char| {
        // SAFETY: `p` is not null (tested), and the names dladdr returns are NUL-terminated
        // strings of loaded objects, which stay loaded while the report is written.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
    };
    let sym = name(info.dli_sname);
    let module = name(info.dli_fname);
    Some((
        sym,
        pc.wrapping_sub(info.dli_saddr as usize),
        module,
        pc.wrapping_sub(info.dli_fbase as usize),
    ))
}
