//! The guard modes, error by error. `tests/c/memerr.c` makes one memory error per run
//! (overflows, an underflow, uses after free, double and invalid frees, sized frees with a
//! wrong size, accesses to a 0-byte block, a redzone overwrite) on a block of one of the test
//! sizes, preloaded on `librampart.so` in each mode:
//!
//! | mode | environment |
//! |---|---|
//! | `off` | no `RAMPART_*` variable (the default) |
//! | `redzone` | `RAMPART_REDZONE=16` |
//! | `sample` | `RAMPART_GUARD=sample RAMPART_GUARD_SAMPLE=1` (every eligible block) |
//! | `all` | `RAMPART_GUARD=all` |
//! | `harden` | `RAMPART_HARDEN=1 RAMPART_GUARD=off` (the hardened mode; its sampled guarding is `sample`'s, off here so which small block is guarded is not left to chance) |
//!
//! [`expected`] is the table, written from the contract in docs/architecture.md ("Guard
//! modes and error reports"): what each mode must make of each error on each size. A fault on the access
//! itself (`SIGSEGV`, the report's first line naming kind, read or write, address, offset,
//! block size and block address, all checked against the address malloc returned); an error
//! found on free (`SIGABRT`, the kind, and the offset and size where the contract gives
//! them); or not detected (exit 3), where the mode does not look. The "not detected" rows
//! are asserted too: they pin down what each mode costs nothing for, and a change in them is
//! a change of contract. Each mode is one test; a failure lists every row that failed, with
//! the program's whole stderr.
//!
//! Also checked: valid use (every byte `malloc_usable_size` grants written, realloc, calloc,
//! aligned blocks) raises no report in any mode; a guarded block is placed as near its guard
//! page as malloc's 16-byte alignment allows and its usable size is the request; the report
//! of a use after free in a guard mode has the allocation's and the free's stacks; a
//! program's own SIGSEGV handler still gets the faults in its own PROT_NONE pages.
//!
//! Built with gcc once per run (`c_support`); `librampart.so` must be built first
//! (`cargo build --release -p rampart-ffi`).

mod c_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use c_support::{
    clear_rampart_env, gcc, lib_a, no_core_dumps, parse_fault_line, preloaded, run, Outcome,
    SIGABRT,
};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

const SIGSEGV: i32 = 11;

/// The test sizes: a tiny block and a small one (a guarded one ends 3 and 8 bytes short of
/// its guard page, see [`tail_gap`]), one page (a guarded one fills its page, so its
/// underflow faults), a block of a medium class (above the sampling limit, so `sample`
/// leaves it alone; a multiple of 16, so a guarded one touches its guard page), and a page
/// run (above the size classes' 1 MiB).
const TINY: usize = 13;
const SMALL: usize = 200;
const PAGE: usize = 4096;
const LARGE: usize = 100_000;
const RUN: usize = 1_500_000;
const SIZES: [usize; 5] = [TINY, SMALL, PAGE, LARGE, RUN];

/// `sample` guards only blocks up to this size.
const SAMPLE_LIMIT: usize = 65_536;
/// The largest small class: blocks up to it get redzones (larger ones are page runs in the
/// redzone mode).
const SMALL_LIMIT: usize = 32 * 1024;
/// The largest size class (medium classes above the small ones): blocks of a class are
/// blocks of a slab span, whose default-mode double free is reported as such.
const CLASS_LIMIT: usize = 1 << 20;
/// `RAMPART_REDZONE` in the `redzone` mode.
const REDZONE: usize = 16;

/// A run is a few milliseconds; this only stops a hung one (a deadlocked fault handler,
/// say) from holding the whole test.
const ROW_WATCHDOG: Duration = Duration::from_secs(30);

const OVERFLOW: &str = "heap-buffer-overflow";
const UNDERFLOW: &str = "heap-buffer-underflow";
const USE_AFTER_FREE: &str = "use-after-free";
const DOUBLE_FREE: &str = "double-free";
const INVALID_FREE: &str = "invalid-free";
const REDZONE_OVERWRITTEN: &str = "redzone-overwritten";

