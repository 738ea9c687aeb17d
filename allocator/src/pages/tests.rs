//! Unit tests of the page layer, on a fake page source.
use super::*;
use core::sync::atomic::Ordering;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A page source over the system allocator: "chunks" are aligned heap blocks.
pub struct FakeSource {
    pub live_chunks: Cell<usize>,
    pub limit: Cell<usize>,
    /// The fake clock (ms).
    pub now: Cell<u64>,
}

impl FakeSource {
    pub fn new(limit: usize) -> Self {
        Self {
            live_chunks: Cell::new(0),
            limit: Cell::new(limit),
            now: Cell::new(1_000_000),
        }
    }
}

const CHUNK_LAYOUT: Layout = match Layout::from_size_align(CHUNK_SIZE, CHUNK_SIZE) {
    Ok(l) => l,
    Err(_) => panic!(),
};

// SAFETY: chunks are aligned zeroed blocks of the system allocator, metadata zeroed
// page-aligned blocks, decommit zeroes the range, the fake clock only moves forward.
unsafe impl PageSource for FakeSource {
    fn chunk_alloc(&self) -> Option<NonNull<u8>> {
        if self.live_chunks.get() == self.limit.get() {
            return None;
        }
        self.live_chunks.set(self.live_chunks.get() + 1);
        // SAFETY: non-zero layout.
        NonNull::new(unsafe { System.alloc_zeroed(CHUNK_LAYOUT) })
    }
    unsafe fn chunk_free(&self, chunk: NonNull<u8>) {
        self.live_chunks.set(self.live_chunks.get() - 1);
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(chunk.as_ptr(), CHUNK_LAYOUT) }
    }
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
    unsafe fn decommit(&self, addr: NonNull<u8>, len: usize) -> bool {
        // What the kernel does to decommitted pages: they read as zero.
        // SAFETY: the caller gives up the range, which lies in one of our chunks.
        unsafe { ptr::write_bytes(addr.as_ptr(), 0, len) };
        true
    }
    fn meta_alloc(&self, len: usize) -> Option<NonNull<u8>> {
        // Map nodes are leaked on purpose: they live as long as the test.
        // SAFETY: non-zero layout.
        NonNull::new(unsafe {
            System.alloc_zeroed(Layout::from_size_align(len, PAGE_SIZE).unwrap())
        })
    }
    unsafe fn meta_free(&self, p: NonNull<u8>, len: usize) {
        // SAFETY: allocated by meta_alloc with this layout.
        unsafe { System.dealloc(p.as_ptr(), Layout::from_size_align(len, PAGE_SIZE).unwrap()) }
    }
}

pub fn fake_map() -> &'static PageMap {
    Box::leak(Box::new(PageMap::new()))
}

fn chunk_of(p: &Pages<FakeSource>, s: NonNull<Span>) -> *mut Chunk {
    // SAFETY: every caller passes a run it allocated from `p` and has not freed: a
    // descriptor in a live chunk of `p`.
    unsafe { p.locate(s.as_ptr()).0 }
}

#[test]
fn split_and_merge_back_to_one_chunk() {
    let mut p = Pages::new(FakeSource::new(4), fake_map());
    let a = p.alloc_run(1, 0, State::Large).unwrap();
    let chunk = chunk_of(&p, a);
    // SAFETY: `a` was allocated just above and is not freed yet.
    let base = unsafe { a.as_ref().addr };
    assert_eq!(base % CHUNK_SIZE, 0);
    let b = p.alloc_run(3, 0, State::Large).unwrap();
    let c = p.alloc_run(16, 4, State::Large).unwrap();
    // SAFETY: `a`, `b` and `c` were allocated above and are each freed once, here, after
    // their last reads; `chunk` is `a`'s chunk, live until the last of them is freed.
    unsafe {
        assert_eq!(c.as_ref().addr % (16 * PAGE_SIZE), 0);
        assert_eq!(b.as_ref().npages, 3);
        assert!(a.as_ref().flags & FLAG_CLEAN != 0);
        p.validate();
        p.validate_chunk(chunk);
        p.free_run(b);
        p.validate_chunk(chunk);
        p.free_run(a);
        p.free_run(c);
    }
    p.validate();
    assert_eq!(p.free[CHUNK_ORDER as usize].head(), chunk.cast::<Span>());
    assert_eq!(
        (p.chunks, p.kept),
        (1, 1),
        "the last free chunk stays mapped"
    );
}

