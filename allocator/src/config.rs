//! Runtime options: `RAMPART_*` variables, read once from the environment block (never with
//! `getenv`, never allocating) and frozen.
//!
//! An unknown `RAMPART_*` name or a bad value is reported once on stderr and ignored; it never
//! stops the program.

use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::util::Line;

/// `RAMPART_STATS=1`: print statistics to stderr at exit.
static STATS: AtomicBool = AtomicBool::new(false);
/// `RAMPART_VERBOSE=1`: report the options at start-up.
static VERBOSE: AtomicBool = AtomicBool::new(false);
/// `RAMPART_HUGEPAGE=1`: advise transparent huge pages (`MADV_HUGEPAGE`) for every chunk and
/// huge block, for programs whose kernel setting is `madvise`. Saves TLB misses on large
/// heaps; costs RSS where a 2 MiB page is only partly used, and purging a 4 KiB range splits
/// the huge page.
static HUGEPAGE: AtomicBool = AtomicBool::new(false);
/// `RAMPART_PURGE_DELAY_MS`: how long free pages stay committed before they are returned to
/// the OS (`MADV_DONTNEED`). Guards against a process keeping the memory it freed; costs a
/// `madvise` per purged block and a page fault per page when the memory is used again.
static PURGE_DELAY_MS: AtomicU64 = AtomicU64::new(DEFAULT_PURGE_DELAY_MS);
/// `RAMPART_PURGE_THREAD=0`: no background purger (`pages::purger`). The purger returns the
/// memory a program freed even when it then makes no allocator call (an idle process); it
/// costs a helper thread, which makes the process multi-threaded (`unshare(CLONE_NEWUSER)`
/// refuses such processes), and a wake-up per purge delay while memory waits.
static PURGE_THREAD: AtomicBool = AtomicBool::new(true);

/// `RAMPART_GUARD`: `off` (0), `sample` (1) or `all` (2); see `guard` for what each guards
/// against and costs.
static GUARD: AtomicU8 = AtomicU8::new(0);
/// `RAMPART_GUARD_SAMPLE`: with `sample`, one allocation in this many is guarded.
static GUARD_SAMPLE: AtomicU64 = AtomicU64::new(DEFAULT_GUARD_SAMPLE);
/// `RAMPART_REDZONE`: bytes of canary after every small block (0: off). Guards against
/// overflows and writes after free that stay inside the heap; costs the canary's bytes per
/// block, a check on every free and the fast paths (every call takes the slow path).
static REDZONE: AtomicUsize = AtomicUsize::new(0);
/// `RAMPART_QUARANTINE`: bytes of freed guarded memory held back (PROT_NONE) before reuse;
/// `usize::MAX` until set: the mode's default.
static QUARANTINE: AtomicUsize = AtomicUsize::new(usize::MAX);
/// `RAMPART_GUARD_MPROTECT=1`: make guard pages with `mprotect` even where the kernel has
/// `MADV_GUARD_INSTALL` (what kernels before 6.13 get; for measuring and testing that path).
static GUARD_MPROTECT: AtomicBool = AtomicBool::new(false);

/// `RAMPART_HARDEN=1`: the hardened production mode, built of the checks below without a
/// page per block (see `check` and the README's options table): a canary after every small
/// block and freed small blocks filled, checked and held in a quarantine before reuse (the
/// redzone machinery with a 1-byte redzone unless `RAMPART_REDZONE` says more), carving in
/// random order, free-list links checked when popped, every block above the small classes
/// guarded (its own slot with a guard page after it, inaccessible and quarantined once
/// freed), `malloc(0)` a unique pointer that faults on any access, and the guard sampling on
/// (`RAMPART_GUARD=sample` unless `RAMPART_GUARD` says otherwise). Costs the slow paths on
/// every call and the system calls of a guarded block on every block above 32 KiB.
static HARDEN: AtomicBool = AtomicBool::new(false);
/// Whether `RAMPART_GUARD` and `RAMPART_REDZONE` were given (the hardened mode's defaults
/// yield to them).
static GUARD_SET: AtomicBool = AtomicBool::new(false);
static REDZONE_SET: AtomicBool = AtomicBool::new(false);

/// The default of `RAMPART_GUARD_SAMPLE`.
pub const DEFAULT_GUARD_SAMPLE: u64 = 1000;
/// The largest `RAMPART_REDZONE`.
pub const MAX_REDZONE: usize = 4096;

