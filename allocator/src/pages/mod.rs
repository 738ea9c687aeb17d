//! The page layer: a binary buddy allocator of page runs inside chunks, and the page map.
//!
//! A chunk is [`CHUNK_SIZE`] bytes (4 MiB, 1024 pages) aligned to its size, taken from a
//! [`PageSource`]; the source puts a guard region after it. Runs of pages are buddy blocks:
//! a block of order `k` is `2^k` pages aligned to `2^k` pages inside its chunk; allocation
//! splits larger blocks, freeing merges a block with its buddy while the buddy is free too.
//! A run of any page count is served from the smallest block that holds it and the unused
//! tail is freed back at once, so runs are page-granular.
//!
//! Metadata lives outside the chunk (so no header sits in front of any block, and free pages
//! are never touched): a [`Chunk`] holds one [`Span`] descriptor per page (meaningful at the
//! first page of a run) and, per page, the index of its run's first page. The page map is a
//! two-level radix tree over address bits 22..47 that finds any address's chunk in O(1) with
//! two loads; chunks are tagged in it so the free path tells them from huge mappings in one
//! test.
//!
//! Free pages that may hold data are returned to the OS by purge steps that ride on the
//! operations of this layer (see [`Pages::purge_begin`]): a queue of chunks, oldest first,
//! finds the pages due without a scan, each step visits one chunk, and its `madvise` calls
//! run with the page lock dropped ([`with`]).
//!
//! Invariants (checked by [`Pages::validate`] in debug builds and tests):
//! - per chunk: `free_pages + used_pages + out_pages == PAGES_PER_CHUNK`, where `free_pages` is
//!   the sum of `2^order` over the chunk's listed free blocks, `used_pages` the sum of `npages`
//!   over its runs and `out_pages` that over its blocks out for purging (`State::Purging`);
//! - a free block of order `k` starts at a page index that is a multiple of `2^k` and is in
//!   exactly one free list, the one of order `k`; two free buddies never both exist (merged);
//! - every page of a live run has `head == ` the run's first page;
//! - `kept` == the number of chunks marked `kept`, at most [`KEPT_CHUNKS`], each of them
//!   one listed free block of the top order.
//! - a free page that may hold data (dirty) lies in a queued chunk: a trim walks the queue.

use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU16, AtomicU8, AtomicUsize, Ordering};

use crate::os::{self, PAGE_SIZE};
use crate::util::{align_up, invariant, log2_ceil};

/// log2 of the pages in a chunk.
pub const CHUNK_ORDER: u32 = 10;
/// Pages in a chunk.
pub const PAGES_PER_CHUNK: usize = 1 << CHUNK_ORDER;
/// Bytes in a chunk (4 MiB); chunks are aligned to this.
pub const CHUNK_SIZE: usize = PAGES_PER_CHUNK * PAGE_SIZE;
/// Bytes of the guard region after every mapping.
pub const GUARD_SIZE: usize = PAGE_SIZE;
/// Number of buddy orders (1 page ..= a whole chunk).
pub const ORDERS: usize = CHUNK_ORDER as usize + 1;

const CHUNK_SHIFT: u32 = 22;
const _: () = assert!(1 << CHUNK_SHIFT == CHUNK_SIZE);

/// Where the page layer gets chunks and metadata memory. The real source is [`OsSource`];
/// unit tests use a fake over the system allocator.
///
/// # Safety
/// The page layer hands the memory out as blocks and trusts these guarantees, so an
/// implementation must keep them:
/// - `chunk_alloc` returns `CHUNK_SIZE` bytes aligned to `CHUNK_SIZE`, zeroed, read-write,
///   overlapping no other live region of this source, valid until `chunk_free`;
/// - `meta_alloc(len)` returns `len` zeroed, read-write, page-aligned bytes, likewise;
/// - after a `decommit` that returned `true` the range reads as zero and stays usable;
///   after `false` it is unchanged;
/// - `now_ms` never goes backwards.
pub unsafe trait PageSource {
    /// A zeroed, read-write region of [`CHUNK_SIZE`] bytes aligned to [`CHUNK_SIZE`], or `None`
    /// when memory is exhausted.
    fn chunk_alloc(&self) -> Option<NonNull<u8>>;
    /// Gives back a region from [`PageSource::chunk_alloc`].
    ///
    /// # Safety
    /// `chunk` came from `chunk_alloc` and nothing in it is used any more.
    unsafe fn chunk_free(&self, chunk: NonNull<u8>);
    /// Zeroed, page-aligned memory of `len` bytes (a multiple of the page size) for metadata.
    fn meta_alloc(&self, len: usize) -> Option<NonNull<u8>>;
    /// Gives back metadata memory from [`PageSource::meta_alloc`].
    ///
    /// # Safety
    /// `p` and `len` are those of a `meta_alloc` call, and nothing uses the memory any more.
    unsafe fn meta_free(&self, p: NonNull<u8>, len: usize);
    /// Returns the pages of a range inside a chunk to the OS; they read as zero afterwards.
    /// `false` if the OS refused (the range stays committed and keeps its bytes).
    ///
    /// # Safety
    /// The range is page-aligned, inside a chunk, and holds nothing anybody needs.
    unsafe fn decommit(&self, addr: NonNull<u8>, len: usize) -> bool;
    /// The time in milliseconds (monotonic), for the purge delay.
    fn now_ms(&self) -> u64 {
        os::now_ms()
    }
    /// Unmaps a huge mapping (with its guard page) that was kept for reuse. Sources without
    /// huge mappings never get one.
    ///
    /// # Safety
    /// `[base, base + len + GUARD_SIZE)` is a huge mapping of this source, unused.
    unsafe fn huge_release(&self, base: usize, len: usize) {
        // SAFETY: `[base, base + len + GUARD_SIZE)` is an unused huge mapping of this source
        // (huge_release's contract): the caller's to give up.
        unsafe { os::unmap(base as *mut u8, len + GUARD_SIZE) };
    }
    /// Something now waits to be purged (a chunk was queued, a huge mapping cached); called
    /// under the page lock. The process's source starts or wakes the background purger.
    fn purge_pending(&self) {}
}

/// The real page source: chunks are mmap'd with a guard page after them.
pub struct OsSource;

// SAFETY: chunks and metadata are fresh anonymous mappings (zeroed, aligned by
// `map_aligned`), decommit is MADV_DONTNEED (reads zero after), the clock is monotonic.
unsafe impl PageSource for OsSource {
    fn chunk_alloc(&self) -> Option<NonNull<u8>> {
        let p = os::map_aligned(CHUNK_SIZE + GUARD_SIZE, CHUNK_SIZE)?;
        // SAFETY: the guard page is the last page of the mapping just made, unused.
        // A failed guard only loses the protection, never memory safety.
        unsafe {
            os::guard_install(p.as_ptr().add(CHUNK_SIZE), GUARD_SIZE);
            if crate::config::hugepage() {
                os::advise_hugepage(p.as_ptr(), CHUNK_SIZE);
            }
        }
        Some(p)
    }

    unsafe fn chunk_free(&self, chunk: NonNull<u8>) {
        // SAFETY: the caller gives the chunk (and its guard) back; it came from chunk_alloc.
        unsafe { os::unmap(chunk.as_ptr(), CHUNK_SIZE + GUARD_SIZE) };
    }

    fn meta_alloc(&self, len: usize) -> Option<NonNull<u8>> {
        os::map(len)
    }

