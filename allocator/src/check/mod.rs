//! Hardening: the checks chosen at run time. `guard` places blocks against PROT_NONE pages in
//! a pool of its own (`RAMPART_GUARD`: the sampling policy, the pool and its quarantine, the
//! fault callback and its reports); `redzone` puts canaries after small blocks and a pattern
//! in freed ones (`RAMPART_REDZONE`).
//!
//! This layer sits beside `slab` and `large`, under `heap`: the heap's paths call it (the
//! sampling countdown, guarded frees, redzone checks), and it uses only the page layer and
//! the leaves below.

pub mod guard;
pub mod redzone;
