//! Writing the heap profile (`RAMPART_PROFILE`): the raw profile file, at exit, on request
//! and on a signal, and the leak report at exit. Never allocates: text is composed in fixed
//! buffers and written with `write(2)`, so it is safe at exit and in a signal handler.
//!
//! The raw file is text, one record per line (the format is described in
//! `docs/profile-format.md`): a header, the process's file mappings (copied from
//! `/proc/self/maps`, for the launcher to symbolize with), one `stack` line per distinct
//! stack, and per stack its estimated `live`, `peak` and `total` bytes and objects. The
//! launcher (`rampart profile FILE`) symbolizes it and renders tables, folded stacks, a
//! flamegraph and a pprof file; the allocator itself only names frames with `dladdr`.

use core::ffi::{c_int, CStr};
use core::sync::atomic::{AtomicU32, Ordering};

use super::heapmap::{expand_pid, Out};
use crate::config::{self, ProfileMode, HEAPMAP_PATH_MAX};
use crate::heapprof::{self as profile, Amount, StackView, Totals};
use crate::os;
use crate::util::Line;

/// Why a profile is written (its `reason` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// At exit.
    Exit,
    /// Asked for by the program (`rampart_profile_write`, `rampart::profile::write`).
    Request,
    /// On `RAMPART_PROFILE_SIGNAL`.
    Signal,
}

/// Writes the profile to `path` (created or truncated). Returns the profile's totals, or the
/// errno of what failed.
pub fn write_file(path: &CStr, reason: Reason) -> Result<Totals, c_int> {
    let fd = os::create_file(path)?;
    let result = write_fd(fd, reason);
    let closed = os::close(fd);
    match result {
        Ok(_) => closed.and(result),
        r => r,
    }
}

/// Writes the profile to `fd`. The tables are read under their lock, except from a signal
/// handler (`Reason::Signal`), which must not wait for a lock the interrupted thread may
/// hold: its figures may then be a sample apart.
pub fn write_fd(fd: c_int, reason: Reason) -> Result<Totals, c_int> {
    let mut out = Out::new(fd);
    out.str("rampart-profile 1\npid ")
        .dec(os::pid() as usize)
        .str("\nrate ")
        .dec(config::profile_rate() as usize)
        .str("\nreason ")
        .str(match reason {
            Reason::Exit => "exit",
            Reason::Request => "request",
            Reason::Signal => "signal",
        })
        .str("\n");
    let mut exe = [0u8; HEAPMAP_PATH_MAX];
    if let Some(n) = os::read_link(c"/proc/self/exe", &mut exe) {
        out.str("exe ").bytes(&exe[..n]).str("\n");
    }
    copy_maps(&mut out);
    let locked = reason != Reason::Signal;
    // Stacks first, then their figures: a reader meets every id before its use. Stacks made
    // between the two passes (without the lock) are left out of both.
    let mut made = 0;
    profile::for_each_stack(locked, |idx, s| {
        made = idx + 1;
        out.str("stack ").dec(idx + 1);
        for &pc in s.frames {
            out.str(" ");
            hex(&mut out, pc);
        }
        out.str("\n");
    });
    profile::for_each_stack(locked, |idx, s| {
        if idx >= made {
            return;
        }
        for (what, a) in [("live", s.live), ("peak", s.peak), ("total", s.total)] {
            let (bytes, objects) = rounded(a);
            if objects > 0 || bytes > 0 {
                out.str(what)
                    .str(" ")
                    .dec(idx + 1)
                    .str(" ")
                    .dec(bytes)
                    .str(" ")
                    .dec(objects)
                    .str("\n");
            }
        }
    });
    let t = profile::totals();
    let (live_b, live_o) = rounded(t.live);
    out.str("summary live_bytes ")
        .dec(live_b)
        .str(" live_objects ")
        .dec(live_o)
        .str(" peak_bytes ")
        .dec(rounded(t.peak).0)
        .str(" total_bytes ")
        .dec(rounded(t.total).0)
        .str(" samples ")
        .dec(t.samples as usize)
        .str(" dropped ")
        .dec(t.dropped as usize)
        .str("\nend\n");
    out.finish().map(|_| t)
}

/// An estimate as whole bytes and objects.
fn rounded(a: Amount) -> (usize, usize) {
    ((a.bytes + 0.5) as usize, (a.objects + 0.5) as usize)
}

/// A number in lowercase hex without a prefix.
fn hex(out: &mut Out, v: usize) {
    let mut l = Line::new();
    l.hex(v as u64);
    out.bytes(&l.as_bytes()[2..]);
}