#[test]
fn runs_do_not_overlap_and_reuse_is_dirty() {
    let mut p = Pages::new(FakeSource::new(8), fake_map());
    let mut runs = Vec::new();
    let mut seed = 12345u64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if runs.len() > 40 || (seed.is_multiple_of(3) && !runs.is_empty()) {
            let i = (seed as usize / 3) % runs.len();
            let s: NonNull<Span> = runs.swap_remove(i);
            // SAFETY: `s` was taken out of `runs`, which holds the runs allocated and not
            // freed yet; it is freed once.
            unsafe { p.free_run(s) };
        } else {
            let n = 1 + (seed as usize >> 20) % 300;
            if let Some(s) = p.alloc_run(n, 0, State::Large) {
                runs.push(s);
            }
        }
        p.validate();
    }
    let mut ranges: Vec<(usize, usize)> = runs
        .iter()
        // SAFETY: `runs` holds the runs allocated and not freed yet.
        .map(|s| unsafe {
            (
                s.as_ref().addr,
                s.as_ref().addr + s.as_ref().npages as usize * PAGE_SIZE,
            )
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {w:?}");
    }
    for s in runs {
        // SAFETY: `s` is one of `runs`, allocated above and still live (runs freed in the loop
        // were taken out of the vector); each is freed once here.
        unsafe { p.free_run(s) };
    }
    p.validate();
    assert!(
        p.chunks >= 1 && p.chunks == p.kept,
        "every chunk is wholly free, and kept"
    );
    let again = p.alloc_run(1, 0, State::Large).unwrap();
    // SAFETY: `again` is a run this test allocated on the line above and has not freed.
    assert_eq!(unsafe { again.as_ref().flags } & FLAG_CLEAN, 0);
}

#[test]
fn wholly_free_chunks_stay_mapped_up_to_the_bound_and_are_reused() {
    let n = KEPT_CHUNKS + 3;
    let mut p = Pages::new(FakeSource::new(n), fake_map());
    let runs: Vec<_> = (0..n)
        .map(|_| p.alloc_run(PAGES_PER_CHUNK, 0, State::Large).unwrap())
        .collect();
    assert_eq!(p.source.live_chunks.get(), n);
    for s in runs {
        // SAFETY: `s` is one of the runs allocated above; each is freed once here.
        unsafe { p.free_run(s) };
    }
    p.validate();
    assert_eq!(
        p.source.live_chunks.get(),
        KEPT_CHUNKS,
        "the bound, no more"
    );
    assert_eq!((p.chunks, p.kept), (KEPT_CHUNKS, KEPT_CHUNKS));
    // A new run comes from a kept chunk: nothing is mapped.
    let again = p.alloc_run(PAGES_PER_CHUNK, 0, State::Large).unwrap();
    assert_eq!(p.source.live_chunks.get(), KEPT_CHUNKS);
    assert_eq!(
        p.kept,
        KEPT_CHUNKS - 1,
        "the chunk in use is no longer kept"
    );
    p.validate();
    // A trim unmaps the kept ones and leaves the chunk in use.
    p.trim();
    assert_eq!((p.source.live_chunks.get(), p.kept), (1, 0));
    // SAFETY: `again` was allocated above and not freed since.
    unsafe { p.free_run(again) };
    assert_eq!((p.chunks, p.kept), (1, 1));
    p.validate();
}

#[test]
fn trim_decommits_free_pages_and_unmaps_the_kept_chunks() {
    let mut p = Pages::new(FakeSource::new(4), fake_map());
    let keep = p.alloc_run(1, 0, State::Large).unwrap();
    let runs: Vec<_> = (0..3)
        .map(|_| p.alloc_run(PAGES_PER_CHUNK, 0, State::Large).unwrap())
        .collect();
    // SAFETY: `keep` was allocated above and not freed: its one page is ours to fill.
    unsafe { ptr::write_bytes(keep.as_ref().addr as *mut u8, 0xee, PAGE_SIZE) };
    let freed = p.alloc_run(8, 0, State::Large).unwrap();
    // SAFETY: `freed` was allocated on the line above and not freed yet.
    let freed_addr = unsafe { freed.as_ref().addr };
    // SAFETY: `freed` is still live (8 pages at `freed_addr`), and freed once, here.
    unsafe {
        ptr::write_bytes(freed_addr as *mut u8, 0xee, 8 * PAGE_SIZE);
        p.free_run(freed);
    }
    for s in runs {
        // SAFETY: `s` is one of the three whole-chunk runs allocated above, freed once here.
        unsafe { p.free_run(s) };
    }
    assert_eq!(
        p.source.live_chunks.get(),
        4,
        "one chunk in use, three kept"
    );
    let released = p.trim();
    assert_eq!(p.source.live_chunks.get(), 1, "the kept chunks are gone");
    assert!(
        released >= 3 * CHUNK_SIZE + 8 * PAGE_SIZE,
        "released {released}"
    );
    // SAFETY: the freed run's pages are free and decommitted (read as zero).
    let bytes = unsafe { core::slice::from_raw_parts(freed_addr as *const u8, 8 * PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0));
    assert_eq!(p.trim(), 0, "nothing left to give back");
    let again = p.alloc_run(8, 0, State::Large).unwrap();
    // SAFETY: `again` is a run this test allocated on the line above and has not freed.
    let flags = unsafe { again.as_ref().flags };
    assert_ne!(flags & FLAG_CLEAN, 0, "decommitted pages are clean");
    p.validate();
}

