//! Criterion micro-benchmarks: `rampart::Rampart` against glibc (`std::alloc::System`) in the
//! same run, both called directly through `GlobalAlloc` (the harness itself runs on the
//! default allocator, glibc, so it weighs the same on both sides).
//!
//! Every case is a benchmark group with two functions, `rampart` and `glibc`:
//!
//! - `malloc_free/SIZE`: one `alloc` + `dealloc` pair, 16 B to 1 MiB;
//! - `batch/{64B,mixed}/{lifo,fifo}`: 1,000 blocks allocated, then freed newest first or
//!   oldest first (throughput in blocks);
//! - `realloc/{double,step16}`: one block grown from 16 B to 16 MiB by doubling, or from
//!   16 B to 32 KiB (rampart's small classes) in 16 B steps, the last byte written each step;
//! - `aligned/ALIGN`: `alloc` + `dealloc` of 64 B at alignments 64 B to 2 MiB;
//! - `cross_thread/{64B,mixed}`: a producer allocates blocks and sends them in batches to a
//!   consumer thread that frees them; the time is per block, both threads' work included.
//!
//! ```sh
//! cargo bench --bench micro                      # everything, about two minutes
//! cargo bench --bench micro -- --quick           # a short run
//! cargo bench --bench micro -- malloc_free/64B   # one case (a filter on the names)
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};

/// The alignment of the plain allocations: that of most Rust types. For sizes of at least 8,
/// `System` serves it with `malloc` (and `realloc`), as a C program would call it.
const ALIGN: usize = 8;

/// Blocks per batch in the batch cases.
const BATCH: usize = 1_000;

/// Pointers per message in the cross-thread cases, and messages the channel holds before
/// the producer waits for the consumer.
const HANDOFF: usize = 64;
const QUEUE_DEPTH: usize = 16;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("a valid layout")
}

/// A human name for a byte count: `64B`, `4KiB`, `2MiB`.
fn bytes(n: usize) -> String {
    if n != 0 && n.trailing_zeros() >= 20 {
        format!("{}MiB", n >> 20)
    } else if n != 0 && n.trailing_zeros() >= 10 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// `BATCH` sizes from 8 B to 64 KiB with a small-heavy mix (about 60 % up to 128 B, 30 %
/// up to 1 KiB, 9 % up to 8 KiB, 1 % up to 64 KiB), from a fixed seed so every run and
/// both allocators see the same sequence.
fn mixed_layouts(n: usize) -> Vec<Layout> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let r = next();
            let (lo, hi) = match r % 100 {
                0..=59 => (8, 128),
                60..=89 => (129, 1024),
                90..=98 => (1025, 8 << 10),
                _ => (8 << 10 | 1, 64 << 10),
            };
            layout(lo + (next() as usize) % (hi - lo + 1), ALIGN)
        })
        .collect()
}

/// Runs `f` for both allocators as the two functions of one group, after `setup` has
/// configured the group (throughput, sampling).
fn both(
    c: &mut Criterion,
    name: &str,
    setup: impl FnOnce(&mut Bench),
    f: impl Fn(&mut Bench, &str),
) {
    let mut group = c.benchmark_group(name);
    setup(&mut group);
    f(&mut group, "rampart");
    f(&mut group, "glibc");
    group.finish();
}

/// No group settings beyond the defaults.
fn plain(_: &mut Bench) {}

/// Throughput counted in blocks, `n` per iteration.
fn per_block(n: u64) -> impl FnOnce(&mut Bench) {
    move |g| {
        g.throughput(Throughput::Elements(n));
    }
}

type Bench<'a> = BenchmarkGroup<'a, WallTime>;

