//! The heap profiler's records (`RAMPART_PROFILE`): which allocations are sampled, the
//! stacks that made them, and what each stack holds now, held at its peak and allocated over
//! the run. `observe::profile` writes them out.
//!
//! # Sampling
//! Allocations are sampled by bytes, as a Poisson process: on average one sample per
//! `RAMPART_PROFILE_RATE` bytes allocated, with exponentially distributed intervals, so an
//! allocation of `w` bytes is sampled with probability `p = 1 - exp(-w / rate)` whatever
//! came before it, and a sample stands for `1 / p` allocations and `size / p` bytes: the
//! estimates are unbiased. The intervals are counted down on the thread's fast path, by the
//! same counter the guard modes use: while profiling, each allocation subtracts its class's
//! size ([`weight`]) instead of 1, which costs the fast path nothing more (a `sub` from
//! memory instead of an immediate).
//!
//! # Sampled blocks
//! A sampled block gets a page run of its own (`large`), whose descriptor carries the
//! sample's id. Its free then leaves the fast path by itself (a large run has no owner
//! heap), and the slow path, which looks the run up anyway, finds the id there: no table is
//! searched on any free. It costs at most a page per live sample, about 1 % of the live
//! heap at the default rate.
//!
//! # Records
//! A stack table (distinct stacks, found by hash) and a sample table (one record per live
//! sampled block, naming its stack and its estimates), in mappings of their own; both are
//! written under one lock, taken once per sample. The counters are atomics holding `f64`
//! bits, so a writer in a signal handler can read them without the lock.
//!
//! The peak profile is kept without copying the table at each new peak: every stack keeps
//! the clock of its last change and its value at the last peak taken before that change
//! (see [`Stack`]), which is all a reader needs to know each stack's value at the peak.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::config::{self, ProfileMode};
use crate::os;
use crate::size_class::{class_of, class_size, SMALL_MAX};
use crate::util::FutexLock;

/// Return addresses kept per stack.
pub const FRAMES: usize = 32;
/// Distinct stacks kept; samples of further stacks are dropped (and counted). The tables
/// are mapped at full size but touched only as they fill, except the hash table, whose
/// probes touch pages at random: it is kept small (128 KiB).
const MAX_STACKS: usize = 1 << 14;
/// Slots of the stack hash table (a power of two, twice [`MAX_STACKS`]: never more than
/// half full, so a probe always ends at an empty slot).
const HASH_SLOTS: usize = MAX_STACKS * 2;
/// Runs of freed samples kept for reuse, and the pages they may hold in all (1 MiB).
const RUN_CACHE: usize = 64;
const RUN_CACHE_PAGES: usize = 256;
/// Live sampled blocks kept at once.
const MAX_SAMPLES: usize = 1 << 22;

/// Whether profiling is on (fixed at start-up).
static ON: AtomicBool = AtomicBool::new(false);

/// Whether profiling is on.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// What the fast path subtracts from the sampling countdown for an allocation of `class`:
/// 1 (it counts allocations) unless profiling, then the class's size (it counts bytes).
/// Each heap keeps a copy per class beside its current spans.
#[inline]
pub fn weight(class: usize) -> usize {
    if on() {
        class_size(class)
    } else {
        1
    }
}

/// The countdown's weight of an allocation of `size` bytes that leaves the fast path: what
/// the fast path would have subtracted for it (its class's size for a small block), so that
/// a block's chance of being sampled does not depend on the path it took.
#[inline]
pub fn weight_of_size(size: usize) -> usize {
    if !on() {
        1
    } else if size <= SMALL_MAX {
        weight(class_of(size))
    } else {
        size
    }
}

/// The bytes the guard's countdown stands for per allocation while profiling (the countdown
/// then counts bytes): a typical small block.
pub const GUARD_BYTES_PER_ALLOCATION: usize = 128;

/// Reads the profiling options (after `config::init`) and, when profiling is on, makes the
/// fast path count bytes. Called once, with the options.
pub fn init() {
    if config::profile_mode() == ProfileMode::Off || ON.load(Ordering::Relaxed) {
        return;
    }
    // Each process draws its own intervals (two runs give independent estimates, and a
    // program cannot fall into step with them); the fixed seed serves when the kernel has no
    // randomness to give.
    if let Some(r) = os::random_u64() {
        SEED.store(r, Ordering::Relaxed);
    }
    if let Some((lo, hi)) = os::shared_object_range(init as *const () as usize) {
        OWN_CODE[0].store(lo, Ordering::Relaxed);
        OWN_CODE[1].store(hi, Ordering::Relaxed);
    }
    ON.store(true, Ordering::Release);
}

