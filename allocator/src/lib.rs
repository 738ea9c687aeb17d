//! rampart: a fast memory allocator for Linux x86-64, with guard pages, redzones and
//! quarantine chosen at run time.
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
//! Layers, from the top: each is a folder (or file) of `allocator/src`, so a line's path
//! names its layer; arrows run downward only.
//!
//! ```text
//!  global_alloc.rs (GlobalAlloc)     [ffi crate: C ABI, errno, glibc semantics, C++]
//!                  \                  /
//!                   api.rs   semantics; Option<NonNull<u8>>      observe/   statistics, heap
//!                     |                                                     map: read the
//!                   heap/    thread heaps: fast paths, remote           layers below;
//!                     |      frees, registry, thread exit               nothing calls it
//!         +-----------+-----------+
//!      slab.rs     large/      check/   size-class spans | page runs | guard pool,
//!         |           |           |     fault callback, redzones (run-time hardening)
//!         +-----------+-----------+
//!                   pages/   buddy runs in chunks, page map (map.rs), purge queue
//!                     |      (purge.rs), views (view.rs), huge mappings and their cache
//!                   os/      the only code that calls the kernel (mmap, madvise, futex,
//!                            signals, environ, initial-exec TLS slots)
//!  leaves used by all, above os: size_class.rs, config.rs (options), util.rs (locks, reports)
//! ```
//!
//! This crate exports no C symbols: linking it never replaces a program's malloc.

#![warn(missing_docs)]

// The layers: private to the crate. What users call is re-exported below; what the C library,
// the test suite and the benchmarks need besides is in `internals`.
pub mod api;
mod check;
mod config;
mod global_alloc;
mod heap;
mod large;
mod observe;
mod os;
mod pages;
mod size_class;
mod slab;
mod util;

pub use global_alloc::Rampart;
pub use observe::stats::stats;

/// The allocator's statistics: [`stats()`] returns them, [`stats::print`] writes the table
/// `RAMPART_STATS=1` prints at exit.
pub mod stats {
    pub use crate::heap::HeapCounts;
    pub use crate::observe::stats::{print, ClassStats, Stats};
    pub use crate::os::OsCalls;
}

/// The heap map: an SVG picture of every chunk (what `RAMPART_HEAPMAP` writes at exit).
pub mod heapmap {
    pub use crate::observe::heapmap::{write_file, Totals};
}

/// Gives free memory back to the OS now (what `malloc_trim` does); returns the bytes given
/// back.
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
    pub use crate::observe::heapmap::write_fd_with_usage;
    pub use crate::observe::set_process_malloc;
    pub use crate::observe::stats::{figures, Figures};
    pub use crate::os::{pid, set_errno, PAGE_SIZE};
    pub use crate::pages::{PageUsage, CHUNK_SIZE, PAGES_PER_CHUNK};
    pub use crate::util::{checked_align_up, fatal, Line};

    /// The page layer's walk now (under its lock).
    pub fn page_usage() -> PageUsage {
        crate::pages::PAGES.lock().usage()
    }
}
