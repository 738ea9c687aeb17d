//! `librampart.so` / `librampart.a`: rampart as a C program's malloc.
//!
//! **Not finished.** This crate is the skeleton of the C library: it builds both library
//! kinds, but exports no C symbols yet, so preloading it changes nothing. The exported malloc
//! family, `include/rampart.h` and the launcher are tracked by their own issue ("Drop-in
//! malloc for C and C++ programs"). The C symbols will live only here, never in the `rampart`
//! rlib, so that a Rust program linking the rlib keeps its own malloc.

/// The version of the rampart core this library is built on (kept so the skeleton links the
/// core crate and the build checks the dependency).
pub const CORE_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub use rampart::Rampart as _CoreAllocator;