/// State of the interval draws' random numbers (see `util::splitmix64`).
static SEED: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);

/// A uniform random number in `(0, 1]` (1 when the top 53 bits are all ones: the half
/// added rounds up; `ln` then gives 0 and the interval its floor of 1).
fn uniform() -> f64 {
    ((crate::util::splitmix64(&SEED) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Bytes to allocate before the next sample: exponentially distributed with mean
/// `RAMPART_PROFILE_RATE` (1 when every allocation is sampled), at least 1; `isize::MAX`
/// ("never") when profiling is off.
pub fn next_interval() -> isize {
    if !on() {
        return isize::MAX;
    }
    let rate = config::profile_rate();
    if rate <= 1 {
        return 1;
    }
    let bytes = -crate::util::ln(uniform()) * rate as f64;
    (bytes as isize).clamp(1, isize::MAX / 2)
}

/// The probability that an allocation of countdown weight `w` is sampled.
fn probability(w: usize) -> f64 {
    let rate = config::profile_rate();
    if rate <= 1 {
        return 1.0;
    }
    -crate::util::exp_m1(-(w as f64) / rate as f64)
}

/// A counter of estimates: an `f64` in an atomic, written under the table's lock, read
/// anywhere.
#[repr(transparent)]
struct Estimate(AtomicU64);

impl Estimate {
    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise statics
    const ZERO: Estimate = Estimate(AtomicU64::new(0));

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    fn add(&self, v: f64) {
        self.set(self.get() + v);
    }
}

/// Estimated bytes and objects.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Amount {
    /// Estimated bytes.
    pub bytes: f64,
    /// Estimated objects.
    pub objects: f64,
}

/// A pair of estimate counters (bytes, objects) as an [`Amount`], never negative (a sum of
/// additions and subtractions of the same values can end a rounding error below zero).
fn amount(e: &[Estimate; 2]) -> Amount {
    Amount {
        bytes: e[0].get().max(0.0),
        objects: e[1].get().max(0.0),
    }
}

/// One distinct stack and what it holds. Its value at the last peak is `live` when it has
/// not changed since that peak (`changed < peak_clock`), else `at_peak` (saved by the first
/// change after the peak: the value it had then).
#[repr(C)]
struct Stack {
    hash: u64,
    len: usize,
    frames: [usize; FRAMES],
    live: [Estimate; 2],
    at_peak: [Estimate; 2],
    total: [Estimate; 2],
    /// The table's clock at the last change of `live`.
    changed: AtomicU64,
}

/// A live sampled block: its stack (index) and its estimates, or the next free record.
#[repr(C)]
#[derive(Clone, Copy)]
struct Sample {
    stack: u32,
    next_free: u32,
    bytes: f64,
    objects: f64,
}

/// The tables, in mappings of their own (made at the first sample).
struct Table {
    stacks: *mut Stack,
    hash: *mut u32,
    samples: *mut Sample,
    /// Sample records made so far; free ones are linked from `free_head` (index + 1).
    samples_made: usize,
    free_head: u32,
    /// Whether the mappings could not be made (profiling then records nothing).
    failed: bool,
    /// Events (sampled allocations and frees) so far.
    clock: u64,
    /// Runs of freed sampled blocks kept for the next samples (see [`record_free_and_keep`]): the run
    /// descriptor's address and its pages; `cached_pages` in all.
    runs: [(usize, usize); RUN_CACHE],
    nruns: usize,
    cached_pages: usize,
}

// SAFETY: the pointers are to the table's own mappings; access is under the lock.
unsafe impl Send for Table {}

static TABLE: FutexLock<Table> = FutexLock::new(Table {
    stacks: ptr::null_mut(),
    hash: ptr::null_mut(),
    samples: ptr::null_mut(),
    samples_made: 0,
    free_head: 0,
    failed: false,
    clock: 0,
    runs: [(0, 0); RUN_CACHE],
    nruns: 0,
    cached_pages: 0,
});

/// The stacks made so far (their records are complete before this count covers them), and
/// the stack table's address, for readers without the lock.
static NSTACKS: AtomicUsize = AtomicUsize::new(0);
static STACKS: AtomicUsize = AtomicUsize::new(0);
/// Totals of the estimates: live now, live at the peak, allocated over the run; and the
/// samples taken.
static LIVE: [Estimate; 2] = [Estimate::ZERO, Estimate::ZERO];
static PEAK: [Estimate; 2] = [Estimate::ZERO, Estimate::ZERO];
static TOTAL: [Estimate; 2] = [Estimate::ZERO, Estimate::ZERO];
static SAMPLES: AtomicU64 = AtomicU64::new(0);
/// The table's clock just after the last peak (written under the lock).
static PEAK_CLOCK: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

impl Table {
    /// Maps the tables; false when that failed (now or before).
    fn ready(&mut self) -> bool {
        if !self.stacks.is_null() {
            return true;
        }
        if self.failed {
            return false;
        }
        let bytes = |n: usize, each: usize| crate::util::align_up(n * each, os::PAGE_SIZE);
        let stacks = os::map(bytes(MAX_STACKS, size_of::<Stack>()));
        let hash = os::map(bytes(HASH_SLOTS, size_of::<u32>()));
        let samples = os::map(bytes(MAX_SAMPLES, size_of::<Sample>()));
        match (stacks, hash, samples) {
            (Some(s), Some(h), Some(m)) => {
                self.stacks = s.as_ptr().cast();
                self.hash = h.as_ptr().cast();
                self.samples = m.as_ptr().cast();
                STACKS.store(self.stacks as usize, Ordering::Release);
                true
            }
            _ => {
                self.failed = true;
                false
            }
        }
    }

    /// The index of `frames`' stack, made if new; `None` when the table is full.
    fn stack_of(&mut self, frames: &[usize]) -> Option<usize> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &f in frames {
            h = (h ^ f as u64).wrapping_mul(0x0100_0000_01b3);
            h ^= h >> 29;
        }
        let mut slot = (h as usize) & (HASH_SLOTS - 1);
        loop {
            // SAFETY: `slot < HASH_SLOTS`, the hash table's length (mapped by `ready`).
            let entry = unsafe { &mut *self.hash.add(slot) };
            if *entry == 0 {
                break;
            }
            let idx = *entry as usize - 1;
            // SAFETY: entries name stacks made below (`idx < NSTACKS`).
            let s = unsafe { &*self.stacks.add(idx) };
            if s.hash == h && &s.frames[..s.len] == frames {
                return Some(idx);
            }
            slot = (slot + 1) & (HASH_SLOTS - 1);
        }
        let idx = NSTACKS.load(Ordering::Relaxed);
        if idx == MAX_STACKS {
            return None;
        }
        // SAFETY: `idx < MAX_STACKS`: a record of the (zeroed) stack table, not yet visible to
        // readers (NSTACKS does not cover it).
        let s = unsafe { &mut *self.stacks.add(idx) };
        s.hash = h;
        s.len = frames.len();
        s.frames[..frames.len()].copy_from_slice(frames);
        // SAFETY: as above (`slot < HASH_SLOTS`).
        unsafe { *self.hash.add(slot) = idx as u32 + 1 };
        NSTACKS.store(idx + 1, Ordering::Release);
        Some(idx)
    }

    /// Adds `delta` (bytes, objects) to stack `idx`'s live amount, keeping its value at the
    /// last peak and the peak itself.
    fn change(&mut self, idx: usize, bytes: f64, objects: f64) {
        self.clock += 1;
        // SAFETY: `idx` names a made stack.
        let s = unsafe { &*self.stacks.add(idx) };
        if s.changed.load(Ordering::Relaxed) < PEAK_CLOCK.load(Ordering::Relaxed) {
            // Its first change since the peak: what it holds now is what it held then.
            s.at_peak[0].set(s.live[0].get());
            s.at_peak[1].set(s.live[1].get());
        }
        s.live[0].add(bytes);
        s.live[1].add(objects);
        s.changed.store(self.clock, Ordering::Relaxed);
        LIVE[0].add(bytes);
        LIVE[1].add(objects);
        if LIVE[0].get() > PEAK[0].get() {
            PEAK[0].set(LIVE[0].get());
            PEAK[1].set(LIVE[1].get());
            PEAK_CLOCK.store(self.clock + 1, Ordering::Relaxed);
        }
    }

    /// The free of the sampled block `id`: its record goes back to the free list and its
    /// estimates off its stack.
    fn free_sample(&mut self, id: u32) {
        if id == 0 || id as usize > self.samples_made {
            return;
        }
        // SAFETY: `id - 1 < samples_made`: a record of the sample table.
        let rec = unsafe { &mut *self.samples.add(id as usize - 1) };
        let Sample {
            stack,
            bytes,
            objects,
            ..
        } = *rec;
        rec.next_free = self.free_head;
        rec.bytes = 0.0;
        rec.objects = 0.0;
        self.free_head = id;
        self.change(stack as usize, -bytes, -objects);
    }
}

std::thread_local! {
    /// Whether this thread is inside a sample of ours (its stack walk may allocate, rarely:
    /// such allocations are not sampled). A const initialiser and no `Drop`: no allocation,
    /// no destructor.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as taking a sample; false if it already is (a nested
/// allocation, which is then not sampled). Pair with [`leave`].
pub fn enter() -> bool {
    !BUSY.replace(true)
}

/// Ends what [`enter`] began.
pub fn leave() {
    BUSY.set(false);
}

/// Where the allocator's own code lies when it is a shared library (`librampart.so`):
/// frames there at the inner end of a stack (`calloc`, `realloc`, `operator new` calling
/// into the core) are the allocator's, not the program's. 0, 0 when it is linked into the
/// program (a Rust program's global allocator), where the marker alone bounds the stack.
static OWN_CODE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Takes the calling stack for a sample: the frames outside the allocator's entry function,
/// whose frame holds `marker` (see `os::backtrace_above`), less the allocator's own frames
/// at the inner end (see [`OWN_CODE`]). Returns the count; the frames are at the start.
pub fn capture(frames: &mut [usize; FRAMES], marker: usize) -> usize {
    let n = os::backtrace_above(frames, marker);
    let (lo, hi) = (
        OWN_CODE[0].load(Ordering::Relaxed),
        OWN_CODE[1].load(Ordering::Relaxed),
    );
    let inner = frames[..n]
        .iter()
        .take_while(|&&pc| pc >= lo && pc < hi)
        .count();
    if inner == n {
        return n;
    }
    frames.copy_within(inner..n, 0);
    n - inner
}

/// Records a sampled allocation of `size` bytes with countdown weight `w`, made by `frames`.
/// Returns the sample's id (never 0), or 0 when it could not be recorded.
pub fn record_alloc(size: usize, w: usize, frames: &[usize]) -> u32 {
    let p = probability(w);
    let (bytes, objects) = (size as f64 / p, 1.0 / p);
    let mut t = TABLE.lock();
    if !t.ready() {
        return 0;
    }
    let Some(stack) = t.stack_of(frames) else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return 0;
    };
    let id = if t.free_head != 0 {
        let id = t.free_head;
        // SAFETY: free records are below `samples_made`.
        t.free_head = unsafe { (*t.samples.add(id as usize - 1)).next_free };
        id
    } else if t.samples_made < MAX_SAMPLES {
        t.samples_made += 1;
        t.samples_made as u32
    } else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return 0;
    };
    // SAFETY: `id - 1 < samples_made <= MAX_SAMPLES`: a record of the sample table.
    unsafe {
        *t.samples.add(id as usize - 1) = Sample {
            stack: stack as u32,
            next_free: 0,
            bytes,
            objects,
        }
    };
    // SAFETY: a made stack.
    let s = unsafe { &*t.stacks.add(stack) };
    s.total[0].add(bytes);
    s.total[1].add(objects);
    TOTAL[0].add(bytes);
    TOTAL[1].add(objects);
    SAMPLES.fetch_add(1, Ordering::Relaxed);
    t.change(stack, bytes, objects);
    id
}