/// The guard mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    /// No guarded placement (the always-on guards at the end of mappings remain).
    Off,
    /// One allocation in [`guard_sample`] guarded.
    Sample,
    /// Every allocation guarded.
    All,
}

/// The guard mode (`RAMPART_GUARD`).
#[inline]
pub fn guard_mode() -> GuardMode {
    match GUARD.load(Ordering::Relaxed) {
        0 => GuardMode::Off,
        1 => GuardMode::Sample,
        _ => GuardMode::All,
    }
}

/// `RAMPART_GUARD_SAMPLE`.
pub fn guard_sample() -> u64 {
    GUARD_SAMPLE.load(Ordering::Relaxed)
}

/// `RAMPART_HARDEN`: whether the hardened mode is on.
#[inline]
pub fn harden() -> bool {
    HARDEN.load(Ordering::Relaxed)
}

/// `RAMPART_REDZONE` (bytes; 0 = off).
#[inline]
pub fn redzone() -> usize {
    REDZONE.load(Ordering::Relaxed)
}

/// `RAMPART_QUARANTINE` in bytes, if set.
pub fn quarantine() -> Option<usize> {
    let q = QUARANTINE.load(Ordering::Relaxed);
    (q != usize::MAX).then_some(q)
}

/// Whether guard pages are made with `mprotect` even where the advice works.
pub fn guard_mprotect() -> bool {
    GUARD_MPROTECT.load(Ordering::Relaxed)
}

/// The longest `RAMPART_HEAPMAP` path kept, its terminating NUL included (Linux's
/// `PATH_MAX`).
pub const HEAPMAP_PATH_MAX: usize = 4096;
/// A path option, NUL-terminated, stored once by [`init`] in a fixed buffer (reading the
/// environment must not allocate); empty when unset.
struct PathOption {
    bytes: [AtomicU8; HEAPMAP_PATH_MAX],
    /// Bytes before the NUL; stored after the bytes (release), so a reader that sees a
    /// length sees the path.
    len: AtomicUsize,
}

impl PathOption {
    const fn new() -> Self {
        Self {
            bytes: [const { AtomicU8::new(0) }; HEAPMAP_PATH_MAX],
            len: AtomicUsize::new(0),
        }
    }

    /// The path, copied into `out` (NUL-terminated), or `None` when unset.
    fn get<'a>(&self, out: &'a mut [u8; HEAPMAP_PATH_MAX]) -> Option<&'a CStr> {
        let len = self.len.load(Ordering::Acquire);
        if len == 0 || len >= HEAPMAP_PATH_MAX {
            return None;
        }
        for (o, b) in out.iter_mut().zip(&self.bytes[..len]) {
            *o = b.load(Ordering::Relaxed);
        }
        out[len] = 0;
        CStr::from_bytes_with_nul(&out[..=len]).ok()
    }

    /// Stores `path` (empty: unset). `false` when it is too long to keep (or holds a NUL).
    fn set(&self, path: &[u8]) -> bool {
        if path.len() >= HEAPMAP_PATH_MAX || path.contains(&0) {
            return false;
        }
        self.len.store(0, Ordering::Release);
        for (slot, &b) in self.bytes.iter().zip(path) {
            slot.store(b, Ordering::Relaxed);
        }
        self.bytes[path.len()].store(0, Ordering::Relaxed);
        self.len.store(path.len(), Ordering::Release);
        true
    }
}

/// `RAMPART_HEAPMAP`: where the heap map (an SVG picture of every chunk, see `heapmap`) is
/// written at exit. Costs nothing until exit; the walk then holds the page lock while the
/// file is written.
static HEAPMAP_PATH: PathOption = PathOption::new();