/// memerr's cases, and whether each runs on every test size (`false`: once, size 0, which
/// the case ignores or, for the `zero-*` cases, is the size).
const CASES: &[(&str, bool)] = &[
    ("ok", true),
    ("usable", true),
    ("own-handler", false),
    ("own-handler-early", false),
    ("overflow1-write", true),
    ("overflow1-read", true),
    ("overflow8-write", true),
    ("redzone", true),
    ("underflow-write", true),
    ("zero-read", false),
    ("zero-write", false),
    ("uaf-read", true),
    ("uaf-write", true),
    ("uaf-write-reuse", true),
    ("double-free", true),
    ("double-free-delayed", true),
    ("invalid-free-wild", false),
    ("invalid-free-interior", true),
    ("invalid-free-unaligned", true),
    ("realloc-interior", true),
    ("usable-size-interior", true),
    ("free-sized-mismatch", true),
    ("delete-sized-mismatch", true),
    ("exit-while-freeing", false),
    ("zero-aligned", false),
    ("zero-double-free", false),
    ("free-sized-smaller", true),
    ("delete-aligned-sized-mismatch", true),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    Redzone,
    Sample,
    All,
    Harden,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Redzone => "redzone",
            Mode::Sample => "sample",
            Mode::All => "all",
            Mode::Harden => "harden",
        }
    }

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Mode::Off => &[],
            Mode::Redzone => &[("RAMPART_REDZONE", "16")],
            Mode::Sample => &[("RAMPART_GUARD", "sample"), ("RAMPART_GUARD_SAMPLE", "1")],
            Mode::All => &[("RAMPART_GUARD", "all")],
            Mode::Harden => &[("RAMPART_HARDEN", "1"), ("RAMPART_GUARD", "off")],
        }
    }

    /// Whether a block of `size` bytes is guarded (right-aligned against a PROT_NONE page,
    /// PROT_NONE and quarantined once freed).
    fn guards(self, size: usize) -> bool {
        match self {
            Mode::All => true,
            Mode::Sample => size <= SAMPLE_LIMIT,
            // Blocks above the small classes, and `malloc(0)`'s, which faults on any access.
            Mode::Harden => size == 0 || size > SMALL_LIMIT,
            Mode::Off | Mode::Redzone => false,
        }
    }

    /// Whether a block of `size` bytes has a redzone (a small block in the `redzone` and
    /// `harden` modes; the hardened mode's redzone is 1 byte).
    fn redzones(self, size: usize) -> bool {
        match self {
            Mode::Redzone => size + REDZONE <= SMALL_LIMIT,
            Mode::Harden => size != 0 && size < SMALL_LIMIT,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Access {
    fn word(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// What a run must end in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Exit 0, no report: valid use.
    Clean,
    /// Exit with this status (from the program's own signal handler), no report.
    Exit(i32),
    /// Exit 3 with memerr's "NOT DETECTED", no report: the mode does not look for this.
    Undetected,
    /// SIGSEGV on the access; the report's first line is exactly
    /// `rampart: KIND: ACCESS at 0xADDR: offset OFFSET from a block of BLOCK bytes at 0xBASE`
    /// with BASE the address malloc returned and ADDR = BASE + OFFSET.
    Fault {
        kind: &'static str,
        access: Access,
        offset: i64,
        block: usize,
    },
    /// SIGABRT; the first line begins `rampart: KIND: ` with one of `kinds`, and says
    /// `offset OFFSET from a block of BLOCK bytes` or `from a block of BLOCK bytes` where
    /// these are given.
    Abort {
        kinds: &'static [&'static str],
        offset: Option<i64>,
        block: Option<usize>,
    },
    /// The program goes on (memerr's "NOT DETECTED"), and the exit check finds the error:
    /// SIGABRT, with a report of `kind` that says `offset OFFSET from a block of BLOCK
    /// bytes` and `(found at exit)`.
    AbortAtExit {
        kind: &'static str,
        offset: i64,
        block: usize,
    },
    /// Where the contract leaves it open (a delayed double free in the unguarded modes):
    /// exit 3, or SIGABRT with one of `kinds`; never another death or a hang.
    UndetectedOrAbort { kinds: &'static [&'static str] },
}

/// The bytes between the end of a guarded C block of `size` bytes and its guard page. The
/// malloc family keeps the ABI's 16-byte alignment in the guard modes (compilers assume it of
/// malloc's blocks, whatever their size: byte-aligned blocks broke Python), so a block whose
/// size is not a multiple of 16 ends short of the guard page; rampart fills the gap with a
/// pattern that it checks when the block is freed (and at exit).
fn tail_gap(size: usize) -> usize {
    size.next_multiple_of(16) - size
}

/// What a guarded block of `size` bytes makes of `len` bytes accessed one by one from
/// offset `from` (at or past its end): a fault on the first byte that reaches the guard page;
/// if none does, a write is found in the tail gap when the block is freed, and a read is not
/// found at all.
fn guarded_overflow(size: usize, from: usize, len: usize, access: Access) -> Expect {
    let guard = size + tail_gap(size);
    if from + len > guard {
        Expect::Fault {
            kind: OVERFLOW,
            access,
            offset: from.max(guard) as i64,
            block: size,
        }
    } else if access == Access::Write {
        Expect::Abort {
            kinds: &[OVERFLOW],
            offset: Some(from as i64),
            block: Some(size),
        }
    } else {
        Expect::Undetected
    }
}

/// The table: what `memerr CASE SIZE` must end in under `mode`.
fn expected(case: &str, size: usize, mode: Mode) -> Expect {
    use Access::{Read, Write};
    use Expect::*;
    let guarded = mode.guards(size);
    let redzoned = mode.redzones(size);
    let fault = |kind, access, offset: usize| Fault {
        kind,
        access,
        offset: offset as i64,
        block: size,
    };
    let abort = |kinds, offset: Option<i64>, block: Option<usize>| Abort {
        kinds,
        offset,
        block,
    };
    // The block size that guarded double and invalid frees name.
    let guarded_size = guarded.then_some(size);
    match case {
        "ok" | "usable" | "exit-while-freeing" | "zero-aligned" => Clean,
        "own-handler" | "own-handler-early" => Exit(42),
        // Past the end: on the guard page at once, or, in a guarded block's tail gap, on
        // free (writes; a read there changes nothing); in the canary on free.
        "overflow1-write" | "zero-write" => {
            if guarded {
                guarded_overflow(size, size, 1, Write)
            } else if redzoned {
                abort(&[REDZONE_OVERWRITTEN], Some(size as i64), Some(size))
            } else {
                Undetected
            }
        }
        "overflow8-write" => {
            if guarded {
                guarded_overflow(size, size, 8, Write)
            } else if redzoned {
                abort(&[REDZONE_OVERWRITTEN], Some(size as i64), Some(size))
            } else {
                Undetected
            }
        }
        "redzone" => {
            if guarded {
                guarded_overflow(size, size + 1, 1, Write)
            } else if redzoned {
                abort(&[REDZONE_OVERWRITTEN], Some(size as i64 + 1), Some(size))
            } else {
                Undetected
            }
        }
        // A read leaves a canary as it was: only the guard page sees it.
        "overflow1-read" | "zero-read" => {
            if guarded {
                guarded_overflow(size, size, 1, Read)
            } else {
                Undetected
            }
        }
        // A guarded block sits at the end of its pages: p[-1] is in its first page's slack
        // (checked on free) unless the block fills whole pages, when it is in the PROT_NONE
        // page before.
        // A redzoned block's p[-1] is the last byte of the block before it in its span (a
        // spacer memerr keeps live), whose trailer is checked when the victim is freed.
        "underflow-write" => {
            if redzoned {
                abort(&[UNDERFLOW], Some(-1), Some(size))
            } else if !guarded {
                Undetected
            } else if size.is_multiple_of(PAGE) {
                Fault {
                    kind: UNDERFLOW,
                    access: Write,
                    offset: -1,
                    block: size,
                }
            } else {
                abort(&[UNDERFLOW], Some(-1), Some(size))
            }
        }
        "uaf-read" => {
            if guarded {
                fault(USE_AFTER_FREE, Read, size - 1)
            } else {
                Undetected
            }
        }
        // A redzoned block's fill is checked at exit too, so the write is found then.
        "uaf-write" => {
            if guarded {
                fault(USE_AFTER_FREE, Write, size - 1)
            } else if redzoned {
                AbortAtExit {
                    kind: USE_AFTER_FREE,
                    offset: size as i64 - 1,
                    block: size,
                }
            } else {
                Undetected
            }
        }
        // The redzone mode fills freed small blocks with a pattern and finds the write when
        // the block is handed out again.
        "uaf-write-reuse" => {
            if guarded {
                fault(USE_AFTER_FREE, Write, size - 1)
            } else if redzoned {
                abort(&[USE_AFTER_FREE], None, None)
            } else {
                Undetected
            }
        }
        // The default mode's check: the block most recently freed in its span (a block of a
        // size class), or free pages / no block at all (a page run).
        "double-free" => {
            let slab = size
                <= if matches!(mode, Mode::Redzone | Mode::Harden) {
                    SMALL_LIMIT
                } else {
                    CLASS_LIMIT
                };
            if guarded || slab {
                abort(&[DOUBLE_FREE], None, guarded_size)
            } else {
                abort(&[DOUBLE_FREE, INVALID_FREE], None, None)
            }
        }
        // A guarded block is quarantined, so its second free is recognised; so is a
        // redzoned block of the hardened mode (its freed mark stays while it waits in the
        // quarantine or in its span's list; an emptied span's pages are free pages).
        // Elsewhere the contract says a delayed double free may go undetected.
        "double-free-delayed" => {
            if guarded {
                abort(&[DOUBLE_FREE], None, Some(size))
            } else if redzoned && mode == Mode::Harden {
                abort(&[DOUBLE_FREE, INVALID_FREE], None, None)
            } else {
                UndetectedOrAbort {
                    kinds: &[DOUBLE_FREE, INVALID_FREE],
                }
            }
        }
        "invalid-free-wild" => abort(&[INVALID_FREE], None, None),
        // Every mode: the block most recently freed in its span, a freed mark, a released
        // guarded slot, or a cleared bit of the hardened mode's zero-size region.
        "zero-double-free" => abort(&[DOUBLE_FREE], None, None),
        "invalid-free-interior"
        | "invalid-free-unaligned"
        | "realloc-interior"
        | "usable-size-interior"
        | "free-sized-mismatch"
        | "delete-sized-mismatch" => abort(&[INVALID_FREE], None, guarded_size),
        // Half the size: a redzoned or guarded block knows its exact size; elsewhere the
        // block's class (or pages) is checked, and half of the tiny size is in its class
        // (16 bytes; with 64-byte alignment, 64).
        "free-sized-smaller" | "delete-aligned-sized-mismatch" => {
            if size == TINY && !guarded && !redzoned {
                Undetected
            } else {
                abort(&[INVALID_FREE], None, guarded_size)
            }
        }
        _ => panic!("no expectation for case {case}"),
    }
}

fn memerr() -> &'static PathBuf {
    static PROG: OnceLock<PathBuf> = OnceLock::new();
    // -O1 (after c_support's -O2): the volatile accesses stay as written.
    PROG.get_or_init(|| gcc("memerr", &["-O1", "tests/c/memerr.c", "-ldl", "-lpthread"]))
}

