//! Out-of-memory behaviour: with its address space capped by `RLIMIT_AS`, rampart must return
//! null (never crash, abort or hang), and memory freed afterwards must be usable again.
//!
//! Each case runs in a forked child, so the limit does not reach the test harness. The child
//! sets `RLIMIT_AS` to its current size (`VmSize`) plus [`HEADROOM`], allocates blocks of one
//! size with `GlobalAlloc::alloc` until null comes back, frees them all and allocates again.
//! Blocks are kept on an intrusive list (each block's first word points to the previous
//! one), so the child needs no pointer storage that could grow after the limit is hit; it
//! formats its failure messages into a stack buffer and writes them with `write(2)`, and it
//! ends with `_exit`, never returning into the harness. The parent waits for the child and
//! asserts it exited with status 0; each failure has its own exit code (see [`Failure`]).
//!
//! The test binary's global allocator is rampart, so everything in the child, std included,
//! runs on rampart. The child is forked from a multi-threaded process (the harness runs tests
//! on several threads), which rampart's fork handlers must make safe.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write as _;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Address space the child may add to what it already has mapped when it sets the limit.
const HEADROOM: usize = 256 * MIB;

/// If this many bytes were handed out without a null, the limit is not being enforced (or the
/// allocator reserved far more than `HEADROOM` beforehand): the child stops rather than
/// exhaust the machine.
const RUNAWAY: usize = HEADROOM + GIB;

/// How long the parent waits before it calls the child hung (for example deadlocked on a lock
/// held across `fork`). Generous: this is a watchdog against hanging CI, not a speed check.
const WATCHDOG: Duration = Duration::from_secs(300);

/// Why a child failed; the discriminant is its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
enum Failure {
    Panicked = 2,
    VmSizeUnreadable = 3,
    SetRlimit = 4,
    /// The very first allocation under the limit failed.
    NothingAllocated = 10,
    /// Null came back with less than a quarter of the headroom handed out.
    GaveUpEarly = 11,
    /// More than `RUNAWAY` bytes handed out without a null.
    NeverNull = 12,
    /// After freeing everything, less than half as much could be allocated again.
    NotReusable = 13,
    /// After freeing everything, one block of some size could not be allocated.
    NoBlockAfterFree = 14,
    /// Memory freed as 1 MiB blocks could not be reused for 64 B blocks.
    LargeNotReusableAsSmall = 15,
    /// Memory freed as 64 B blocks could not be reused for 1 MiB blocks.
    SmallNotReusableAsLarge = 16,
    /// A block's contents changed while it was live.
    Corrupted = 17,
    /// A block was misaligned.
    Misaligned = 18,
    /// An impossible request (1 TiB, or close to `isize::MAX`) did not return null.
    HugeNotNull = 20,
    /// A failed `realloc` damaged the block it was asked to resize.
    FailedReallocDamaged = 21,
}

impl Failure {
    const ALL: [Failure; 14] = [
        Failure::Panicked,
        Failure::VmSizeUnreadable,
        Failure::SetRlimit,
        Failure::NothingAllocated,
        Failure::GaveUpEarly,
        Failure::NeverNull,
        Failure::NotReusable,
        Failure::NoBlockAfterFree,
        Failure::LargeNotReusableAsSmall,
        Failure::SmallNotReusableAsLarge,
        Failure::Corrupted,
        Failure::Misaligned,
        Failure::HugeNotNull,
        Failure::FailedReallocDamaged,
    ];

    fn from_code(code: i32) -> Option<Failure> {
        Failure::ALL.into_iter().find(|f| *f as i32 == code)
    }
}

/// A `fmt::Write` into a fixed stack buffer, for messages in the child that must not allocate.
struct StackMsg {
    buf: [u8; 512],
    len: usize,
}

impl StackMsg {
    fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }

    /// Writes the message to stderr with `write(2)`.
    fn emit(&self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: `buf[done..len]` is initialized and lives across the call.
            let n = unsafe {
                libc::write(2, self.buf[done..self.len].as_ptr().cast(), self.len - done)
            };
            if n <= 0 {
                return;
            }
            done += n as usize;
        }
    }
}

impl core::fmt::Write for StackMsg {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Truncate rather than fail: a cut message is better than none.
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Reports a failure on stderr (without allocating) and returns it.
fn failed(f: Failure, args: core::fmt::Arguments<'_>) -> Failure {
    let mut m = StackMsg::new();
    let _ = writeln!(m, "oom child: {f:?}: {args}");
    m.emit();
    f
}

/// The process's mapped address space in bytes, from `VmSize` in `/proc/self/status`.
fn vm_size() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// Caps the address space at the current size plus `HEADROOM`.
fn limit_address_space() -> Result<(), Failure> {
    let now = vm_size().ok_or(Failure::VmSizeUnreadable)?;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 {
        return Err(Failure::SetRlimit);
    }
    let want = (now + HEADROOM) as libc::rlim_t;
    if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < want {
        return Err(failed(
            Failure::SetRlimit,
            format_args!("hard RLIMIT_AS {} below {want}", lim.rlim_max),
        ));
    }
    lim.rlim_cur = want;
    // SAFETY: `lim` is a valid `rlimit`; lowering the soft limit is always permitted.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        return Err(Failure::SetRlimit);
    }
    Ok(())
}

