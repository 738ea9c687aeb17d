//! Observation: statistics, the heap map and the heap profile's files. Reads the layers below through their own
//! counters and views; nothing below calls it.

use core::sync::atomic::{AtomicBool, Ordering};

pub mod heapmap;
pub mod profile;
pub mod stats;

/// The exit-time work, the same under `LD_PRELOAD`, a static link and `#[global_allocator]`:
/// the redzone and guard checks of every live block (when those modes are on), the
/// statistics (`RAMPART_STATS=1`) and the heap map (`RAMPART_HEAPMAP`). Does nothing in a
/// Rust program that links the crate but never allocated through it. Runs from `.fini_array`,
/// after the program's own destructors; never allocates.
pub fn at_exit() {
    if !PROCESS_MALLOC.load(Ordering::Relaxed) && !allocator_used() {
        return;
    }
    crate::check::guard::init_options();
    if crate::config::redzone() != 0 {
        crate::check::redzone::check_all(crate::heap::owner_is_quiet);
    }
    if crate::check::guard::active() {
        crate::check::guard::check_all();
    }
    if crate::config::stats_at_exit() {
        stats::print();
    }
    heapmap::write_configured();
    profile::at_exit();
}

/// Whether rampart is the process's malloc (set by the C library when it is loaded).
static PROCESS_MALLOC: AtomicBool = AtomicBool::new(false);

/// Says that rampart is the process's malloc (preloaded or linked in as `librampart`): the
/// exit-time work then runs even in a program that never called malloc. Called by the C
/// library's load-time hook.
pub fn set_process_malloc() {
    PROCESS_MALLOC.store(true, Ordering::Relaxed);
}

/// Whether anything was ever allocated through rampart in this process (a heap made, page
/// runs or huge blocks mapped, or a guarded block).
fn allocator_used() -> bool {
    if crate::heap::registry_counts().created > 0 || crate::check::guard::counts().0 > 0 {
        return true;
    }
    let pages = crate::pages::PAGES.lock();
    pages.chunks > 0 || pages.huge_counts[0] > 0
}

extern "C" fn on_exit() {
    at_exit();
}

#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = on_exit;