    unsafe fn meta_free(&self, p: NonNull<u8>, len: usize) {
        // SAFETY: the caller gives back a mapping of ours.
        unsafe { os::unmap(p.as_ptr(), len) };
    }

    fn purge_pending(&self) {
        purger::pending();
    }

    unsafe fn decommit(&self, addr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the caller gives up the range's contents.
        unsafe { os::decommit(addr.as_ptr(), len) }
    }
}

/// What a page run is used for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum State {
    /// A free buddy block (only its first page's descriptor is meaningful).
    Free = 0,
    /// Carved into small blocks of one size class.
    Slab = 1,
    /// One large block.
    Large = 2,
    /// A free buddy block taken out of the free lists while a purge returns its pages to the
    /// OS with the page lock dropped (see [`Pages::purge_begin`]); in the lists again when
    /// the purge ends. Read-only walks see it as free.
    Purging = 3,
}

/// A span's [`State`], in an atomic byte: it changes under the page lock, and the free paths
/// of other threads read it without that lock (to classify a pointer), so the reads and
/// writes are relaxed atomic accesses (plain moves on x86-64).
pub struct SpanState(AtomicU8);

impl SpanState {
    /// A state cell holding `s`.
    pub const fn new(s: State) -> Self {
        Self(AtomicU8::new(s as u8))
    }

    /// The state now.
    #[inline(always)]
    pub fn get(&self) -> State {
        match self.0.load(Ordering::Relaxed) {
            0 => State::Free,
            1 => State::Slab,
            2 => State::Large,
            _ => State::Purging,
        }
    }

    /// Sets the state.
    #[inline(always)]
    pub fn set(&self, s: State) {
        self.0.store(s as u8, Ordering::Relaxed);
    }
}

impl PartialEq<State> for SpanState {
    fn eq(&self, other: &State) -> bool {
        self.get() == *other
    }
}

impl core::fmt::Debug for SpanState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.get().fmt(f)
    }
}

/// `Span::flags`: all pages of the run were untouched since the chunk was mapped.
pub const FLAG_CLEAN: u8 = 1;

/// The descriptor of a run of pages, kept for the run's first page. 64 bytes, one cache line.
///
/// The fields above `next` belong to whoever owns the run (the slab and heap layers); the page
/// layer sets `addr`, `npages`, `state`, `order` and reads the rest never.
///
/// Read by other threads without a lock (a free of a block another thread owns, and the
/// classification of any pointer): `owner`, `state` and `bump` (atomics: they change while
/// such a reader may look), and `addr`, `block_size`, `divisor`, `class`, written when the
/// run became a slab, before any of its blocks was handed out (the hand-off of a block to
/// the freeing thread orders them).
#[repr(C, align(64))]
pub struct Span {
    /// Slab: head of the local free list (linked through the blocks' first word).
    pub free: *mut u8,
    /// Slab: blocks handed out and not yet freed back to this span, plus the heap's marks
    /// (see `slab`); signed so that one decrement-and-test catches both "empty" and "full".
    pub used: i32,
    /// Slab: block size.
    pub block_size: u32,
    /// Slab: the owning heap's address (0 for none). Read by other threads to route frees.
    pub owner: AtomicUsize,
    /// Slab: `u64::MAX / block_size + 1`, so that an offset `n` in the span is a multiple of
    /// the block size exactly when `n * divisor < divisor` (wrapping; Lemire's test), which
    /// the free path uses to reject pointers into the middle of a block in two instructions.
    pub divisor: u64,
    /// List links (buddy free list when free, heap list when a slab).
    pub next: *mut Span,
    /// List links.
    pub prev: *mut Span,
    /// Address of the run's first byte (set when the descriptor becomes a run's or a free
    /// block's head; meaningless elsewhere).
    pub addr: usize,
    /// Pages in the run (for a free block `1 << order`; at most `PAGES_PER_CHUNK`).
    pub npages: u16,
    /// Slab: blocks carved so far (the first never-carved block's index). Written by the
    /// owner as it carves, read by other threads' frees.
    pub bump: AtomicU16,
    /// What the run is.
    pub state: SpanState,
    /// Buddy order of a free block.
    pub order: u8,
    /// Slab: size class.
    pub class: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
}

const _: () = assert!(size_of::<Span>() == 64);
const _: () = assert!(PAGES_PER_CHUNK <= u16::MAX as usize);

impl Span {
    /// An unused descriptor (what zeroed metadata memory holds).
    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise statics
    pub const EMPTY: Span = Span {
        free: ptr::null_mut(),
        used: 0,
        block_size: 0,
        owner: AtomicUsize::new(0),
        divisor: 0,
        next: ptr::null_mut(),
        prev: ptr::null_mut(),
        addr: 0,
        npages: 0,
        bump: AtomicU16::new(0),
        state: SpanState::new(State::Free),
        order: 0,
        class: 0,
        flags: 0,
    };
}

/// The descriptor every page of a chunk points to while no run covers it: free, with no
/// owner, so the free path's owner test fails and the slow path reports the pointer. Never
/// written (every writer first checks the owner or the state).
pub struct VacantSpan(core::cell::UnsafeCell<Span>);
// SAFETY: the vacant descriptor is never written (every writer first checks the owner or
// the state, which rule it out), so threads only ever share reads of it.
unsafe impl Sync for VacantSpan {}

/// See [`VacantSpan`].
pub static VACANT: VacantSpan = VacantSpan(core::cell::UnsafeCell::new(Span::EMPTY));

const VACANT_PTR: *mut Span = VACANT.0.get();

/// An intrusive doubly linked list of spans (through `next`/`prev`).
pub struct SpanList {
    /// The first span, or null. Private: only `push` (whose caller vouches for the span)
    /// puts spans in, so the safe `pop` and `head` hand out only valid descriptors.
    head: *mut Span,
}

impl SpanList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
        }
    }

    /// Whether the list is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Pushes `s` at the front.
    ///
    /// # Safety
    /// `s` is a valid span in no list.
    #[inline]
    pub unsafe fn push(&mut self, s: *mut Span) {
        // SAFETY: `s` and the old head are valid spans (caller; list invariant).
        unsafe {
            (*s).prev = ptr::null_mut();
            (*s).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = s;
            }
        }
        self.head = s;
    }

    /// Unlinks `s`.
    ///
    /// # Safety
    /// `s` is in this list.
    #[inline]
    pub unsafe fn remove(&mut self, s: *mut Span) {
        // SAFETY: `s` is in this list (remove's contract), so a valid span.
        let (prev, next) = unsafe { ((*s).prev, (*s).next) };
        if prev.is_null() {
            self.head = next;
        } else {
            // SAFETY: `prev` is `s`'s predecessor in this list, so a valid span of it.
            unsafe { (*prev).next = next };
        }
        if !next.is_null() {
            // SAFETY: `next` is `s`'s successor in this list, so a valid span of it.
            unsafe { (*next).prev = prev };
        }
        // SAFETY: `s` is a valid span (in this list until now, remove's contract).
        unsafe {
            (*s).next = ptr::null_mut();
            (*s).prev = ptr::null_mut();
        }
    }

    /// The first span, or null.
    #[inline]
    pub fn head(&self) -> *mut Span {
        self.head
    }

    /// Unlinks and returns the first span, or null.
    #[inline]
    pub fn pop(&mut self) -> *mut Span {
        let s = self.head;
        if !s.is_null() {
            // SAFETY: `s` is the head of this list.
            unsafe { self.remove(s) };
        }
        s
    }
}