/// Blocks of one layout, linked through their first word (newest first).
struct Chain {
    layout: Layout,
    head: *mut u8,
    count: usize,
}

impl Chain {
    /// What block `n` of a chain holds in its second word and its last byte.
    fn mark(n: usize) -> usize {
        n ^ 0x5A5A_5A5A_5A5A_5A5A
    }

    fn bytes(&self) -> usize {
        self.count * self.layout.size()
    }

    /// Allocates blocks of `layout` (size ≥ 16, align ≥ 8) until rampart returns null.
    fn fill(layout: Layout) -> Result<Chain, Failure> {
        let mut chain = Chain {
            layout,
            head: core::ptr::null_mut(),
            count: 0,
        };
        loop {
            if chain.bytes() > RUNAWAY {
                let c = chain.count;
                chain.free()?;
                return Err(failed(
                    Failure::NeverNull,
                    format_args!("{c} blocks of {layout:?} and still no null"),
                ));
            }
            // SAFETY: `layout` has a non-zero size.
            let p = unsafe { rampart::Rampart.alloc(layout) };
            if p.is_null() {
                return Ok(chain);
            }
            if !rampart_suite::is_aligned(p as usize, layout.align()) {
                return Err(failed(
                    Failure::Misaligned,
                    format_args!("{p:p} for {layout:?}"),
                ));
            }
            let mark = Chain::mark(chain.count);
            // SAFETY: `p` is a fresh block of `layout.size() >= 16` bytes aligned to at least
            // 8: room for two aligned words and a last byte.
            unsafe {
                p.cast::<*mut u8>().write(chain.head);
                p.cast::<usize>().add(1).write(mark);
                p.add(layout.size() - 1).write(mark as u8);
            }
            chain.head = p;
            chain.count += 1;
        }
    }