/// `RAMPART_PROFILE`: `off` (0), `heap` (1: a sampled heap profile written at exit) or
/// `leaks` (2: the same, plus a report at exit of the sampled blocks never freed). Answers
/// "what holds my memory?" and "who leaked it?"; costs a sampled block every
/// `RAMPART_PROFILE_RATE` bytes on average (a stack walk and a page of its own), nothing on
/// the fast path (its countdown then counts bytes instead of allocations).
static PROFILE: AtomicU8 = AtomicU8::new(0);
/// `RAMPART_PROFILE_RATE`: mean bytes allocated between two profile samples (1: every
/// allocation, an exact profile).
static PROFILE_RATE: AtomicU64 = AtomicU64::new(DEFAULT_PROFILE_RATE);
/// `RAMPART_PROFILE_OUT`: where the profile is written at exit (`%p` becomes the process
/// id); [`DEFAULT_PROFILE_OUT`] when unset.
static PROFILE_OUT: PathOption = PathOption::new();
/// `RAMPART_PROFILE_SIGNAL`: a signal number on which the profile is written (to the
/// `RAMPART_PROFILE_OUT` path with `.1`, `.2`, ... appended); 0: none.
static PROFILE_SIGNAL: AtomicU8 = AtomicU8::new(0);
/// `RAMPART_PROFILE_LEAK_EXITCODE`: with `leaks`, the exit status of a process that leaked
/// (like LeakSanitizer's `exitcode`); 0: the program's own status.
static PROFILE_LEAK_EXITCODE: AtomicU8 = AtomicU8::new(0);

/// The default of `RAMPART_PROFILE_RATE` (512 KiB, as tcmalloc's and jemalloc's).
pub const DEFAULT_PROFILE_RATE: u64 = 512 << 10;
/// The default of `RAMPART_PROFILE_OUT`: in the current directory.
pub const DEFAULT_PROFILE_OUT: &str = "rampart-%p.prof";

/// What `RAMPART_PROFILE` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileMode {
    /// No profiling.
    Off,
    /// A sampled heap profile, written at exit.
    Heap,
    /// The profile, and a leak report at exit.
    Leaks,
}

/// `RAMPART_PROFILE`.
pub fn profile_mode() -> ProfileMode {
    match PROFILE.load(Ordering::Relaxed) {
        0 => ProfileMode::Off,
        1 => ProfileMode::Heap,
        _ => ProfileMode::Leaks,
    }
}

/// `RAMPART_PROFILE_RATE`.
pub fn profile_rate() -> u64 {
    PROFILE_RATE.load(Ordering::Relaxed)
}

/// The `RAMPART_PROFILE_OUT` path (or its default), copied into `out`.
pub fn profile_out(out: &mut [u8; HEAPMAP_PATH_MAX]) -> &CStr {
    if PROFILE_OUT.get(out).is_none() {
        let d = DEFAULT_PROFILE_OUT.as_bytes();
        out[..d.len()].copy_from_slice(d);
        out[d.len()] = 0;
    }
    CStr::from_bytes_until_nul(&out[..]).unwrap_or(c"rampart.prof")
}

/// `RAMPART_PROFILE_SIGNAL` (0: none).
pub fn profile_signal() -> i32 {
    i32::from(PROFILE_SIGNAL.load(Ordering::Relaxed))
}

/// `RAMPART_PROFILE_LEAK_EXITCODE` (0: off).
pub fn profile_leak_exitcode() -> i32 {
    i32::from(PROFILE_LEAK_EXITCODE.load(Ordering::Relaxed))
}

/// The default purge delay (see the README's Performance section for the measurement).
pub const DEFAULT_PURGE_DELAY_MS: u64 = 10;

/// Whether the environment has been read.
static READ: AtomicBool = AtomicBool::new(false);

/// Whether statistics are printed at exit.
pub fn stats_at_exit() -> bool {
    STATS.load(Ordering::Relaxed)
}

/// Whether chunks are advised to use transparent huge pages.
#[inline]
pub fn hugepage() -> bool {
    HUGEPAGE.load(Ordering::Relaxed)
}

/// The purge delay in milliseconds.
#[inline]
pub fn purge_delay_ms() -> u64 {
    PURGE_DELAY_MS.load(Ordering::Relaxed)
}

/// Whether the background purger may run.
pub fn purge_thread() -> bool {
    PURGE_THREAD.load(Ordering::Relaxed)
}

/// Whether start-up reports are wanted.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// The `RAMPART_HEAPMAP` path, copied into `out` (NUL-terminated), or `None` when no heap
/// map is wanted at exit.
pub fn heapmap_path(out: &mut [u8; HEAPMAP_PATH_MAX]) -> Option<&CStr> {
    HEAPMAP_PATH.get(out)
}

