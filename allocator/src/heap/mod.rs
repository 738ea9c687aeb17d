//! Thread-local heaps: the malloc and free paths of the blocks of size classes (small and
//! medium, up to 1 MiB).
//!
//! ```text
//! alloc_fast(class)   (api::alloc, ffi malloc)   free(p) / free_sized(p, n)
//!   pop the current span's list; null when         └ free_fast: MAP.span_of(p); owner == me,
//!   empty or the sampling countdown is due             on a block boundary, not the list head?
//! alloc_small(class)  (aligned, redzone, slow)         push on the span's list; used -= 1
//!   └ pop, else alloc_slow (#[cold])                   └ span_attention: span full / empty
//!       ├ thread_init (first call: options,        └ free_slow (#[cold]): lookup(p) →
//!       │   heap from the registry, fork and           ├ Small, another owner → remote_push
//!       │   exit hooks)                                ├ Small with redzones → check, free
//!       ├ alloc_while_exiting                          ├ Large → large::free_run
//!       └ alloc_from: collect_remote, carve,           ├ Huge → large::free_huge
//!           partial list, take_over_abandoned,         ├ Guarded → check::guard::free
//!           a new span from the page layer             └ Invalid → report, abort
//! lookup(p): the one classification of a pointer (free_slow, usable_size, api::realloc)
//! ```
//!
//! A heap belongs to one thread, which alone touches its lists and its spans' local free
//! lists: same-thread malloc and free take no lock and no atomic. A block freed by another
//! thread is pushed with one CAS onto the owner heap's `remote` list; the owner collects the
//! list on its slow path. When a thread exits, a `pthread` key destructor empties what it
//! can back to the page layer and parks the heap on an abandoned list; the next new thread
//! adopts it (spans, remote list and all), so its pages are reused and blocks freed after the
//! owner exited are collected then.
//!
//! Per class, a heap's spans are in one of three places: `current[class]` (the span blocks are
//! taken from; holds [`slab::CURRENT_REF`]), the `partial[class]` list (spans with free
//! blocks), or the `full[class]` list (marked with [`slab::FULL_MARK`]). A span found empty
//! on a free that is not current goes back to the page layer at once. Before a heap grows by a
//! new span, it takes over the spans of one exited thread's heap, if there is one, so the
//! memory of exited threads is reused rather than pinned.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::check::quarantine::Quarantine;
use crate::check::report::{self, ErrorKind};
use crate::heapprof as profile;
use crate::large;
use crate::os;
use crate::pages::{Owner, Span, SpanList, State, MAP, PAGES};
use crate::size_class::{
    class_of, class_of_aligned, span_order, MIN_ALIGN, NUM_CLASSES, SMALL_CLASSES_MAX, SMALL_MAX,
};
use crate::slab::{self, CURRENT_REF, FULL_MARK};
use crate::util::{fatal, invariant, FutexLock};

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

/// A thread's heap. The fields the fast paths touch come first (the sampling countdown, the
/// current spans, the block counters), so they share the first cache lines.
///
/// Invariants (checked by [`validate_current_thread`]), for every class `c`:
/// - `current[c]` is the sentinel [`EMPTY_SPAN`], or a slab of class `c` whose owner is this
///   heap, with `used == out + CURRENT_REF`, where `out` is its carved blocks less those on
///   its free list (the slab invariant, `slab::validate`);
/// - every span of `partial[c]` is a slab owned by this heap with `0 < used == out`;
/// - every span of `full[c]` is owned by this heap and carries [`FULL_MARK`] (`used < 0`).
#[repr(C)]
pub struct Heap {
    /// The sampling countdown: what is left until the next allocation that leaves the fast
    /// path to be guarded, given a redzone or profiled, in the units of `weight`; at least
    /// `isize::MAX` when nothing is sampled. The fast path subtracts each allocation's
    /// weight and leaves instead when that would reach zero.
    sample_left: usize,
    /// The secret its spans' free-list links are encoded with (`slab::read_link`), drawn
    /// from the kernel when the heap is made and fixed for its life (a span taken over by
    /// another heap is re-encoded, see `registry::move_spans`). 0 in the sentinels, whose
    /// lists are empty.
    key: usize,
    /// The span each class allocates from ([`EMPTY_SPAN`] when none).
    current: [*mut Span; NUM_CLASSES],
    /// What an allocation of each class takes off the countdown: 1 (it counts allocations),
    /// or while profiling the class's size (it counts bytes; see `profile::weight`).
    weight: [usize; NUM_CLASSES],
    /// This heap's block counts (written by its thread only).
    counters: ThreadCounters,
    /// Spans with free blocks, other than the current one.
    partial: [SpanList; NUM_CLASSES],
    /// Spans with no free block (marked with `FULL_MARK`), so that a thread taking over an
    /// exited thread's spans can find them all.
    full: [SpanList; NUM_CLASSES],
    /// Blocks freed by other threads, linked through their first word.
    remote: AtomicUsize,
    /// Next heap on the abandoned list.
    next_abandoned: *mut Heap,
    /// Next heap in the list of every heap ever made (for statistics).
    next_all: *mut Heap,
    /// 1 if this heap's blocks carry redzones (`RAMPART_REDZONE` was on when the heap was
    /// made), else 0: the bit its spans' owner words carry (see [`owner_word`]). Fixed for
    /// the heap's life, so a span's mark always matches how its blocks were allocated.
    redzone: usize,
    /// What `sample_left` was last set to, and the distances from then to the next guard and
    /// profile samples (see [`sample_tick`]).
    sample_set: isize,
    guard_left: isize,
    profile_left: isize,
    /// The hardened mode's freed small blocks, held back before reuse.
    quarantine: Quarantine,
    /// Whether the heap is parked (its thread exited, no thread has adopted it since).
    parked: AtomicBool,
    /// With every allocation diverted: allocations left to the next guarded one (see
    /// `check::guard::sample_now`; 0 before the first draw).
    guard_sample_left: usize,
}

