//! rampart: a fast memory allocator for Linux x86-64, with guard pages, redzones and
//! quarantine chosen at run time. (The package is `rampart-alloc`; the library is `rampart`.)
//!
//! Use it as a Rust program's global allocator:
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: rampart::Rampart = rampart::Rampart;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     assert_eq!(v.iter().sum::<u64>(), 499_500);
//! }
//! ```
//!
//! What a program can ask it:
//!
//! - [`stats()`] returns the allocator's figures ([`Stats`]: bytes in use, committed and
//!   reserved with their peaks, blocks per size class, kernel calls, thread heaps), and
//!   [`stats_print()`] writes them as the table `RAMPART_STATS=1` prints at exit;
//! - [`trim()`] gives free memory back to the OS now;
//! - [`heapmap::write`] draws the heap, page by page, into an SVG file.
//!
//! The environment variables of the C library work the same under `#[global_allocator]`:
//! `RAMPART_STATS=1` prints the statistics at exit, `RAMPART_HEAPMAP=path.svg` writes the
//! heap map at exit, `RAMPART_GUARD=all|sample` and `RAMPART_REDZONE=N` turn on the checks,
//! `RAMPART_PURGE_DELAY_MS` sets how soon free pages go back to the OS, and
//! `RAMPART_VERBOSE=1` reports what was read. They are read once, at the first allocation.
//!
//! This crate exports no C symbols: linking it never replaces a program's `malloc` (C code
//! it calls keeps glibc's). To make rampart the malloc of a whole process, C libraries
//! included, preload `librampart.so` (the repository's `ffi` crate). The repository's
//! `docs/architecture.md` describes the layers and the rules of the allocation paths.

#![warn(missing_docs)]

// The layers: private to the crate. What users call is re-exported below; what the C library,
// the test suite and the benchmarks need besides is in `internals`.
#[doc(hidden)]
pub mod api;
mod check;
mod config;
mod global_alloc;
mod heap;
mod heapprof;
mod large;
mod observe;
mod os;
mod pages;
mod size_class;
mod slab;
mod util;

pub use global_alloc::Rampart;
pub use observe::stats::{
    print as stats_print, stats, BlockCounts, KernelCalls, SizeClassStats, Stats, ThreadHeaps,
};

/// The heap map: an SVG picture of every chunk, page by page (what `RAMPART_HEAPMAP` writes at
/// exit).
pub mod heapmap {
    pub use crate::observe::heapmap::Totals;

    /// Writes the heap map of this process to `path` (created or truncated): an SVG with a
    /// row of cells per chunk, each page coloured by what holds it, and the totals above.
    /// The file is opened before the page layer's lock is taken; the map is written under
    /// it, without allocating. Returns the map's totals.
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: rampart::Rampart = rampart::Rampart;
    ///
    /// fn main() {
    ///     let kept: Vec<Vec<u8>> = (1..100).map(|i| vec![0u8; 64 * i]).collect();
    ///     let path = std::env::temp_dir().join(format!("heap-{}.svg", std::process::id()));
    ///     let totals = rampart::heapmap::write(&path).expect("written");
    ///     assert!(totals.chunks >= 1 && totals.slab > 0);
    ///     assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
    ///     # std::fs::remove_file(&path).unwrap();
    ///     drop(kept);
    /// }
    /// ```
    pub fn write(path: impl AsRef<std::path::Path>) -> std::io::Result<Totals> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        crate::observe::heapmap::write_file(&path).map_err(std::io::Error::from_raw_os_error)
    }
}

/// The heap profile (`RAMPART_PROFILE=heap|leaks`): which stacks hold the memory, sampled
/// by bytes (one sample per `RAMPART_PROFILE_RATE` bytes allocated, on average).
pub mod profile {
    pub use crate::heapprof::{Amount, Totals};

    /// Writes the heap profile of this process to `path` (created or truncated), in the raw
    /// format that the launcher's `rampart profile FILE` reads and renders (a table of the
    /// top stacks, folded stacks, an SVG flamegraph, a pprof file). Returns the profile's
    /// totals. Fails with `ENOTSUP` when profiling is off: `RAMPART_PROFILE` is read at the
    /// first allocation.
    ///
    /// ```no_run
    /// #[global_allocator]
    /// static GLOBAL: rampart::Rampart = rampart::Rampart;
    ///
    /// fn main() {
    ///     // Run with RAMPART_PROFILE=heap in the environment.
    ///     let cache: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 4096]).collect();
    ///     let totals = rampart::profile::write("heap.prof").expect("profiling is on");
    ///     println!("about {} bytes live in {} blocks", totals.live.bytes, totals.live.objects);
    ///     drop(cache);
    /// }
    /// ```
    pub fn write(path: impl AsRef<std::path::Path>) -> std::io::Result<Totals> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        crate::internals::write_profile(&path).map_err(std::io::Error::from_raw_os_error)
    }

    /// The profile's totals now: estimated bytes and blocks live, at the peak and allocated
    /// so far, and the samples taken (all zero when profiling is off).
    pub fn totals() -> Totals {
        crate::heapprof::totals()
    }
}

/// Gives free memory back to the OS now (what `malloc_trim` does in C): every free page that
/// may be resident is returned, and wholly free chunks are unmapped. Returns the bytes given
/// back. Costs a walk of the heap; the allocator also returns free pages by itself, a purge
/// delay after their free (`RAMPART_PURGE_DELAY_MS`).
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rampart::Rampart = rampart::Rampart;
///
/// fn main() {
///     let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 << 10]).collect();
///     drop(blocks);
///     let returned = rampart::trim();
///     assert!(rampart::stats().returned_to_os >= returned);
/// }
/// ```
pub fn trim() -> usize {
    api::trim()
}

/// Not part of the public API: the pieces the C library (`rampart-ffi`), the test suite and
/// the benchmarks need. Each is safe to call as its own documentation says; nothing here is
/// stable.
#[doc(hidden)]
pub mod internals {
    pub use crate::check::guard::init_options;
    pub use crate::config::{DEFAULT_GUARD_SAMPLE, DEFAULT_PURGE_DELAY_MS};
    pub use crate::heap::registry_counts;
    pub use crate::observe::heapmap::{write_fd_with_usage, write_file as write_heapmap};
    pub use crate::observe::set_process_malloc;
    pub use crate::observe::stats::stats_and_usage;
    pub use crate::os::{pid, set_errno, PAGE_SIZE};
    pub use crate::pages::{PageUsage, CHUNK_SIZE, PAGES_PER_CHUNK};
    pub use crate::util::{checked_align_up, fatal, Line};

    /// Writes the heap profile to `path` (see `rampart::profile::write`); the errno of what
    /// failed (`ENOTSUP` when profiling is off).
    pub fn write_profile(path: &core::ffi::CStr) -> Result<crate::heapprof::Totals, i32> {
        if !crate::heapprof::on() {
            return Err(libc::ENOTSUP);
        }
        crate::observe::profile::write_file(path, crate::observe::profile::Reason::Request)
    }

    /// The page layer's walk now (under its lock).
    pub fn page_usage() -> PageUsage {
        crate::pages::PAGES.lock().usage()
    }
}