impl Default for SpanList {
    fn default() -> Self {
        Self::new()
    }
}

/// The metadata of one chunk.
#[repr(C)]
pub struct Chunk {
    /// One descriptor per page; meaningful at the first page of each run or free block.
    pub spans: [Span; PAGES_PER_CHUNK],
    /// Per page, the descriptor of its run: one load from an address to its span. A free
    /// block's first page points to the block's own (free) descriptor, or to [`VACANT`]; any
    /// other free page to [`VACANT`] or to a descriptor in the `Free` state, never to a live
    /// run that does not cover it. Never null. Atomic (relaxed: plain moves on x86-64): the
    /// page layer writes it under its lock while any thread's free reads it without.
    pub run: [AtomicPtr<Span>; PAGES_PER_CHUNK],
    /// Per page, set once the page has been handed out (it may hold non-zero bytes).
    dirty: [u64; PAGES_PER_CHUNK / 64],
    /// Per page, set by a purge sweep that found the page free and dirty; a free page still
    /// aged at the next sweep (a purge delay later) is returned to the OS. Cleared when the
    /// page is handed out again.
    aged: [u64; PAGES_PER_CHUNK / 64],
    /// The chunk's first byte.
    pub base: usize,
    /// Pages in free blocks.
    free_pages: usize,
    /// Neighbours in the list of live chunks.
    next_chunk: *mut Chunk,
    prev_chunk: *mut Chunk,
    /// Neighbours in the purge queue (see [`Pages::purge_begin`]); meaningful while `queued`.
    purge_next: *mut Chunk,
    purge_prev: *mut Chunk,
    /// When the chunk joined the purge queue (ms); meaningful while `queued`.
    queued_ms: u64,
    /// Whether the chunk is in the purge queue: some of its free pages may hold data and have
    /// not been aged by a visit since.
    queued: bool,
    /// Whether the chunk is wholly free and kept mapped (one of [`Pages::kept`]).
    kept: bool,
}

impl Chunk {
    /// Whether any page of `[idx, idx + n)` may hold non-zero bytes.
    fn any_dirty(&self, idx: usize, n: usize) -> bool {
        (idx..idx + n).any(|p| self.dirty[p / 64] & (1 << (p % 64)) != 0)
    }

    /// Marks the dirty pages of `[idx, idx + n)` as aged; returns whether any was not yet.
    fn age(&mut self, idx: usize, n: usize) -> bool {
        let mut newly = false;
        for q in idx..idx + n {
            let (w, b) = (q / 64, 1u64 << (q % 64));
            newly |= self.dirty[w] & !self.aged[w] & b != 0;
            self.aged[w] |= self.dirty[w] & b;
        }
        newly
    }

    /// Marks `[idx, idx + n)` as reading zero.
    fn clear_dirty(&mut self, idx: usize, n: usize) {
        for p in idx..idx + n {
            self.dirty[p / 64] &= !(1 << (p % 64));
            self.aged[p / 64] &= !(1 << (p % 64));
        }
    }

    /// Whether page `p` is dirty and was aged by the previous purge visit.
    fn ripe(&self, p: usize) -> bool {
        (self.dirty[p / 64] & self.aged[p / 64]) & (1 << (p % 64)) != 0
    }

    /// Whether page `p` may hold data.
    fn dirty_at(&self, p: usize) -> bool {
        self.any_dirty(p, 1)
    }

    /// The first maximal stretch `[start, stop)` of pages in `[from, end)` that `pick` selects,
    /// or `None` if it selects none of them.
    fn next_stretch(
        &self,
        from: usize,
        end: usize,
        pick: fn(&Chunk, usize) -> bool,
    ) -> Option<(usize, usize)> {
        let start = (from..end).find(|&p| pick(self, p))?;
        let stop = (start..end).find(|&p| !pick(self, p)).unwrap_or(end);
        Some((start, stop))
    }
}

/// Pages of the live chunks by state (see `Pages::usage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageUsage {
    /// Chunks mapped.
    pub chunks: usize,
    /// Pages in free buddy blocks.
    pub free: usize,
    /// Free buddy blocks of each order.
    pub free_blocks: [usize; ORDERS],
    /// Pages of slab spans.
    pub slab: usize,
    /// Bytes of slab blocks counted as handed out (including blocks on remote lists) — an
    /// approximate figure, read without the owners' cooperation.
    pub slab_used_bytes: usize,
    /// Pages of large runs.
    pub large: usize,
    /// Bytes mapped for huge blocks.
    pub huge_bytes: usize,
    /// Pages of slab spans, per size class.
    pub class_pages: [usize; crate::size_class::NUM_CLASSES],
    /// Blocks the slab spans of each class count as handed out (with the heaps' reference on
    /// their current spans, and blocks waiting on remote lists).
    pub class_held: [u64; crate::size_class::NUM_CLASSES],
}

impl Default for PageUsage {
    fn default() -> Self {
        Self {
            chunks: 0,
            free: 0,
            free_blocks: [0; ORDERS],
            slab: 0,
            slab_used_bytes: 0,
            large: 0,
            huge_bytes: 0,
            class_pages: [0; crate::size_class::NUM_CLASSES],
            class_held: [0; crate::size_class::NUM_CLASSES],
        }
    }
}

/// The buddy allocator over all chunks, plus huge mappings. Callers serialise access (the
/// global instance sits behind a `FutexLock`); only [`PageMap::entry`] is read without it.
pub struct Pages<S: PageSource> {
    source: S,
    /// The page map (a separate static for the real allocator, read lock-free by the free
    /// path).
    pub map: &'static PageMap,
    /// Free blocks of each order, over all chunks.
    free: [SpanList; ORDERS],
    /// Wholly free chunks kept mapped (at most [`KEPT_CHUNKS`]), so that a workload whose heap
    /// shrinks and grows again does not unmap chunks and map them anew, paying a page fault
    /// per page each time. Their pages go back to the OS like any free pages (the purge
    /// queue), so they cost address space and metadata, not RSS; `trim` unmaps them.
    pub kept: usize,
    /// Recycled huge descriptors.
    spare_huge: *mut Huge,
    /// Live chunks, linked through `next_chunk` / `prev_chunk`.
    all: *mut Chunk,
    /// Chunks currently mapped (kept ones included).
    pub chunks: usize,
    /// Bytes currently mapped for huge blocks.
    pub huge_bytes: usize,
    /// The time of the current locked operation (ms), stamped on the huge mappings it caches.
    now_ms: u64,
    /// The purge queue: chunks whose free pages may hold data, oldest first (linked through
    /// `purge_next` / `purge_prev`). A chunk joins when pages that may hold data are freed in
    /// it and it is not queued yet; a purge step visits the oldest chunk once it has waited a
    /// purge delay (see [`Pages::purge_begin`]).
    purge_head: *mut Chunk,
    purge_tail: *mut Chunk,
    /// The free blocks a purge took out of the lists to return their pages with the lock
    /// dropped: (chunk, first page, order). At most one purge is out at a time.
    purge_out: [(*mut Chunk, u16, u8); PURGE_CALLS],
    /// Entries of `purge_out` in use.
    purge_out_len: usize,
    /// Of the purge that is out, the cached huge mappings it took to unmap (they are in its
    /// [`PurgeWork`]; a count here: while it is not 0 a purge is out).
    purge_huge_out: usize,
    /// Runs and free blocks looked at by purge steps and trims (statistics, and the tests of
    /// their bounds).
    pub purge_visits: u64,
    /// Bytes returned to the OS by purging and trimming (statistics).
    pub purged_bytes: usize,
    /// Pages of live chunks that may hold data (handed out since mapped or decommitted).
    pub dirty_pages: usize,
    /// The highest `dirty_pages * PAGE_SIZE + huge_bytes` so far.
    pub committed_peak: usize,
    /// The highest address space mapped so far (chunks, huge blocks, their guards).
    pub reserved_peak: usize,
    /// Pages of live runs (slab spans and large blocks).
    pub used_pages: usize,
    /// The highest `used_pages * PAGE_SIZE + huge_bytes` so far: the peak of memory handed to
    /// the heaps and to large and huge blocks (a page-level bound on the peak of live bytes).
    pub in_use_peak: usize,
    /// Huge mappings freed recently, kept (base, length, time freed) for reuse: a program
    /// that frees and reallocates a big buffer in a loop would otherwise pay a page fault per
    /// page each time. Unmapped after the purge delay, or by a trim.
    huge_cache: [(usize, usize, u64); HUGE_CACHE_SLOTS],
    /// Bytes held in `huge_cache`.
    pub huge_cached_bytes: usize,
    /// Large runs allocated and freed, huge blocks allocated and freed (statistics).
    pub large_counts: [u64; 2],
    /// See `large_counts`.
    pub huge_counts: [u64; 2],
}