impl Heap {
    /// A heap with no spans and zero counts.
    const fn new() -> Heap {
        Heap {
            sample_left: isize::MAX as usize,
            key: 0,
            current: [EMPTY_SPAN_PTR; NUM_CLASSES],
            weight: [1; NUM_CLASSES],
            counters: ThreadCounters::ZERO,
            partial: [const { SpanList::new() }; NUM_CLASSES],
            full: [const { SpanList::new() }; NUM_CLASSES],
            remote: AtomicUsize::new(0),
            next_abandoned: ptr::null_mut(),
            next_all: ptr::null_mut(),
            redzone: 0,
            sample_set: isize::MAX,
            guard_left: isize::MAX,
            profile_left: isize::MAX,
            quarantine: Quarantine::new(),
            parked: AtomicBool::new(false),
            guard_sample_left: 0,
        }
    }
}

/// A `Sync` cell for the static sentinels below (never written through).
#[repr(transparent)]
struct Sentinel<T>(UnsafeCell<T>);
// SAFETY: the sentinels are never written: every path that would write them first sees that
// they are the sentinel (an empty free list, a foreign owner) and goes elsewhere.
unsafe impl<T> Sync for Sentinel<T> {}

/// A span with no free block and no owner: the current span of every class of a heap that
/// has none, so the fast path needs no null test.
static EMPTY_SPAN: Sentinel<Span> = Sentinel(UnsafeCell::new(Span::EMPTY));

const EMPTY_SPAN_PTR: *mut Span = EMPTY_SPAN.0.get();

/// The heap of a thread that has not allocated yet (or has exited): its fast paths always
/// fall through to the slow paths, which set up a real heap.
static EMPTY_HEAP: Sentinel<Heap> = Sentinel(UnsafeCell::new(Heap::new()));

const EMPTY_HEAP_PTR: *mut Heap = EMPTY_HEAP.0.get();

/// The heap of a thread whose clean-up has run (its `pthread` key destructor). Like the
/// empty heap, but an allocation then (from a later destructor) borrows a heap for that one
/// block instead of setting up one for the thread: glibc runs key destructors a bounded
/// number of rounds, so a heap set up then might never be handed back.
static EXITING_HEAP: Sentinel<Heap> = Sentinel(UnsafeCell::new(Heap::new()));

const EXITING_HEAP_PTR: *mut Heap = EXITING_HEAP.0.get();

// The calling thread's heap: the sentinel before its first allocation and after its exit,
// whose fast paths always fail over to the slow paths (an initial-exec TLS slot, see
// `os::tls`: two instructions to read, no call).
crate::os::initial_exec_slot!(
    "rampart_thread_heap_v1",
    Heap,
    EMPTY_HEAP,
    current_heap,
    set_current_heap
);

/// Where a heap gets its spans and gives empty ones back: the page layer ([`PageLayer`]), or
/// a fake over a private page layer in the unit tests. The heap's slow paths are generic
/// over it; the process's heaps use `PageLayer`, a zero-sized type, so this costs nothing.
///
/// # Safety
/// The heap relies on these, so an implementation must keep them:
/// - `span_alloc(order)` returns a run of `2^order` pages aligned to its size, in state
///   `Slab`, used by nobody and in no list, until it is given back with `span_free`;
/// - `span_of(addr)` returns the run descriptor of the page holding `addr` for every page of
///   every run `span_alloc` returned and not yet took back;
/// - `take_over` only moves to `h` spans that no other heap uses any more.
pub unsafe trait SpanSource {
    /// A fresh run for a slab of span order `order`, or `None` when memory is exhausted.
    fn span_alloc(&self, order: u32) -> Option<NonNull<Span>>;
    /// Gives back a run from `span_alloc`.
    ///
    /// # Safety
    /// `s` came from `span_alloc` of this source, is empty, in no list, and unused.
    unsafe fn span_free(&self, s: NonNull<Span>);
    /// The run descriptor of the page holding `addr`, or `None` outside this source's runs.
    fn span_of(&self, addr: usize) -> Option<NonNull<Span>>;
    /// Moves the spans of one exited thread's heap to `h`, if there is one; says whether.
    ///
    /// # Safety
    /// `h` is owned by the calling thread.
    unsafe fn take_over(&self, h: &mut Heap) -> bool;
}

/// The process's page layer as the heaps' span source.
pub struct PageLayer;

// SAFETY: runs come from the page layer's `alloc_run` as slabs of the span's size, aligned to
// it (buddy blocks), and go back with `free_run`; the page map knows every page of every live
// run; take-over moves spans of heaps on the abandoned list, whose threads have exited.
unsafe impl SpanSource for PageLayer {
    #[inline]
    fn span_alloc(&self, order: u32) -> Option<NonNull<Span>> {
        crate::pages::with(|p| p.alloc_run(1 << order, order, State::Slab))
    }

    #[inline]
    unsafe fn span_free(&self, s: NonNull<Span>) {
        // SAFETY: the caller gives back a run of the page layer that nobody uses.
        crate::pages::with(|p| unsafe { p.free_run(s) });
    }

    #[inline(always)]
    fn span_of(&self, addr: usize) -> Option<NonNull<Span>> {
        MAP.span_of(addr)
    }

    unsafe fn take_over(&self, h: &mut Heap) -> bool {
        // SAFETY: the caller owns `h`.
        ABANDONED.load(Ordering::Relaxed) != 0 && unsafe { take_over_abandoned(h) }
    }
}