/// Reads the options from the environment block, once; later calls do nothing. Safe to call
/// before libc has set `environ` up (nothing is read then, and a later call reads it).
/// Returns whether this call read them.
pub fn init() -> bool {
    if !crate::os::environment_ready() || READ.swap(true, Ordering::AcqRel) {
        return false;
    }
    crate::os::for_each_env(|entry| {
        if entry.starts_with(b"RAMPART_") {
            apply(entry);
        }
    });
    if harden() {
        if !REDZONE_SET.load(Ordering::Relaxed) {
            REDZONE.store(1, Ordering::Relaxed);
        }
        if !GUARD_SET.load(Ordering::Relaxed) {
            GUARD.store(1, Ordering::Relaxed);
        }
    }
    if verbose() {
        let mut line = Line::new();
        line.str("rampart: options: RAMPART_STATS=")
            .dec(stats_at_exit() as u64)
            .str(" RAMPART_PURGE_DELAY_MS=")
            .dec(purge_delay_ms())
            .str(" RAMPART_PURGE_THREAD=")
            .dec(purge_thread() as u64)
            .str(" RAMPART_HUGEPAGE=")
            .dec(hugepage() as u64)
            .str(" RAMPART_GUARD=")
            .str(match guard_mode() {
                GuardMode::Off => "off",
                GuardMode::Sample => "sample",
                GuardMode::All => "all",
            })
            .str(" RAMPART_GUARD_SAMPLE=")
            .dec(guard_sample())
            .str(" RAMPART_REDZONE=")
            .dec(redzone() as u64)
            .str(" RAMPART_QUARANTINE=");
        match quarantine() {
            Some(q) => line.dec(q as u64),
            None => line.str("default"),
        };
        if guard_mprotect() {
            line.str(" RAMPART_GUARD_MPROTECT=1");
        }
        if harden() {
            line.str(" RAMPART_HARDEN=1");
        }
        if profile_mode() != ProfileMode::Off {
            line.str(" RAMPART_PROFILE=")
                .str(if profile_mode() == ProfileMode::Heap {
                    "heap"
                } else {
                    "leaks"
                })
                .str(" RAMPART_PROFILE_RATE=")
                .dec(profile_rate());
        }
        line.str(" RAMPART_VERBOSE=1");
        let mut path = [0u8; HEAPMAP_PATH_MAX];
        if let Some(p) = heapmap_path(&mut path) {
            line.str(" RAMPART_HEAPMAP=")
                .str(core::str::from_utf8(p.to_bytes()).unwrap_or("(not UTF-8)"));
        }
        line.emit();
    }
    true
}