// SAFETY: the raw pointers are into metadata owned by this value; access is serialised.
unsafe impl<S: PageSource + Send> Send for Pages<S> {}

/// How many freed huge mappings are kept for reuse, and how many bytes at most.
const HUGE_CACHE_SLOTS: usize = 4;
/// How many wholly free chunks stay mapped: 32 MiB of address space, and at most their
/// metadata's touched pages of RSS.
pub const KEPT_CHUNKS: usize = 8;
/// The most `madvise` calls (page ranges) one purge step makes.
const PURGE_CALLS: usize = 32;
const HUGE_CACHE_MAX_BYTES: usize = 256 << 20;

const CHUNK_META_BYTES: usize = align_up(size_of::<Chunk>(), PAGE_SIZE);
const HUGE_META_BYTES: usize = PAGE_SIZE;

impl<S: PageSource> Pages<S> {
    /// An empty page layer over `source`, recording its chunks in `map`.
    pub const fn new(source: S, map: &'static PageMap) -> Self {
        Self {
            source,
            map,
            free: [const { SpanList::new() }; ORDERS],
            kept: 0,
            spare_huge: ptr::null_mut(),
            all: ptr::null_mut(),
            chunks: 0,
            huge_bytes: 0,
            now_ms: 0,
            purge_head: ptr::null_mut(),
            purge_tail: ptr::null_mut(),
            purge_out: [(ptr::null_mut(), 0, 0); PURGE_CALLS],
            purge_out_len: 0,
            purge_huge_out: 0,
            purge_visits: 0,
            purged_bytes: 0,
            dirty_pages: 0,
            committed_peak: 0,
            reserved_peak: 0,
            used_pages: 0,
            in_use_peak: 0,
            huge_cache: [(0, 0, 0); HUGE_CACHE_SLOTS],
            huge_cached_bytes: 0,
            large_counts: [0; 2],
            huge_counts: [0; 2],
        }
    }

    /// Maps a new chunk and adds it whole to the free lists. `false` when memory is exhausted.
    fn grow(&mut self) -> bool {
        let meta = match self.source.meta_alloc(CHUNK_META_BYTES) {
            Some(p) => p.as_ptr().cast::<Chunk>(),
            None => return false,
        };
        let Some(base) = self.source.chunk_alloc() else {
            self.recycle_meta(meta);
            return false;
        };
        let base = base.as_ptr() as usize;
        // The descriptors first: once the map names the chunk, a lookup of any of its
        // addresses (even a wild pointer's) must find a run pointer that is not null.
        // SAFETY: meta is zeroed metadata we own.
        unsafe {
            (*meta).base = base;
            (*meta).free_pages = 0;
            // A descriptor's `addr` is set when it becomes a block's or a run's head (in
            // push_free and claim): writing all 1024 here would fault in all 64 KiB of them.
            for r in &(*meta).run {
                r.store(VACANT_PTR, Ordering::Relaxed);
            }
        }
        if !self
            .map
            .set(&self.source, base, CHUNK_SIZE, meta as usize | TAG_CHUNK)
        {
            // SAFETY: the chunk was just mapped and holds nothing.
            unsafe {
                self.source
                    .chunk_free(NonNull::new_unchecked(base as *mut u8))
            };
            self.recycle_meta(meta);
            return false;
        }
        // SAFETY: meta is live metadata we own, now in the map.
        unsafe {
            self.push_free(meta, 0, CHUNK_ORDER);
            (*meta).next_chunk = self.all;
            if !self.all.is_null() {
                (*self.all).prev_chunk = meta;
            }
        }
        self.all = meta;
        self.chunks += 1;
        self.note_peaks();
        true
    }

    /// Bytes of address space mapped now: chunks and huge blocks, with their guard pages.
    pub fn reserved_bytes(&self) -> usize {
        let huge_live = (self.huge_counts[0] - self.huge_counts[1]) as usize;
        let cached = self.huge_cache.iter().filter(|e| e.1 != 0).count();
        self.chunks * (CHUNK_SIZE + GUARD_SIZE)
            + self.huge_bytes
            + huge_live * GUARD_SIZE
            + self.huge_cached_bytes
            + cached * GUARD_SIZE
    }

    /// Bytes that may be resident now: dirty chunk pages and huge mappings.
    pub fn committed_bytes(&self) -> usize {
        self.dirty_pages * PAGE_SIZE + self.huge_bytes + self.huge_cached_bytes
    }

    fn note_peaks(&mut self) {
        self.committed_peak = self.committed_peak.max(self.committed_bytes());
        self.reserved_peak = self.reserved_peak.max(self.reserved_bytes());
        self.in_use_peak = self.in_use_peak.max(self.in_use_bytes());
    }

    /// Bytes of live runs and huge blocks now.
    pub fn in_use_bytes(&self) -> usize {
        self.used_pages * PAGE_SIZE + self.huge_bytes
    }

    /// Gives a chunk's metadata back to the source (its own mapping: a released chunk's
    /// metadata must not stay resident).
    fn recycle_meta(&mut self, meta: *mut Chunk) {
        // SAFETY: the metadata is no longer referenced by the map or any list.
        unsafe {
            self.source
                .meta_free(NonNull::new_unchecked(meta.cast()), CHUNK_META_BYTES)
        };
    }

    /// # Safety
    /// `chunk` is live and `[idx, idx + 2^order)` is a free, unlisted, aligned block of it.
    unsafe fn push_free(&mut self, chunk: *mut Chunk, idx: usize, order: u32) {
        // SAFETY: `chunk` is a live chunk's metadata (push_free's contract), ours under the
        // page lock; `c` is not used once the list push below may write other descriptors.
        let c = unsafe { &mut *chunk };
        let base = c.base;
        let span = &mut c.spans[idx];
        span.addr = base + idx * PAGE_SIZE;
        span.state.set(State::Free);
        span.order = order as u8;
        span.npages = 1 << order;
        span.flags = 0;
        let s: *mut Span = span;
        c.run[idx].store(s, Ordering::Relaxed);
        c.free_pages += 1 << order;
        // SAFETY: `s` is a valid descriptor in no list (the block is unlisted, push_free's
        // contract).
        unsafe { self.free[order as usize].push(s) };
    }