/// memerr linked statically against `librampart.a`: its own constructors can then run
/// before rampart's start-up.
fn memerr_static() -> &'static PathBuf {
    static PROG: OnceLock<PathBuf> = OnceLock::new();
    PROG.get_or_init(|| {
        let lib = lib_a();
        let args: [&std::ffi::OsStr; 6] = [
            "-O1".as_ref(),
            "tests/c/memerr.c".as_ref(),
            lib.as_os_str(),
            "-lpthread".as_ref(),
            "-ldl".as_ref(),
            "-lm".as_ref(),
        ];
        gcc("memerr-static", &args)
    })
}

/// Runs `memerr CASE SIZE` preloaded in `mode` (inherited `RAMPART_*` variables removed).
fn run_row(case: &str, size: usize, mode: Mode) -> Outcome {
    let mut cmd = preloaded(memerr());
    cmd.arg(case).arg(size.to_string());
    for (k, v) in mode.env() {
        cmd.env(k, v);
    }
    no_core_dumps(&mut cmd);
    run(cmd, ROW_WATCHDOG)
}

/// The address memerr printed for the block concerned (`block 0x... size N` on stdout).
fn printed_block(stdout: &str) -> Option<u64> {
    let line = stdout.lines().rev().find(|l| l.starts_with("block 0x"))?;
    let hex = line.strip_prefix("block 0x")?.split(' ').next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// `rampart:     #I 0xPC WHERE`: one frame of a report's stack.
fn is_frame(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("rampart:     #") else {
        return false;
    };
    let Some((index, rest)) = rest.split_once(' ') else {
        return false;
    };
    let Some((pc, place)) = rest.strip_prefix("0x").and_then(|r| r.split_once(' ')) else {
        return false;
    };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && !pc.is_empty()
        && pc.bytes().all(|b| b.is_ascii_hexdigit())
        && !place.trim().is_empty()
}

/// A use-after-free report's stacks: `rampart:   allocated by thread TID:` then at least one
/// frame, and after it `rampart:   freed by thread TID:` then at least one frame.
fn check_stacks(stderr: &str) -> Result<(), String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let section = |what: &str, from: usize| -> Result<usize, String> {
        let prefix = format!("rampart:   {what} by thread ");
        let at = lines
            .iter()
            .skip(from)
            .position(|l| {
                l.strip_prefix(&prefix)
                    .and_then(|t| t.strip_suffix(':'))
                    .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|i| i + from)
            .ok_or_else(|| format!("no line `{prefix}TID:` in the report"))?;
        if !lines.get(at + 1).is_some_and(|l| is_frame(l)) {
            return Err(format!(
                "the `{what} by` section has no frame line `rampart:     #0 0xPC WHERE`"
            ));
        }
        Ok(at)
    };
    let allocated = section("allocated", 0)?;
    section("freed", allocated + 1)?;
    Ok(())
}

/// Checks one run against its expectation.
fn check(expect: &Expect, out: &Outcome) -> Result<(), String> {
    if out.timed_out {
        return Err("hung: killed by the watchdog".into());
    }
    let first = out
        .stderr
        .lines()
        .find(|l| l.starts_with("rampart:"))
        .unwrap_or("");
    let no_report = || {
        if first.is_empty() {
            Ok(())
        } else {
            Err(format!("unexpected rampart output: {first:?}"))
        }
    };
    let first_line = out.stderr.lines().next().unwrap_or("");
    match *expect {
        Expect::Clean => {
            if !out.status.success() {
                return Err(format!("expected exit 0, got {}", out.status));
            }
            no_report()
        }
        Expect::Exit(code) => {
            if out.status.code() != Some(code) {
                return Err(format!("expected exit {code}, got {}", out.status));
            }
            no_report()
        }
        Expect::Undetected => {
            if out.status.code() != Some(3) || !out.stderr.contains("memerr: NOT DETECTED") {
                return Err(format!(
                    "expected exit 3 (not detected in this mode), got {}",
                    out.status
                ));
            }
            no_report()
        }
        Expect::Fault {
            kind,
            access,
            offset,
            block,
        } => {
            if out.signal() != Some(SIGSEGV) {
                return Err(format!(
                    "expected death by SIGSEGV (a fault in a guard page), got {}",
                    out.status
                ));
            }
            if first.is_empty() {
                return Err(
                    "no rampart report on stderr: the fault went to another handler \
                            or to the default action"
                        .into(),
                );
            }
            let f = parse_fault_line(first_line).ok_or_else(|| {
                format!(
                    "first stderr line {first_line:?} is not `rampart: KIND: read|write at \
                     0xADDR: offset N from a block of S bytes at 0xBASE`"
                )
            })?;
            let want = format!("{kind} {} offset {offset} block {block}", access.word());
            let got = format!(
                "{} {} offset {} block {}",
                f.kind, f.access, f.offset, f.block
            );
            if want != got {
                return Err(format!("expected {want}; the report says {got}"));
            }
            let p = printed_block(&out.stdout).ok_or("memerr printed no block address")?;
            if f.base != p {
                return Err(format!(
                    "the report's block address {:#x} is not malloc's {p:#x}",
                    f.base
                ));
            }
            if f.addr != f.base.wrapping_add(f.offset as u64) {
                return Err(format!(
                    "the report's address {:#x} is not the block's {:#x} + offset {}",
                    f.addr, f.base, f.offset
                ));
            }
            if let Some(l) = out
                .stderr
                .lines()
                .skip(1)
                .find(|l| !l.starts_with("rampart:   "))
            {
                return Err(format!(
                    "a line after the report's first does not start `rampart:   `: {l:?}"
                ));
            }
            Ok(())
        }
        Expect::Abort {
            kinds,
            offset,
            block,
        } => {
            if out.signal() != Some(SIGABRT) {
                return Err(format!(
                    "expected death by SIGABRT (an error found on free), got {}",
                    out.status
                ));
            }
            if !kinds
                .iter()
                .any(|k| first_line.starts_with(&format!("rampart: {k}: ")))
            {
                return Err(format!(
                    "first stderr line {first_line:?} does not begin `rampart: KIND: ` with \
                     KIND one of {kinds:?}"
                ));
            }
            let detail = match (offset, block) {
                (Some(o), Some(b)) => Some(format!("offset {o} from a block of {b} bytes")),
                (None, Some(b)) => Some(format!("from a block of {b} bytes")),
                (Some(o), None) => Some(format!("offset {o} ")),
                (None, None) => None,
            };
            match detail {
                Some(d) if !first_line.contains(&d) => {
                    Err(format!("the report's first line does not say {d:?}"))
                }
                _ => Ok(()),
            }
        }
        Expect::AbortAtExit {
            kind,
            offset,
            block,
        } => {
            let want = [
                format!("rampart: {kind}: "),
                format!("offset {offset} from a block of {block} bytes"),
                "(found at exit)".to_string(),
            ];
            if out.signal() != Some(SIGABRT) || !out.stderr.contains("memerr: NOT DETECTED") {
                return Err(format!(
                    "expected the program to go on, then death by SIGABRT at exit, got {}",
                    out.status
                ));
            }
            if !first.starts_with(&want[0]) || !want[1..].iter().all(|w| first.contains(w)) {
                return Err(format!("the exit report {first:?} does not say {want:?}"));
            }
            Ok(())
        }
        Expect::UndetectedOrAbort { kinds } => {
            if out.status.code() == Some(3) {
                return no_report();
            }
            if out.signal() == Some(SIGABRT)
                && kinds
                    .iter()
                    .any(|k| first_line.starts_with(&format!("rampart: {k}: ")))
            {
                return Ok(());
            }
            Err(format!(
                "expected exit 3 or death by SIGABRT after a report of one of {kinds:?}, got {}",
                out.status
            ))
        }
    }
}

/// The checks beyond the table: a guarded block's placement and usable size, and the stacks
/// of a guarded use-after-free report.
fn check_extra(case: &str, size: usize, mode: Mode, out: &Outcome) -> Result<(), String> {
    // Reports of the exit check print no stack (see `report::AT_EXIT`).
    if out.signal() == Some(SIGABRT)
        && out.stderr.contains("rampart: ")
        && !out.stderr.contains("(found at exit)")
    {
        check_call_stack(case, mode, out)?;
    }
    if case == "usable" {
        // "usable N block 0xP size S"
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("usable "))
            .ok_or("no `usable` line on stdout")?;
        let w: Vec<&str> = line.split(' ').collect();
        let usable: usize = w
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad usable line")?;
        let p = w
            .get(3)
            .and_then(|s| s.strip_prefix("0x"))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or("bad usable line")?;
        if mode.guards(size) {
            if usable != size {
                return Err(format!(
                    "malloc_usable_size of a guarded block of {size} bytes is {usable}, not \
                     the request"
                ));
            }
            let gap = tail_gap(size) as u64;
            if !p.is_multiple_of(16) || !(p + size as u64 + gap).is_multiple_of(PAGE as u64) {
                return Err(format!(
                    "the guarded block {p:#x} of {size} bytes is not 16-byte aligned {gap} \
                     bytes before a page boundary (its guard page)"
                ));
            }
        } else if usable < size {
            return Err(format!("malloc_usable_size {usable} < the request {size}"));
        }
    }
    // The hardened mode guards its large blocks without recording stacks (a stack walk costs
    // microseconds per block).
    if case.starts_with("uaf-") && mode.guards(size) && mode != Mode::Harden {
        check_stacks(&out.stderr)?;
    }
    Ok(())
}

