//! glibc's introspection calls (`mallinfo`, `mallinfo2`, `malloc_stats`, `malloc_info`,
//! `mallopt`, `malloc_trim`) answered with rampart's own figures, and the statistics printed
//! by `rampart_stats_print` and `RAMPART_STATS=1`; the heap map (`rampart_heapmap_write`,
//! `RAMPART_HEAPMAP`).
//!
//! The figures come from a walk of the page layer under its lock: chunks mapped, pages of
//! slab spans, large runs and free blocks, huge mappings, and the bytes handed out from slabs
//! (read from the spans' counters without the owning threads' cooperation, so a snapshot).
//! Writing them never allocates: reports are composed in a stack buffer and written with
//! `write(2)`; `malloc_info` hands the finished buffer to stdio only after every lock is
//! released.

use core::ffi::{c_char, c_int, c_void};

use rampart::internals::stats_and_usage;
use rampart::internals::Line;
use rampart::stats_print as print_stats;

/// Reads the options (at load time), and makes a panic inside the library a clean death.
pub fn read_options() {
    rampart::internals::set_process_malloc();
    rampart::internals::init_options();
    // The library's own copy of std (nothing else in a C process uses it) would print a
    // panic with a hook that allocates, that is, calls back into malloc while the allocator
    // may hold its locks: a hang instead of a report. This hook allocates nothing.
    std::panic::set_hook(Box::new(|info| {
        let mut line = Line::new();
        line.str("rampart: internal-error: a panic inside the allocator");
        if let Some(at) = info.location() {
            line.str(" at ")
                .str(at.file())
                .str(":")
                .dec(u64::from(at.line()));
        }
        line.emit();
        std::process::abort();
    }));
}

/// `rampart_heapmap_write`: writes the heap map (an SVG picture of every chunk, see
/// `rampart::heapmap`) to `path`, created or truncated. 0 on success; -1 with `errno` set
/// (`EINVAL` for a null path, else what `open(2)` or `write(2)` said) on failure. Allocates
/// nothing: the page layer is walked under its lock while the file is written.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rampart_heapmap_write(path: *const c_char) -> c_int {
    // SAFETY: the caller passes null or a NUL-terminated string (this function's contract).
    unsafe { write_to_path(path, |p| rampart::internals::write_heapmap(p).map(|_| ())) }
}

/// The C convention of the `rampart_*_write(path)` calls: `EINVAL` for a null path, else
/// `write(path)`; 0 on success, -1 with `errno` set to what failed.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn write_to_path(
    path: *const c_char,
    write: impl FnOnce(&core::ffi::CStr) -> Result<(), c_int>,
) -> c_int {
    if path.is_null() {
        rampart::internals::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    match write(unsafe { core::ffi::CStr::from_ptr(path) }) {
        Ok(()) => 0,
        Err(errno) => {
            rampart::internals::set_errno(errno);
            -1
        }
    }
}

/// `rampart_profile_write`: writes the heap profile (`RAMPART_PROFILE`) to `path`, created
/// or truncated, in the raw format `rampart profile FILE` reads. 0 on success; -1 with
/// `errno` set on failure: `EINVAL` for a null path, `ENOTSUP` when profiling is off
/// (`RAMPART_PROFILE` unset), else what `open(2)` or `write(2)` said. Allocates nothing.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rampart_profile_write(path: *const c_char) -> c_int {
    // SAFETY: the caller passes null or a NUL-terminated string (this function's contract).
    unsafe { write_to_path(path, |p| rampart::internals::write_profile(p).map(|_| ())) }
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Default)]
pub struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

/// glibc's `struct mallinfo` (the same fields as `int`, which wrap above 2 GiB as glibc's do).
#[repr(C)]
pub struct Mallinfo {
    arena: c_int,
    ordblks: c_int,
    smblks: c_int,
    hblks: c_int,
    hblkhd: c_int,
    usmblks: c_int,
    fsmblks: c_int,
    uordblks: c_int,
    fordblks: c_int,
    keepcost: c_int,
}

/// `mallinfo2(3)`: `arena` = bytes of chunks, `hblkhd` = bytes of huge mappings, `hblks` =
/// 0 (not counted yet), `uordblks` = bytes in use, `fordblks` = free bytes in chunks,
/// `ordblks` = free page blocks.
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let (st, usage) = stats_and_usage();
    Mallinfo2 {
        arena: st.chunks_mapped,
        ordblks: usage.free_blocks.iter().sum(),
        hblkhd: st.huge_blocks_mapped,
        uordblks: st.in_use,
        fordblks: st.free_in_chunks,
        ..Mallinfo2::default()
    }
}

/// `mallinfo(3)`: [`mallinfo2`] in `int`s.
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let i = |v: usize| v as c_int;
    Mallinfo {
        arena: i(m.arena),
        ordblks: i(m.ordblks),
        smblks: i(m.smblks),
        hblks: i(m.hblks),
        hblkhd: i(m.hblkhd),
        usmblks: i(m.usmblks),
        fsmblks: i(m.fsmblks),
        uordblks: i(m.uordblks),
        fordblks: i(m.fordblks),
        keepcost: i(m.keepcost),
    }
}

