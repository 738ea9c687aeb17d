//! Hardening: the checks chosen at run time. `guard` places blocks against PROT_NONE pages in
//! a pool of its own (`RAMPART_GUARD`: the pool and its quarantine in `guard/mod.rs`, the
//! sampling policy in `guard/sample.rs`, the fault callback and the pool's reports in
//! `guard/fault.rs`); `redzone` puts canaries after small blocks and a pattern
//! in freed ones (`RAMPART_REDZONE`); `zero` gives the hardened mode's `malloc(0)` blocks
//! that fault on any access; `quarantine` holds the hardened mode's freed small blocks back
//! before reuse; `report` formats every report of a memory error, for
//! these and for the heap's checks (invalid and double frees).
//!
//! This layer sits beside `slab` and `large`, under `heap`: the heap's paths call it (the
//! sampling countdown, guarded frees, redzone checks), and it uses only the page layer and
//! the leaves below.

pub mod guard;
pub mod quarantine;
pub mod redzone;
pub mod report;
pub mod zero;