/// A kept run of exactly `npages` pages (its descriptor's address), the most recently kept
/// first; `None` when there is none.
pub fn take_run(npages: usize) -> Option<usize> {
    let mut t = TABLE.lock();
    let i = t.runs[..t.nruns].iter().rposition(|r| r.1 == npages)?;
    let (span, _) = t.runs[i];
    let last = t.nruns - 1;
    t.runs.swap(i, last);
    t.nruns -= 1;
    t.cached_pages -= npages;
    Some(span)
}

/// Empties the run cache, handing each run's descriptor address to `free` (a trim).
pub fn drain_runs(mut free: impl FnMut(usize)) {
    loop {
        let run = {
            let mut t = TABLE.lock();
            if t.nruns == 0 {
                return;
            }
            t.nruns -= 1;
            let r = t.runs[t.nruns];
            t.cached_pages -= r.1;
            r.0
        };
        free(run);
    }
}

/// Records the free of the sampled block `id` (from [`record_alloc`]).
pub fn record_free(id: u32) {
    TABLE.lock().free_sample(id);
}

/// Records the free of the sampled block `id` and keeps its run (its descriptor's address
/// `span`, `npages` pages) for a later sample of the same page count, if there is room (64
/// runs, 256 pages), under one taking of the lock; says whether the run was kept. A sampled
/// block has a page run of its own; a fresh run for every sample cost a page fault and, once
/// freed, a purge and a TLB shootdown (measured on the suite's `fragment`: 7,000 samples,
/// one more page fault each, +14 % time), while a kept run's pages stay committed. The
/// caller marks the run as kept (`large::set_cached`) first: once in the cache, another
/// thread may take it.
pub fn record_free_and_keep(id: u32, span: usize, npages: usize) -> bool {
    let mut t = TABLE.lock();
    t.free_sample(id);
    if t.nruns == RUN_CACHE || t.cached_pages + npages > RUN_CACHE_PAGES {
        return false;
    }
    let n = t.nruns;
    t.runs[n] = (span, npages);
    t.nruns += 1;
    t.cached_pages += npages;
    true
}