/// A page layer of at most two chunks with one page kept and `count` runs of `npages` after
/// it, and the runs' addresses.
#[allow(clippy::type_complexity)]
fn kept_page_and_runs(
    count: usize,
    npages: usize,
) -> (
    Pages<FakeSource>,
    NonNull<Span>,
    Vec<NonNull<Span>>,
    Vec<usize>,
) {
    let mut p = Pages::new(FakeSource::new(2), fake_map());
    let keep = p.alloc_run(1, 0, State::Large).unwrap();
    let runs: Vec<_> = (0..count)
        .map(|_| p.alloc_run(npages, 0, State::Large).unwrap())
        .collect();
    // SAFETY: `runs` were all allocated on the lines above and none is freed.
    let addrs: Vec<usize> = runs.iter().map(|s| unsafe { s.as_ref().addr }).collect();
    (p, keep, runs, addrs)
}

#[test]
fn free_pages_are_purged_after_the_delay_only() {
    let delay = crate::config::purge_delay_ms();
    let (mut p, keep, runs, addrs) = kept_page_and_runs(8, 16);
    for (s, &a) in runs.into_iter().zip(&addrs) {
        // SAFETY: `s` is one of the runs kept_page_and_runs allocated (16 pages at `a`), not
        // freed before: dirty it, then free it once.
        unsafe {
            ptr::write_bytes(a as *mut u8, 0x5a, 16 * PAGE_SIZE);
            p.free_run(s);
        }
    }
    let dirty = |a: usize| {
        // SAFETY: the run's pages are in a live chunk (free now).
        unsafe { *(a as *const u8) == 0x5a }
    };
    assert!(addrs.iter().all(|&a| dirty(a)));
    // Before the delay: nothing is returned, however many operations run.
    p.source.now.set(p.source.now.get() + delay / 2);
    for _ in 0..10 {
        let t = p.alloc_run(1, 0, State::Large).unwrap();
        // SAFETY: `t` was allocated on the line above and is freed only here.
        unsafe { p.free_run(t) };
        p.purge_step();
    }
    assert_eq!(p.purged_bytes, 0);
    // Within two delays of their freeing, operations return them (each visit returns
    // what the one before found free and dirty).
    for _ in 0..3 {
        p.source.now.set(p.source.now.get() + delay / 2 + 1);
        let t = p.alloc_run(1, 0, State::Large).unwrap();
        // SAFETY: `t` was allocated on the line above and is freed only here.
        unsafe { p.free_run(t) };
        p.purge_step();
    }
    assert!(
        p.purged_bytes >= 8 * 16 * PAGE_SIZE,
        "purged {}",
        p.purged_bytes
    );
    assert!(
        addrs.iter().all(|&a| !dirty(a)),
        "freed pages read as zero after the purge"
    );
    p.validate();
    // SAFETY: `keep` is the page kept_page_and_runs allocated; nothing freed it yet.
    unsafe { p.free_run(keep) };
}