    /// # Safety
    /// `[idx, idx + 2^order)` is a free block of `chunk` in the list of `order`.
    unsafe fn take_free(&mut self, chunk: *mut Chunk, idx: usize, order: u32) {
        // SAFETY: page `idx` of `chunk` starts a free block in the list of `order`
        // (take_free's contract), so its descriptor is in that list.
        unsafe { self.free[order as usize].remove(&raw mut (*chunk).spans[idx]) };
        // SAFETY: `chunk` holds a free block, so it is a live chunk's metadata, ours under
        // the page lock.
        let c = unsafe { &mut *chunk };
        c.free_pages -= 1 << order;
        // A kept chunk stops being one when any of it is taken (for a run, a purge, or to be
        // unmapped).
        if c.kept {
            c.kept = false;
            self.kept -= 1;
        }
    }

    /// Frees the block `[idx, idx + 2^order)`, merging it with free buddies.
    ///
    /// # Safety
    /// The block is aligned, in use by nobody, and not in any list.
    unsafe fn free_block(&mut self, chunk: *mut Chunk, mut idx: usize, mut order: u32) {
        while order < CHUNK_ORDER {
            let buddy = idx ^ (1 << order);
            // SAFETY: `chunk` is live (it holds the block) and buddy < PAGES_PER_CHUNK since
            // the block is aligned inside the chunk.
            let b = unsafe { &(*chunk).spans[buddy] };
            // SAFETY: the same live chunk and in-bounds page `buddy`.
            let is_head = ptr::eq(unsafe { (*chunk).run[buddy].load(Ordering::Relaxed) }, b);
            if !(is_head && b.state == State::Free && b.order as u32 == order) {
                break;
            }
            // SAFETY: the buddy is a free block of this order, so it is in that list.
            unsafe { self.take_free(chunk, buddy, order) };
            idx &= !(1 << order);
            order += 1;
        }
        // SAFETY: the merged block is free and unlisted.
        unsafe { self.push_free(chunk, idx, order) };
        // SAFETY: chunk is live.
        if unsafe { (*chunk).free_pages } == PAGES_PER_CHUNK {
            // SAFETY: the whole chunk is one free block of the top order.
            unsafe { self.release_chunk(chunk) };
        }
    }

    /// Frees the pages `[idx, end)` of a chunk, as the maximal aligned buddy blocks they split
    /// into.
    ///
    /// # Safety
    /// The pages are in use by nobody and in no free block.
    unsafe fn free_range(&mut self, chunk: *mut Chunk, mut idx: usize, end: usize) {
        // SAFETY: the range lies inside the live chunk.
        let c = unsafe { &mut *chunk };
        // No page of the range may keep pointing at the live run it leaves.
        for r in &c.run[idx..end] {
            r.store(VACANT_PTR, Ordering::Relaxed);
        }
        if !c.queued && c.any_dirty(idx, end - idx) {
            // SAFETY: the chunk is live and not queued.
            unsafe { self.enqueue(chunk) };
        }
        while idx < end {
            let align_order = if idx == 0 {
                CHUNK_ORDER
            } else {
                idx.trailing_zeros()
            };
            let fit_order = usize::BITS - 1 - (end - idx).leading_zeros();
            let order = align_order.min(fit_order);
            // The chunk may be released by the last free_block; stop touching it then.
            let last = idx + (1 << order) >= end;
            // SAFETY: the block is aligned to its order and inside the range.
            unsafe { self.free_block(chunk, idx, order) };
            if last {
                break;
            }
            idx += 1 << order;
        }
    }

    /// A wholly free chunk: keep it mapped while fewer than [`KEPT_CHUNKS`] are, else give
    /// it back to the source.
    ///
    /// # Safety
    /// `chunk` is one free block of order `CHUNK_ORDER`, in the free list.
    unsafe fn release_chunk(&mut self, chunk: *mut Chunk) {
        // SAFETY: `chunk` is a live chunk's metadata (release_chunk's contract).
        let c = unsafe { &mut *chunk };
        if c.kept {
            return;
        }
        if self.kept < KEPT_CHUNKS {
            c.kept = true;
            self.kept += 1;
            return;
        }
        // SAFETY: `chunk` is one listed free block of order CHUNK_ORDER (release_chunk's
        // contract): unmap_chunk's contract.
        unsafe { self.unmap_chunk(chunk) };
    }

    /// Takes a wholly free chunk out of the lists and gives it back to the source.
    ///
    /// # Safety
    /// `chunk` is one free block of order `CHUNK_ORDER`, in the free list.
    unsafe fn unmap_chunk(&mut self, chunk: *mut Chunk) {
        // SAFETY: `chunk` is a live chunk's metadata (a listed free block, unmap_chunk's
        // contract); this shared borrow ends before the queue and the lists change it.
        let c = unsafe { &*chunk };
        debug_assert!(c.free_pages == PAGES_PER_CHUNK && c.spans[0].state == State::Free);
        let queued = c.queued;
        if queued {
            // SAFETY: `chunk` is live, and queued (its flag, read just above).
            unsafe { self.dequeue(chunk) };
        }
        // SAFETY: the whole chunk is one free block of order CHUNK_ORDER at page 0, in the
        // free list (unmap_chunk's contract).
        unsafe { self.take_free(chunk, 0, CHUNK_ORDER) };
        // SAFETY: `chunk` is still live metadata (given back only at the end); this shared
        // borrow ends before its neighbours are written.
        let c = unsafe { &*chunk };
        let dirty: u32 = c.dirty.iter().map(|w| w.count_ones()).sum();
        self.dirty_pages -= dirty as usize;
        let (prev, next, base) = (c.prev_chunk, c.next_chunk, c.base);
        if prev.is_null() {
            self.all = next;
        } else {
            // SAFETY: `prev` precedes `chunk` in the list of live chunks, so it is live.
            unsafe { (*prev).next_chunk = next };
        }
        if !next.is_null() {
            // SAFETY: `next` follows `chunk` in the list of live chunks, so it is live.
            unsafe { (*next).prev_chunk = prev };
        }
        self.map.set(&self.source, base, CHUNK_SIZE, 0);
        // SAFETY: `base` is the chunk's start from chunk_alloc (not null), and nothing in it is
        // used: all its pages are one free block, now out of the lists and the map.
        unsafe {
            self.source
                .chunk_free(NonNull::new_unchecked(base as *mut u8))
        };
        self.recycle_meta(chunk);
        self.chunks -= 1;
    }

