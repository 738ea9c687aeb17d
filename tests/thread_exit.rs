//! Allocation after rampart's own thread clean-up: a `pthread` key destructor that runs later
//! (in every one of glibc's destructor rounds) allocates and frees. The heap the thread
//! borrows then must be handed back, not left with the dead thread: a series of such threads
//! must keep reusing a few heaps.
//!
//! Its own test binary (its own process), so the registry counts are this test's alone.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

static ROUNDS: AtomicUsize = AtomicUsize::new(0);
static KEY: AtomicUsize = AtomicUsize::new(0);

/// Allocates, frees, and re-arms the key, so glibc calls it again in its next round, up to
/// its limit of rounds, after rampart's destructor has run.
unsafe extern "C" fn allocating_dtor(value: *mut libc::c_void) {
    ROUNDS.fetch_add(1, Ordering::Relaxed);
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: a plain allocation and its free; the key is valid.
    unsafe {
        let p = GLOBAL.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(0xab, 64);
        let keep = GLOBAL.alloc(Layout::from_size_align(4000, 16).unwrap());
        assert!(!keep.is_null());
        GLOBAL.dealloc(keep, Layout::from_size_align(4000, 16).unwrap());
        GLOBAL.dealloc(p, layout);
        libc::pthread_setspecific(KEY.load(Ordering::Relaxed) as libc::pthread_key_t, value);
    }
}

#[test]
fn allocation_in_late_destructors_does_not_strand_heaps() {
    // Make rampart's own key first, so ours runs after it within each round.
    drop(std::thread::spawn(|| Box::new(1)).join());
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a valid out-pointer and destructor.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(allocating_dtor)) };
    assert_eq!(rc, 0);
    KEY.store(key as usize, Ordering::Relaxed);
    let before = rampart::internals::registry_counts();
    for _ in 0..200 {
        std::thread::spawn(move || {
            let v: Vec<u64> = (0..1000).collect();
            // SAFETY: the key is valid; a non-null value arms the destructor.
            unsafe { libc::pthread_setspecific(key, std::ptr::dangling_mut::<libc::c_void>()) };
            v.iter().sum::<u64>()
        })
        .join()
        .unwrap();
    }
    let after = rampart::internals::registry_counts();
    assert!(
        ROUNDS.load(Ordering::Relaxed) >= 200 * 2,
        "the destructor ran in several rounds"
    );
    assert!(
        after.created - before.created <= 4,
        "200 threads that allocate in late destructors made {} new heaps ({after:?})",
        after.created - before.created
    );
}