/// Frees `n` runs of 16 pages spread over `n / 64` chunks (every other one, then the
/// rest), with a purge step due at every operation (the clock moves a purge delay each
/// time: the worst case, a very slow machine), and returns the runs and free blocks the
/// purge steps looked at.
fn purge_visits_freeing(n: usize) -> u64 {
    let delay = crate::config::purge_delay_ms().max(1);
    let mut p = Pages::new(FakeSource::new(n / 64 + 2), fake_map());
    let runs: Vec<_> = (0..n)
        .map(|_| p.alloc_run(16, 0, State::Large).unwrap())
        .collect();
    assert_eq!(p.chunks, n / 64);
    for pass in 0..2 {
        for s in runs.iter().skip(pass).step_by(2) {
            p.source.now.set(p.source.now.get() + delay);
            // SAFETY: each run is freed once.
            unsafe { p.free_run(*s) };
            p.purge_step();
        }
    }
    // Let the purge finish: a bounded number of further steps.
    for _ in 0..4 * n {
        p.source.now.set(p.source.now.get() + delay);
        p.purge_step();
    }
    p.validate();
    assert_eq!(p.dirty_pages, 0, "everything freed was returned");
    p.purge_visits
}

#[test]
fn purge_work_is_linear_in_the_frees_not_in_the_heap() {
    let small = purge_visits_freeing(1024);
    let big = purge_visits_freeing(4096);
    eprintln!("purge visits: {small} for 1024 frees over 16 chunks, {big} for 4096 over 64");
    // Four times the frees over four times the chunks: a walk of the whole heap per step
    // would cost 16 times the visits; a bounded step about 4 times.
    assert!(
        big <= small * 5,
        "purge visits grow faster than the frees: {small} -> {big}"
    );
    // And a fixed bound per free: each step visits one chunk (at most two walks of its
    // runs), and there are about as many steps that find work as frees.
    assert!(big <= 4096 * 2 * 2 * 64, "{big} visits for 4096 frees");
}

#[test]
fn blocks_out_for_purging_are_not_handed_out_and_come_back_merged() {
    let delay = crate::config::purge_delay_ms().max(1);
    let (mut p, keep, runs, addrs) = kept_page_and_runs(16, 32);
    for s in runs.iter().step_by(2) {
        // SAFETY: `s` is one of the runs kept_page_and_runs allocated (every other one), not
        // freed before; freed once here.
        unsafe { p.free_run(*s) };
    }
    // The first visit, a delay after the frees, ages the freed pages; the next takes
    // them out for purging.
    p.source.now.set(p.source.now.get() + delay - 1);
    assert!(!p.purge_due());
    p.source.now.set(p.source.now.get() + 1);
    p.purge_step();
    assert_eq!(p.purged_bytes, 0, "aged once, not yet returned");
    p.source.now.set(p.source.now.get() + delay);
    let mut w = p.purge_begin();
    assert_eq!(w.nranges, 8);
    assert!(!p.purge_due(), "one purge out at a time");
    p.validate();
    // While the blocks are out (the lock would be dropped), allocations get other pages
    // and frees of their neighbours do not merge into them.
    let out: Vec<usize> = w.ranges[..w.nranges].iter().map(|r| r.0).collect();
    let mut more = Vec::new();
    for _ in 0..4 {
        let s = p.alloc_run(32, 0, State::Large).unwrap();
        // SAFETY: `s` was allocated on the line above and not freed.
        let a = unsafe { s.as_ref().addr };
        assert!(!out.iter().any(|&o| a.abs_diff(o) < 32 * PAGE_SIZE));
        more.push(s);
    }
    for s in runs.iter().skip(1).step_by(2) {
        // SAFETY: `s` is one of the runs the first loop left live (the odd ones); freed once.
        unsafe { p.free_run(*s) };
    }
    p.validate();
    // SAFETY: the work came from purge_begin and runs once.
    unsafe { w.run(&p.source) };
    p.purge_end(&w);
    p.validate();
    assert_eq!(p.purged_bytes, 8 * 32 * PAGE_SIZE);
    for &a in addrs.iter().step_by(2) {
        // SAFETY: free pages of a live chunk.
        assert_eq!(unsafe { *(a as *const u8) }, 0);
    }
    for s in more {
        // SAFETY: `s` is one of `more`, allocated above while the purge was out, freed once.
        unsafe { p.free_run(s) };
    }
    // SAFETY: `keep` is the page kept_page_and_runs allocated; nothing freed it yet.
    unsafe { p.free_run(keep) };
    p.validate();
    assert_eq!(p.chunks, 1, "everything merged back into the spare chunk");
    assert_eq!(p.usage().free_blocks[CHUNK_ORDER as usize], 1);
}