/// The fast path of an allocation: pops a block of `class` from the current span's free
/// list, or returns null when that needs the slow path (an empty list), or when this
/// allocation is due to be sampled (the countdown would reach zero; the caller's slow path
/// then calls [`sample_tick`]). The sampling costs one subtraction. Lets a C entry point
/// keep its slow path a tail call.
///
/// # Safety
/// `class < NUM_CLASSES` (it indexes the heap's arrays unchecked).
#[inline(always)]
pub unsafe fn alloc_fast(class: usize) -> *mut u8 {
    let heap = current_heap();
    // SAFETY: `heap` is this thread's heap or the sentinel; `current` always holds a valid
    // span; `class < NUM_CLASSES` (the caller's contract) indexes the arrays.
    unsafe {
        let s = *(*heap).current.get_unchecked(class);
        let b = (*s).free;
        let (left, out) = (*heap)
            .sample_left
            .overflowing_sub(*(*heap).weight.get_unchecked(class));
        if b.is_null() || out || left == 0 {
            // The sentinel heaps are never written: their lists are always empty.
            return ptr::null_mut();
        }
        (*heap).sample_left = left;
        pop_counted(heap, s, class)
    }
}

/// Pops the first block of `s`'s free list (which must not be empty), counting it in the
/// heap's counters: the one pop of the fast paths.
///
/// # Safety
/// `heap` is the calling thread's heap, `s` its current span of `class` with a free block.
#[inline(always)]
unsafe fn pop_counted(heap: *mut Heap, s: *mut Span, class: usize) -> *mut u8 {
    // SAFETY: `s` is the calling thread's current span of `class` (the caller's contract):
    // its free list is this thread's alone, and it has a block.
    let b = pop(unsafe { &mut *s }, unsafe { (*heap).key });
    // SAFETY: `heap` is the calling thread's heap (not a sentinel: a sentinel's current
    // spans have no block, so the caller cannot have one), and `class < NUM_CLASSES`.
    unsafe { (*heap).counters.alloc.get_unchecked(class).bump() };
    b
}

/// [`sample_tick`]'s answer: this allocation is to be guarded (or given a redzone).
pub const SAMPLE_GUARD: u8 = 1;
/// [`sample_tick`]'s answer: this allocation is to be profiled.
pub const SAMPLE_PROFILE: u8 = 2;

/// Counts an allocation of countdown weight `w` (see `profile::weight_of_size`) that did not
/// come through [`alloc_fast`]'s pop, and says which samples it is due for
/// ([`SAMPLE_GUARD`], [`SAMPLE_PROFILE`], both or none). The heap keeps one countdown for
/// both (the fast path's), set to the nearer of the two; when it runs out, what ran since is
/// taken off both, and each that is due draws its next interval.
pub fn sample_tick(w: usize) -> u8 {
    let heap = current_heap();
    let heap = if heap == EMPTY_HEAP_PTR {
        // The thread's first allocation: set its heap up now (options, fork handlers, exit
        // key), so that the draw below is the heap's own, even when this very block is
        // guarded and never reaches the heap's slow path.
        let h = thread_init();
        if h.is_null() {
            return 0;
        }
        h
    } else if heap == EXITING_HEAP_PTR {
        // A thread past its clean-up: no countdown of its own any more; sample when every
        // allocation is.
        let guard = crate::check::guard::next_interval() == 1;
        let profile = profile::next_interval() == 1;
        return if guard { SAMPLE_GUARD } else { 0 } | if profile { SAMPLE_PROFILE } else { 0 };
    } else {
        heap
    };
    // SAFETY: the calling thread's own heap.
    let h = unsafe { &mut *heap };
    if h.sample_left > w {
        h.sample_left -= w;
        return 0;
    }
    if h.sample_set == 1 && h.guard_left == 1 && h.profile_left == isize::MAX {
        // Every allocation diverted (redzones, the hardened mode, `all`) and nothing
        // profiled: each is due, and the countdown stays as it is.
        return SAMPLE_GUARD;
    }
    // What ran since the countdown was set, this allocation included.
    let ran = (h.sample_set as usize)
        .wrapping_sub(h.sample_left)
        .wrapping_add(w)
        .min(isize::MAX as usize) as isize;
    let mut due = 0;
    h.guard_left = h.guard_left.saturating_sub(ran);
    if h.guard_left <= 0 {
        due |= SAMPLE_GUARD;
        h.guard_left = guard_interval();
    }
    h.profile_left = h.profile_left.saturating_sub(ran);
    if h.profile_left <= 0 {
        due |= SAMPLE_PROFILE;
        h.profile_left = profile::next_interval();
    }
    set_countdown(h);
    due
}

/// The next guard interval in the countdown's units: allocations, or while profiling bytes
/// (`profile::GUARD_BYTES_PER_ALLOCATION` per allocation), except when every allocation is
/// diverted.
fn guard_interval() -> isize {
    let n = crate::check::guard::next_interval();
    if n == 1 {
        return 1;
    }
    let n = n.min(isize::MAX as usize / 2) as isize;
    if profile::on() {
        n.saturating_mul(profile::GUARD_BYTES_PER_ALLOCATION as isize)
    } else {
        n
    }
}

/// Sets the fast path's countdown to the nearer of the guard and profile samples.
fn set_countdown(h: &mut Heap) {
    h.sample_set = h.guard_left.min(h.profile_left).max(1);
    h.sample_left = h.sample_set as usize;
}