/// The entry point memerr's `case` calls when the error is found on a call. The hardened
/// mode finds a write to a freed small block when the block leaves its quarantine, on a
/// free, rather than when it is reused.
fn verb(case: &str, mode: Mode) -> &'static str {
    match case {
        "uaf-write-reuse" if mode == Mode::Harden => "free",
        "realloc-interior" => "realloc",
        "usable-size-interior" => "malloc_usable_size",
        "free-sized-mismatch" | "free-sized-smaller" => "free_sized",
        "delete-sized-mismatch" | "delete-aligned-sized-mismatch" => "operator delete",
        "uaf-write-reuse" => "malloc",
        _ => "free",
    }
}

/// Every report of an error found on a call, in every mode, names the call and prints its
/// stack; where the pointer lies inside a block of ours, the first line places it against
/// the block (`offset N from a block of S bytes at 0x…`), in the modes without a guarded
/// record too.
fn check_call_stack(case: &str, mode: Mode, out: &Outcome) -> Result<(), String> {
    let want = format!("rampart:   {} called by thread ", verb(case, mode));
    // A guarded block's overflow into its slack is found by its free, whose stack is the
    // record's "freed by" one.
    let freed =
        verb(case, mode) == "free" && out.stderr.contains("(found when the block was freed)");
    let call_line =
        |l: &str| l.starts_with(&want) || (freed && l.starts_with("rampart:   freed by thread "));
    let mut lines = out.stderr.lines().skip_while(|l| !call_line(l));
    if lines.next().is_none() {
        return Err(format!("no {want:?} line after the report"));
    }
    if !lines
        .next()
        .is_some_and(|l| l.starts_with("rampart:     #0 0x"))
    {
        return Err("the call's stack has no frame #0".into());
    }
    let interior = matches!(
        case,
        "invalid-free-interior" | "realloc-interior" | "usable-size-interior"
    );
    if interior {
        // "the call gets 0xP, N bytes in"
        let off = out
            .stdout
            .lines()
            .find_map(|l| l.split(", ").nth(1)?.strip_suffix(" bytes in"))
            .ok_or("no `the call gets` line on stdout")?;
        let first = out.stderr.lines().next().unwrap_or("");
        if !first.contains(&format!(": offset {off} from a block of ")) {
            return Err(format!(
                "the report's first line does not place the pointer {off} bytes into its block: {first:?}"
            ));
        }
    }
    Ok(())
}

