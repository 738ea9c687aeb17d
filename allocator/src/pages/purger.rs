//! The background purger (`RAMPART_PURGE_THREAD`, on by default): a helper thread that runs
//! the purge steps when their delay is up, so that a program that frees most of its heap and
//! then makes no allocator call gets its memory back all the same. Without it, purge steps
//! only ride on the page layer's operations ([`super::with`]): an idle process would keep
//! what it freed last (16.5 MiB of 512 MiB in issue #12's measurement).
//!
//! It is started the first time something waits to be purged (a chunk queued, a huge
//! mapping cached: [`PageSource::purge_pending`] of the process's page source), from under
//! the page lock, which is safe because the thread is made with a raw `clone` that takes no
//! lock and allocates nothing (`os::spawn_helper_thread`). It sleeps until the oldest
//! waiting purge is due, runs the steps that are, and when nothing waits it parks on a
//! futex that the next `purge_pending` wakes (one system call, only while it is parked).
//! A `fork` child has no purger: its first `purge_pending` starts one.
//!
//! Costs: one thread (visible in `/proc/self/task`, and a process with it is no longer
//! single-threaded for `unshare(CLONE_NEWUSER)`), 256 KiB of address space for its stack,
//! and a wake-up per purge delay while memory waits to be purged.
//!
//! [`PageSource::purge_pending`]: super::PageSource::purge_pending

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use super::purge::purge_unlocked;
use super::PAGES;
use crate::os;

/// The purger's state: not started, running, or not to be started (option off, or the
/// thread could not be made).
static STATE: AtomicU8 = AtomicU8::new(IDLE);
const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const OFF: u8 = 2;

/// The futex the purger parks on: 1 while parked (nothing waits to be purged).
static PARKED: AtomicU32 = AtomicU32::new(0);

/// Something waits to be purged (called under the page lock): starts the purger the first
/// time, wakes it if it is parked.
pub(super) fn pending() {
    match STATE.load(Ordering::Relaxed) {
        RUNNING if PARKED.load(Ordering::Relaxed) == 1 => {
            PARKED.store(0, Ordering::Relaxed);
            os::futex_wake_one(&PARKED);
        }
        IDLE => start(),
        _ => {}
    }
}

#[cold]
fn start() {
    if !crate::config::purge_thread() {
        STATE.store(OFF, Ordering::Relaxed);
        return;
    }
    // SAFETY: `run` keeps spawn_helper_thread's rules: it calls only the page layer's purge
    // steps (futex locks, madvise and munmap through rustix, the vDSO clock) and never
    // returns.
    let started = unsafe { os::spawn_helper_thread(run, 0) };
    STATE.store(if started { RUNNING } else { OFF }, Ordering::Relaxed);
}

/// After `fork`, in the child: the purger thread is not there; the next pending purge starts
/// one.
pub fn after_fork_child() {
    if STATE.load(Ordering::Relaxed) == RUNNING {
        STATE.store(IDLE, Ordering::Relaxed);
    }
    PARKED.store(0, Ordering::Relaxed);
}

/// The purger's loop.
extern "C" fn run(_: usize) -> ! {
    loop {
        let mut pages = PAGES.lock();
        if pages.purge_due() {
            purge_unlocked(pages);
            continue;
        }
        match pages.next_purge_ms() {
            Some(at) => {
                let wait = at.saturating_sub(pages.now_ms).clamp(1, 1000);
                drop(pages);
                os::futex_wait_ms(&PARKED, 0, wait);
            }
            None => {
                // Nothing waits: park until `pending` wakes us (it runs under the page lock,
                // which we hold while we mark ourselves parked, so no wake-up is lost).
                PARKED.store(1, Ordering::Relaxed);
                drop(pages);
                while PARKED.load(Ordering::Relaxed) == 1 {
                    os::futex_wait(&PARKED, 1);
                }
            }
        }
    }
}
