//! Statistics balance: after a multi-threaded run, for every size class, the blocks
//! allocated minus the blocks freed (counted per thread, merged) equal the blocks the page
//! layer's spans hold (an independent walk of the spans); and the totals agree.
//!
//! Its own test binary without libtest's harness (`harness = false` in Cargo.toml): the
//! check runs on the main thread, so no other live thread (such as the harness's, waiting
//! on the test thread) can hold blocks on a remote list the check cannot collect.

use std::sync::mpsc;

use rampart_suite::XorShift64;

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

fn main() {
    allocated_minus_freed_is_live_per_class();
    println!("stats: 1 passed, 0 failed");
}

fn allocated_minus_freed_is_live_per_class() {
    let (to_main, from_workers) = mpsc::channel::<Vec<Vec<u8>>>();
    let mut handles = Vec::new();
    let mut to_next = Vec::new();
    let mut from_prev = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>();
        to_next.push(tx);
        from_prev.push(rx);
    }
    from_prev.rotate_left(1);
    for (id, (tx, rx)) in to_next.into_iter().zip(from_prev).enumerate() {
        let to_main = to_main.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = XorShift64::new(7 + id as u64);
            let mut mine = Vec::new();
            for round in 0..20 {
                let mut batch = Vec::new();
                for _ in 0..2000 {
                    let len = match rng.below(100) {
                        0..=89 => rng.range(1, 1024),
                        90..=97 => rng.range(1025, 32 * 1024),
                        // Medium classes, then large page runs (above 1 MiB).
                        98 => rng.range(32 * 1024 + 1, 1024 * 1024),
                        _ => rng.range(1024 * 1024 + 1, 2048 * 1024),
                    };
                    batch.push(vec![id as u8; len]);
                }
                // Some to the next thread (freed there: remote frees), some kept, the rest
                // freed here.
                let give: Vec<_> = batch.drain(..500).collect();
                tx.send(give).unwrap();
                mine.extend(batch.drain(..200));
                drop(batch);
                if let Ok(got) = rx.try_recv() {
                    drop(got);
                }
                if round % 5 == 4 {
                    mine.truncate(mine.len() / 2);
                }
            }
            drop(tx);
            for got in rx {
                drop(got);
            }
            to_main.send(mine).unwrap();
        }));
    }
    drop(to_main);
    let kept: Vec<Vec<Vec<u8>>> = from_workers.iter().collect();
    for h in handles {
        h.join().unwrap();
    }
    // The workers exited: their heaps' remote lists are collected by the trim, so every
    // block freed anywhere is back in its span.
    rampart::trim();
    let st = rampart::stats();
    let mut total_counted = 0;
    let mut total_held = 0;
    for c in &st.size_classes {
        let counted = c.live();
        assert_eq!(counted, c.held, "class {} B: {c:?}", c.size);
        total_counted += counted;
        total_held += c.held;
    }
    assert_eq!(total_counted, total_held);
    assert_eq!(st.small_blocks.live(), total_counted);
    let kept_blocks: usize = kept.iter().map(Vec::len).sum();
    assert!(st.small_blocks.live() as usize + st.large_blocks.live() as usize >= kept_blocks);
    assert!(st.small_blocks.allocated >= 4 * 20 * 2000 * 9 / 10);
    assert_eq!(
        st.small_blocks.allocated,
        st.size_classes.iter().map(|c| c.allocated).sum::<u64>()
    );
    assert!(st.remote_frees >= 4 * 500, "{st:?}");
    assert!(
        st.large_blocks.allocated > 0 && st.large_blocks.freed > 0,
        "{st:?}"
    );
    assert!(st.committed_peak >= st.committed && st.reserved_peak >= st.reserved);
    assert!(
        st.pages_in_use_peak >= st.pages_in_use && st.pages_in_use >= st.in_use,
        "{st:?}"
    );
    assert_eq!(
        st.chunks_mapped,
        st.small_span_pages + st.large_block_pages + st.free_pages,
        "{st:?}"
    );
    assert!(st.kernel_calls.mmap > 0 && st.guard_pages > 0, "{st:?}");
    assert!(
        st.thread_heaps.created + st.thread_heaps.reused >= 5,
        "{st:?}"
    );
    drop(kept);
}