/// Runs every row of `mode`, then fails with all the rows that did not go as the table says.
fn run_mode(mode: Mode) {
    let mut rows = 0;
    let mut failed = Vec::new();
    let mut details = String::new();
    for &(case, sized) in CASES {
        let sizes: &[usize] = if sized { &SIZES } else { &[0] };
        for &size in sizes {
            rows += 1;
            let expect = expected(case, size, mode);
            let out = run_row(case, size, mode);
            let verdict = check(&expect, &out).and_then(|()| check_extra(case, size, mode, &out));
            let row = format!("{} {case} {size}", mode.name());
            match verdict {
                Ok(()) => eprintln!("{row}: {expect:?}: ok"),
                Err(why) => {
                    eprintln!("{row}: {expect:?}: FAILED: {why}");
                    details.push_str(&format!(
                        "==== {row}\nexpected {expect:?}\nfailed: {why}\ncommand: {}\n\
                         status: {} after {:.1?}\n--- stdout ---\n{}\n--- stderr (whole) \
                         ---\n{}\n",
                        out.command, out.status, out.elapsed, out.stdout, out.stderr
                    ));
                    failed.push(row);
                }
            }
        }
    }
    eprintln!("mode {}: {rows} rows, {} failed", mode.name(), failed.len());
    assert!(
        failed.is_empty(),
        "mode {}: {} of {rows} rows failed: {}\n\n{details}",
        mode.name(),
        failed.len(),
        failed.join(", ")
    );
}