/// Calls `$body` with `$a` bound to the allocator named `$which`, monomorphised for each.
macro_rules! with_alloc {
    ($which:expr, |$a:ident| $body:expr) => {
        match $which {
            "rampart" => {
                let $a = &rampart::Rampart;
                $body
            }
            _ => {
                let $a = &System;
                $body
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// 1. malloc + free pairs

fn malloc_free<A: GlobalAlloc>(a: &A, size: usize) {
    let layout = layout(black_box(size), ALIGN);
    // SAFETY: the layout has a non-zero size; the block is freed once, with the layout it
    // was allocated with, and only when the allocation succeeded.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null(), "out of memory");
        a.dealloc(black_box(p), layout);
    }
}

/// The sizes of the malloc + free pairs: 16 B to 1 MiB, by fours.
const PAIR_SIZES: [usize; 9] = [
    16,
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
];

fn bench_malloc_free(c: &mut Criterion) {
    for size in PAIR_SIZES {
        both(
            c,
            &format!("malloc_free/{}", bytes(size)),
            plain,
            |g, which| {
                with_alloc!(which, |a| g
                    .bench_function(which, |b| { b.iter(|| malloc_free(a, size)) }));
            },
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. batches, freed LIFO or FIFO

/// Allocates one block per layout into `blocks` (writing its first byte), then frees them
/// newest first (`lifo`) or oldest first.
fn batch<A: GlobalAlloc>(a: &A, layouts: &[Layout], blocks: &mut Vec<*mut u8>, lifo: bool) {
    blocks.clear();
    for &layout in layouts {
        // SAFETY: every layout has a non-zero size; the written byte is inside the block.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "out of memory");
            p.write(1);
            blocks.push(black_box(p));
        }
    }
    let free = |(&p, &layout): (&*mut u8, &Layout)| {
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe { a.dealloc(p, layout) }
    };
    if lifo {
        blocks.iter().zip(layouts).rev().for_each(free);
    } else {
        blocks.iter().zip(layouts).for_each(free);
    }
}

fn bench_batch(c: &mut Criterion) {
    let fixed = vec![layout(64, ALIGN); BATCH];
    let mixed = mixed_layouts(BATCH);
    for (kind, layouts) in [("64B", &fixed), ("mixed", &mixed)] {
        for (order, lifo) in [("lifo", true), ("fifo", false)] {
            let name = format!("batch/{kind}/{order}");
            both(c, &name, per_block(BATCH as u64), |g, which| {
                let mut blocks = Vec::with_capacity(BATCH);
                with_alloc!(which, |a| g.bench_function(which, |b| {
                    b.iter(|| batch(a, layouts, &mut blocks, lifo))
                }));
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. realloc growth

/// Grows one block from 16 B to `end` bytes, to `next(size)` each step, writing the last
/// byte of the block after each step, then frees it.
fn realloc_growth<A: GlobalAlloc>(a: &A, end: usize, next: impl Fn(usize) -> usize) {
    let mut size = 16;
    // SAFETY: the block is live throughout: each realloc is given the block's current
    // layout and a non-zero size that does not overflow isize when rounded to ALIGN, and
    // its result replaces it; the written byte is the block's last; the final block is
    // freed with its layout.
    unsafe {
        let mut p = a.alloc(layout(size, ALIGN));
        assert!(!p.is_null(), "out of memory");
        p.add(size - 1).write(1);
        while size < end {
            let new_size = next(size);
            p = a.realloc(p, layout(size, ALIGN), new_size);
            assert!(!p.is_null(), "out of memory");
            size = new_size;
            p.add(size - 1).write(1);
        }
        a.dealloc(black_box(p), layout(size, ALIGN));
    }
}

fn bench_realloc(c: &mut Criterion) {
    // An iteration can take milliseconds (a copy of megabytes): the same number of
    // iterations per sample keeps the sample count within the measurement time.
    let flat = |g: &mut Bench| {
        g.sampling_mode(SamplingMode::Flat);
    };
    both(c, "realloc/double", flat, |g, which| {
        with_alloc!(which, |a| g.bench_function(which, |b| {
            b.iter(|| realloc_growth(a, 16 << 20, |s| s * 2))
        }));
    });
    both(c, "realloc/step16", plain, |g, which| {
        with_alloc!(which, |a| g.bench_function(which, |b| {
            b.iter(|| realloc_growth(a, 32 << 10, |s| s + 16))
        }));
    });
}

// ---------------------------------------------------------------------------------------
// 4. aligned allocation

fn bench_aligned(c: &mut Criterion) {
    for align in [64, 4 << 10, 64 << 10, 2 << 20] {
        both(
            c,
            &format!("aligned/{}", bytes(align)),
            plain,
            |g, which| {
                with_alloc!(which, |a| g.bench_function(which, |b| {
                    b.iter(|| {
                        let layout = layout(64, black_box(align));
                        // SAFETY: a non-zero size; freed once with its layout, on success only.
                        unsafe {
                            let p = a.alloc(layout);
                            assert!(!p.is_null(), "out of memory");
                            debug_assert_eq!(p as usize % align, 0);
                            a.dealloc(black_box(p), layout);
                        }
                    })
                }));
            },
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. producer -> consumer frees across threads

/// Blocks on their way from the producer to the consumer.
struct Handoff(Vec<(*mut u8, Layout)>);

// SAFETY: the blocks are plain memory owned by whoever holds the message; the producer
// never touches a block after sending it, and the allocators free blocks from any thread.
unsafe impl Send for Handoff {}

/// Allocates `blocks` blocks on this thread (cycling through `layouts`, writing each first
/// byte) and has a fresh consumer thread free them, `HANDOFF` per message; returns the time
/// from the first allocation until the consumer has freed the last block. Emptied messages
/// come back to the producer, so the channels' own allocations stay out of the loop.
fn producer_consumer<A: GlobalAlloc + Sync>(a: &A, layouts: &[Layout], blocks: u64) -> Duration {
    let (to_consumer, from_producer) = mpsc::sync_channel::<Handoff>(QUEUE_DEPTH);
    let (to_producer, returned) = mpsc::channel::<Handoff>();
    for _ in 0..QUEUE_DEPTH + 2 {
        to_producer
            .send(Handoff(Vec::with_capacity(HANDOFF)))
            .expect("the receiver is here");
    }
    thread::scope(|s| {
        let consumer = s.spawn(move || {
            for mut msg in from_producer {
                for &(p, layout) in &msg.0 {
                    // SAFETY: the producer allocated `p` with `layout` and gave it up.
                    unsafe { a.dealloc(p, layout) }
                }
                msg.0.clear();
                // The producer may have stopped listening after its last message.
                let _ = to_producer.send(msg);
            }
        });
        let start = Instant::now();
        let mut msg = returned.recv().expect("a spare message");
        for (_, &layout) in (0..blocks).zip(layouts.iter().cycle()) {
            // SAFETY: a non-zero size; the written byte is inside the block, which is
            // handed to the consumer and not touched again here.
            let p = unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null(), "out of memory");
                p.write(1);
                p
            };
            msg.0.push((p, layout));
            if msg.0.len() == HANDOFF {
                to_consumer.send(msg).expect("the consumer is running");
                msg = returned.recv().expect("the consumer returns messages");
            }
        }
        to_consumer.send(msg).expect("the consumer is running");
        drop(to_consumer);
        consumer.join().expect("the consumer does not panic");
        start.elapsed()
    })
}

fn bench_cross_thread(c: &mut Criterion) {
    let fixed = [layout(64, ALIGN)];
    let mixed = mixed_layouts(BATCH);
    for (kind, layouts) in [("64B", &fixed[..]), ("mixed", &mixed[..])] {
        both(
            c,
            &format!("cross_thread/{kind}"),
            per_block(1),
            |g, which| {
                with_alloc!(which, |a| g.bench_function(which, |b| {
                    b.iter_custom(|blocks| producer_consumer(a, layouts, blocks))
                }));
            },
        );
    }
}

// ---------------------------------------------------------------------------------------

/// Short enough that the whole run takes about two minutes on two cores (about 40
/// functions); `--warm-up-time`, `--measurement-time`, `--sample-size` and `--quick` on the
/// command line override it.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
}

criterion_group! {
    name = micro;
    config = config();
    targets = bench_malloc_free, bench_batch, bench_realloc, bench_aligned, bench_cross_thread
}
criterion_main!(micro);