/// Records that the sampled block `id` now holds `size` bytes (a `realloc` in place). It
/// keeps its stack and the chance it was sampled with: the blocks that grow or shrink in
/// place are sampled exactly as often as when they were allocated, so a sample still stands
/// for `1/p` blocks, now of `size` bytes each.
pub fn record_resize(id: u32, size: usize) {
    let mut t = TABLE.lock();
    if id == 0 || id as usize > t.samples_made {
        return;
    }
    // SAFETY: `id - 1 < samples_made`: a record of the sample table.
    let rec = unsafe { &mut *t.samples.add(id as usize - 1) };
    let (stack, old_b, objects) = (rec.stack as usize, rec.bytes, rec.objects);
    let bytes = size as f64 * objects;
    rec.bytes = bytes;
    let grown = (bytes - old_b).max(0.0);
    // SAFETY: a made stack.
    let s = unsafe { &*t.stacks.add(stack) };
    s.total[0].add(grown);
    TOTAL[0].add(grown);
    t.change(stack, bytes - old_b, 0.0);
}

/// The profile's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Estimated live now.
    pub live: Amount,
    /// Estimated live at the peak of sampled live bytes.
    pub peak: Amount,
    /// Estimated allocated over the run.
    pub total: Amount,
    /// Samples taken.
    pub samples: u64,
    /// Samples not recorded (tables full).
    pub dropped: u64,
    /// Distinct stacks.
    pub stacks: usize,
}

