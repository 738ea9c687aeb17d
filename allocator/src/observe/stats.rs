//! Statistics: what the allocator has done and holds.
//!
//! Block counts are kept per thread, in the thread's heap, without atomic read-modify-write
//! instructions: each [`Counter`] has one writer (the heap's thread), which adds with a
//! relaxed load and store, and any thread may read it. [`stats`] merges the
//! counters of every heap ever made (heaps are never freed, so an exited thread's counts are
//! kept) with a walk of the page layer and the OS-call counters of `os`. The figures of a
//! running program are a snapshot: other threads go on allocating while they are read.

pub use crate::os::OsCalls;
use crate::os::PAGE_SIZE;
use crate::pages::{PageUsage, CHUNK_SIZE, PAGES};
use crate::size_class::{class_size, NUM_CLASSES};
use crate::util::Line;

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

/// A snapshot of the heap's figures, in bytes.
pub struct Figures {
    /// The page layer's walk.
    pub usage: PageUsage,
    /// The statistics.
    pub stats: Stats,
    /// Bytes mapped from the OS for chunks.
    pub chunk_bytes: usize,
    /// Bytes handed out (small blocks by their class size, large runs by their pages, huge
    /// blocks by their mappings).
    pub in_use: usize,
    /// Bytes of chunks not handed out (free pages and free slab blocks).
    pub free: usize,
}

/// The figures now (a walk of the page layer; see [`stats`]).
pub fn figures() -> Figures {
    let stats = stats();
    let usage = PAGES.lock().usage();
    let chunk_bytes = usage.chunks * CHUNK_SIZE;
    let in_use = stats.live_bytes;
    Figures {
        usage,
        stats,
        chunk_bytes,
        in_use,
        free: chunk_bytes.saturating_sub(in_use - usage.huge_bytes.min(in_use)),
    }
}

fn kib(line: &mut Line, bytes: usize) -> &mut Line {
    line.dec((bytes / 1024) as u64).str(" KiB")
}

/// Right-aligns `v` in `width` columns.
fn col(line: &mut Line, v: u64, width: usize) -> &mut Line {
    let digits = if v == 0 { 1 } else { v.ilog10() as usize + 1 };
    for _ in digits..width {
        line.str(" ");
    }
    line.dec(v)
}

/// Writes the statistics table to stderr (`RAMPART_STATS=1` at exit, `malloc_stats`,
/// `rampart_stats_print`). Never allocates: each line is composed on the stack.
pub fn print() {
    let f = figures();
    let u = &f.usage;
    let st = &f.stats;
    let pid = crate::os::pid();
    let mut l = Line::new();
    l.str("rampart: statistics (pid ").dec(pid as u64).str(")");
    l.emit();
    let rows: [(&str, usize, Option<usize>); 11] = [
        ("  in use                  ", f.in_use, None),
        (
            "  pages in use            ",
            st.in_use_bytes,
            Some(st.in_use_peak),
        ),
        (
            "  committed               ",
            st.committed_bytes,
            Some(st.committed_peak),
        ),
        (
            "  reserved                ",
            st.reserved_bytes,
            Some(st.reserved_peak),
        ),
        ("  chunks mapped           ", f.chunk_bytes, None),
        ("  huge blocks mapped      ", u.huge_bytes, None),
        ("  free in chunks          ", f.free, None),
        ("  pages of small spans    ", u.slab * PAGE_SIZE, None),
        ("  pages of large blocks   ", u.large * PAGE_SIZE, None),
        ("  free pages              ", u.free * PAGE_SIZE, None),
        ("  returned to the OS      ", st.purged_bytes, None),
    ];
    for (name, bytes, peak) in rows {
        let mut l = Line::new();
        l.str(name);
        kib(&mut l, bytes);
        if let Some(peak) = peak {
            l.str(" (peak ");
            kib(&mut l, peak);
            l.str(")");
        }
        l.emit();
    }
    let mut l = Line::new();
    l.str("  large blocks            ")
        .dec(st.large_allocated)
        .str(" allocated, ")
        .dec(st.large_freed)
        .str(" freed; huge blocks ")
        .dec(st.huge_allocated)
        .str(" allocated, ")
        .dec(st.huge_freed)
        .str(" freed");
    l.emit();
    let mut l = Line::new();
    l.str("  small blocks            ")
        .dec(st.classes.iter().map(|c| c.allocated).sum())
        .str(" allocated, ")
        .dec(st.classes.iter().map(|c| c.freed).sum())
        .str(" freed, ")
        .dec(st.remote_frees)
        .str(" of them by another thread");
    l.emit();
    let mut l = Line::new();
    l.str("  kernel calls            mmap ")
        .dec(st.os.mmap)
        .str(", munmap ")
        .dec(st.os.munmap)
        .str(", madvise ")
        .dec(st.os.madvise)
        .str(", mprotect ")
        .dec(st.os.mprotect)
        .str(", mremap ")
        .dec(st.os.mremap)
        .str("; guard pages ")
        .dec(st.guard_pages);
    l.emit();
    if st.guarded_allocated != 0 {
        let mut l = Line::new();
        l.str("  guarded blocks          allocated ")
            .dec(st.guarded_allocated)
            .str(", freed ")
            .dec(st.guarded_freed);
        l.emit();
    }
    let mut l = Line::new();
    l.str("  thread heaps            ")
        .dec(st.heaps.created as u64)
        .str(" created, ")
        .dec(st.heaps.adopted as u64)
        .str(" reused after their thread exited, ")
        .dec(st.heaps.taken_over as u64)
        .str(" taken over by running threads");
    l.emit();
    let mut l = Line::new();
    l.str("  size class   allocated       freed        live  span pages");
    l.emit();
    for c in st.classes.iter().filter(|c| c.allocated > 0 || c.pages > 0) {
        let mut l = Line::new();
        l.str("  ");
        col(&mut l, c.size as u64, 8).str(" B");
        col(&mut l, c.allocated, 12);
        col(&mut l, c.freed, 12);
        col(&mut l, c.allocated.saturating_sub(c.freed), 12);
        col(&mut l, c.pages as u64, 12);
        l.emit();
    }
}
