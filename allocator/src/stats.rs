//! Statistics: what the allocator has done and holds.
//!
//! Block counts are kept per thread, in the thread's heap, without atomic read-modify-write
//! instructions: each [`Counter`] has one writer (the heap's thread), which adds with a
//! relaxed load and store, and any thread may read it. [`crate::api::stats`] merges the
//! counters of every heap ever made (heaps are never freed, so an exited thread's counts are
//! kept) with a walk of the page layer and the OS-call counters of `os`. The figures of a
//! running program are a snapshot: other threads go on allocating while they are read.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::size_class::NUM_CLASSES;

/// A counter with one writer: increments are a relaxed load and store (no `lock` prefix).
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise heaps
    pub const ZERO: Counter = Counter(AtomicU64::new(0));

    /// Adds one. Only the counter's owner thread may call this.
    #[inline(always)]
    pub fn bump(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of one heap.
#[repr(C)]
pub struct ThreadCounters {
    /// Small blocks allocated, per class.
    pub alloc: [Counter; NUM_CLASSES],
    /// Small blocks freed by this thread (its own and other threads' blocks), per class.
    pub free: [Counter; NUM_CLASSES],
    /// Of those frees, the ones of blocks another heap owns.
    pub remote_free: Counter,
}

impl ThreadCounters {
    /// All zero.
    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise heaps
    pub const ZERO: ThreadCounters = ThreadCounters {
        alloc: [const { Counter::ZERO }; NUM_CLASSES],
        free: [const { Counter::ZERO }; NUM_CLASSES],
        remote_free: Counter::ZERO,
    };
}

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

/// Calls into the kernel since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OsCalls {
    /// `mmap`.
    pub mmap: u64,
    /// `munmap`.
    pub munmap: u64,
    /// `madvise` (purging, trimming, guard pages, huge pages).
    pub madvise: u64,
    /// `mprotect`.
    pub mprotect: u64,
    /// `mremap`.
    pub mremap: u64,
}

/// Everything [`crate::api::stats`] reports.
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
