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

pub mod api;
pub mod check;
pub mod config;
mod global_alloc;
pub mod heap;
pub mod large;
pub mod observe;
pub mod os;
pub mod pages;
pub mod size_class;
pub mod slab;
pub mod util;

pub use check::{guard, redzone};
pub use global_alloc::Rampart;
pub use observe::stats::stats;
pub use observe::{heapmap, stats};
