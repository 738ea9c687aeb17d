//! The heap's slow paths on a fake span source: a private page layer over the system
//! allocator (`pages::tests::FakeSource`), so nothing here touches the process's heaps.
use super::*;
use crate::pages::tests::{fake_map, FakeSource};
use crate::pages::Pages;
use crate::size_class::{class_of, class_size, MIN_ALIGN};
use std::cell::RefCell;
use std::collections::HashSet;

/// Spans from a page layer of its own; never takes over other heaps' spans.
struct FakeSpans {
    pages: RefCell<Pages<FakeSource>>,
}

impl FakeSpans {
    fn new(chunks: usize) -> Self {
        Self {
            pages: RefCell::new(Pages::new(FakeSource::new(chunks), fake_map())),
        }
    }

    /// Runs handed out and not given back.
    fn live_runs(&self) -> usize {
        self.pages.borrow().usage().slab
    }
}

// SAFETY: runs come from a page layer's alloc_run as slabs of 2^order pages aligned to
// their size, go back with free_run, and that layer's map knows their pages; no take-over.
unsafe impl SpanSource for FakeSpans {
    fn span_alloc(&self, order: u32) -> Option<NonNull<Span>> {
        self.pages
            .borrow_mut()
            .alloc_run(1 << order, order, State::Slab)
    }
    unsafe fn span_free(&self, s: NonNull<Span>) {
        // SAFETY: the caller gives back a run of ours that nobody uses.
        unsafe { self.pages.borrow_mut().free_run(s) };
    }
    fn span_of(&self, addr: usize) -> Option<NonNull<Span>> {
        self.pages.borrow().map.span_of(addr)
    }
    unsafe fn take_over(&self, _h: &mut Heap) -> bool {
        false
    }
}

/// A heap of the test's own (never registered, never any thread's current heap), with a
/// free-list key as a registered heap has.
fn test_heap() -> Box<Heap> {
    Box::new(Heap {
        key: 0x9e37_79b9_7f4a_7c15,
        ..Heap::new()
    })
}

/// Allocates `n` blocks of `class` from `h` (counted, as the slow path does).
fn alloc_n(h: &mut Heap, class: usize, n: usize, src: &FakeSpans) -> Vec<*mut u8> {
    (0..n)
        .map(|_| {
            // SAFETY: the test owns `h`, whose spans are all `src`'s; class is valid.
            let p = unsafe { counted_alloc_from(h, class, src) };
            assert!(!p.is_null());
            p
        })
        .collect()
}

/// Frees `p` to `h` as its owner thread would (the fast path's push).
fn free_own(h: &mut Heap, p: *mut u8, src: &FakeSpans) {
    let s = src.span_of(p as usize).expect("a block of ours").as_ptr();
    // SAFETY: `p` is a live block of `s`, a slab of `h` from `src`.
    unsafe { free_local(h, s, p, src, "free") };
}

#[test]
fn blocks_are_distinct_and_spans_go_back_when_empty() {
    let src = FakeSpans::new(8);
    let mut h = test_heap();
    let class = class_of(48);
    let size = class_size(class);
    let blocks = alloc_n(&mut h, class, 5000, &src);
    let distinct: HashSet<usize> = blocks.iter().map(|&p| p as usize).collect();
    assert_eq!(distinct.len(), blocks.len(), "a block was handed out twice");
    for &p in &blocks {
        assert_eq!(p as usize % MIN_ALIGN, 0);
        // SAFETY: a live block of `size` bytes, ours.
        unsafe { ptr::write_bytes(p, 0x5c, size) };
    }
    // SAFETY: the test owns the heap.
    unsafe { validate_heap(&mut *h) };
    let spans_used = src.live_runs();
    assert!(spans_used > 1, "5000 blocks of 48 B fill several spans");
    for &p in blocks.iter().rev() {
        free_own(&mut h, p, &src);
    }
    // SAFETY: the test owns the heap; no thread uses it.
    unsafe { validate_heap(&mut *h) };
    // Only the current span stays (its reference keeps it); the rest went back.
    let left = src.live_runs();
    assert!(
        left <= 1 << span_order(class),
        "{left} pages of spans kept after every block was freed"
    );
    assert_eq!(h.counters.alloc[class].get(), 5000);
    assert_eq!(h.counters.free[class].get(), 5000);
}

#[test]
fn remote_frees_are_collected_on_the_slow_path() {
    let src = FakeSpans::new(8);
    let mut owner = test_heap();
    let class = class_of(200);
    let blocks = alloc_n(&mut owner, class, 3000, &src);
    // Another thread's frees: pushes onto the owner's remote list.
    for &p in &blocks {
        // SAFETY: live blocks of `owner`'s spans, given up here.
        unsafe { remote_push(&mut *owner, p, "free") };
    }
    assert_ne!(owner.remote.load(Ordering::Relaxed), 0);
    // The owner's next slow-path allocation collects them, and reuses one.
    let again = alloc_n(&mut owner, class, 1, &src)[0];
    assert_eq!(owner.remote.load(Ordering::Relaxed), 0);
    assert!(blocks.contains(&again), "a collected block is reused first");
    // SAFETY: the test owns the heap.
    unsafe { validate_heap(&mut *owner) };
    free_own(&mut owner, again, &src);
    assert!(src.live_runs() <= 1 << span_order(class));
}

#[test]
fn exhaustion_is_null_and_abandon_keeps_only_live_spans() {
    let src = FakeSpans::new(1);
    let mut h = test_heap();
    let class = class_of(4096);
    let mut blocks = Vec::new();
    loop {
        // SAFETY: the test owns `h`; its spans are `src`'s.
        let p = unsafe { counted_alloc_from(&mut h, class, &src) };
        if p.is_null() {
            break;
        }
        blocks.push(p);
    }
    assert!(!blocks.is_empty(), "one chunk holds some spans");
    // SAFETY: the test owns the heap.
    unsafe { validate_heap(&mut *h) };
    // Keep one block in each span, free the rest, then abandon the heap: empty spans go
    // back, the others stay listed (for a later take-over).
    let mut kept: HashSet<usize> = HashSet::new();
    for &p in &blocks {
        let s = src.span_of(p as usize).unwrap().as_ptr() as usize;
        if !kept.insert(s) {
            free_own(&mut h, p, &src);
        }
    }
    // SAFETY: the test owns the heap and will not use it again.
    unsafe { abandon(&mut h, &src) };
    // SAFETY: as above (abandoned, still ours here).
    unsafe { validate_heap(&mut *h) };
    assert!(h.current.iter().all(|&c| c == EMPTY_SPAN_PTR));
    // Each span that kept a block stays listed (partial or full), every other one went back.
    let listed: usize = h.partial.iter().chain(h.full.iter()).map(list_len).sum();
    assert_eq!(listed, kept.len(), "spans listed after abandon");
    assert_eq!(src.live_runs(), kept.len() << span_order(class));
}

/// The spans in a heap list.
fn list_len(list: &SpanList) -> usize {
    let (mut n, mut s) = (0, list.head());
    while !s.is_null() {
        n += 1;
        // SAFETY: a listed span of a heap the test owns: a live descriptor.
        s = unsafe { (*s).next };
    }
    n
}
