//! Steady-state malloc+free pairs of one size, for counting instructions per pair under
//! callgrind: `valgrind --tool=callgrind target/release/examples/fastpath rampart 64 N` for two
//! values of N; the difference of the totals over the difference of N is the cost of a pair.
//!
//! Usage: `fastpath (rampart|system) SIZE PAIRS`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

/// `n` pairs of `alloc`/`dealloc` of `size` bytes. The size is hidden from the optimiser on
/// every iteration (as a C program's `malloc(n)` would be); the alignment is the constant 8,
/// as in the Layout of most Rust types.
fn pairs<A: GlobalAlloc>(a: &A, size: usize, n: u64) {
    for _ in 0..n {
        // SAFETY: 8 is a power of two and the size is small; the block is freed with the same
        // layout it was allocated with.
        unsafe {
            let layout = Layout::from_size_align_unchecked(black_box(size), 8);
            let p = a.alloc(layout);
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: fastpath (rampart|system) SIZE PAIRS";
    let which = args.get(1).expect(usage);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
    assert!((1..=1 << 20).contains(&size), "{usage}");
    match which.as_str() {
        "rampart" => pairs(&rampart::Rampart, size, n),
        "system" => pairs(&System, size, n),
        _ => panic!("{usage}"),
    }
}