/// Starts a heap's countdowns and weights (a heap handed to a thread).
pub(super) fn start_countdowns(h: &mut Heap) {
    for (c, w) in h.weight.iter_mut().enumerate() {
        *w = profile::weight(c);
    }
    h.guard_left = guard_interval();
    h.profile_left = profile::next_interval();
    set_countdown(h);
}

/// Allocates a block of `class` (without counting it towards sampling), or returns null when
/// memory is exhausted: the fast path's pop, else [`alloc_slow`].
///
/// # Safety
/// `class < NUM_CLASSES` (it indexes the heap's arrays unchecked).
#[inline(always)]
pub unsafe fn alloc_small(class: usize) -> *mut u8 {
    let heap = current_heap();
    // SAFETY: `heap` is this thread's heap or the sentinel; `current` always holds a valid
    // span, and a sentinel's lists are empty (so it is never written).
    unsafe {
        let s = *(*heap).current.get_unchecked(class);
        if !(*s).free.is_null() {
            return pop_counted(heap, s, class);
        }
        alloc_slow(heap, class)
    }
}

/// The allocation slow path: sets the thread's heap up on its first call, serves threads
/// past their clean-up, and otherwise takes the block from the heap's spans
/// ([`alloc_from`]).
///
/// # Safety
/// `heap` is the calling thread's current heap (or a sentinel), `class < NUM_CLASSES`.
#[cold]
#[inline(never)]
unsafe fn alloc_slow(mut heap: *mut Heap, class: usize) -> *mut u8 {
    if heap == EMPTY_HEAP_PTR {
        heap = thread_init();
        if heap.is_null() {
            return ptr::null_mut();
        }
    } else if heap == EXITING_HEAP_PTR {
        return alloc_while_exiting(class);
    }
    // SAFETY: `heap` is the calling thread's own heap.
    unsafe { counted_alloc_from(&mut *heap, class, &PageLayer) }
}

/// [`alloc_from`], counting the block in `h`'s counters.
///
/// # Safety
/// As for [`alloc_from`].
unsafe fn counted_alloc_from(h: &mut Heap, class: usize, src: &impl SpanSource) -> *mut u8 {
    // SAFETY: the caller keeps alloc_from's contract.
    let p = unsafe { alloc_from(h, class, src) };
    if !p.is_null() {
        h.counters.alloc[class].bump();
    }
    p
}

/// The slow path proper: collect remote frees, carve, switch spans, take over an exited
/// thread's spans, or grow.
///
/// # Safety
/// `h` is owned by the calling thread, `class < NUM_CLASSES`, and `h`'s spans came from
/// `src`.
unsafe fn alloc_from(h: &mut Heap, class: usize, src: &impl SpanSource) -> *mut u8 {
    let heap = h as *mut Heap;
    if h.remote.load(Ordering::Relaxed) != 0 {
        // SAFETY: the caller owns `h`, whose spans are `src`'s.
        unsafe { collect_remote(h, src) };
    }
    let s = h.current[class];
    if s != EMPTY_SPAN_PTR {
        // SAFETY: the current span is a live slab of this heap.
        let span = unsafe { &mut *s };
        // SAFETY: as above; its free list is ours.
        if !span.free.is_null() || unsafe { slab::carve(span, h.key) } {
            return pop(span, h.key);
        }
        // Exhausted: it leaves `current` and becomes full.
        span.used = span.used - CURRENT_REF + FULL_MARK;
        h.current[class] = EMPTY_SPAN_PTR;
        // SAFETY: the span is in no list.
        unsafe { h.full[class].push(s) };
    }
    let mut s = h.partial[class].pop();
    // Before growing, take over the spans of a thread that exited.
    // SAFETY: `h` is the calling thread's heap.
    if s.is_null() && unsafe { src.take_over(h) } {
        s = h.partial[class].pop();
    }
    if s.is_null() {
        let Some(run) = src.span_alloc(span_order(class)) else {
            return ptr::null_mut();
        };
        s = run.as_ptr();
        // SAFETY: a fresh run of the class's span size.
        unsafe { slab::init(s, class, owner_word(heap)) };
    }
    // SAFETY: `s` is a live slab of this heap with room (partial spans always have some).
    let span = unsafe { &mut *s };
    span.used += CURRENT_REF;
    h.current[class] = s;
    // SAFETY: `span` is this heap's slab, now its current one: carving is its owner's job.
    if span.free.is_null() && !unsafe { slab::carve(span, h.key) } {
        fatal(
            "internal-error",
            "span in the partial list has no free block",
            span.addr,
        );
    }
    pop(span, h.key)
}

/// Takes the first block off a span's (non-empty) free list, whose links are encoded with
/// `key` (the owner heap's).
#[inline(always)]
fn pop(span: &mut Span, key: usize) -> *mut u8 {
    let b = span.free;
    // SAFETY: `b` is a free block of the span, whose owner's key is `key`.
    span.free = unsafe { slab::read_link(b, key) };
    span.used += 1;
    b
}

/// Frees any block rampart returned (small, large or huge). A pointer rampart never returned
/// is reported as an invalid free and the process aborts.
///
/// # Safety
/// `p` is non-null and was returned by this allocator and not freed since (other pointers are
/// detected where the checks below can see them).
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: per the contract; a claimed size of 0 claims nothing (the check folds away).
    unsafe { free_fast(p, 0, MIN_ALIGN, "free") }
}

