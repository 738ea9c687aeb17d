//! Statistics: what the allocator has done and holds.
//!
//! Block counts are kept per thread, in the thread's heap, without atomic read-modify-write
//! instructions: each [`Counter`] has one writer (the heap's thread), which adds with a
//! relaxed load and store, and any thread may read it. [`stats`] merges the
//! counters of every heap ever made (heaps are never freed, so an exited thread's counts are
//! kept) with a walk of the page layer and the OS-call counters of `os`. The figures of a
//! running program are a snapshot: other threads go on allocating while they are read.

pub use crate::os::OsCalls;
use crate::size_class::{class_size, NUM_CLASSES};

/// One size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size in bytes.
    pub size: usize,
    /// Blocks allocated since the start.
    pub allocated: u64,
    /// Blocks freed since the start.
    pub freed: u64,
    /// Blocks the page layer's spans count as handed out (a walk of the spans; blocks freed
    /// by another thread count until their owner collects them).
    pub held: u64,
    /// Pages of the class's spans.
    pub pages: usize,
}

/// Everything [`stats`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Per size class.
    pub classes: [ClassStats; NUM_CLASSES],
    /// Large blocks (page runs) allocated and freed since the start.
    pub large_allocated: u64,
    /// See `large_allocated`.
    pub large_freed: u64,
    /// Huge blocks (own mappings) allocated and freed since the start.
    pub huge_allocated: u64,
    /// See `huge_allocated`.
    pub huge_freed: u64,
    /// Bytes handed out: small blocks by class size (as counted, allocated minus freed), large
    /// blocks by pages, huge blocks by mapping.
    pub live_bytes: usize,
    /// Bytes of live page runs (slab spans, large blocks) and huge blocks: what the heaps and
    /// the large blocks hold, at page granularity.
    pub in_use_bytes: usize,
    /// The highest `in_use_bytes` so far (the peak of live bytes is bounded by it; it is not
    /// tracked per block, which would cost the fast path).
    pub in_use_peak: usize,
    /// Bytes that may be resident: pages handed out and not returned since, and huge
    /// mappings (an upper bound on the allocator's share of RSS, metadata aside).
    pub committed_bytes: usize,
    /// The highest `committed_bytes` so far.
    pub committed_peak: usize,
    /// Address space mapped: chunks and huge blocks with their guard pages.
    pub reserved_bytes: usize,
    /// The highest `reserved_bytes` so far.
    pub reserved_peak: usize,
    /// Bytes returned to the OS by purging and trimming.
    pub purged_bytes: usize,
    /// Kernel calls.
    pub os: OsCalls,
    /// Guard pages installed (one after every mapping, one after every guarded block, and a
    /// freed guarded block's pages).
    pub guard_pages: u64,
    /// Guarded blocks (`RAMPART_GUARD`) allocated.
    pub guarded_allocated: u64,
    /// Guarded blocks freed (and quarantined).
    pub guarded_freed: u64,
    /// Frees of blocks owned by another thread's heap.
    pub remote_frees: u64,
    /// Thread heaps made, reused by a new thread, and taken over by a running thread.
    pub heaps: crate::heap::HeapCounts,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            classes: [ClassStats::default(); NUM_CLASSES],
            large_allocated: 0,
            large_freed: 0,
            huge_allocated: 0,
            huge_freed: 0,
            live_bytes: 0,
            in_use_bytes: 0,
            in_use_peak: 0,
            committed_bytes: 0,
            committed_peak: 0,
            reserved_bytes: 0,
            reserved_peak: 0,
            purged_bytes: 0,
            os: OsCalls::default(),
            guard_pages: 0,
            guarded_allocated: 0,
            guarded_freed: 0,
            remote_frees: 0,
            heaps: crate::heap::HeapCounts::default(),
        }
    }
}

impl Stats {
    /// Small blocks allocated minus freed, summed over the classes.
    pub fn small_live_blocks(&self) -> u64 {
        self.classes.iter().map(|c| c.allocated - c.freed).sum()
    }
}

/// The allocator's statistics: per size class, large and huge blocks,
/// bytes live, committed and reserved with their peaks, kernel calls, guard pages, remote
/// frees and thread heaps. Takes the heap registry's lock, then the page layer's; never
/// allocates.
pub fn stats() -> Stats {
    let mut st = Stats::default();
    let mut totals = crate::heap::HeapTotals::default();
    crate::heap::merge_counters(&mut totals);
    st.remote_frees = totals.remote_frees;
    st.heaps = totals.heaps;
    let (usage, large_counts, huge_counts) = {
        let pages = crate::pages::PAGES.lock();
        st.in_use_bytes = pages.in_use_bytes();
        st.in_use_peak = pages.in_use_peak;
        st.committed_bytes = pages.committed_bytes();
        st.committed_peak = pages.committed_peak;
        st.reserved_bytes = pages.reserved_bytes();
        st.reserved_peak = pages.reserved_peak;
        st.purged_bytes = pages.purged_bytes;
        (pages.usage(), pages.large_counts, pages.huge_counts)
    };
    let mut live = 0usize;
    for (class, c) in st.classes.iter_mut().enumerate() {
        c.size = class_size(class);
        c.allocated = totals.allocated[class];
        c.freed = totals.freed[class];
        c.pages = usage.class_pages[class];
        c.held = usage.class_held[class].saturating_sub(totals.current_spans[class]);
        live += (c.allocated.saturating_sub(c.freed)) as usize * c.size;
    }
    st.large_allocated = large_counts[0];
    st.large_freed = large_counts[1];
    st.huge_allocated = huge_counts[0];
    st.huge_freed = huge_counts[1];
    st.live_bytes = live + usage.large * crate::os::PAGE_SIZE + usage.huge_bytes;
    let (os, guards) = crate::os::calls();
    st.os = os;
    st.guard_pages = guards;
    (st.guarded_allocated, st.guarded_freed) = crate::check::guard::counts();
    st
}