    /// Allocates a run of `npages` pages (1 ..= PAGES_PER_CHUNK) whose first page is aligned to
    /// `2^align_order` pages (`align_order <= CHUNK_ORDER`). The span comes back with `addr`,
    /// `npages`, `state`, the `FLAG_CLEAN` bit and every page's `head` set. `None` when memory
    /// is exhausted.
    pub fn alloc_run(
        &mut self,
        npages: usize,
        align_order: u32,
        state: State,
    ) -> Option<NonNull<Span>> {
        debug_assert!(state != State::Free);
        debug_assert!((1..=PAGES_PER_CHUNK).contains(&npages));
        let want = log2_ceil(npages).max(align_order);
        let mut order = want;
        while (order as usize) < ORDERS && self.free[order as usize].is_empty() {
            order += 1;
        }
        if order as usize == ORDERS {
            if !self.grow() {
                return None;
            }
            order = CHUNK_ORDER;
        }
        let s = self.free[order as usize].head();
        // SAFETY: s is the head of a non-empty free list, so a live free block.
        let (chunk, idx) = unsafe { self.locate(s) };
        // SAFETY: page `idx` of `chunk` starts the free block `s`, the head of the list of
        // `order`.
        unsafe { self.take_free(chunk, idx, order) };
        // Split down to the wanted order, freeing the upper halves.
        while order > want {
            order -= 1;
            // SAFETY: the upper half of the block taken (or last split) is free, in no list
            // and aligned to `order` inside the live `chunk`.
            unsafe { self.push_free(chunk, idx + (1 << order), order) };
        }
        // Claim the run first (so no page of it looks like a free buddy), then free the
        // unused tail past npages.
        self.used_pages += npages;
        // SAFETY: `[idx, idx + npages)` lies in the block of order `want` just taken out of
        // the free lists (npages <= 2^want), of the live `chunk`.
        let s = unsafe { self.claim(chunk, idx, npages) };
        // SAFETY: `chunk` is live: it holds the run just claimed at page `idx`.
        unsafe { (*chunk).spans[idx].state.set(state) };
        if state == State::Large {
            self.large_counts[0] += 1;
        }
        let end = idx + (1 << want);
        if idx + npages < end {
            // SAFETY: `[idx + npages, end)` is the taken block's tail past the claimed run:
            // used by nobody and in no free block.
            unsafe { self.free_range(chunk, idx + npages, end) };
        }
        // SAFETY: `chunk` is live: it holds the run just claimed.
        self.debug_validate_at(unsafe { (*chunk).base });
        s
    }

    /// Marks `[idx, idx + npages)` as one run in use and returns its descriptor.
    ///
    /// # Safety
    /// The pages were just taken out of the free lists.
    unsafe fn claim(
        &mut self,
        chunk: *mut Chunk,
        idx: usize,
        npages: usize,
    ) -> Option<NonNull<Span>> {
        // SAFETY: `chunk` is a live chunk's metadata whose pages `[idx, idx + npages)` were
        // just taken out of the free lists (claim's contract): ours under the page lock, and
        // no other reference into it is used while `c` is.
        let c = unsafe { &mut *chunk };
        let mut clean = true;
        let head = &raw mut c.spans[idx];
        let mut dirtied = 0;
        for p in idx..idx + npages {
            c.run[p].store(head, Ordering::Relaxed);
            let (w, b) = (p / 64, p % 64);
            let was_clean = c.dirty[w] & (1 << b) == 0;
            clean &= was_clean;
            dirtied += was_clean as usize;
            c.dirty[w] |= 1 << b;
            c.aged[w] &= !(1 << b);
        }
        self.dirty_pages += dirtied;
        self.note_peaks();
        let base = c.base;
        let s = &mut c.spans[idx];
        s.addr = base + idx * PAGE_SIZE;
        s.npages = npages as u16;
        s.flags = if clean { FLAG_CLEAN } else { 0 };
        s.next = ptr::null_mut();
        s.prev = ptr::null_mut();
        Some(NonNull::from(s))
    }

    /// The chunk and page index of a span.
    ///
    /// # Safety
    /// `s` is a descriptor inside a live chunk's metadata.
    #[inline]
    pub unsafe fn locate(&self, s: *const Span) -> (*mut Chunk, usize) {
        // SAFETY: the span's addr is inside its chunk, which the map knows.
        let addr = unsafe { (*s).addr };
        match self.map.lookup(addr) {
            Owner::Chunk(c) => (c, (addr >> 12) & (PAGES_PER_CHUNK - 1)),
            _ => crate::util::fatal("internal-error", "span outside any chunk", addr),
        }
    }

    /// Frees a run from [`Pages::alloc_run`].
    ///
    /// # Safety
    /// `s` is a live run that nobody uses any more.
    pub unsafe fn free_run(&mut self, s: NonNull<Span>) {
        // SAFETY: `s` is a live run (free_run's contract): a descriptor in a live chunk's
        // metadata, as locate asks.
        let (chunk, idx) = unsafe { self.locate(s.as_ptr()) };
        // SAFETY: `s` is a live run's descriptor (free_run's contract).
        let n = unsafe { s.as_ref().npages } as usize;
        // SAFETY: `chunk` is the live chunk holding `s` (found by locate just above) and
        // `idx` < PAGES_PER_CHUNK; this shared borrow ends before free_range changes it.
        let c = unsafe { &*chunk };
        if c.spans[idx].state == State::Large {
            self.large_counts[1] += 1;
        }
        self.used_pages -= n;
        c.spans[idx].state.set(State::Free);
        let base = c.base;
        // SAFETY: the run's pages `[idx, idx + n)` are used by nobody any more (free_run's
        // contract) and in no free block (they were the live run's).
        unsafe { self.free_range(chunk, idx, idx + n) };
        self.debug_validate_at(base);
    }

    /// Grows a run in place to `new_npages` if the pages after it are free. Returns whether
    /// it did; the added pages may hold old bytes.
    ///
    /// # Safety
    /// `s` is a live run.
    pub unsafe fn grow_run(&mut self, s: NonNull<Span>, new_npages: usize) -> bool {
        // SAFETY: `s` is a live run (grow_run's contract): a descriptor in a live chunk's
        // metadata, as locate asks.
        let (chunk, idx) = unsafe { self.locate(s.as_ptr()) };
        // SAFETY: `s` is a live run's descriptor (grow_run's contract).
        let old = unsafe { s.as_ref().npages } as usize;
        let end = idx + new_npages;
        if end > PAGES_PER_CHUNK {
            return false;
        }
        // Every page in [idx + old, end) must lie in a free block.
        // SAFETY: `chunk` is the live chunk holding `s` (found by locate just above); this
        // shared borrow reads descriptors that take_free below leaves as they are (it
        // relinks the lists and counts free pages), and ends before claim.
        let c = unsafe { &*chunk };
        let mut p = idx + old;
        while p < end {
            let b = &c.spans[p];
            if !ptr::eq(c.run[p].load(Ordering::Relaxed), b) || b.state != State::Free {
                return false;
            }
            p += b.npages as usize;
        }
        // Take those blocks; give back the part of the last one past `end`.
        let mut p = idx + old;
        while p < end {
            let order = c.spans[p].order as u32;
            // SAFETY: page `p` starts a free block of `order` of `chunk` (its run pointer
            // is its own free descriptor, checked above), so it is in that order's list.
            unsafe { self.take_free(chunk, p, order) };
            p += 1 << order;
        }
        let state = c.spans[idx].state.get();
        let flags = c.spans[idx].flags;
        let base = c.base;
        self.used_pages += new_npages - old;
        // SAFETY: `[idx, end)` is the live run's pages and the free blocks just taken out of
        // the lists, all of `chunk`, which is live.
        unsafe { self.claim(chunk, idx, new_npages) };
        // SAFETY: `chunk` is live (it holds the grown run); no other reference into it is
        // used while `head` is.
        let head = unsafe { &mut (*chunk).spans[idx] };
        head.state.set(state);
        head.flags = flags & !FLAG_CLEAN;
        if p > end {
            // SAFETY: `[end, p)` is the tail of the last block taken, past the grown run:
            // used by nobody and, taken out of the lists above, in no free block.
            unsafe { self.free_range(chunk, end, p) };
        }
        self.debug_validate_at(base);
        true
    }

