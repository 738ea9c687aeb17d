//! The guard modes under `#[global_allocator]`: a Rust program on `rampart::Rampart` (no
//! `librampart.so`; the crate reads the same `RAMPART_*` variables) makes one memory error
//! per run, through std's own types and `std::alloc`, and must die as a C program on the
//! preloaded library does (`tests/guard.rs`): an overflow of a `Vec<u8>`'s buffer and a read
//! of a freed `Box<[u8]>` fault on the access with rampart's report, a second
//! `std::alloc::dealloc` is reported and aborts. That also puts rampart's fault handler next
//! to the one std installs for stack overflows, which must not swallow the report.
//!
//! Its own test binary without libtest's harness (`harness = false` in Cargo.toml): with
//! `GUARD_GLOBAL_CASE` set it is the child (it makes that error on a block of
//! `GUARD_GLOBAL_SIZE` bytes and exits 3 if it survives); without, it runs itself once per
//! row under a watchdog, in `RAMPART_GUARD=all` for every test size and in
//! `RAMPART_GUARD=sample RAMPART_GUARD_SAMPLE=1` for the sizes `sample` guards, plus the
//! default mode's rows (where only the double free is caught) and the hardened mode's
//! (`RAMPART_HARDEN=1`: small blocks' overflows found on free, large blocks guarded), prints
//! one line per row and a summary, and exits 1 if any row failed.

mod c_support;

use std::alloc::Layout;
use std::process::Command;
use std::time::Duration;

use c_support::{clear_rampart_env, no_core_dumps, parse_fault_line, run, Outcome, SIGABRT};

#[global_allocator]
static A: rampart::Rampart = rampart::Rampart;

const SIGSEGV: i32 = 11;

/// The sizes of `tests/guard.rs`: tiny (odd), small, one page, large (above the sampling
/// limit).
const SIZES: [usize; 5] = [13, 200, 4096, 100_000, 1_500_000];
/// `sample` guards only blocks up to this size.
const SAMPLE_LIMIT: usize = 65_536;
/// The largest size class (the default mode's double free is reported as such up to it).
const CLASS_LIMIT: usize = 1 << 20;
const CASES: [&str; 4] = ["ok", "overflow1-write", "uaf-read", "double-free"];
const ROW_WATCHDOG: Duration = Duration::from_secs(60);

fn main() {
    match std::env::var("GUARD_GLOBAL_CASE") {
        Ok(case) => child(&case),
        Err(_) => parent(),
    }
}

// ---- the child ---------------------------------------------------------------------------

fn child(case: &str) -> ! {
    let size: usize = std::env::var("GUARD_GLOBAL_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("guard_global: GUARD_GLOBAL_SIZE missing or bad");
            std::process::exit(2)
        });
    match case {
        "ok" => {
            // Valid use of std's containers and a thread: no report, exit 0.
            let mut v: Vec<u8> = Vec::with_capacity(size);
            v.extend((0..size).map(|i| i as u8));
            let s: String = (0..size)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let t = std::thread::spawn(move || v.iter().map(|&b| b as usize).sum::<usize>());
            let sum = t.join().expect("join");
            let b: Box<[u8]> = s.into_bytes().into_boxed_slice();
            println!("ok: sum {sum}, {} bytes boxed", b.len());
            std::process::exit(0)
        }
        "overflow1-write" => {
            let mut v: Vec<u8> = Vec::with_capacity(size);
            let p = v.as_mut_ptr();
            println!("block {p:p} size {size}");
            // SAFETY: none: the deliberate overflow under test, one byte past the buffer.
            unsafe { p.add(size).write_volatile(b'A') };
            drop(v);
            undetected("a write one byte past a Vec's buffer")
        }
        "uaf-read" => {
            let b: Box<[u8]> = vec![7u8; size].into_boxed_slice();
            let p = b.as_ptr();
            println!("block {p:p} size {size}");
            drop(b);
            // SAFETY: none: the deliberate use after free under test.
            let x = unsafe { p.read_volatile() };
            std::hint::black_box(x);
            undetected("a read of a freed Box<[u8]>")
        }
        "double-free" => {
            let layout = Layout::array::<u8>(size).expect("layout");
            // SAFETY: `layout` has a non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            assert!(!p.is_null(), "alloc failed");
            println!("block {p:p} size {size}");
            // SAFETY: the first dealloc is valid; the second is the misuse under test.
            unsafe {
                p.write_bytes(0x11, size);
                std::alloc::dealloc(p, layout);
                std::alloc::dealloc(p, layout);
            }
            undetected("a second dealloc of the same block")
        }
        _ => {
            eprintln!("guard_global: unknown case {case}");
            std::process::exit(2)
        }
    }
}