#[test]
fn trim_leaves_a_kept_chunk_that_is_out_for_purging() {
    let delay = crate::config::purge_delay_ms().max(1);
    let mut p = Pages::new(FakeSource::new(2), fake_map());
    let keep = p.alloc_run(1, 0, State::Large).unwrap();
    let whole = p.alloc_run(PAGES_PER_CHUNK, 0, State::Large).unwrap();
    // SAFETY: `whole` was allocated just above (a whole chunk at its addr) and not freed;
    // freed once here: its chunk is kept, dirty and queued.
    unsafe {
        ptr::write_bytes(whole.as_ref().addr as *mut u8, 1, CHUNK_SIZE);
        p.free_run(whole);
    }
    assert_eq!(p.chunks, 2);
    for _ in 0..2 {
        p.source.now.set(p.source.now.get() + delay);
        let mut w = p.purge_begin();
        if w.nranges == 0 {
            p.purge_end(&w);
            continue;
        }
        // The kept chunk's one block is out: a trim meanwhile must leave that chunk alone.
        assert_eq!(w.ranges[0].1, CHUNK_SIZE);
        p.trim();
        assert_eq!(p.chunks, 2, "the chunk stays while its block is out");
        p.validate();
        // SAFETY: the work came from purge_begin and runs once.
        unsafe { w.run(&p.source) };
        p.purge_end(&w);
    }
    p.validate();
    assert_eq!(p.dirty_pages, 1, "the kept chunk's pages were returned");
    assert_eq!(p.kept, 1, "kept again once its block came back");
    p.trim();
    assert_eq!(p.chunks, 1, "a later trim unmaps it");
    // SAFETY: `keep` was allocated at the start of this test and not freed since.
    unsafe { p.free_run(keep) };
    p.validate();
}

#[test]
fn a_refused_purge_waits_a_delay_behind_the_others() {
    let delay = crate::config::purge_delay_ms().max(1);
    let mut p = Pages::new(FakeSource::new(3), fake_map());
    // Two chunks, each half kept and half freed.
    let runs: Vec<_> = (0..4)
        .map(|_| p.alloc_run(PAGES_PER_CHUNK / 2, 0, State::Large).unwrap())
        .collect();
    let (keep, freed) = ([runs[0], runs[2]], [runs[1], runs[3]]);
    for s in freed {
        // SAFETY: `s` is `runs[1]` or `runs[3]`, allocated above and freed once, here.
        unsafe { p.free_run(s) };
        p.source.now.set(p.source.now.get() + 1);
    }
    p.validate();
    let first = p.purge_head;
    // Age both chunks, then let the first one's madvise fail.
    p.source.now.set(p.source.now.get() + delay);
    p.purge_step();
    p.purge_step();
    p.source.now.set(p.source.now.get() + delay);
    let w = p.purge_begin();
    assert_eq!(w.nranges, 1);
    p.purge_end(&w); // `done` is 0: as if the OS refused
    p.validate();
    assert_ne!(
        p.purge_head, first,
        "the refused chunk went behind the other"
    );
    p.purge_step();
    assert_eq!(p.purged_bytes, CHUNK_SIZE / 2, "the other chunk was purged");
    assert!(!p.purge_due(), "the refused one waits a delay");
    p.source.now.set(p.source.now.get() + delay);
    p.purge_step();
    assert_eq!(p.purged_bytes, CHUNK_SIZE);
    for s in keep {
        // SAFETY: `s` is `runs[0]` or `runs[2]`, allocated above and not freed (only the runs
        // in `freed` were).
        unsafe { p.free_run(s) };
    }
    p.validate();
}

/// Checks that no page of `chunk` points at a live run that does not cover it, then the
/// whole page layer.
///
/// # Safety
/// `chunk` is a live chunk of `p`.
unsafe fn check_run_pointers(p: &Pages<FakeSource>, chunk: *const Chunk) {
    // SAFETY: `chunk` is live (the caller's contract); the test thread is its only user.
    let c = unsafe { &*chunk };
    for (i, r) in c.run.iter().enumerate() {
        // SAFETY: a run pointer is never null: a descriptor of this chunk or the vacant one.
        let s = unsafe { &*r.load(Ordering::Relaxed) };
        let addr = c.base + i * PAGE_SIZE;
        let covered =
            s.state != State::Free && addr.wrapping_sub(s.addr) < s.npages as usize * PAGE_SIZE;
        assert!(
            covered || s.state == State::Free,
            "page {i} points at a live run not covering it"
        );
        assert_eq!(s.owner.load(Ordering::Relaxed), 0);
    }
    p.validate();
}

