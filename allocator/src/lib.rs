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
//! Layers, from the top (each module's doc has its part; see also `design.md`):
//!
//! ```text
//!  global_alloc (GlobalAlloc)      [ffi crate: the C ABI]
//!                 \                 /
//!                  api   (alloc / free / realloc / aligned semantics)
//!                   |
//!                  heap  (thread-local heaps, remote frees, thread exit)
//!                   |
//!        slab (size classes, free lists)    large (page runs, huge mappings, mremap)
//!                   |                          |
//!                  pages (binary buddy over page orders, page map)
//!                   |
//!                  os    (the only module that calls the kernel)
//!  leaf modules: size_class, config (options), util
//! ```
//!
//! This crate exports no C symbols: linking it never replaces a program's malloc.

#![warn(missing_docs)]

pub mod api;
pub mod config;
mod global_alloc;
pub mod guard;
pub mod heap;
pub mod heapmap;
pub mod large;
pub mod os;
pub mod pages;
pub mod redzone;
pub mod size_class;
pub mod slab;
pub mod stats;
pub mod util;

pub use global_alloc::Rampart;
pub use stats::stats;