/// Copies the file mappings of `/proc/self/maps` as `map START END PERMS OFFSET PATH` lines.
fn copy_maps(out: &mut Out) {
    let Ok(fd) = os::open_read(c"/proc/self/maps") else {
        return;
    };
    let mut line = [0u8; HEAPMAP_PATH_MAX + 128];
    let mut len = 0;
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = os::read(fd, &mut chunk) {
        for &b in &chunk[..n] {
            if b == b'\n' {
                map_line(out, &line[..len]);
                len = 0;
            } else if len < line.len() {
                line[len] = b;
                len += 1;
            }
        }
    }
    if len > 0 {
        map_line(out, &line[..len]);
    }
    let _ = os::close(fd);
}

/// One line of `/proc/self/maps` (`start-end perms offset dev inode path`), written when its
/// path is a file.
fn map_line(out: &mut Out, line: &[u8]) {
    let mut fields = line.splitn(6, |&b| b == b' ');
    let (Some(range), Some(perms), Some(offset), Some(_dev), Some(_inode), Some(rest)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return;
    };
    let path = rest.trim_ascii_start();
    let Some(dash) = range.iter().position(|&b| b == b'-') else {
        return;
    };
    if !path.starts_with(b"/") {
        return;
    }
    let offset = offset
        .iter()
        .position(|&b| b != b'0')
        .map_or(&b"0"[..], |i| &offset[i..]);
    out.str("map ")
        .bytes(&range[..dash])
        .str(" ")
        .bytes(&range[dash + 1..])
        .str(" ")
        .bytes(perms)
        .str(" ")
        .bytes(offset)
        .str(" ")
        .bytes(path)
        .str("\n");
}

/// The `RAMPART_PROFILE_OUT` path with `%p` expanded and `suffix` (a signal's sequence
/// number) appended, into `buf`.
fn out_path(buf: &mut [u8; HEAPMAP_PATH_MAX], suffix: Option<u32>) -> Option<&CStr> {
    let mut raw = [0u8; HEAPMAP_PATH_MAX];
    let mut path = [0u8; HEAPMAP_PATH_MAX];
    let configured = config::profile_out(&mut raw).to_bytes();
    let mut n = configured.len();
    path[..n].copy_from_slice(configured);
    if let Some(seq) = suffix {
        let mut l = Line::new();
        l.str(".").dec(u64::from(seq));
        let s = l.as_bytes();
        if n + s.len() >= path.len() {
            return None;
        }
        path[n..n + s.len()].copy_from_slice(s);
        n += s.len();
    }
    expand_pid(&path[..n], os::pid(), buf)
}

/// Writes the profile to the configured path (reporting a failure on stderr).
fn write_configured(reason: Reason, suffix: Option<u32>) {
    let mut buf = [0u8; HEAPMAP_PATH_MAX];
    let result = match out_path(&mut buf, suffix) {
        Some(p) => write_file(p, reason).map(|_| ()),
        None => Err(os::ENAMETOOLONG),
    };
    if let Err(errno) = result {
        let mut l = Line::new();
        l.str("rampart: warning: RAMPART_PROFILE: cannot write the profile (errno ")
            .dec(errno as u64)
            .str(")");
        l.emit();
    }
}

/// At exit: writes the profile (when profiling is on) and, in `leaks` mode, reports the
/// sampled blocks still live; with `RAMPART_PROFILE_LEAK_EXITCODE`, a process that leaked
/// then exits with that status.
pub fn at_exit() {
    if !profile::on() {
        return;
    }
    write_configured(Reason::Exit, None);
    if config::profile_mode() != ProfileMode::Leaks {
        return;
    }
    let leaked = leak_report();
    let code = config::profile_leak_exitcode();
    if leaked && code != 0 {
        os::flush_stdio();
        os::exit_now(code);
    }
}

/// Stacks shown in the leak report.
const REPORT_STACKS: usize = 10;
/// Frames shown per stack in the leak report.
const REPORT_FRAMES: usize = 8;