#[test]
fn free_pages_never_point_at_a_live_run() {
    let mut p = Pages::new(FakeSource::new(2), fake_map());
    let a = p.alloc_run(37, 0, State::Large).unwrap();
    let b = p.alloc_run(8, 0, State::Slab).unwrap();
    let chunk = chunk_of(&p, a);
    // SAFETY: `chunk` holds the live run `b` (freed last) whenever it is checked below.
    unsafe { check_run_pointers(&p, chunk) };
    // SAFETY: `a` is a live run of this test, freed once.
    unsafe { p.free_run(a) };
    // SAFETY: as above (`b` is still live).
    unsafe { check_run_pointers(&p, chunk) };
    // Reuse the first page of what was `a` (taking single pages until it comes): the other
    // pages of `a` must not point at it.
    let mut singles = Vec::new();
    // SAFETY: `chunk` is live (it holds `b`).
    let base = unsafe { (*chunk).base };
    loop {
        let c = p.alloc_run(1, 0, State::Large).unwrap();
        singles.push(c);
        // SAFETY: `c` was just allocated.
        if unsafe { c.as_ref().addr } == base {
            break;
        }
    }
    // SAFETY: as above.
    unsafe { check_run_pointers(&p, chunk) };
    for c in singles {
        // SAFETY: each single-page run was allocated above and is freed once.
        unsafe { p.free_run(c) };
    }
    // SAFETY: `b` is live and nothing uses its pages past the third.
    unsafe { p.shrink_run(b, 3) };
    // SAFETY: as above.
    unsafe { check_run_pointers(&p, chunk) };
    // Never handed out: the vacant descriptor.
    // SAFETY: `chunk` is live (it holds `b`).
    let last = unsafe { (*chunk).run[PAGES_PER_CHUNK - 1].load(Ordering::Relaxed) };
    assert!(ptr::eq(last, VACANT_PTR));
    // SAFETY: `b` is live, freed once.
    unsafe { p.free_run(b) };
}

#[test]
fn exhaustion_is_none_not_a_crash() {
    let mut p = Pages::new(FakeSource::new(1), fake_map());
    let a = p.alloc_run(600, 0, State::Large).unwrap();
    assert!(p.alloc_run(600, 0, State::Large).is_none());
    // The tail past 600 pages was freed as blocks of at most 256 pages.
    assert!(p.alloc_run(300, 0, State::Large).is_none());
    let b = p.alloc_run(256, 0, State::Large).unwrap();
    // SAFETY: `a` and `b` were allocated above in this test; each is freed once here.
    unsafe {
        p.free_run(a);
        p.free_run(b);
    }
    assert!(p.alloc_run(PAGES_PER_CHUNK, 0, State::Large).is_some());
}

#[test]
fn grow_and_shrink_in_place() {
    let mut p = Pages::new(FakeSource::new(2), fake_map());
    let a = p.alloc_run(10, 0, State::Large).unwrap();
    let chunk = chunk_of(&p, a);
    // SAFETY: `a` is a live run of this test (allocated above, freed at the end).
    assert!(unsafe { p.grow_run(a, 100) });
    // SAFETY: as above: `a` is live, so its descriptor is readable.
    let (npages, state) = unsafe { (a.as_ref().npages, a.as_ref().state.get()) };
    assert_eq!((npages, state), (100, State::Large));
    p.validate();
    // SAFETY: `chunk` is `a`'s chunk, live while `a` is.
    unsafe { p.validate_chunk(chunk) };
    // The pages freed past the grown run's end are reused first.
    let b = p.alloc_run(1, 0, State::Large).unwrap();
    // SAFETY: `a` and `b` are live runs of this test.
    let (a_addr, b_addr) = unsafe { (a.as_ref().addr, b.as_ref().addr) };
    assert_eq!(b_addr, a_addr + 100 * PAGE_SIZE);
    // SAFETY: `a` is live.
    assert!(!unsafe { p.grow_run(a, 101) }, "b is in the way");
    // SAFETY: `a` is live and nothing uses its pages past the third.
    unsafe { p.shrink_run(a, 3) };
    p.validate();
    // SAFETY: `chunk` is `a`'s chunk, live while `a` is.
    unsafe { p.validate_chunk(chunk) };
    // SAFETY: `a` is live.
    assert!(unsafe { p.grow_run(a, 100) });
    // SAFETY: `a` is live.
    assert_eq!(unsafe { a.as_ref().flags } & FLAG_CLEAN, 0);
    p.validate();
    // SAFETY: `chunk` is `a`'s chunk, live while `a` is.
    unsafe { p.validate_chunk(chunk) };
    // SAFETY: `a` and `b` are live runs of this test, each freed once, here.
    unsafe {
        p.free_run(a);
        p.free_run(b);
    }
    p.validate();
}