/// Frees a block whose caller says it was allocated with `size` bytes aligned to `align` (a
/// sized free: C23 `free_sized` and `free_aligned_sized`, C++ sized `operator delete`; a
/// size of 0 claims nothing), and reports a claim the block does not match: a block of a
/// size class must be of the class `size` and `align` map to, a page run or huge block must
/// have the pages `size` needs, a block with a redzone or a guarded one must have held
/// exactly `size` bytes. On the fast path (a small claim at the default alignment) the check
/// is a table lookup and a compare. `call` names the caller's entry point in reports
/// (`free_sized`, `operator delete`, …).
///
/// # Safety
/// As for [`free`].
#[inline(always)]
pub unsafe fn free_sized(p: *mut u8, size: usize, align: usize, call: &'static str) {
    // SAFETY: free_fast's contract is free's, which the caller keeps.
    unsafe { free_fast(p, size, align, call) }
}

/// Whether a claimed size fits a block of the slab `span` on the fast path: no claim, or a
/// claim at the default alignment whose class is the span's. Anything else is left to
/// [`claim_matches`] on the slow path.
#[inline(always)]
fn claim_fits_fast(claimed: usize, align: usize, span: &Span) -> bool {
    claimed == 0
        || (align <= MIN_ALIGN && claimed <= SMALL_MAX && class_of(claimed) == span.class as usize)
}

/// Whether a block of size class `class` is what an allocation of `claimed` bytes aligned to
/// `align` gets (0 claims nothing): the exact sized-free check of the slow path.
pub fn claim_matches(claimed: usize, align: usize, class: usize) -> bool {
    claimed == 0 || class_of_aligned(claimed, align.max(MIN_ALIGN)) == Some(class)
}

/// Whether a page run (or huge block) of `npages` pages is what a request of `claimed`
/// bytes gets (0 claims nothing); the redzone mode serves requests too large for a
/// redzoned class, at least [`SMALL_CLASSES_MAX`] + 1 bytes, as runs of that many bytes'
/// pages.
pub fn claim_matches_run(claimed: usize, npages: usize) -> bool {
    let pages = |n: usize| n.max(1).div_ceil(os::PAGE_SIZE);
    claimed == 0
        || pages(claimed) == npages
        || (crate::config::redzone() != 0
            && claimed <= SMALL_CLASSES_MAX
            && npages == pages(SMALL_CLASSES_MAX + 1))
}

/// The free fast path: a block of a span the calling thread owns goes back on the span's
/// list; everything else (and every doubt) goes to [`free_slow`]. `claimed` is the size a
/// sized free names (0 for a plain free), `call` the entry point reports name.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
unsafe fn free_fast(p: *mut u8, claimed: usize, align: usize, call: &'static str) {
    if let Some(s) = MAP.span_of(p as usize) {
        let s = s.as_ptr();
        let heap = current_heap();
        // SAFETY: `s` is a descriptor of a live chunk.
        let span = unsafe { &mut *s };
        // The owner test also rules out large runs and free pages (no owner); the boundary
        // test rejects a pointer into the middle of a block, the head test the immediate
        // double free; the claimed size of a sized free must map to the span's class. All
        // of them fail over to the slow path, which finds out which and reports it.
        if span.owner.load(Ordering::Relaxed) == heap as usize
            && slab::on_block_boundary(span, (p as usize).wrapping_sub(span.addr))
            && span.free != p
            && claim_fits_fast(claimed, align, span)
        {
            // SAFETY: the owner test passed: the span is a slab of this thread's heap, and
            // the boundary test makes `p` one of its blocks.
            return unsafe { free_local(heap, s, p, &PageLayer, call) };
        }
    }
    // SAFETY: free_slow's contract is free's, which the caller keeps.
    unsafe { free_slow(p, claimed, align, call) }
}

/// Pushes a block onto its span's local free list; `call` names the free in reports.
///
/// # Safety
/// `heap` is the calling thread's heap, `s` one of its slabs (from `src`) and `p` a block of
/// it that is not free.
#[inline(always)]
unsafe fn free_local(
    heap: *mut Heap,
    s: *mut Span,
    p: *mut u8,
    src: &impl SpanSource,
    call: &'static str,
) {
    // SAFETY: `s` is a slab of the calling thread's heap (the caller's contract), so its list
    // and counts are this thread's alone.
    let span = unsafe { &mut *s };
    // SAFETY: `heap` is the calling thread's own heap (it owns `s`, so it is no sentinel);
    // a slab's class is below NUM_CLASSES.
    let h = unsafe { &mut *heap };
    // SAFETY: `p` is a block of `s` that is not free: ours to link through its first word.
    unsafe { slab::write_link(p, span.free, h.key) };
    span.free = p;
    span.used -= 1;
    // SAFETY: as just said, the class indexes the counters in bounds.
    unsafe { h.counters.free.get_unchecked(span.class as usize).bump() };
    if slab::needs_attention(span.used) {
        // SAFETY: `s` is a live slab of `h` (from `src`), and `h` is this thread's heap.
        unsafe { span_attention(h, s, src, call) };
    }
}

/// The owner word of the spans of heap `h`: its address, with bit 0 set if the heap's blocks
/// carry redzones (`RAMPART_REDZONE`), so that the free fast path's owner test fails for
/// them and the slow path checks them.
fn owner_word(h: *mut Heap) -> usize {
    // SAFETY: heaps are never unmapped; `redzone` is fixed when the heap is made.
    h as usize | unsafe { (*h).redzone }
}

/// The heap named by a span's owner word.
fn owner_heap(word: usize) -> *mut Heap {
    (word & !1) as *mut Heap
}

/// Whether a slab's blocks carry redzones (see [`owner_word`]).
pub fn has_redzones(span: &Span) -> bool {
    span.owner.load(Ordering::Relaxed) & 1 != 0
}