    /// Checks and frees every block.
    fn free(mut self) -> Result<(), Failure> {
        let mut n = self.count;
        while !self.head.is_null() {
            n -= 1;
            let p = self.head;
            let mark = Chain::mark(n);
            // SAFETY: `p` is a live block of this chain, written by `fill` as above.
            let (next, got, last) = unsafe {
                (
                    p.cast::<*mut u8>().read(),
                    p.cast::<usize>().add(1).read(),
                    p.add(self.layout.size() - 1).read(),
                )
            };
            if got != mark || last != mark as u8 {
                return Err(failed(
                    Failure::Corrupted,
                    format_args!("block {n} at {p:p} of {:?}", self.layout),
                ));
            }
            // SAFETY: `p` was allocated by rampart with `self.layout` and is freed once.
            unsafe { rampart::Rampart.dealloc(p, self.layout) };
            self.head = next;
        }
        self.count = 0;
        Ok(())
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}

/// Fills to OOM with blocks of `size`, frees, fills again, then allocates one block of each
/// size.
fn exhaust_and_recover(size: usize) -> Result<(), Failure> {
    limit_address_space()?;
    let l = layout(size);
    let first = Chain::fill(l)?;
    let n1 = first.count;
    if n1 == 0 {
        return Err(failed(
            Failure::NothingAllocated,
            format_args!("{l:?} null at once"),
        ));
    }
    if first.bytes() < HEADROOM / 4 {
        return Err(failed(
            Failure::GaveUpEarly,
            format_args!("{n1} blocks of {size} B, headroom {HEADROOM}"),
        ));
    }
    first.free()?;
    let second = Chain::fill(l)?;
    let n2 = second.count;
    second.free()?;
    if n2 < n1 / 2 {
        return Err(failed(
            Failure::NotReusable,
            format_args!("{n1} blocks of {size} B, then only {n2}"),
        ));
    }
    for size in [64, 64 * KIB, MIB] {
        let l = layout(size);
        // SAFETY: non-zero size.
        let p = unsafe { rampart::Rampart.alloc(l) };
        if p.is_null() {
            return Err(failed(
                Failure::NoBlockAfterFree,
                format_args!("{l:?} after freeing everything"),
            ));
        }
        // SAFETY: `p` is a live block of `size` bytes, freed once with its layout.
        unsafe {
            p.write_bytes(0xEE, size);
            rampart::Rampart.dealloc(p, l);
        }
    }
    Ok(())
}

/// Memory freed at one size must serve another: 1 MiB blocks to OOM, free, 64 B blocks to
/// OOM, free, 1 MiB blocks again.
fn exhaust_across_sizes() -> Result<(), Failure> {
    limit_address_space()?;
    let (big, small) = (layout(MIB), layout(64));
    let a = Chain::fill(big)?;
    let bytes_a = a.bytes();
    if a.count == 0 {
        return Err(failed(Failure::NothingAllocated, format_args!("{big:?}")));
    }
    a.free()?;
    let b = Chain::fill(small)?;
    let bytes_b = b.bytes();
    b.free()?;
    if bytes_b < bytes_a / 4 {
        return Err(failed(
            Failure::LargeNotReusableAsSmall,
            format_args!("{bytes_a} B as 1 MiB blocks, then {bytes_b} B as 64 B blocks"),
        ));
    }
    let c = Chain::fill(big)?;
    let bytes_c = c.bytes();
    c.free()?;
    if bytes_c < bytes_a / 4 {
        return Err(failed(
            Failure::SmallNotReusableAsLarge,
            format_args!("{bytes_a} B as 1 MiB blocks, then {bytes_c} B after 64 B blocks"),
        ));
    }
    Ok(())
}

/// Requests that cannot be met (1 TiB; sizes that overflow once rounded to a page) return
/// null from `alloc`, `alloc_zeroed` and `realloc`, and a failed `realloc` leaves its block
/// intact.
fn impossible_requests() -> Result<(), Failure> {
    limit_address_space()?;
    let max = isize::MAX as usize;
    let mut huge = vec![Layout::from_size_align(1 << 40, 8).expect("valid")];
    for align in [1, 16, 4 * KIB, MIB] {
        // The largest size `Layout` accepts at this alignment, and a few below it.
        for back in [0, 1, 4 * KIB, MIB] {
            huge.push(Layout::from_size_align(max - (align - 1) - back, align).expect("valid"));
        }
    }
    for l in huge {
        // SAFETY: non-zero sizes; a non-null result would be a live block, freed below.
        let (p, z) = unsafe { (rampart::Rampart.alloc(l), rampart::Rampart.alloc_zeroed(l)) };
        if !p.is_null() || !z.is_null() {
            return Err(failed(
                Failure::HugeNotNull,
                format_args!("{l:?}: alloc {p:p}, alloc_zeroed {z:p}"),
            ));
        }
    }
    for old_size in [24, 5000, 3 * MIB] {
        let l = layout(old_size);
        // SAFETY: non-zero size.
        let p = unsafe { rampart::Rampart.alloc(l) };
        if p.is_null() {
            return Err(failed(Failure::NothingAllocated, format_args!("{l:?}")));
        }
        // SAFETY: `p` is a live block of `old_size` bytes.
        unsafe { p.write_bytes(0xA7, old_size) };
        for new_size in [1 << 40, max - 7, max - 4 * KIB - 7] {
            // SAFETY: `p` is live with layout `l`; `new_size` is non-zero and, rounded up to
            // the alignment 8, does not exceed `isize::MAX`.
            let q = unsafe { rampart::Rampart.realloc(p, l, new_size) };
            if !q.is_null() {
                return Err(failed(
                    Failure::HugeNotNull,
                    format_args!("realloc({p:p}, {l:?}, {new_size}) = {q:p}"),
                ));
            }
        }
        // SAFETY: the failed reallocs left `p` live and unchanged in size.
        let intact = unsafe { core::slice::from_raw_parts(p, old_size) }
            .iter()
            .all(|&b| b == 0xA7);
        if !intact {
            return Err(failed(
                Failure::FailedReallocDamaged,
                format_args!("{l:?} at {p:p}"),
            ));
        }
        // SAFETY: `p` is live with layout `l`, freed once.
        unsafe { rampart::Rampart.dealloc(p, l) };
    }
    Ok(())
}

/// Runs `case` in a forked child and asserts the child exits with status 0.
fn in_child(name: &str, case: fn() -> Result<(), Failure>) {
    // SAFETY: the child only runs `case` (allocation through rampart, whose fork handlers
    // make that safe after a fork from a multi-threaded process, plain syscalls, and stack
    // formatting) and then `_exit`s without returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match std::panic::catch_unwind(case) {
            Ok(Ok(())) => 0,
            Ok(Err(f)) => f as i32,
            Err(_) => Failure::Panicked as i32,
        };
        // SAFETY: ends the child at once, running no destructors or atexit handlers that
        // belong to the parent's harness.
        unsafe { libc::_exit(code) };
    }

    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is writable.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "{name}: waitpid failed");
        if r == pid {
            break;
        }
        if start.elapsed() > WATCHDOG {
            // SAFETY: `pid` is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above; reaps it.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("{name}: child still running after {WATCHDOG:?} (hung or deadlocked); killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !libc::WIFSIGNALED(status),
        "{name}: child killed by signal {} instead of getting null",
        libc::WTERMSIG(status)
    );
    assert!(libc::WIFEXITED(status), "{name}: child did not exit");
    let code = libc::WEXITSTATUS(status);
    assert_eq!(
        code,
        0,
        "{name}: child failed with {:?} (exit code {code}; its stderr says more)",
        Failure::from_code(code)
    );
}

#[test]
fn oom_with_1_mib_blocks() {
    in_child("1 MiB", || exhaust_and_recover(MIB));
}

#[test]
fn oom_with_64_kib_blocks() {
    in_child("64 KiB", || exhaust_and_recover(64 * KIB));
}

#[test]
fn oom_with_64_b_blocks() {
    in_child("64 B", || exhaust_and_recover(64));
}

#[test]
fn oom_memory_moves_between_sizes() {
    in_child("across sizes", exhaust_across_sizes);
}

#[test]
fn impossible_requests_return_null() {
    in_child("impossible", impossible_requests);
}
