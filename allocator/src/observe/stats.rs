//! Statistics: what the allocator has done and holds.
//!
//! Block counts are kept per thread, in the thread's heap, without atomic read-modify-write
//! instructions: each counter has one writer (the heap's thread), which adds with a
//! relaxed load and store, and any thread may read it. [`stats`] merges the
//! counters of every heap ever made (heaps are never freed, so an exited thread's counts are
//! kept) with a walk of the page layer and the OS-call counters of `os`. The figures of a
//! running program are a snapshot: other threads go on allocating while they are read.

pub use crate::heap::ThreadHeaps;
pub use crate::os::KernelCalls;
use crate::os::PAGE_SIZE;
use crate::pages::{PageUsage, CHUNK_SIZE, PAGES};
use crate::size_class::{class_size, NUM_CLASSES};
use crate::util::Line;

/// One size class: a line of the table's `size class` section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeClassStats {
    /// Block size in bytes (column `size class`).
    pub size: usize,
    /// Blocks allocated since the start (column `allocated`).
    pub allocated: u64,
    /// Blocks freed since the start (column `freed`).
    pub freed: u64,
    /// Blocks the class's spans count as handed out, from a walk of the spans (column
    /// `held`): blocks freed by another thread count until their owner collects them, so
    /// `held` may exceed [`live`](Self::live).
    pub held: u64,
    /// Pages of the class's spans (column `span pages`).
    pub span_pages: usize,
}

impl SizeClassStats {
    /// Blocks allocated and not freed (column `live`).
    pub fn live(&self) -> u64 {
        self.allocated.saturating_sub(self.freed)
    }

    /// Blocks the class's spans hold in all, handed out or not (a span's tail past its last
    /// whole block holds none).
    pub fn capacity(&self) -> u64 {
        let class = crate::size_class::class_of(self.size.min(crate::size_class::SMALL_MAX));
        let spans = self.span_pages >> crate::size_class::span_order(class);
        (spans * crate::size_class::blocks_per_span(class)) as u64
    }
}

/// Blocks of one kind allocated and freed since the start: a line `allocated A, freed F,
/// live L` of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounts {
    /// Blocks allocated.
    pub allocated: u64,
    /// Blocks freed.
    pub freed: u64,
}

impl BlockCounts {
    /// Blocks allocated and not freed.
    pub fn live(&self) -> u64 {
        self.allocated.saturating_sub(self.freed)
    }
}

/// The allocator's statistics, as [`stats()`](crate::stats()) returns them and
/// [`stats_print`](crate::stats_print) prints them: each field is the table's line of the
/// same name (`pages_in_use` is the line `pages in use`). Sizes are in bytes (the table
/// shows KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes handed out: small blocks by their class size, large blocks by their pages, huge
    /// blocks by their mappings.
    pub in_use: usize,
    /// Bytes of live page runs (small-block spans, large blocks) and huge blocks: what the
    /// heaps and the large blocks hold, at page granularity.
    pub pages_in_use: usize,
    /// The highest `pages_in_use` so far (the peak of `in_use` is bounded by it; it is not
    /// tracked per block, which would cost the fast path).
    pub pages_in_use_peak: usize,
    /// Bytes that may be resident: pages handed out and not returned since, and huge
    /// mappings (an upper bound on the allocator's share of RSS, metadata aside).
    pub committed: usize,
    /// The highest `committed` so far.
    pub committed_peak: usize,
    /// Address space mapped: chunks and huge blocks with their guard pages.
    pub reserved: usize,
    /// The highest `reserved` so far.
    pub reserved_peak: usize,
    /// Bytes of the chunks mapped (the 4 MiB regions that small and large blocks come from).
    pub chunks_mapped: usize,
    /// Bytes of huge blocks' mappings.
    pub huge_blocks_mapped: usize,
    /// Bytes of chunks not handed out (free pages and free small blocks).
    pub free_in_chunks: usize,
    /// Bytes of the pages of small-block spans.
    pub small_span_pages: usize,
    /// Bytes of the pages of large blocks.
    pub large_block_pages: usize,
    /// Bytes of free pages in chunks (resident or returned).
    pub free_pages: usize,
    /// Bytes returned to the OS by purging and trimming since the start.
    pub returned_to_os: usize,
    /// Small blocks (size classes), summed over the classes.
    pub small_blocks: BlockCounts,
    /// Frees of small blocks by a thread other than the one whose heap owns them.
    pub remote_frees: u64,
    /// Large blocks (page runs in chunks).
    pub large_blocks: BlockCounts,
    /// Huge blocks (own mappings).
    pub huge_blocks: BlockCounts,
    /// Kernel calls made so far.
    pub kernel_calls: KernelCalls,
    /// Guard pages installed: one after every mapping, one after every guarded block, and a
    /// freed guarded block's pages.
    pub guard_pages: u64,
    /// Guarded blocks (`RAMPART_GUARD`): allocated, and freed (into the quarantine).
    pub guarded_blocks: BlockCounts,
    /// Thread heaps made, reused by a new thread, and taken over by a running thread.
    pub thread_heaps: ThreadHeaps,
    /// Per size class (the table lists those that were ever used).
    pub size_classes: [SizeClassStats; NUM_CLASSES],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            in_use: 0,
            pages_in_use: 0,
            pages_in_use_peak: 0,
            committed: 0,
            committed_peak: 0,
            reserved: 0,
            reserved_peak: 0,
            chunks_mapped: 0,
            huge_blocks_mapped: 0,
            free_in_chunks: 0,
            small_span_pages: 0,
            large_block_pages: 0,
            free_pages: 0,
            returned_to_os: 0,
            small_blocks: BlockCounts::default(),
            remote_frees: 0,
            large_blocks: BlockCounts::default(),
            huge_blocks: BlockCounts::default(),
            kernel_calls: KernelCalls::default(),
            guard_pages: 0,
            guarded_blocks: BlockCounts::default(),
            thread_heaps: ThreadHeaps::default(),
            size_classes: [SizeClassStats::default(); NUM_CLASSES],
        }
    }
}