/// Everything the free fast path leaves: blocks of other threads' spans (a remote push),
/// blocks with redzones, large runs, huge and guarded blocks, and every invalid free
/// (reported, then abort).
///
/// # Safety
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe fn free_slow(p: *mut u8, claimed: usize, align: usize, call: &'static str) {
    match lookup(p) {
        Block::Small(s) => {
            // SAFETY: the lookup found `p` to be a carved block of the live slab `s`.
            let span = unsafe { s.as_ref() };
            let me = current_heap();
            if has_redzones(span) {
                // Redzones: check the block (canary, double free, claimed size) and fill it.
                // SAFETY: a carved block of a marked span, being freed by the caller.
                unsafe {
                    crate::check::redzone::retire(
                        p as usize,
                        span.block_size as usize,
                        claimed,
                        call,
                        p as usize != span.addr,
                    )
                };
                if crate::config::harden() && me != EMPTY_HEAP_PTR && me != EXITING_HEAP_PTR {
                    // The hardened mode holds it back; another block leaves for reuse.
                    // SAFETY: the calling thread's own heap.
                    let out = unsafe { (*me).quarantine.push(p as usize) };
                    if out != 0 {
                        // SAFETY: a block the quarantine held: retired, given up; `me` is
                        // the calling thread's heap.
                        unsafe { release_quarantined(me, out as *mut u8, call) };
                    }
                    return;
                }
            } else {
                if !claim_matches(claimed, align, span.class as usize) {
                    size_mismatch(p, call);
                }
                // A block of our own span that the fast path refused is the block most
                // recently freed to the span, or its claim was one the fast path leaves to
                // the check above (aligned, or above 1 MiB).
                if owner_heap(span.owner.load(Ordering::Relaxed)) == me && span.free == p {
                    report::on_call(
                        ErrorKind::DoubleFree,
                        call,
                        "of a block that is already free",
                        p as usize,
                    );
                }
            }
            // SAFETY: a carved block of the live slab `s` (the lookup), given up by the
            // caller: retired if it has a redzone, else not the head of its span's list;
            // `me` is the calling thread's heap (or a sentinel).
            unsafe { release_to_span(me, s, p, call) };
        }
        Block::Zero => crate::check::zero::free(p as usize, claimed, call),
        Block::Large(s) => {
            // SAFETY: the lookup found `p` to be the start of the live large run `s`.
            let run = unsafe { s.as_ref() };
            if !claim_matches_run(claimed, run.npages as usize) {
                size_mismatch(p, call);
            }
            let (sample, npages) = (large::run_sample(run), run.npages as usize);
            if sample != 0 {
                // A sampled run of a few pages is kept for the next sample, its pages
                // committed: a fresh run would cost a page fault and a purge per sample.
                // SAFETY: the program gave the run up (free's contract): ours to keep.
                unsafe { large::set_cached(s, true) };
                if profile::record_free_and_keep(sample, s.as_ptr() as usize, npages) {
                    return;
                }
                // SAFETY: as above.
                unsafe { large::set_cached(s, false) };
            }
            // SAFETY: as above; the caller gives the block up.
            unsafe { large::free_run(s) };
        }
        Block::Huge(h) => {
            // SAFETY: the lookup found `p` to be the start of the live huge block `h`.
            let (size, sample) = unsafe { (h.as_ref().size, h.as_ref().sample) };
            if !claim_matches_run(claimed, size.div_ceil(os::PAGE_SIZE)) {
                size_mismatch(p, call);
            }
            if sample != 0 {
                profile::record_free(sample);
            }
            // SAFETY: as above; the caller gives the block up.
            unsafe { large::free_huge(h) };
        }
        // SAFETY: the pointer is in the guard pool (the lookup asked it).
        Block::Guarded => unsafe { crate::check::guard::free(p as usize, claimed, call) },
        Block::Invalid(why) => invalid(p, call, why),
    }
}

/// Frees a block leaving the hardened mode's quarantine (checked and filled by
/// `redzone::retire` when it was freed) to its span ([`release_to_span`]), after checking
/// its fill: a write after free is reported before the block can be reused.
///
/// # Safety
/// `p` is a retired block of a live slab with redzones, given up by the caller (a block in
/// use keeps its span from being emptied, so the span is live); `me` is the calling
/// thread's heap (or a sentinel), passed in so that a caller holding it keeps one path to it.
unsafe fn release_quarantined(me: *mut Heap, p: *mut u8, call: &'static str) {
    let Some(s) = MAP.span_of(p as usize) else {
        fatal(
            "internal-error",
            "retired block outside any chunk",
            p as usize,
        );
    };
    // SAFETY: the page map names live chunks; `p`'s span is a live slab (the contract), and
    // `p` a retired block of it, of its block size, not reused yet.
    unsafe { crate::check::redzone::check_retired(p as usize, s.as_ref().block_size as usize) };
    // SAFETY: a retired block (so not free in its list) of the live slab `s`, given up.
    unsafe { release_to_span(me, s, p, call) };
}

/// Gives a block back to its span `s`: the span's list if `me` (the calling thread's heap)
/// owns it, else the owner's remote list (one CAS).
///
/// # Safety
/// `p` is a carved block of the live slab `s`, given up by the caller and not free in its
/// span's list; `me` is the calling thread's heap or a sentinel.
unsafe fn release_to_span(me: *mut Heap, s: NonNull<Span>, p: *mut u8, call: &'static str) {
    // SAFETY: `s` is a live slab (the contract).
    let span = unsafe { s.as_ref() };
    let owner = owner_heap(span.owner.load(Ordering::Relaxed));
    if owner == me {
        // SAFETY: a block of our own span, not free (the contract).
        return unsafe { free_local(owner, s.as_ptr(), p, &PageLayer, call) };
    }
    count_remote_free(span.class as usize);
    // SAFETY: a slab's owner heap lives for ever (heaps are recycled, never unmapped).
    unsafe { remote_push(owner, p, call) };
}