/// `malloc_stats(3)`: glibc's summary lines on stderr, then rampart's own table.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    let st = rampart::stats();
    let system = st.chunks_mapped + st.huge_blocks_mapped;
    for (name, v) in [
        ("Arena 0:", None),
        ("system bytes     = ", Some(st.chunks_mapped)),
        (
            "in use bytes     = ",
            Some(st.in_use - st.huge_blocks_mapped),
        ),
        ("Total (incl. mmap):", None),
        ("system bytes     = ", Some(system)),
        ("in use bytes     = ", Some(st.in_use)),
        ("max mmap regions = ", Some(0)),
        ("max mmap bytes   = ", Some(st.huge_blocks_mapped)),
    ] {
        let mut l = Line::new();
        l.str(name);
        if let Some(v) = v {
            l.dec(v as u64);
        }
        l.emit();
    }
    print_stats();
}

/// The `<total>`, `<system>` and `<aspace>` elements that close a `<heap>` and the whole
/// `<malloc>` in glibc's `malloc_info`: free blocks `(count, bytes)`, mapped blocks (only
/// for the whole), system bytes `(current, max)` and address space.
fn xml_totals(
    x: &mut Line,
    rest: (u64, u64),
    mmap: Option<(u64, u64)>,
    system: (u64, u64),
    aspace: u64,
) {
    x.str("<total type=\"fast\" count=\"0\" size=\"0\"/>\n<total type=\"rest\" count=\"")
        .dec(rest.0)
        .str("\" size=\"")
        .dec(rest.1)
        .str("\"/>\n");
    if let Some((count, size)) = mmap {
        x.str("<total type=\"mmap\" count=\"")
            .dec(count)
            .str("\" size=\"")
            .dec(size)
            .str("\"/>\n");
    }
    x.str("<system type=\"current\" size=\"")
        .dec(system.0)
        .str("\"/>\n<system type=\"max\" size=\"")
        .dec(system.1)
        .str("\"/>\n<aspace type=\"total\" size=\"")
        .dec(aspace)
        .str("\"/>\n<aspace type=\"mprotect\" size=\"")
        .dec(aspace)
        .str("\"/>\n");
}

extern "C" {
    fn fputs(s: *const c_char, stream: *mut c_void) -> c_int;
}

/// `malloc_info(3)`: an XML description in glibc's shape; `options` must be 0 (else
/// `EINVAL`, -1).
///
/// # Safety
/// `stream` is a valid `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut c_void) -> c_int {
    if options != 0 {
        rampart::internals::set_errno(libc::EINVAL);
        return -1;
    }
    let (st, usage) = stats_and_usage();
    let free_blocks: u64 = usage.free_blocks.iter().sum::<usize>() as u64;
    let system = (st.chunks_mapped + st.huge_blocks_mapped) as u64;
    // One line at a time, each handed to stdio with no lock of ours held (stdio may
    // allocate); `<sizes>` lists, as glibc's does, the free blocks by size: per size class,
    // the blocks of its spans not handed out.
    let mut lines: [Line; 2] = [Line::new(), Line::new()];
    lines[0].str("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n");
    if put(&mut lines[0], stream).is_err() {
        return -1;
    }
    let mut prev = 0;
    for c in st.size_classes.iter() {
        let capacity = c.capacity();
        let free = capacity.saturating_sub(c.held);
        if free > 0 {
            let l = &mut lines[1];
            l.str("  <size from=\"")
                .dec(prev as u64 + 1)
                .str("\" to=\"")
                .dec(c.size as u64)
                .str("\" total=\"")
                .dec(free * c.size as u64)
                .str("\" count=\"")
                .dec(free)
                .str("\"/>\n");
            if put(l, stream).is_err() {
                return -1;
            }
        }
        prev = c.size;
    }
    let x = &mut lines[0];
    x.str("</sizes>\n");
    xml_totals(
        x,
        (free_blocks, st.free_in_chunks as u64),
        None,
        (st.committed as u64, st.committed_peak as u64),
        st.reserved as u64,
    );
    x.str("</heap>\n");
    xml_totals(
        x,
        (free_blocks, st.free_in_chunks as u64),
        Some((st.huge_blocks.live(), st.huge_blocks_mapped as u64)),
        (system, st.reserved_peak as u64),
        st.reserved as u64,
    );
    x.str("</malloc>\n");
    if put(x, stream).is_err() {
        return -1;
    }
    0
}

/// Hands one composed line to stdio and empties it.
fn put(line: &mut Line, stream: *mut c_void) -> Result<(), ()> {
    line.str("\0");
    // SAFETY: the buffer is NUL-terminated; the caller of malloc_info vouches for the stream.
    let rc = unsafe { fputs(line.as_bytes().as_ptr().cast(), stream) };
    *line = Line::new();
    if rc < 0 {
        Err(())
    } else {
        Ok(())
    }
}

/// `malloc_trim(3)`: gives free memory back to the OS now; 1 if any was released, else 0.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    (rampart::api::trim() > 0) as c_int
}

/// `mallopt(3)`: accepts glibc's parameters and returns 1 as glibc does for a valid one, 0 for
/// an unknown one. None of them changes rampart's behaviour yet: rampart has no arenas, no
/// fastbins, no mmap threshold and no trim threshold to tune (its purge policy comes with the
/// operability work); `M_CHECK_ACTION` and `M_PERTURB` are accepted and ignored.
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    const M_MXFAST: c_int = 1;
    const KNOWN: [c_int; 9] = [M_MXFAST, -1, -2, -3, -4, -5, -6, -7, -8];
    if !KNOWN.contains(&param) {
        return 0;
    }
    // glibc refuses an M_MXFAST above 80 * sizeof(size_t) / 4.
    if param == M_MXFAST && (value < 0 || value as usize > 80 * size_of::<usize>() / 4) {
        return 0;
    }
    1
}

use core::mem::size_of;