/// The allocator's statistics now: the figures [`stats_print`](crate::stats_print) prints.
/// Merges the counters of every thread heap (an exited thread's counts are kept) with a walk
/// of the page layer and the kernel-call counters. A snapshot: other threads go on
/// allocating while it is taken. Takes the heap registry's lock, then the page layer's;
/// never allocates.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rampart::Rampart = rampart::Rampart;
///
/// fn main() {
///     let big = vec![1u8; 2 << 20];
///     let st = rampart::stats();
///     assert!(st.in_use >= big.len() && st.large_blocks.live() >= 1);
///     assert!(st.pages_in_use_peak >= st.pages_in_use && st.committed <= st.reserved);
///     drop(big);
/// }
/// ```
pub fn stats() -> Stats {
    stats_and_usage().0
}

/// [`stats`], with the walk of the page layer it was computed from.
pub fn stats_and_usage() -> (Stats, PageUsage) {
    let mut st = Stats::default();
    let mut totals = crate::heap::HeapTotals::default();
    crate::heap::merge_counters(&mut totals);
    st.remote_frees = totals.remote_frees;
    st.thread_heaps = totals.heaps;
    let (usage, large_counts, huge_counts) = {
        let pages = PAGES.lock();
        st.pages_in_use = pages.in_use_bytes();
        st.pages_in_use_peak = pages.in_use_peak;
        st.committed = pages.committed_bytes();
        st.committed_peak = pages.committed_peak;
        st.reserved = pages.reserved_bytes();
        st.reserved_peak = pages.reserved_peak;
        st.returned_to_os = pages.purged_bytes;
        (pages.usage(), pages.large_counts, pages.huge_counts)
    };
    let mut small = 0usize;
    for (class, c) in st.size_classes.iter_mut().enumerate() {
        c.size = class_size(class);
        c.allocated = totals.allocated[class];
        c.freed = totals.freed[class];
        c.span_pages = usage.class_pages[class];
        c.held = usage.class_held[class].saturating_sub(totals.current_spans[class]);
        small += c.live() as usize * c.size;
        st.small_blocks.allocated += c.allocated;
        st.small_blocks.freed += c.freed;
    }
    st.large_blocks = BlockCounts {
        allocated: large_counts[0],
        freed: large_counts[1],
    };
    st.huge_blocks = BlockCounts {
        allocated: huge_counts[0],
        freed: huge_counts[1],
    };
    st.in_use = small + usage.large * PAGE_SIZE + usage.huge_bytes;
    st.chunks_mapped = usage.chunks * CHUNK_SIZE;
    st.huge_blocks_mapped = usage.huge_bytes;
    // Huge blocks are outside the chunks.
    st.free_in_chunks = st
        .chunks_mapped
        .saturating_sub(st.in_use - usage.huge_bytes.min(st.in_use));
    st.small_span_pages = usage.slab * PAGE_SIZE;
    st.large_block_pages = usage.large * PAGE_SIZE;
    st.free_pages = usage.free * PAGE_SIZE;
    let (os, guards) = crate::os::calls();
    st.kernel_calls = os;
    st.guard_pages = guards;
    let (allocated, freed) = crate::check::guard::counts();
    st.guarded_blocks = BlockCounts { allocated, freed };
    (st, usage)
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

/// Writes the statistics table to stderr: what `RAMPART_STATS=1` prints at exit, and
/// `malloc_stats` and `rampart_stats_print` in C. Each line is a field of [`Stats`], named
/// as the field is. Never allocates: each line is composed on the stack.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rampart::Rampart = rampart::Rampart;
///
/// fn main() {
///     let v = vec![0u8; 1 << 20];
///     rampart::stats_print(); // "rampart: statistics (pid …)", then a line per field
///     drop(v);
/// }
/// ```
pub fn print() {
    print_stats(&stats());
}

/// A line `  NAME` padded to the values' column.
fn row(name: &str) -> Line {
    let mut l = Line::new();
    l.str("  ").str(name);
    for _ in name.len()..24 {
        l.str(" ");
    }
    l
}

/// `allocated A, freed F, live L`.
fn counts(l: &mut Line, c: BlockCounts) -> &mut Line {
    l.str("allocated ")
        .dec(c.allocated)
        .str(", freed ")
        .dec(c.freed)
        .str(", live ")
        .dec(c.live())
}

/// Writes `st` as the statistics table.
fn print_stats(st: &Stats) {
    let mut l = Line::new();
    l.str("rampart: statistics (pid ")
        .dec(crate::os::pid() as u64)
        .str(")");
    l.emit();
    let sizes: [(&str, usize, Option<usize>); 11] = [
        ("in use", st.in_use, None),
        ("pages in use", st.pages_in_use, Some(st.pages_in_use_peak)),
        ("committed", st.committed, Some(st.committed_peak)),
        ("reserved", st.reserved, Some(st.reserved_peak)),
        ("chunks mapped", st.chunks_mapped, None),
        ("huge blocks mapped", st.huge_blocks_mapped, None),
        ("free in chunks", st.free_in_chunks, None),
        ("small span pages", st.small_span_pages, None),
        ("large block pages", st.large_block_pages, None),
        ("free pages", st.free_pages, None),
        ("returned to os", st.returned_to_os, None),
    ];
    for (name, bytes, peak) in sizes {
        let mut l = row(name);
        kib(&mut l, bytes);
        if let Some(peak) = peak {
            l.str(" (peak ");
            kib(&mut l, peak);
            l.str(")");
        }
        l.emit();
    }
    let blocks = [
        ("small blocks", st.small_blocks),
        ("large blocks", st.large_blocks),
        ("huge blocks", st.huge_blocks),
        ("guarded blocks", st.guarded_blocks),
    ];
    for (name, c) in blocks {
        // Guarded blocks only where a guard mode made some.
        if name != "guarded blocks" || c.allocated != 0 {
            let mut l = row(name);
            counts(&mut l, c);
            l.emit();
        }
    }
    let mut l = row("remote frees");
    l.dec(st.remote_frees)
        .str(" (small blocks freed by a thread other than their heap's)");
    l.emit();
    let k = &st.kernel_calls;
    let mut l = row("kernel calls");
    l.str("mmap ")
        .dec(k.mmap)
        .str(", munmap ")
        .dec(k.munmap)
        .str(", madvise ")
        .dec(k.madvise)
        .str(", mprotect ")
        .dec(k.mprotect)
        .str(", mremap ")
        .dec(k.mremap);
    l.emit();
    let mut l = row("guard pages");
    l.dec(st.guard_pages);
    l.emit();
    let h = &st.thread_heaps;
    let mut l = row("thread heaps");
    l.dec(h.created as u64)
        .str(" created, ")
        .dec(h.reused as u64)
        .str(" reused after their thread exited, ")
        .dec(h.taken_over as u64)
        .str(" taken over by running threads");
    l.emit();
    let mut l = Line::new();
    l.str("  size class   allocated       freed        live        held  span pages");
    l.emit();
    for c in st
        .size_classes
        .iter()
        .filter(|c| c.allocated > 0 || c.span_pages > 0)
    {
        let mut l = Line::new();
        l.str("  ");
        col(&mut l, c.size as u64, 8).str(" B");
        col(&mut l, c.allocated, 12);
        col(&mut l, c.freed, 12);
        col(&mut l, c.live(), 12);
        col(&mut l, c.held, 12);
        col(&mut l, c.span_pages as u64, 12);
        l.emit();
    }
}