/// Whether the spans of owner word `word` are out of reach of every running thread but the
/// caller's: the calling thread's own heap, or a heap parked when its thread exited (for
/// the exit-time checks, which must not read blocks another thread may hand out meanwhile).
pub fn owner_is_quiet(word: usize) -> bool {
    let heap = owner_heap(word);
    // SAFETY: a non-null owner names a heap, and heaps are never unmapped.
    heap == current_heap() || (!heap.is_null() && unsafe { (*heap).parked.load(Ordering::Acquire) })
}

/// Whether this allocation is to be guarded, when the countdown diverts every allocation
/// (see `check::guard::sample_now`), counted on the calling thread's heap.
pub fn guard_sample_now() -> bool {
    let heap = current_heap();
    if heap == EMPTY_HEAP_PTR || heap == EXITING_HEAP_PTR {
        return crate::check::guard::sample_now(None);
    }
    // SAFETY: the calling thread's own heap; only it touches this field.
    crate::check::guard::sample_now(Some(unsafe { &mut (*heap).guard_sample_left }))
}

/// Whether the calling thread's heap marks its spans for redzones (made while
/// `RAMPART_REDZONE` or `RAMPART_HARDEN` was on): only such a heap may hand out redzoned
/// blocks, whose frees its spans' marks route to the checks.
pub fn current_heap_has_redzones() -> bool {
    let heap = current_heap();
    // SAFETY: the calling thread's heap or a sentinel (whose `redzone` is 0); heaps are
    // never unmapped.
    heap != EXITING_HEAP_PTR && unsafe { (*heap).redzone } != 0
}

/// The hardened mode's check of a free list's head after a pop: the next block (the head
/// now, decoded with the heap's key) must be null or a carved block of the same span; a
/// link a use after free overwrote is reported before it is followed.
///
/// # Safety
/// `class < NUM_CLASSES`; called by the thread that just took a block of `class`.
pub unsafe fn check_list_head(class: usize) {
    let heap = current_heap();
    // SAFETY: the calling thread's heap (or a sentinel, whose current spans are the empty
    // sentinel span); `class < NUM_CLASSES`.
    let s = unsafe { &*(*heap).current[class] };
    if !s.free.is_null() && !slab::is_block_start(s, s.free as usize) {
        report::on_call(
            ErrorKind::UseAfterFree,
            "malloc",
            "found a free block's link overwritten (a write after free)",
            s.addr,
        );
    }
}

#[cold]
fn size_mismatch(p: *mut u8, call: &str) -> ! {
    report::on_call(
        ErrorKind::InvalidFree,
        call,
        "with a size the block was not allocated with",
        p as usize,
    )
}

/// Frees counted for threads that have no heap (not set up yet, or exiting); several such
/// threads may free at once, so these are atomic.
static ORPHAN_FREES: [AtomicU64; NUM_CLASSES] = [const { AtomicU64::new(0) }; NUM_CLASSES];

/// Counts a free of a block another heap owns, in the calling thread's counters.
fn count_remote_free(class: usize) {
    let me = current_heap();
    if me == EMPTY_HEAP_PTR || me == EXITING_HEAP_PTR {
        ORPHAN_FREES[class].fetch_add(1, Ordering::Relaxed);
    } else {
        // SAFETY: the calling thread's own heap; only it writes these counters.
        unsafe {
            (*me).counters.free[class].bump();
            (*me).counters.remote_free.bump();
        }
    }
}