/// Prints the leak report (the sampled blocks still live, by stack, largest first) to
/// stderr; returns whether anything leaked.
///
/// Blocks the dynamic loader allocated (the thread-local storage of threads whose stacks
/// glibc keeps for reuse, the records of loaded objects) live as long as the process by
/// design and are not leaks of the program's: they are counted apart.
fn leak_report() -> bool {
    let exact = config::profile_rate() <= 1;
    // The largest stacks, by live bytes (a fixed array: no allocation), and the totals of
    // the program's stacks and of the loader's.
    let mut top = [(usize::MAX, 0usize, 0usize); REPORT_STACKS];
    let (mut nstacks, mut bytes, mut objects) = (0, 0, 0);
    let (mut loader_bytes, mut loader_objects) = (0, 0);
    profile::for_each_stack(true, |idx, s| {
        let (b, o) = rounded(s.live);
        if o == 0 {
            return;
        }
        if s.frames.first().is_some_and(|&pc| in_loader(pc)) {
            loader_bytes += b;
            loader_objects += o;
            return;
        }
        nstacks += 1;
        bytes += b;
        objects += o;
        let mut i = REPORT_STACKS;
        while i > 0 && (top[i - 1].0 == usize::MAX || top[i - 1].1 < b) {
            i -= 1;
        }
        if i < REPORT_STACKS {
            top.copy_within(i..REPORT_STACKS - 1, i + 1);
            top[i] = (idx, b, o);
        }
    });
    let mut l = Line::new();
    if objects == 0 {
        l.str("rampart: no leaks: every ")
            .str(if exact { "" } else { "sampled " })
            .str("block was freed");
    } else {
        l.str("rampart: leak report: ")
            .dec(bytes as u64)
            .str(" bytes in ")
            .dec(objects as u64)
            .str(" blocks still allocated at exit, from ")
            .dec(nstacks as u64)
            .str(" stacks (")
            .str(if exact {
                "every allocation recorded"
            } else {
                "estimated from samples"
            })
            .str("; RAMPART_PROFILE_RATE=")
            .dec(config::profile_rate())
            .str(")");
    }
    if loader_objects > 0 {
        l.str("; not counted: ")
            .dec(loader_bytes as u64)
            .str(" bytes in ")
            .dec(loader_objects as u64)
            .str(" blocks held by the dynamic loader (thread-local storage, loaded objects)");
    }
    l.emit();
    if objects == 0 {
        return false;
    }
    for &(want, b, o) in top.iter().take_while(|e| e.0 != usize::MAX) {
        profile::for_each_stack(true, |idx, s| {
            if idx == want {
                report_stack(s, b, o);
            }
        });
    }
    let mut l = Line::new();
    l.str("rampart: symbols and source lines: rampart profile ");
    let mut buf = [0u8; HEAPMAP_PATH_MAX];
    match out_path(&mut buf, None) {
        Some(p) => l.str(core::str::from_utf8(p.to_bytes()).unwrap_or("(the profile)")),
        None => l.str("(the profile)"),
    };
    l.str(" --what live --top 20");
    l.emit();
    true
}

/// Whether the code address `pc` lies in the dynamic loader (`ld-linux-x86-64.so.2`).
fn in_loader(pc: usize) -> bool {
    os::symbolize(pc)
        .and_then(|(_, _, module, _)| module)
        .is_some_and(|m| {
            m.to_bytes().starts_with(b"/lib64/ld-linux")
                || m.to_bytes().ends_with(b"/ld-linux-x86-64.so.2")
        })
}

/// Names of the allocator's entry points, dropped from the inner end of a reported stack.
const ENTRY_POINTS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_memalign",
    "strdup",
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "__rust_alloc",
    "__rust_alloc_zeroed",
    "__rust_realloc",
];

/// One stack of the leak report: its figures and its frames, named by `dladdr`.
fn report_stack(s: &StackView<'_>, bytes: usize, objects: usize) {
    let mut l = Line::new();
    l.str("  ")
        .dec(bytes as u64)
        .str(" bytes in ")
        .dec(objects as u64)
        .str(" blocks, allocated at:");
    l.emit();
    let mut frames = s.frames;
    while let Some((&pc, rest)) = frames.split_first() {
        let name = os::symbolize(pc.wrapping_sub(1)).and_then(|(sym, ..)| sym);
        let entry = name
            .and_then(|n| n.to_str().ok())
            .is_some_and(|n| ENTRY_POINTS.contains(&n));
        if !entry || rest.is_empty() {
            break;
        }
        frames = rest;
    }
    for (i, &pc) in frames.iter().take(REPORT_FRAMES).enumerate() {
        let mut l = Line::new();
        l.str("    #").dec(i as u64).str(" ").hex(pc as u64);
        crate::check::report::describe_pc(&mut l, pc);
        l.emit();
    }
}

/// Signal-triggered profiles written so far (their file suffix).
static SIGNAL_SEQ: AtomicU32 = AtomicU32::new(0);

/// The `RAMPART_PROFILE_SIGNAL` handler: writes the profile to the configured path with the
/// next sequence number appended, without taking the tables' lock. Keeps `errno`.
extern "C" fn on_signal(_sig: i32) {
    let saved = os::errno();
    let seq = SIGNAL_SEQ.fetch_add(1, Ordering::Relaxed) + 1;
    write_configured(Reason::Signal, Some(seq));
    os::set_errno(saved);
}

/// At load (and at a Rust program's start): reads the options and installs the profile's
/// signal handler if one is asked for.
extern "C" fn at_load() {
    crate::check::guard::init_options();
    let sig = config::profile_signal();
    if profile::on() && sig != 0 && !os::install_signal_handler(sig, on_signal) {
        let mut l = Line::new();
        l.str("rampart: warning: RAMPART_PROFILE_SIGNAL: cannot handle signal ")
            .dec(sig as u64);
        l.emit();
    }
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;