fn undetected(what: &str) -> ! {
    eprintln!("guard_global: NOT DETECTED: {what}");
    std::process::exit(3)
}

// ---- the parent --------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    Clean,
    Undetected,
    /// SIGSEGV; first line `rampart: KIND: ACCESS at 0xADDR: offset OFFSET from a block of
    /// SIZE bytes at 0xBASE`, BASE the address the child printed.
    Fault {
        kind: &'static str,
        access: &'static str,
        offset: i64,
    },
    /// SIGABRT; first line begins `rampart: KIND: ` (one of `kinds`) and, with `block`, says
    /// `from a block of SIZE bytes`.
    Abort {
        kinds: &'static [&'static str],
        block: bool,
    },
}

/// The largest small class: in the hardened mode blocks up to it get a redzone, larger ones
/// are guarded.
const SMALL_LIMIT: usize = 32 * 1024;

fn expected(case: &str, size: usize, mode: &str) -> Expect {
    let guarded = match mode {
        "off" => false,
        "harden" => size > SMALL_LIMIT,
        _ => true,
    };
    if mode == "harden" && !guarded {
        // A redzoned block: the canary is checked when the Vec is dropped, a second free
        // finds the freed mark; a read after free goes unseen.
        return match case {
            "ok" => Expect::Clean,
            "overflow1-write" => Expect::Abort {
                kinds: &["redzone-overwritten"],
                block: true,
            },
            "uaf-read" => Expect::Undetected,
            _ => Expect::Abort {
                kinds: &["double-free"],
                block: false,
            },
        };
    }
    match (case, guarded) {
        ("ok", _) => Expect::Clean,
        ("overflow1-write", true) => Expect::Fault {
            kind: "heap-buffer-overflow",
            access: "write",
            offset: size as i64,
        },
        ("uaf-read", true) => Expect::Fault {
            kind: "use-after-free",
            access: "read",
            offset: 0,
        },
        ("double-free", true) => Expect::Abort {
            kinds: &["double-free"],
            block: true,
        },
        ("overflow1-write" | "uaf-read", false) => Expect::Undetected,
        // The default mode: the block most recently freed in its span (small), free pages or
        // no block at all (large).
        ("double-free", false) if size <= CLASS_LIMIT => Expect::Abort {
            kinds: &["double-free"],
            block: false,
        },
        ("double-free", false) => Expect::Abort {
            kinds: &["double-free", "invalid-free"],
            block: false,
        },
        _ => unreachable!("no expectation for {case}"),
    }
}