#[test]
fn page_map_lookup() {
    let mut p = Pages::new(FakeSource::new(2), fake_map());
    let a = p.alloc_run(1, 0, State::Large).unwrap();
    // SAFETY: `a` was allocated on the line above and is not freed.
    let base = unsafe { a.as_ref().addr };
    let chunk = chunk_of(&p, a);
    assert_eq!(p.map.lookup(base), Owner::Chunk(chunk));
    assert_eq!(p.map.lookup(base + CHUNK_SIZE - 1), Owner::Chunk(chunk));
    assert_eq!(p.map.lookup(base + CHUNK_SIZE), Owner::None);
    assert_eq!(p.map.lookup(usize::MAX), Owner::None);
    assert_eq!(p.map.lookup(0), Owner::None);
    // Addresses from 2^47 alias low slots (see PageMap); this one aliases slot 0.
    assert_eq!(p.map.lookup(1 << 47), Owner::None);
}

#[test]
fn huge_blocks_on_the_real_os() {
    let mut p = Pages::new(OsSource, fake_map());
    let (h, fresh) = p.huge_alloc(10 * CHUNK_SIZE + 5, 1).unwrap();
    assert!(fresh);
    // SAFETY: `h` is the descriptor huge_alloc just returned, not freed.
    let (base, len) = unsafe { (h.as_ref().base, h.as_ref().len) };
    assert_eq!(base % CHUNK_SIZE, 0);
    assert!(len >= 10 * CHUNK_SIZE + 5);
    assert_eq!(p.map.lookup(base + len - 1), Owner::Huge(h.as_ptr()));
    // SAFETY: `h` is the live huge block allocated above (`len` bytes at `base`), resized
    // only through `p` and freed once, at the end of this block.
    unsafe {
        *(base as *mut u8).add(len - 1) = 7;
        assert!(p.huge_resize(h, 40 * CHUNK_SIZE, 1));
        let (nb, nl) = (h.as_ref().base, h.as_ref().len);
        assert_eq!(
            *(nb as *mut u8).add(len - 1),
            7,
            "contents move with the pages"
        );
        assert_eq!(p.map.lookup(nb + nl - 1), Owner::Huge(h.as_ptr()));
        assert!(p.huge_resize(h, CHUNK_SIZE + 1, 1));
        assert_eq!(*(h.as_ref().base as *mut u8).add(4096), 0);
        p.huge_free(h);
    }
    assert_eq!(p.huge_bytes, 0);
    // The freed mapping is kept for a while and reused by a block it fits.
    assert!(p.huge_cached_bytes > 0);
    let (again, fresh) = p.huge_alloc(CHUNK_SIZE + 1, 1).unwrap();
    assert!(!fresh, "a cached mapping is reused");
    assert_eq!(p.huge_cached_bytes, 0);
    // SAFETY: `again` is the descriptor huge_alloc just returned, not freed.
    unsafe { p.huge_free(again) };
    assert!(p.trim() > 0);
    assert_eq!(p.huge_cached_bytes, 0, "a trim unmaps the cache");
}

/// A fork child must not unmap the huge mappings a purge in the parent had taken out: the
/// purging thread may have unmapped them already, with the page lock dropped, and the kernel
/// may have given their addresses to a mapping made since (a new chunk of ours, a thread's
/// stack), which the child would destroy. (This happened: a child's 3 MiB block faulted on
/// its first write, its chunk unmapped, in `tests/c_threads.rs` under load.)
#[test]
fn a_fork_child_leaves_alone_the_huge_mappings_a_purge_had_out() {
    let delay = crate::config::purge_delay_ms().max(1);
    let mut p = Pages::new(OsSource, fake_map());
    let (h, _) = p.huge_alloc(2 * CHUNK_SIZE, 1).unwrap();
    // SAFETY: `h` is the live huge block just allocated; freed once, into the cache.
    let (base, len) = unsafe { (h.as_ref().base, h.as_ref().len) };
    // SAFETY: as above.
    unsafe { p.huge_free(h) };
    assert!(p.huge_cached_bytes > 0);
    std::thread::sleep(std::time::Duration::from_millis(2 * delay + 1));
    let mut w = p.purge_begin();
    assert_eq!(w.nhuge, 1, "the cached mapping is out for unmapping");
    // The purging thread unmaps it, with the lock dropped...
    // SAFETY: the work came from purge_begin and runs once.
    unsafe { w.run(&p.source) };
    // ...and before it takes the lock again, a new mapping gets the same addresses.
    let reused = crate::os::map_fixed_for_test(base, len).expect("map the same range again");
    // SAFETY: `reused` is the mapping just made, `len` bytes, ours.
    unsafe { ptr::write_bytes(reused.as_ptr(), 0x11, len) };
    // Now the fork: the child abandons the purge.
    p.purge_abandon();
    // SAFETY: the new mapping must still be there: a read of its last byte (a fault if
    // purge_abandon unmapped it).
    assert_eq!(unsafe { *reused.as_ptr().add(len - 1) }, 0x11);
    // SAFETY: the mapping made above, unused now.
    assert!(unsafe { crate::os::unmap(reused.as_ptr(), len) });
}