    /// Shrinks a run in place to `new_npages` (at least 1), freeing its tail.
    ///
    /// # Safety
    /// `s` is a live run; its pages from `new_npages` on are no longer used.
    pub unsafe fn shrink_run(&mut self, mut s: NonNull<Span>, new_npages: usize) {
        // SAFETY: `s` is a live run (shrink_run's contract): a descriptor in a live chunk's
        // metadata, as locate asks.
        let (chunk, idx) = unsafe { self.locate(s.as_ptr()) };
        // SAFETY: `s` is a live run's descriptor (shrink_run's contract).
        let old = unsafe { s.as_ref().npages } as usize;
        if new_npages >= old {
            return;
        }
        // SAFETY: `s` is a live run's descriptor; the page lock (`&mut self`) serialises
        // writers of its extent.
        unsafe { s.as_mut().npages = new_npages as u16 };
        self.used_pages -= old - new_npages;
        // SAFETY: `[idx + new_npages, idx + old)` is the run's tail, no longer used
        // (shrink_run's contract) and in no free block (it was the live run's).
        unsafe { self.free_range(chunk, idx + new_npages, idx + old) };
        // SAFETY: `chunk` is still live: it holds the shrunk run (at least one page).
        self.debug_validate_at(unsafe { (*chunk).base });
    }

    /// Returns every free page that may hold data to the OS (`MADV_DONTNEED`), and unmaps
    /// the kept chunks. Decommitted pages read as zero, so they count as clean again for
    /// zeroed allocations. Returns the bytes given back. Blocks that a purge on another
    /// thread has out at the time are left to it (it is returning their pages already).
    pub fn trim(&mut self) -> usize {
        let mut released = 0;
        // Kept chunks are wholly free and listed (a chunk whose block a purge has out is not
        // kept: taking the block out ended that).
        let mut chunk = self.all;
        while !chunk.is_null() && self.kept > 0 {
            // SAFETY: listed chunks are live; `next` is read before `chunk` may be unmapped.
            let (next, kept) = unsafe { ((*chunk).next_chunk, (*chunk).kept) };
            if kept {
                // SAFETY: a kept chunk is one listed free block of the top order.
                unsafe { self.unmap_chunk(chunk) };
                released += CHUNK_SIZE;
            }
            chunk = next;
        }
        // Only queued chunks have free pages that may hold data (validate checks it), so a
        // trim walks those, not the whole heap: programs that call malloc_trim often
        // (stress-ng's allocator stressors do) would otherwise pay for every chunk each time.
        let mut chunk = self.purge_head;
        while !chunk.is_null() {
            // SAFETY: queued chunks are live; `next` is read before `chunk` may leave the
            // queue.
            let next = unsafe { (*chunk).purge_next };
            let mut left = false;
            // SAFETY: `chunk` is live; decommitting touches free blocks' pages and bits only,
            // changing neither the chunk list nor any run's extent.
            unsafe {
                walk_chunk(chunk, |c, p, n| {
                    self.purge_visits += 1;
                    if (*c).spans[p].state == State::Free {
                        released += self.decommit_block(c, p, n);
                        left |= (*c).any_dirty(p, n);
                    }
                    true
                })
            };
            // A chunk whose free pages all went back leaves the queue (one the OS refused a
            // range of stays, for the purge to try again).
            if !left {
                // SAFETY: `chunk` is live and queued.
                unsafe { self.dequeue(chunk) };
            }
            chunk = next;
        }
        let mut huge = [(0, 0); HUGE_CACHE_SLOTS];
        let n = self.take_cached_huge(u64::MAX, &mut huge);
        for &(base, len) in &huge[..n] {
            // SAFETY: a mapping taken out of the cache: ours and unused.
            unsafe { self.source.huge_release(base, len) };
            released += len;
        }
        self.purged_bytes += released;
        if cfg!(debug_assertions) {
            self.validate();
        }
        released
    }

    /// Returns the pages of a free block that may hold data to the OS, each maximal stretch of
    /// them with one call. Returns the bytes given back.
    ///
    /// # Safety
    /// `[idx, idx + n)` is a free block of the live `chunk`.
    unsafe fn decommit_block(&mut self, chunk: *mut Chunk, idx: usize, n: usize) -> usize {
        // SAFETY: `chunk` is a live chunk's metadata (decommit_block's contract), ours under
        // the page lock; nothing else reaches into it while `c` is used.
        let c = unsafe { &mut *chunk };
        let mut released = 0;
        let mut from = idx;
        while let Some((start, end)) = c.next_stretch(from, idx + n, Chunk::dirty_at) {
            from = end;
            // SAFETY: the pages belong to a free block and hold nothing.
            let ok = unsafe {
                self.source.decommit(
                    NonNull::new_unchecked((c.base + start * PAGE_SIZE) as *mut u8),
                    (end - start) * PAGE_SIZE,
                )
            };
            if ok {
                c.clear_dirty(start, end - start);
                released += (end - start) * PAGE_SIZE;
                self.dirty_pages -= end - start;
            }
        }
        released
    }

    /// Pages of all live chunks by what they hold (walks every run: for statistics and tests,
    /// not for hot paths).
    pub fn usage(&self) -> PageUsage {
        let mut u = PageUsage {
            chunks: self.chunks,
            huge_bytes: self.huge_bytes,
            ..PageUsage::default()
        };
        // SAFETY: listed chunks are live; the walk only reads.
        unsafe {
            walk_runs(self.all, |c, p, n| {
                let s = &(*c).spans[p];
                match s.state.get() {
                    State::Free | State::Purging => {
                        u.free += n;
                        u.free_blocks[s.order as usize] += 1;
                    }
                    State::Slab => {
                        u.slab += n;
                        let used = (s.used & i32::MAX).max(0) as usize;
                        u.slab_used_bytes += used * s.block_size as usize;
                        u.class_pages[s.class as usize] += n;
                        u.class_held[s.class as usize] += used as u64;
                    }
                    State::Large => u.large += n,
                }
                true
            })
        };
        u
    }