/// Pushes a block onto another heap's remote list: one CAS (retried under contention).
/// `call` names the free in a report (the same block pushed twice in a row).
///
/// # Safety
/// `owner` is a heap and `p` a block of one of its spans, no longer used by the caller.
unsafe fn remote_push(owner: *mut Heap, p: *mut u8, call: &str) {
    // SAFETY: heaps are never unmapped.
    let remote = unsafe { &(*owner).remote };
    let mut head = remote.load(Ordering::Relaxed);
    loop {
        if head == p as usize {
            // The same block pushed twice in a row: it would link to itself.
            report::on_call(
                ErrorKind::DoubleFree,
                call,
                "of a block that is already free",
                p as usize,
            );
        }
        // SAFETY: the block is ours to write until published; heaps are never unmapped.
        unsafe { slab::write_link(p, head as *mut u8, remote_key(owner, p as usize)) };
        match remote.compare_exchange_weak(head, p as usize, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// What the link stored in block `b` of `owner`'s remote list is encoded with: the heap's
/// key mixed with the link's own address (remote pushes are off the fast path, so the
/// extra instructions cost nothing there).
///
/// # Safety
/// `owner` is a heap (heaps are never unmapped).
#[inline]
unsafe fn remote_key(owner: *const Heap, b: usize) -> usize {
    // SAFETY: as the contract says; the key is fixed for the heap's life.
    unsafe { (*owner).key.rotate_left(23) ^ b }
}

/// A free made a span empty or un-full: move it between the heap's lists, or back to the
/// page layer. `call` names the free in a report (a span freed more often than allocated).
///
/// # Safety
/// `s` is a live slab (from `src`) owned by `h`, the calling thread's heap.
#[cold]
#[inline(never)]
unsafe fn span_attention(h: &mut Heap, s: *mut Span, src: &impl SpanSource, call: &str) {
    // SAFETY: `s` is a live slab of `h`, the calling thread's heap (the caller's contract).
    let span = unsafe { &mut *s };
    let class = span.class as usize;
    if span.used < 0 {
        span.used -= FULL_MARK;
        // SAFETY: a full span of this heap is in its full list.
        unsafe { h.full[class].remove(s) };
        if span.used == 0 {
            // SAFETY: empty, in no list.
            unsafe { retire(s, src) };
        } else {
            // SAFETY: in no list.
            unsafe { h.partial[class].push(s) };
        }
    } else if span.used == 0 {
        if h.current[class] == s {
            // The current span holds CURRENT_REF, so its count can only reach 0 if a block
            // was freed twice.
            report::on_call(
                ErrorKind::DoubleFree,
                call,
                "of a block of a span whose blocks were freed more often than allocated",
                span.addr,
            );
        }
        // Not current, so in the partial list.
        // SAFETY: a slab of `h` with free blocks that is not current is in `h.partial`; once
        // out of it, empty and in no list, it can go back to `src`.
        unsafe {
            h.partial[class].remove(s);
            retire(s, src);
        }
    }
}

/// Gives an empty span back to its source.
///
/// # Safety
/// `s` is a live empty slab of `src`, in no list.
unsafe fn retire(s: *mut Span, src: &impl SpanSource) {
    // SAFETY: the caller's: `s` is a live descriptor, empty and listed nowhere, so nobody
    // else writes it.
    let span = unsafe { &mut *s };
    span.owner.store(0, Ordering::Relaxed);
    span.free = ptr::null_mut();
    // SAFETY: as above; a descriptor's address is non-null.
    unsafe { src.span_free(NonNull::new_unchecked(s)) };
}

/// Takes the heap's remote list and frees each block to its span.
///
/// # Safety
/// `h` is owned by the calling thread, and its spans came from `src`.
unsafe fn collect_remote(h: &mut Heap, src: &impl SpanSource) {
    // Reports of a double free found here name `free`: a remote free went wrong, found later.
    let call = "free";
    let mut b = h.remote.swap(0, Ordering::Acquire);
    while b != 0 {
        // SAFETY: remote blocks are blocks of this heap's spans, linked through their first word.
        unsafe {
            let next = slab::read_link(b as *mut u8, remote_key(h, b)) as usize;
            let Some(s) = src.span_of(b) else {
                fatal("internal-error", "remote block outside any chunk", b);
            };
            let s = s.as_ptr();
            let span = &mut *s;
            if !slab::is_block_start(span, b) {
                // A remote link a write after free overwrote: not followed further.
                fatal(
                    "heap-corruption",
                    "a remote free list's link is not a block",
                    b,
                );
            }
            let owner = owner_heap(span.owner.load(Ordering::Relaxed));
            if !ptr::eq(owner, h) {
                // Pushed here by a thread that read the span's owner just before another
                // heap took the span over: send it on.
                remote_push(owner, b as *mut u8, call);
                b = next;
                continue;
            }
            if span.free as usize == b {
                report::on_call(
                    ErrorKind::DoubleFree,
                    call,
                    "of a block that is already free",
                    b,
                );
            }
            slab::write_link(b as *mut u8, span.free, h.key);
            span.free = b as *mut u8;
            span.used -= 1;
            if slab::needs_attention(span.used) {
                span_attention(h, s, src, call);
            }
            b = next;
        }
    }
}

/// Checks the calling thread's heap (see [`validate_heap`]); for tests.
#[cfg(test)]
pub fn validate_current_thread() {
    let heap = current_heap();
    if heap == EMPTY_HEAP_PTR || heap == EXITING_HEAP_PTR {
        return;
    }
    // SAFETY: the calling thread's own heap.
    unsafe { validate_heap(heap) };
}

/// Checks a heap's invariants (see [`Heap`]): every span in its current slots and lists
/// satisfies the slab invariant, is of its class and belongs to it. Reports and aborts on a
/// violation (`util::invariant`). Runs in tests and, in debug builds, where spans change
/// hands (take-over, abandon).
///
/// # Safety
/// `heap` is owned by the calling thread (its own, or one it took off the registry).
unsafe fn validate_heap(heap: *mut Heap) {
    // SAFETY: the calling thread owns `heap` (the caller's contract), so nothing changes it.
    let h = unsafe { &*heap };
    let mine = |s: &Span| owner_heap(s.owner.load(Ordering::Relaxed)) == heap;
    for class in 0..NUM_CLASSES {
        let c = h.current[class];
        if c != EMPTY_SPAN_PTR {
            // SAFETY: a live span of this heap.
            let span = unsafe { &*c };
            invariant!(mine(span), "current span of another heap", span.addr);
            invariant!(
                span.class as usize == class,
                "current span of another class",
                span.addr
            );
            // SAFETY: `span` is a live slab this thread's heap owns.
            unsafe { slab::validate(span, true, h.key) };
        }
        for (list, full) in [(&h.partial[class], false), (&h.full[class], true)] {
            let mut s = list.head();
            while !s.is_null() {
                // SAFETY: a live span of this heap's lists.
                let span = unsafe { &*s };
                invariant!(mine(span), "listed span of another heap", span.addr);
                invariant!((span.used < 0) == full, "span in the wrong list", span.addr);
                invariant!(
                    full || span.used > 0,
                    "empty span kept in a list",
                    span.addr
                );
                // SAFETY: a listed span is a live slab this thread's heap owns.
                unsafe { slab::validate(span, false, h.key) };
                s = span.next;
            }
        }
    }
}

mod lookup;
mod registry;

use lookup::invalid;
pub use lookup::{lookup, lookup_owned, usable_size, Block};
#[cfg(test)]
use registry::abandon;
use registry::{alloc_while_exiting, take_over_abandoned, thread_init, ABANDONED};
pub use registry::{merge_counters, registry_counts, release_held_blocks, HeapTotals, ThreadHeaps};

#[cfg(test)]
mod tests;