/// The totals now (read without the lock).
pub fn totals() -> Totals {
    Totals {
        live: amount(&LIVE),
        peak: amount(&PEAK),
        total: amount(&TOTAL),
        samples: SAMPLES.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        stacks: NSTACKS.load(Ordering::Acquire),
    }
}

/// One stack as a reader sees it.
pub struct StackView<'a> {
    /// Return addresses, innermost first.
    pub frames: &'a [usize],
    /// Estimated live now, at the peak, and allocated over the run.
    pub live: Amount,
    pub peak: Amount,
    pub total: Amount,
}

/// Calls `f` for every stack (its index and view), under the table's lock when `locked`,
/// else without it (a signal handler's snapshot, whose figures may be a sample apart).
pub fn for_each_stack(locked: bool, mut f: impl FnMut(usize, &StackView<'_>)) {
    let guard = locked.then(|| TABLE.lock());
    let peak_clock = PEAK_CLOCK.load(Ordering::Relaxed);
    let base = STACKS.load(Ordering::Acquire) as *const Stack;
    let n = NSTACKS.load(Ordering::Acquire);
    for idx in 0..n {
        // SAFETY: records below NSTACKS are complete (published with release) and never move.
        let s = unsafe { &*base.add(idx) };
        let live = amount(&s.live);
        let peak = if s.changed.load(Ordering::Relaxed) < peak_clock {
            live
        } else {
            amount(&s.at_peak)
        };
        let view = StackView {
            frames: &s.frames[..s.len.min(FRAMES)],
            live,
            peak,
            total: amount(&s.total),
        };
        f(idx, &view);
    }
    drop(guard);
}

/// Before `fork`: takes the table's lock (it takes no other lock while held), so that the
/// child finds the tables consistent.
pub fn fork_prepare() {
    core::mem::forget(TABLE.lock());
}

/// After `fork`, in the parent: releases what [`fork_prepare`] took.
pub fn fork_parent() {
    // SAFETY: fork_prepare took the lock in this thread and forgot the guard.
    unsafe { TABLE.force_unlock() };
}

/// After `fork`, in the child: the lock is free again. The child keeps the records of the
/// blocks it inherited (they are its heap too); its profile is written to its own file.
pub fn fork_child() {
    // SAFETY: the child has one thread; the lock's holder (our prepare step) is gone.
    unsafe { TABLE.reset_after_fork() };
}
