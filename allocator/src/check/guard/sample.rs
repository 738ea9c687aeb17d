//! The sampling policy: which allocations leave the fast path to be guarded. In `all` mode
//! (and with redzones) every one; in `sample` mode one in `RAMPART_GUARD_SAMPLE` on
//! average, at random intervals (so a program cannot fall into step with them), counted
//! down on the thread's fast path.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::active;
use crate::config::{self, GuardMode};

/// Whether every allocation should leave the fast path (`all` mode, or redzones).
pub(super) static DIVERT_ALL: AtomicBool = AtomicBool::new(false);

/// State of the sampling intervals' random numbers.
static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// Whether every allocation must leave the fast path (set by `all` mode and by redzones);
/// read by `heap` to set its threads' sampling countdowns.
#[inline]
pub fn divert_all() -> bool {
    DIVERT_ALL.load(Ordering::Relaxed)
}

/// How many allocations a thread makes before its next guarded one: 1 when every allocation
/// is diverted, a random interval averaging `RAMPART_GUARD_SAMPLE` in `sample` mode, and
/// "never" otherwise.
pub fn next_interval() -> usize {
    if divert_all() {
        return 1;
    }
    if !active() {
        return usize::MAX;
    }
    random_interval()
}

/// Whether an allocation the heap's countdown picked should be guarded: always in `all`
/// mode; in `sample` mode too, unless redzones divert every allocation, in which case one in
/// `RAMPART_GUARD_SAMPLE` of them is, at random intervals counted down in `left` (the
/// calling thread's heap's, 0 before its first draw: per thread, so that threads do not
/// share a counter's cache line on every allocation; `None` for a thread without a heap,
/// whose allocations are all guarded).
pub fn sample_now(left: Option<&mut usize>) -> bool {
    if config::guard_mode() == GuardMode::All || !divert_all() {
        return true;
    }
    let Some(left) = left else {
        return true;
    };
    if *left == 0 {
        *left = random_interval();
    }
    if *left <= 1 {
        *left = random_interval();
        return true;
    }
    *left -= 1;
    false
}

/// A random interval averaging `RAMPART_GUARD_SAMPLE`: uniform in `[1, 2n - 1]`.
fn random_interval() -> usize {
    let n = config::guard_sample().max(1);
    if n == 1 {
        return 1;
    }
    let z = crate::util::splitmix64(&SEED);
    (1 + z % (2 * n - 1)) as usize
}