    /// Checks the invariants in the module doc; reports and aborts on a violation (see
    /// [`invariant`]). Walks every chunk: for tests, and in debug builds at `trim`.
    pub fn validate(&self) {
        let mut c = self.all;
        let (mut n, mut kept) = (0, 0);
        while !c.is_null() {
            // SAFETY: `c` is in the list of live chunks (from `self.all` through
            // `next_chunk`), so live: validate_chunk's contract.
            unsafe { self.validate_chunk(c) };
            n += 1;
            // SAFETY: `c` is a live chunk of that list.
            let chunk = unsafe { &*c };
            if chunk.kept {
                kept += 1;
                invariant!(
                    chunk.free_pages == PAGES_PER_CHUNK && chunk.spans[0].state == State::Free,
                    "a kept chunk is not wholly free",
                    chunk.base
                );
            }
            c = chunk.next_chunk;
        }
        invariant!(n == self.chunks, "chunk list and count disagree");
        invariant!(
            kept == self.kept && kept <= KEPT_CHUNKS,
            "kept chunks and their count disagree"
        );
        self.validate_purge_queue();
        let u = self.usage();
        invariant!(
            u.slab + u.large == self.used_pages,
            "used page count and walk disagree"
        );
        for (order, list) in self.free.iter().enumerate() {
            let mut s = list.head();
            while !s.is_null() {
                // SAFETY: listed spans are live descriptors.
                let span = unsafe { &*s };
                invariant!(
                    span.state == State::Free,
                    "listed block not free",
                    span.addr
                );
                invariant!(
                    span.order as usize == order,
                    "block in the wrong list",
                    span.addr
                );
                // SAFETY: `s` is in a free list, so a descriptor inside a live chunk's
                // metadata, as locate asks.
                let (chunk, idx) = unsafe { self.locate(s) };
                invariant!(idx % (1 << order) == 0, "misaligned free block", span.addr);
                // SAFETY: chunk is live.
                let head = unsafe { (*chunk).run[idx].load(Ordering::Relaxed) };
                invariant!(ptr::eq(head, s), "free block not its page's run", span.addr);
                if order < CHUNK_ORDER as usize {
                    let buddy = idx ^ (1 << order);
                    // SAFETY: chunk is live.
                    let b = unsafe { &(*chunk).spans[buddy] };
                    // SAFETY: chunk is live.
                    let bh = unsafe { (*chunk).run[buddy].load(Ordering::Relaxed) };
                    invariant!(
                        !(ptr::eq(bh, b) && b.state == State::Free && b.order as usize == order),
                        "unmerged buddies",
                        span.addr
                    );
                }
                s = span.next;
            }
        }
    }

    /// In debug builds, at the end of an operation: the invariants of the chunk holding
    /// `addr` (if it is still mapped) and of the purge queue. Nothing in release builds.
    #[inline]
    pub(super) fn debug_validate_at(&self, addr: usize) {
        if cfg!(debug_assertions) {
            if let Owner::Chunk(c) = self.map.lookup(addr) {
                // SAFETY: the map names only live chunks.
                unsafe { self.validate_chunk(c) };
            }
            self.validate_purge_queue();
        }
    }

    /// Checks the purge queue: its links run both ways, its stamps never decrease, exactly the
    /// queued chunks are in it; and every block out for purging is a `Purging` block head.
    pub(super) fn validate_purge_queue(&self) {
        let (mut c, mut prev, mut last_ms, mut len) = (self.purge_head, ptr::null_mut(), 0, 0);
        while !c.is_null() {
            // SAFETY: queued chunks are live.
            let chunk = unsafe { &*c };
            invariant!(
                chunk.queued,
                "unqueued chunk in the purge queue",
                chunk.base
            );
            invariant!(chunk.purge_prev == prev, "purge queue links", chunk.base);
            invariant!(
                chunk.queued_ms >= last_ms,
                "purge queue out of order",
                chunk.base
            );
            (prev, last_ms, len) = (c, chunk.queued_ms, len + 1);
            c = chunk.purge_next;
        }
        invariant!(self.purge_tail == prev, "purge queue tail");
        let mut queued = 0;
        let mut c = self.all;
        while !c.is_null() {
            // SAFETY: listed chunks are live.
            let chunk = unsafe { &*c };
            queued += chunk.queued as usize;
            c = chunk.next_chunk;
        }
        invariant!(queued == len, "queued chunks and the queue disagree");
        for &(chunk, idx, order) in &self.purge_out[..self.purge_out_len] {
            // SAFETY: the out blocks' chunks are live.
            let s = unsafe { &(*chunk).spans[idx as usize] };
            invariant!(s.state == State::Purging, "block out for purging", s.addr);
            invariant!(s.order == order, "block out for purging", s.addr);
        }
    }

    /// Walks one chunk's pages and checks `free_pages + used_pages == PAGES_PER_CHUNK` and the
    /// `head` links of every run.
    ///
    /// # Safety
    /// `chunk` is live.
    pub unsafe fn validate_chunk(&self, chunk: *const Chunk) {
        // SAFETY: `chunk` is a live chunk's metadata (validate_chunk's contract); only read.
        let c = unsafe { &*chunk };
        let (mut free, mut used, mut out, mut p) = (0, 0, 0, 0);
        while p < PAGES_PER_CHUNK {
            let s = &c.spans[p];
            invariant!(
                ptr::eq(c.run[p].load(Ordering::Relaxed), s),
                "a run's first page is not its head",
                s.addr
            );
            let n = s.npages as usize;
            invariant!(n >= 1, "empty run", s.addr);
            if s.state == State::Free {
                free += n;
                // Every free page that may hold data is in a queued chunk (what trim relies
                // on).
                invariant!(
                    c.queued || !c.any_dirty(p, n),
                    "free pages that may hold data in an unqueued chunk",
                    s.addr
                );
            } else if s.state == State::Purging {
                out += n;
            } else {
                invariant!(
                    (p..p + n).all(|q| ptr::eq(c.run[q].load(Ordering::Relaxed), s)),
                    "a page of a run does not point at it",
                    s.addr
                );
                used += n;
            }
            p += n;
        }
        invariant!(free == c.free_pages, "free page count", c.base);
        invariant!(
            free + used + out == PAGES_PER_CHUNK,
            "pages of a chunk",
            c.base
        );
    }
}

/// The process's page map, read without a lock by every free.
pub static MAP: PageMap = PageMap::new();

/// The process's page layer; every caller takes its lock.
pub static PAGES: crate::util::FutexLock<Pages<OsSource>> =
    crate::util::FutexLock::new(Pages::new(OsSource, &MAP));

/// Calls `f(chunk, first_page, npages)` for every run and free block of every chunk in the
/// list that starts at `first`, in list and page order, until `f` returns `false`. Returns
/// whether the walk went to the end.
///
/// # Safety
/// Every listed chunk is live, and `f` neither changes the chunk list nor any run's extent
/// (it may read and write pages, bits and counters).
unsafe fn walk_runs(
    first: *mut Chunk,
    mut f: impl FnMut(*mut Chunk, usize, usize) -> bool,
) -> bool {
    let mut c = first;
    while !c.is_null() {
        // SAFETY: `c` is a listed chunk, so live, and `f` changes neither the chunk list nor
        // any run's extent (walk_runs's contract): walk_chunk's contract for `c`.
        if !unsafe { walk_chunk(c, &mut f) } {
            return false;
        }
        // SAFETY: `c` is still a live listed chunk: `f` does not change the chunk list
        // (walk_runs's contract).
        c = unsafe { (*c).next_chunk };
    }
    true
}

/// [`walk_runs`] over one chunk.
///
/// # Safety
/// As for [`walk_runs`], for `chunk`.
unsafe fn walk_chunk(
    chunk: *mut Chunk,
    mut f: impl FnMut(*mut Chunk, usize, usize) -> bool,
) -> bool {
    let mut p = 0;
    while p < PAGES_PER_CHUNK {
        // SAFETY: `chunk` is live (walk_chunk's contract) and its runs tile its pages, so
        // `p` < PAGES_PER_CHUNK is the first page of one, whose descriptor is read.
        let n = unsafe { (*chunk).spans[p].npages } as usize;
        if !f(chunk, p, n) {
            return false;
        }
        p += n;
    }
    true
}

mod huge;
mod map;
mod purge;
pub mod purger;
mod view;

pub use huge::Huge;
use map::TAG_CHUNK;
pub use map::{Owner, PageMap};
pub use purge::with;
pub use view::{ChunkView, RunView};

#[cfg(test)]
pub(crate) mod tests;