#[test]
fn mode_off() {
    run_mode(Mode::Off);
}

#[test]
fn mode_redzone() {
    run_mode(Mode::Redzone);
}

#[test]
fn mode_sample() {
    run_mode(Mode::Sample);
}

#[test]
fn mode_all() {
    run_mode(Mode::All);
}

#[test]
fn mode_harden() {
    run_mode(Mode::Harden);
}

/// A SIGSEGV handler the program installed before rampart's is where the faults that are not
/// rampart's go (docs/architecture.md: "Faults that are not rampart's go to the handler
/// that was installed before rampart's"). Preloaded, rampart's start-up runs before any of the program's
/// code, so the table's own-handler rows only show that rampart does not take the signal
/// back later; here memerr is linked statically and installs its handler from a constructor
/// that runs before rampart's start-up, which (in the guard modes) installs its own over it
/// — memerr checks that it did — and must pass the fault in memerr's own PROT_NONE page on.
/// The same static build then shows that rampart's handler there is a working one.
#[test]
fn own_handler_installed_before_rampart() {
    let mut failed = Vec::new();
    let mut runs: Vec<(&str, usize, Mode)> = [Mode::Off, Mode::Sample, Mode::All]
        .iter()
        .map(|&m| ("own-handler-early", 0, m))
        .collect();
    runs.extend([
        ("overflow1-write", PAGE, Mode::All),
        ("uaf-read", TINY, Mode::All),
        ("overflow1-write", PAGE, Mode::Sample),
    ]);
    for (case, size, mode) in runs {
        let mut cmd = Command::new(memerr_static());
        cmd.env_remove("LD_PRELOAD").arg(case).arg(size.to_string());
        clear_rampart_env(&mut cmd);
        for (k, v) in mode.env() {
            cmd.env(k, v);
        }
        no_core_dumps(&mut cmd);
        let out = run(cmd, ROW_WATCHDOG);
        let expect = expected(case, size, mode);
        let mut verdict = check(&expect, &out);
        if verdict.is_ok() && case == "own-handler-early" {
            let whose = if mode == Mode::Off { "own" } else { "another" };
            let want = format!("SIGSEGV handler: {whose}");
            if !out.stdout.contains(&want) {
                verdict = Err(format!(
                    "memerr did not say {want:?} (whether rampart installed its handler over \
                     the program's)"
                ));
            }
        }
        let row = format!("static {} {case} {size}", mode.name());
        match verdict {
            Ok(()) => eprintln!("{row}: {expect:?}: ok"),
            Err(why) => failed.push(format!(
                "==== {row}\nexpected {expect:?}\nfailed: {why}\ncommand: {}\nstatus: {}\n\
                 --- stdout ---\n{}\n--- stderr (whole) ---\n{}",
                out.command, out.status, out.stdout, out.stderr
            )),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// The number after `label` in a statistics line (`guarded blocks          allocated N`).
fn stat_after(stderr: &str, line_start: &str, label: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with(line_start))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// No false alarms: programs that check their own data (threads handing blocks to each
/// other, `fork` while threads allocate, 10,000 short-lived threads, Python) run clean under
/// every checking mode, and the guard modes really guarded some of their blocks (their
/// statistics say how many). A mode that reported a correct program, or hung it, fails here.
#[test]
fn correct_programs_run_clean_in_every_mode() {
    let fork = gcc("fork", &["tests/c/fork.c", "-lpthread"]);
    let churn = gcc("churn", &["tests/c/churn.c", "-lpthread"]);
    let script = "import json, threading\n\
        def work(n):\n    d = {str(i): [i] * (i % 40) for i in range(n)}\n    \
        assert json.loads(json.dumps(d)) == d\n\
        ts = [threading.Thread(target=work, args=(20000,)) for _ in range(4)]\n\
        [t.start() for t in ts]; [t.join() for t in ts]\nprint('python ok')";
    let modes: [(&str, &[(&str, &str)]); 5] = [
        (
            "sample",
            &[("RAMPART_GUARD", "sample"), ("RAMPART_GUARD_SAMPLE", "10")],
        ),
        // The hardened mode as it comes (its own sampling on): guarded blocks are its large
        // ones and one small block in 1000.
        ("harden", &[("RAMPART_HARDEN", "1")]),
        ("all", &[("RAMPART_GUARD", "all")]),
        ("redzone", &[("RAMPART_REDZONE", "16")]),
        (
            "sample+redzone",
            &[("RAMPART_GUARD", "sample"), ("RAMPART_REDZONE", "8")],
        ),
    ];
    let mut failures = Vec::new();
    for (mode, vars) in modes {
        let programs: Vec<(&str, PathBuf, Vec<&str>)> = vec![
            ("fork", fork.clone(), vec![]),
            ("churn", churn.clone(), vec![]),
            (
                "python3",
                PathBuf::from("/usr/bin/python3"),
                vec!["-c", script],
            ),
        ];
        for (name, prog, args) in programs {
            // fork.c's 8 threads of large blocks take minutes when every block is guarded;
            // `all` runs the other two.
            if mode == "all" && name == "fork" {
                continue;
            }
            let mut cmd = preloaded(&prog);
            cmd.args(&args).env("RAMPART_STATS", "1");
            for (k, v) in vars {
                cmd.env(k, v);
            }
            let out = run(cmd, Duration::from_secs(240));
            let reports: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("rampart: ") && !l.starts_with("rampart: statistics"))
                .collect();
            let guarded = stat_after(&out.stderr, "guarded blocks", "allocated");
            let wants_guarded = mode != "redzone";
            if !out.status.success() || out.timed_out || !reports.is_empty() {
                failures.push(format!("{mode} {name}: not clean\n{}", out.describe()));
            } else if wants_guarded && guarded.is_none_or(|n| n == 0) {
                failures.push(format!(
                    "{mode} {name}: no guarded blocks in the statistics\n{}",
                    out.describe()
                ));
            } else {
                eprintln!(
                    "{mode} {name}: clean in {:.1?}, guarded blocks {guarded:?}",
                    out.elapsed
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

const ALL_MODES: [Mode; 5] = [
    Mode::Off,
    Mode::Redzone,
    Mode::Sample,
    Mode::All,
    Mode::Harden,
];

/// A SIGSEGV that was sent (`raise`), not raised by a fault, still ends the program in every
/// mode: rampart's handler passes it to the default action rather than returning (which
/// would swallow it) and prints no report for it.
#[test]
fn a_sent_sigsegv_still_ends_the_program() {
    for mode in ALL_MODES {
        let out = run_row("raise", 16, mode);
        assert_eq!(
            out.signal(),
            Some(SIGSEGV),
            "{}: {}",
            mode.name(),
            out.describe()
        );
        assert!(
            !out.stderr.lines().any(|l| l.starts_with("rampart: ")),
            "{}: a report for a signal that was not a fault\n{}",
            mode.name(),
            out.describe()
        );
    }
}

/// `fork` while three threads allocate, 20 times, in every mode: each child allocates and
/// exits 0 (a lock left held across the fork, such as the guard pool's, hangs the child
/// until its alarm kills it). In `all` mode each thread's very first allocation is guarded,
/// which must still set the thread's heap up (and the fork handlers with it).
#[test]
fn fork_while_threads_allocate_in_every_mode() {
    for mode in ALL_MODES {
        for size in [64, 5000] {
            let out = run_row("fork-threads", size, mode);
            assert!(
                out.status.success() && !out.timed_out,
                "{} size {size}: {}",
                mode.name(),
                out.describe()
            );
        }
    }
}

/// Guarded slots reused at once (`RAMPART_QUARANTINE=0`): `calloc` still hands out zeroes
/// after the slot held 0xff bytes, for sizes that fill a page and sizes that do not.
#[test]
fn reused_guarded_slots_are_zeroed_for_calloc() {
    for mode in [Mode::Sample, Mode::All] {
        for size in [13, 4096, 9000] {
            let mut cmd = preloaded(memerr());
            cmd.arg("calloc-reuse").arg(size.to_string());
            for (k, v) in mode.env() {
                cmd.env(k, v);
            }
            cmd.env("RAMPART_QUARANTINE", "0").env("RAMPART_STATS", "1");
            let out = run(cmd, ROW_WATCHDOG);
            assert!(
                out.status.success(),
                "{} size {size}: {}",
                mode.name(),
                out.describe()
            );
            let guarded = stat_after(&out.stderr, "guarded blocks", "allocated").unwrap_or(0);
            assert!(
                guarded >= 400,
                "{} size {size}: only {guarded} guarded blocks\n{}",
                mode.name(),
                out.describe()
            );
        }
    }
}

/// A block whose slot has spare pages before the block's own (36 KiB is 9 pages, its slot
/// class 10): those pages stay guarded, so `p[-1]` faults at once as an underflow.
#[test]
fn underflow_into_a_slots_spare_pages_faults() {
    let size = 36 * 1024;
    let out = run_row("underflow-write", size, Mode::All);
    assert_eq!(out.signal(), Some(SIGSEGV), "{}", out.describe());
    let first = out
        .stderr
        .lines()
        .find(|l| l.starts_with("rampart: "))
        .unwrap_or_default();
    assert!(
        first.starts_with("rampart: heap-buffer-underflow: write at ")
            && first.contains(&format!(": offset -1 from a block of {size} bytes at ")),
        "{}",
        out.describe()
    );
}