/// A trim costs the chunks whose free pages may hold data, not the whole heap: after one
/// trim, a second one after a single free walks that free's chunk only. (Programs that call
/// malloc_trim often made the whole-heap walk quadratic: stress-ng's --malloc-pthreads
/// stressor ran 28x slower than on glibc.)
#[test]
fn a_trim_walks_only_the_chunks_with_pages_to_return() {
    let chunks = 16;
    let mut p = Pages::new(FakeSource::new(chunks), fake_map());
    // Every chunk full of 4-page runs, each written.
    let mut runs = Vec::new();
    while let Some(s) = p.alloc_run(4, 0, State::Large) {
        // SAFETY: `s` was just allocated: 4 pages at its address, ours.
        unsafe { ptr::write_bytes(s.as_ref().addr as *mut u8, 1, 4 * PAGE_SIZE) };
        runs.push(s);
    }
    assert_eq!(p.chunks, chunks);
    // Free every other run: every chunk has free pages holding data.
    for s in runs.iter().skip(1).step_by(2) {
        // SAFETY: each run is live and freed once (the odd ones here).
        unsafe { p.free_run(*s) };
    }
    let before = p.purge_visits;
    assert!(p.trim() > 0);
    let first = p.purge_visits - before;
    assert!(
        first >= (chunks * PAGES_PER_CHUNK / 4) as u64,
        "walked all: {first}"
    );
    p.validate();
    // One more free, in one chunk: the next trim walks that chunk's runs only.
    // SAFETY: runs[0] is live (only odd ones were freed), freed once.
    unsafe { p.free_run(runs[0]) };
    let before = p.purge_visits;
    assert_eq!(p.trim(), 4 * PAGE_SIZE);
    let second = p.purge_visits - before;
    assert!(
        second <= (PAGES_PER_CHUNK / 4) as u64,
        "a trim after one free walked {second} runs (a chunk has {})",
        PAGES_PER_CHUNK / 4
    );
    p.validate();
    for s in runs.iter().skip(2).step_by(2) {
        // SAFETY: the even runs after the first are still live; each freed once.
        unsafe { p.free_run(*s) };
    }
    p.validate();
}

#[test]
fn a_purge_takes_out_no_more_blocks_than_it_has_room_for() {
    // One live page in every 8 and the 7 after it free: chains of free blocks of 1, 2 and 4
    // pages that lie end to end (their buddies are not free, so they do not merge) and join
    // into one range each. 128 chains: 384 blocks in 128 ranges, far more blocks than one
    // purge step may have out.
    let delay = crate::config::purge_delay_ms().max(1);
    let mut p = Pages::new(FakeSource::new(2), fake_map());
    let runs: Vec<_> = (0..PAGES_PER_CHUNK)
        .map(|_| p.alloc_run(1, 0, State::Large).unwrap())
        .collect();
    for (i, s) in runs.iter().enumerate() {
        if i % 8 != 0 {
            // SAFETY: each run was allocated above and is freed once.
            unsafe { p.free_run(*s) };
        }
    }
    p.validate();
    let mut steps = 0;
    while p.dirty_pages > PAGES_PER_CHUNK / 8 {
        p.source.now.set(p.source.now.get() + delay);
        p.purge_step();
        p.validate();
        steps += 1;
        assert!(steps < 100, "the purge does not finish");
    }
    assert_eq!(p.purged_bytes, 7 * PAGES_PER_CHUNK / 8 * PAGE_SIZE);
    for s in runs.iter().step_by(8) {
        // SAFETY: the live runs, freed once.
        unsafe { p.free_run(*s) };
    }
    p.validate();
}