fn parent() {
    let exe = std::env::current_exe().expect("current_exe");
    let modes: [(&str, &[(&str, &str)]); 4] = [
        ("off", &[]),
        // The hardened mode, its sampled guarding off (that is `sample`'s).
        (
            "harden",
            &[("RAMPART_HARDEN", "1"), ("RAMPART_GUARD", "off")],
        ),
        ("all", &[("RAMPART_GUARD", "all")]),
        (
            "sample",
            &[("RAMPART_GUARD", "sample"), ("RAMPART_GUARD_SAMPLE", "1")],
        ),
    ];
    let mut passed = 0;
    let mut failed = Vec::new();
    for (mode, env) in modes {
        for case in CASES {
            for size in SIZES {
                if mode == "sample" && size > SAMPLE_LIMIT {
                    continue; // never sampled: the default mode's rows cover it
                }
                let expect = expected(case, size, mode);
                let mut cmd = Command::new(&exe);
                clear_rampart_env(&mut cmd);
                cmd.env_remove("LD_PRELOAD")
                    .env("GUARD_GLOBAL_CASE", case)
                    .env("GUARD_GLOBAL_SIZE", size.to_string())
                    .envs(env.iter().copied());
                no_core_dumps(&mut cmd);
                let out = run(cmd, ROW_WATCHDOG);
                let row = format!("{mode} {case} {size}");
                match check(&expect, size, &out) {
                    Ok(()) => {
                        println!("guard_global: {row}: {expect:?}: ok");
                        passed += 1;
                    }
                    Err(why) => {
                        println!("guard_global: {row}: {expect:?}: FAILED: {why}");
                        failed.push(format!(
                            "==== {row}\nexpected {expect:?}\nfailed: {why}\ncommand: {}\n\
                             status: {}\n--- stdout ---\n{}\n--- stderr (whole) ---\n{}",
                            out.command, out.status, out.stdout, out.stderr
                        ));
                    }
                }
            }
        }
    }
    for f in &failed {
        println!("{f}");
    }
    println!("guard_global: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

fn check(expect: &Expect, size: usize, out: &Outcome) -> Result<(), String> {
    if out.timed_out {
        return Err("hung: killed by the watchdog".into());
    }
    let first = out.stderr.lines().next().unwrap_or("");
    let no_report = || match out.stderr.lines().find(|l| l.starts_with("rampart:")) {
        Some(l) => Err(format!("unexpected rampart output: {l:?}")),
        None => Ok(()),
    };
    match *expect {
        Expect::Clean => {
            if !out.status.success() {
                return Err(format!("expected exit 0, got {}", out.status));
            }
            no_report()
        }
        Expect::Undetected => {
            if out.status.code() != Some(3) {
                return Err(format!(
                    "expected exit 3 (not detected), got {}",
                    out.status
                ));
            }
            no_report()
        }
        Expect::Fault {
            kind,
            access,
            offset,
        } => {
            if out.signal() != Some(SIGSEGV) {
                return Err(format!("expected death by SIGSEGV, got {}", out.status));
            }
            let printed = out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("block 0x"))
                .and_then(|l| l.split(' ').next())
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or("the child printed no block address")?;
            if first.is_empty() {
                return Err(
                    "no rampart report on stderr: the fault went to another handler \
                            (std's stack-overflow handler?) or to the default action"
                        .into(),
                );
            }
            let f = parse_fault_line(first).ok_or_else(|| {
                format!(
                    "first stderr line {first:?} is not `rampart: KIND: read|write at 0xADDR: \
                     offset N from a block of S bytes at 0xBASE`"
                )
            })?;
            let want = (
                kind,
                access,
                offset,
                size as u64,
                printed.wrapping_add(offset as u64),
                printed,
            );
            let got = (f.kind, f.access, f.offset, f.block, f.addr, f.base);
            if got != want {
                return Err(format!(
                    "the report says (kind, access, offset, size, address, block) = {got:x?}, \
                     expected {want:x?}"
                ));
            }
            Ok(())
        }
        Expect::Abort { kinds, block } => {
            if out.signal() != Some(SIGABRT) {
                return Err(format!("expected death by SIGABRT, got {}", out.status));
            }
            if !kinds
                .iter()
                .any(|k| first.starts_with(&format!("rampart: {k}: ")))
            {
                return Err(format!(
                    "first stderr line {first:?} does not begin `rampart: KIND: `, KIND one \
                     of {kinds:?}"
                ));
            }
            let d = format!("from a block of {size} bytes");
            if block && !first.contains(&d) {
                return Err(format!("the report's first line does not say {d:?}"));
            }
            Ok(())
        }
    }
}