/// Applies one `RAMPART_NAME=value` entry.
fn apply(entry: &[u8]) {
    let (name, value) = match entry.iter().position(|&b| b == b'=') {
        Some(i) => (&entry[..i], &entry[i + 1..]),
        None => (entry, &b""[..]),
    };
    let flag = match value {
        b"1" | b"on" | b"yes" | b"true" => Some(true),
        b"0" | b"off" | b"no" | b"false" | b"" => Some(false),
        _ => None,
    };
    match name {
        b"RAMPART_STATS"
        | b"RAMPART_VERBOSE"
        | b"RAMPART_HUGEPAGE"
        | b"RAMPART_GUARD_MPROTECT"
        | b"RAMPART_HARDEN"
        | b"RAMPART_PURGE_THREAD" => {
            let target = match name {
                b"RAMPART_STATS" => &STATS,
                b"RAMPART_HARDEN" => &HARDEN,
                b"RAMPART_VERBOSE" => &VERBOSE,
                b"RAMPART_HUGEPAGE" => &HUGEPAGE,
                b"RAMPART_PURGE_THREAD" => &PURGE_THREAD,
                _ => &GUARD_MPROTECT,
            };
            match flag {
                Some(on) => target.store(on, Ordering::Relaxed),
                None => warn(name, "bad value (expected 1 or 0); ignored"),
            }
        }
        b"RAMPART_PURGE_DELAY_MS" => match parse_u64(value) {
            Some(ms) if ms <= 3_600_000 => PURGE_DELAY_MS.store(ms, Ordering::Relaxed),
            _ => warn(
                name,
                "bad value (expected milliseconds, 0 to 3600000); ignored",
            ),
        },
        b"RAMPART_HEAPMAP" => {
            if !HEAPMAP_PATH.set(value) {
                warn(name, "path too long (4095 bytes at most); ignored");
            }
        }
        b"RAMPART_PROFILE_OUT" => {
            if !PROFILE_OUT.set(value) {
                warn(name, "path too long (4095 bytes at most); ignored");
            }
        }
        b"RAMPART_PROFILE" => match value {
            b"off" | b"0" => PROFILE.store(0, Ordering::Relaxed),
            b"heap" | b"1" => PROFILE.store(1, Ordering::Relaxed),
            b"leaks" => PROFILE.store(2, Ordering::Relaxed),
            _ => warn(name, "bad value (expected off, heap or leaks); ignored"),
        },
        b"RAMPART_PROFILE_RATE" => match parse_u64(value) {
            Some(n) if (1..=1 << 40).contains(&n) => PROFILE_RATE.store(n, Ordering::Relaxed),
            _ => warn(name, "bad value (expected bytes, 1 to 2^40); ignored"),
        },
        b"RAMPART_PROFILE_SIGNAL" => match parse_u64(value) {
            Some(n) if (1..=64).contains(&n) && ![9, 11, 19].contains(&n) => {
                PROFILE_SIGNAL.store(n as u8, Ordering::Relaxed)
            }
            _ => warn(
                name,
                "bad value (expected a signal number, 1 to 64, not SIGKILL, SIGSEGV or SIGSTOP); ignored",
            ),
        },
        b"RAMPART_PROFILE_LEAK_EXITCODE" => match parse_u64(value) {
            Some(n) if n <= 255 => PROFILE_LEAK_EXITCODE.store(n as u8, Ordering::Relaxed),
            _ => warn(name, "bad value (expected an exit status, 0 to 255); ignored"),
        },
        b"RAMPART_GUARD" => {
            let mode = match value {
                b"off" | b"0" => Some(0),
                b"sample" => Some(1),
                b"all" => Some(2),
                _ => None,
            };
            match mode {
                Some(m) => {
                    GUARD.store(m, Ordering::Relaxed);
                    GUARD_SET.store(true, Ordering::Relaxed);
                }
                None => warn(name, "bad value (expected off, sample or all); ignored"),
            }
        }
        b"RAMPART_GUARD_SAMPLE" => match parse_u64(value) {
            Some(n) if (1..=1 << 32).contains(&n) => GUARD_SAMPLE.store(n, Ordering::Relaxed),
            _ => warn(
                name,
                "bad value (expected a number, 1 to 4294967296); ignored",
            ),
        },
        b"RAMPART_REDZONE" => match parse_u64(value) {
            Some(n) if n <= MAX_REDZONE as u64 => {
                REDZONE.store(n as usize, Ordering::Relaxed);
                REDZONE_SET.store(true, Ordering::Relaxed);
            }
            _ => warn(name, "bad value (expected bytes, 0 to 4096); ignored"),
        },
        b"RAMPART_QUARANTINE" => match parse_u64(value) {
            Some(n) if n < usize::MAX as u64 => QUARANTINE.store(n as usize, Ordering::Relaxed),
            _ => warn(name, "bad value (expected bytes); ignored"),
        },
        _ => warn(name, "is not a rampart option; ignored"),
    }
}

/// A decimal number, or `None`.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

fn warn(name: &[u8], what: &str) {
    let mut line = Line::new();
    line.str("rampart: warning: ")
        .str(core::str::from_utf8(name).unwrap_or("RAMPART_?"))
        .str(" ")
        .str(what);
    line.emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"1500"), Some(1500));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"10ms"), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
    }

    #[test]
    fn heapmap_path_is_kept_whole_or_not_at_all() {
        let mut buf = [0u8; HEAPMAP_PATH_MAX];
        apply(b"RAMPART_HEAPMAP=/tmp/heap.svg");
        assert_eq!(
            heapmap_path(&mut buf).map(CStr::to_bytes),
            Some(&b"/tmp/heap.svg"[..])
        );
        // Too long: warned about and ignored, the earlier value stays.
        let mut long = b"RAMPART_HEAPMAP=".to_vec();
        long.resize(long.len() + HEAPMAP_PATH_MAX, b'a');
        apply(&long);
        assert_eq!(
            heapmap_path(&mut buf).map(CStr::to_bytes),
            Some(&b"/tmp/heap.svg"[..])
        );
        // The longest path kept.
        long.truncate(long.len() - 1);
        apply(&long);
        assert_eq!(
            heapmap_path(&mut buf).map(|p| p.to_bytes().len()),
            Some(HEAPMAP_PATH_MAX - 1)
        );
        apply(b"RAMPART_HEAPMAP=");
        assert_eq!(heapmap_path(&mut buf), None, "empty: no map");
    }
}
