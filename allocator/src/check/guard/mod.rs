//! Guarded placement, quarantine and fault reports (`RAMPART_GUARD=all|sample`).
//!
//! A guarded block lives alone in a *slot* of the guard pool, one reserved region of address
//! space: whole data pages followed by one guard page that faults on any access. The block is
//! placed at the end of its data pages, so its last byte touches the guard page (as far as
//! its alignment allows) and an overflow faults on the offending instruction. C's `malloc`
//! family asks for 16-byte alignment (the ABI's, which programs rely on even for odd sizes),
//! so a block whose size is not a multiple of 16 ends up to 15 bytes before the guard; a
//! block with a larger requested alignment up to `align - 1` bytes. Rust asks for its type's
//! alignment, which divides the size, so its blocks touch the guard exactly. The slack around
//! the block (before it on its first page, after it up to the guard) is filled with a
//! pattern checked when it is freed and at exit: a write there is reported then (an overflow
//! or underflow that reaches a guard page faults at once).
//!
//! A freed block's data pages become guard pages too (contents dropped) and its slot joins a
//! FIFO quarantine bounded by `RAMPART_QUARANTINE` bytes, so a read or write after free
//! faults; slots leaving the quarantine are reused for blocks of the same slot class. Since a
//! slot is never handed out twice at once, double and invalid frees of guarded blocks are
//! always found, with the block's size and stacks.
//!
//! - `all` (debugging): every allocation of the process is guarded while the pool has room
//!   (64 GiB of address space, fewer if the address-space limit forbids) and the mapping
//!   count allows. Costs two pages of address space and a few system calls per block, and
//!   a stack walk per allocation and free.
//! - `sample` (production): one allocation in `RAMPART_GUARD_SAMPLE`, of at most
//!   [`SAMPLE_MAX_SIZE`] bytes, from a pool of 64 MiB; the others take the normal fast path,
//!   where the sampling is one counter decrement (`heap::alloc_fast`).
//!
//! Guard pages are installed with `MADV_GUARD_INSTALL` where the kernel has it (no new VMA),
//! else with `mprotect`, which splits the pool's mapping at every guard. The pool counts the
//! mappings it may have made and stops guarding new blocks (warning once) at half of
//! `vm.max_map_count`, instead of failing.
//!
//! In these modes a `SIGSEGV`/`SIGBUS` handler turns a fault in the pool into a report (kind,
//! read or write, address, offset from the block, the block's size, the stacks of the access,
//! the allocation and the free) and re-raises the signal with its default action. Faults
//! elsewhere go to the handler installed before ours, or to the default action.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::report::{self, ErrorKind, Report};
use crate::config::{self, GuardMode};
use crate::os::{self, PAGE_SIZE};
use crate::util::{FutexLock, Line};

/// The largest block `sample` mode guards.
pub const SAMPLE_MAX_SIZE: usize = 64 << 10;
/// Address space reserved for the pool in `all` mode (halved until the kernel agrees).
const ALL_POOL_BYTES: usize = 64 << 30;
/// Address space of the pool in `sample` mode.
const SAMPLE_POOL_BYTES: usize = 64 << 20;
/// Default quarantine in `all` mode: freed slots held back before reuse (address space and
/// page-table entries only; their pages are dropped).
const ALL_QUARANTINE: usize = 256 << 20;
/// Default quarantine in `sample` mode: 256 one-page slots, so the pool's records and page
/// tables stay small (each slot ever made costs a record of about 300 bytes).
const SAMPLE_QUARANTINE: usize = 1 << 20;
/// Default quarantine in the hardened mode (which guards every block above 32 KiB), and
/// the most slots it holds (without `RAMPART_QUARANTINE`): sampled small blocks are a page
/// each, and every slot made keeps a record.
const HARDEN_QUARANTINE: usize = 64 << 20;
const HARDEN_QUARANTINE_SLOTS: usize = 1024;
/// Alignments above this are never guarded (the slot would waste too much).
const MAX_GUARDED_ALIGN: usize = 1 << 20;
/// Return addresses kept per stack.
pub const FRAMES: usize = 14;
/// Slot classes (data pages, rounded: 1 to 8 exactly, then four per doubling).
const SLOT_CLASSES: usize = 96;
/// The byte that fills the slack before a block on its first page.
const SLACK_BYTE: u8 = 0xfb;
/// How much of the reservation is opened up (made read-write) at a time.
const COMMIT_STEP: usize = 1 << 20;

/// A slot's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum SlotState {
    /// Holds a live block.
    Live,
    /// Freed, PROT_NONE, in the quarantine.
    Quarantined,
    /// Freed, PROT_NONE, out of the quarantine: on its class's free list, ready for reuse.
    Released,
}

/// A slot's record (kept beside the pool, never in it).
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    /// First data page.
    data: usize,
    /// Data pages (the guard page follows them).
    pages: usize,
    /// The block: its address, requested size and requested alignment.
    ptr: usize,
    size: usize,
    class: u16,
    state: SlotState,
    alloc_frames_len: u8,
    free_frames_len: u8,
    /// Next slot (index + 1; 0 = none) in the quarantine or a free list.
    next: u32,
    alloc_tid: u32,
    free_tid: u32,
    alloc_frames: [usize; FRAMES],
    free_frames: [usize; FRAMES],
}

impl Slot {
    fn data_end(&self) -> usize {
        self.data + self.pages * PAGE_SIZE
    }

    /// The slack of a live block that is filled with [`SLACK_BYTE`]: before it on its first
    /// page, and after it up to the guard page.
    fn slack(&self) -> (core::ops::Range<usize>, core::ops::Range<usize>) {
        let end = self.data_end();
        let from = (self.ptr & !(PAGE_SIZE - 1)).max(self.data).min(self.ptr);
        let block_end = (self.ptr + self.size).min(end);
        (from..self.ptr.min(end), block_end..end)
    }
}

/// Checks the slack of a guarded block (live, or being freed): a write there is an underflow (before it) or an
/// overflow (after it) that did not reach a guard page. Reports and aborts on damage.
/// `call` is the call that frees the block (its stack is printed where the slot recorded
/// none: the hardened mode's large blocks), or `report::AT_EXIT` for the exit check.
///
/// # Safety
/// `slot` is live or being freed (its data pages are read-write).
unsafe fn check_slack(slot: &Slot, call: &str) {
    let (head, tail) = slot.slack();
    // SAFETY: `slot` is live or being freed (check_slack's contract), so its data pages are
    // read-write, and both slack ranges lie in them (up to the data end).
    let (h, t) = unsafe {
        (
            core::slice::from_raw_parts(head.start as *const u8, head.len()),
            core::slice::from_raw_parts(tail.start as *const u8, tail.len()),
        )
    };
    // The damage nearest the block is where the bad access began.
    let damage = if let Some(i) = crate::util::last_not(h, SLACK_BYTE) {
        Some((ErrorKind::HeapBufferUnderflow, head.start + i))
    } else {
        crate::util::first_not(t, SLACK_BYTE)
            .map(|i| (ErrorKind::HeapBufferOverflow, tail.start + i))
    };
    if let Some((kind, at)) = damage {
        let at_exit = call == report::AT_EXIT;
        let when = if at_exit { "checked at exit" } else { "freed" };
        report_access(kind, Some(true), at, slot, None, Some(when));
        if slot.free_frames_len == 0 && !at_exit {
            report::print_call_stack(call);
        }
        os::abort();
    }
}

/// Checks the slack of every live guarded block (at exit). Other threads may still run.
pub fn check_all() {
    let pool = POOL.lock();
    for idx in 0..pool.nslots {
        // SAFETY: slots below `nslots` are initialised records.
        let slot = unsafe { &*pool.slots.add(idx) };
        if slot.state == SlotState::Live {
            // SAFETY: a live slot, and we hold the lock.
            unsafe { check_slack(slot, report::AT_EXIT) };
        }
    }
}

/// The pool of guarded slots.
struct Pool {
    /// The reservation: `[base, base + len)`; `committed` bytes from `base` are read-write
    /// (with guard pages inside), `bump` bytes are carved into slots.
    base: usize,
    len: usize,
    committed: usize,
    bump: usize,
    /// Slot records (`max_slots` reserved), and per pool page its slot's index + 1.
    slots: *mut Slot,
    max_slots: usize,
    nslots: usize,
    page_slot: *mut u32,
    /// Released slots by class (index + 1; 0 = none).
    free_heads: [u32; SLOT_CLASSES],
    /// The quarantine, oldest first (index + 1), and the bytes of data pages it holds.
    q_head: u32,
    q_tail: u32,
    q_bytes: usize,
    q_limit: usize,
    /// Slots in the quarantine, and the most it holds (the hardened mode's bound: each slot
    /// ever made keeps a record of about 300 bytes, and sampled small blocks are one page
    /// each).
    q_count: usize,
    q_max: usize,
    /// The most mappings the pool may have made, and where it stops making more.
    vmas: usize,
    vma_limit: usize,
    /// Warned once that the pool is full (or the map count near).
    warned: bool,
}

// SAFETY: the raw pointers are to the pool's own reservations; access is locked.
unsafe impl Send for Pool {}

static POOL: FutexLock<Pool> = FutexLock::new(Pool {
    base: 0,
    len: 0,
    committed: 0,
    bump: 0,
    slots: ptr::null_mut(),
    max_slots: 0,
    nslots: 0,
    page_slot: ptr::null_mut(),
    free_heads: [0; SLOT_CLASSES],
    q_head: 0,
    q_tail: 0,
    q_bytes: 0,
    q_limit: 0,
    q_count: 0,
    q_max: usize::MAX,
    vmas: 0,
    vma_limit: 0,
    warned: false,
});

/// The pool's range, for lock-free tests (`contains`) and the fault handler; 0 until set up.
static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
/// The slot records and the page table, for the fault handler (read without the lock).
static SLOTS: AtomicUsize = AtomicUsize::new(0);
static PAGE_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Whether some allocations are guarded (`all` or `sample`, with a pool).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Guarded blocks allocated and freed (statistics).
static GUARDED: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Reads the options (once; see `config::init`) and, in a guard mode, sets the pool and the
/// fault handler up. Called on a thread's first allocation and by the C library's start-up.
pub fn init_options() {
    if !config::init() {
        return;
    }
    crate::heapprof::init();
    if config::redzone() != 0 || config::harden() {
        DIVERT_ALL.store(true, Ordering::Relaxed);
    }
    let mode = config::guard_mode();
    // The hardened mode guards the blocks above the small classes in any guard mode.
    if mode == GuardMode::Off && !config::harden() {
        return;
    }
    if config::guard_mprotect() {
        os::force_mprotect_guards();
    }
    let (want, quarantine) = match mode {
        GuardMode::All => (ALL_POOL_BYTES, ALL_QUARANTINE),
        // The hardened mode guards every block above the small classes as well.
        _ if config::harden() => (ALL_POOL_BYTES, HARDEN_QUARANTINE),
        _ => (SAMPLE_POOL_BYTES, SAMPLE_QUARANTINE),
    };
    let mut pool = POOL.lock();
    if mode != GuardMode::All && config::harden() && config::quarantine().is_none() {
        pool.q_max = HARDEN_QUARANTINE_SLOTS;
    }
    let ok = pool.setup(want, config::quarantine().unwrap_or(quarantine));
    drop(pool);
    if !ok {
        warn("could not reserve address space for guarded blocks; guard mode off");
        return;
    }
    os::install_fault_handlers(on_fault);
    ACTIVE.store(true, Ordering::Release);
    if mode == GuardMode::All {
        DIVERT_ALL.store(true, Ordering::Relaxed);
    }
}

/// Reads the options when the program is loaded, before any `main` (and before Rust's
/// runtime set-up, which installs a SIGSEGV handler of its own only where it finds the
/// default action: it must find ours, or it would displace it and no report would be
/// printed). Allocations made earlier, by the loader, read them on their own.
extern "C" fn init_at_load() {
    init_options();
}

#[used]
#[link_section = ".init_array"]
static INIT_AT_LOAD: extern "C" fn() = init_at_load;

/// Whether guarded allocation is on (`all` or `sample` with a pool).
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Whether `p` lies in the guard pool (a guarded block, or what is left of one).
#[inline]
pub fn contains(p: usize) -> bool {
    p.wrapping_sub(BASE.load(Ordering::Relaxed)) < LEN.load(Ordering::Relaxed)
}

/// Before `fork`: takes the pool's lock (it is taken with no other lock held, and takes none,
/// so any order with the other locks is safe), so that the child finds it consistent.
pub fn fork_prepare() {
    core::mem::forget(POOL.lock());
}

/// After `fork`, in the parent: releases what [`fork_prepare`] took.
pub fn fork_parent() {
    // SAFETY: fork_prepare took the lock in this thread and forgot the guard.
    unsafe { POOL.force_unlock() };
}

/// After `fork`, in the child: the lock is free again.
pub fn fork_child() {
    // SAFETY: the child has one thread; the lock's holder (our prepare step) is gone.
    unsafe { POOL.reset_after_fork() };
}

/// Guarded blocks allocated and freed so far.
pub fn counts() -> (u64, u64) {
    (
        GUARDED[0].load(Ordering::Relaxed),
        GUARDED[1].load(Ordering::Relaxed),
    )
}

/// The slot class of a block needing `pages` data pages: `(class, pages of the class)`.
fn slot_class(pages: usize) -> (usize, usize) {
    if pages <= 8 {
        return (pages.max(1) - 1, pages.max(1));
    }
    let e = (usize::BITS - 1 - (pages - 1).leading_zeros()) as usize; // 2^e < pages <= 2^(e+1)
    let step = 1usize << (e - 2);
    let i = (pages - 1 - (1 << e)) / step;
    (8 + (e - 3) * 4 + i, (1 << e) + (i + 1) * step)
}

/// Allocates a guarded block, or `None` when it cannot be guarded (too large for the mode,
/// pool full, map count near its limit): the caller then allocates normally. The block's
/// memory is zeroed.
///
/// The block gets the alignment that was asked (a power of two). C's `malloc` family asks
/// for 16 (the ABI's, which compilers and programs rely on even for odd sizes, e.g. a header
/// followed by a string), so a block whose size is not a multiple of 16 ends up to 15 bytes
/// before the guard page; that tail is filled with a pattern checked on free and at exit.
/// Rust asks for its type's alignment, which divides the size, so its blocks touch the guard
/// exactly.
///
/// `stacks`: record the allocation's stack (and later the free's) for the reports; the
/// hardened mode guards its large blocks without (a stack walk costs microseconds), its
/// sampled ones with.
pub fn alloc(size: usize, align: usize, stacks: bool) -> Option<NonNull<u8>> {
    if config::guard_mode() == GuardMode::Sample && size > SAMPLE_MAX_SIZE && !config::harden() {
        return None;
    }
    if align > MAX_GUARDED_ALIGN {
        return None;
    }
    // Up to 16, the page end is aligned enough; beyond, leave room to align down.
    let need = if align <= crate::size_class::MIN_ALIGN {
        size
    } else {
        size.checked_add(align - 1)?
    };
    let pages = crate::util::checked_align_up(need.max(1), PAGE_SIZE)? / PAGE_SIZE;
    if BUSY.get() {
        // Called back from inside a stack walk (libgcc allocates the first time it searches
        // frames registered at run time, e.g. by a JIT): not guarded, no second walk.
        return None;
    }
    let mut frames = [0usize; FRAMES];
    let nframes = if stacks {
        traced_backtrace(&mut frames)
    } else {
        0
    };
    let tid = os::gettid();
    let (idx, fresh, slot) = {
        let mut pool = POOL.lock();
        let (idx, fresh) = pool.take_slot(pages)?;
        // SAFETY: a slot index the pool just handed out; records never move. The slot is
        // ours alone from here on (in no list), so the system calls below run unlocked.
        (idx, fresh, unsafe { &mut *pool.slots.add(idx) })
    };
    let end = slot.data_end();
    let p = (end - size) & !(align - 1);
    // Pages of the slot before the block's first page (a class rounded up, an alignment)
    // stay guarded, so an underflow that leaves the block's page faults too.
    let first = (p & !(PAGE_SIZE - 1)).min(end);
    // SAFETY: the slot's pages are ours: a new slot's spare head pages and its guard page go
    // in; a reused one's pages (all guarded since its free) open from the block's page on.
    let opened = unsafe {
        if fresh {
            (first == slot.data || os::guard_install(slot.data as *mut u8, first - slot.data))
                && os::guard_install(end as *mut u8, PAGE_SIZE)
        } else {
            first == end || os::guard_remove(first as *mut u8, end - first)
        }
    };
    if !opened {
        // A new slot without its guards is never used; a reused one goes back.
        if !fresh {
            POOL.lock().push_free(idx);
        }
        return None;
    }
    slot.ptr = p;
    slot.size = size;
    slot.alloc_tid = tid;
    slot.alloc_frames = frames;
    slot.alloc_frames_len = nframes as u8;
    slot.free_frames_len = 0;
    // The slack around the block (before it on its page, after it up to the guard) gets a
    // pattern, checked on free and at exit; only then is the slot live (the exit check of
    // another thread may look at it).
    let (head, tail) = slot.slack();
    // SAFETY: the block's pages are read-write and ours.
    unsafe {
        ptr::write_bytes(head.start as *mut u8, SLACK_BYTE, head.len());
        ptr::write_bytes(tail.start as *mut u8, SLACK_BYTE, tail.len());
    }
    slot.state = SlotState::Live;
    GUARDED[0].fetch_add(1, Ordering::Relaxed);
    NonNull::new(p as *mut u8)
}

std::thread_local! {
    /// Whether this thread is inside a stack walk of ours (see [`traced_backtrace`]). A const
    /// initialiser and no `Drop` (docs/architecture.md): no allocation, no destructor.
    static BUSY: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// A stack walk, with [`BUSY`] set while it runs so that an allocation from inside the
/// unwinder is not guarded (which would walk again and take the unwinder's lock twice).
pub(in crate::check) fn traced_backtrace(frames: &mut [usize]) -> usize {
    BUSY.set(true);
    let n = os::backtrace(frames, 0);
    BUSY.set(false);
    n
}

/// The requested size of the live guarded block `p`; reports and aborts for any other
/// pointer into the pool (`what` names the call, e.g. "realloc").
pub fn size_of_live(p: usize, what: &str) -> usize {
    let pool = POOL.lock();
    let Some(idx) = pool.slot_of(p) else {
        drop(pool);
        report_wild(what, p)
    };
    // SAFETY: an index from the page table.
    let slot = unsafe { *pool.slots.add(idx) };
    drop(pool);
    if slot.state == SlotState::Live && slot.ptr == p {
        return slot.size;
    }
    let (kind, why) = if slot.ptr == p {
        (ErrorKind::DoubleFree, "of a block that is already free")
    } else {
        (
            ErrorKind::InvalidFree,
            "of a pointer that is not the start of a block",
        )
    };
    report_slot_error(kind, what, why, p, &slot)
}

/// Frees a guarded block: checks it (double free, invalid free, a sized free's size, the
/// slack's pattern), makes its pages fault, and quarantines it.
///
/// `call` names the call that frees it (`free`, `operator delete`, …) in reports.
///
/// # Safety
/// `p` lies in the pool (`contains(p)`).
pub unsafe fn free(p: usize, claimed: usize, call: &str) {
    let mut frames = [0usize; FRAMES];
    let nframes = if BUSY.get() || !recorded_stack(p) {
        0
    } else {
        traced_backtrace(&mut frames)
    };
    let tid = os::gettid();
    let pool = POOL.lock();
    let Some(idx) = pool.slot_of(p) else {
        drop(pool);
        report_wild(call, p)
    };
    // SAFETY: an index from the page table.
    let slot = unsafe { &mut *pool.slots.add(idx) };
    let error = if slot.ptr != p {
        Some((
            ErrorKind::InvalidFree,
            call,
            "of a pointer that is not the start of a block",
        ))
    } else if slot.state != SlotState::Live {
        Some((
            ErrorKind::DoubleFree,
            call,
            "of a block that is already free",
        ))
    } else if claimed != 0 && claimed != slot.size {
        // A guarded block knows the size it was allocated with: a sized free must name it.
        Some((
            ErrorKind::InvalidFree,
            call,
            "with a size the block was not allocated with",
        ))
    } else {
        None
    };
    if let Some((kind, call, why)) = error {
        // Reported from a copy, unlocked: the report's symbol look-ups take the loader's
        // lock, which a thread in dlopen may hold while it waits for ours.
        let copy = *slot;
        drop(pool);
        report_slot_error(kind, call, why, p, &copy);
    }
    // No longer live (a second free now finds it freed), but in no list yet: the slot is the
    // caller's alone while its slack is checked and its pages are guarded, unlocked.
    slot.state = SlotState::Quarantined;
    slot.free_tid = tid;
    slot.free_frames = frames;
    slot.free_frames_len = nframes as u8;
    drop(pool);
    // SAFETY: the slot's data pages are still read-write, and ours.
    unsafe { check_slack(slot, call) };
    // SAFETY: the slot's data pages are ours and hold nothing needed any more.
    unsafe { protect_freed(slot.data, slot.pages * PAGE_SIZE) };
    POOL.lock().quarantine(idx);
    GUARDED[1].fetch_add(1, Ordering::Relaxed);
}

/// Makes freed data pages fault and drops their contents.
///
/// # Safety
/// The range is a slot's data pages, no longer used.
unsafe fn protect_freed(addr: usize, len: usize) {
    if !os::guards_are_free() {
        // SAFETY: `[addr, addr + len)` is a slot's data pages, owned by the pool, that nobody
        // uses any more (protect_freed's contract): their contents may go.
        unsafe { os::decommit(addr as *mut u8, len) };
    }
    // SAFETY: the same unused data pages of the pool's own: they hold nothing needed, and
    // stay untouched while the slot is quarantined, until a reuse removes the guard.
    unsafe { os::guard_install(addr as *mut u8, len) };
}

impl Pool {
    /// Reserves the pool (`want` bytes, halved until the kernel agrees, down to 16 MiB) and
    /// its records. `false` if nothing could be reserved.
    fn setup(&mut self, want: usize, quarantine: usize) -> bool {
        let mut len = want;
        // The reservation and its records (a page-table entry per page, a record per
        // possible slot: about 3.5 % of the reservation, mapped without commit charge but
        // counted by a strict overcommit policy), halved together until the kernel agrees.
        let (base, table, slots, max_slots) = loop {
            if len < (16 << 20) {
                return false;
            }
            let pages = len / PAGE_SIZE;
            let max_slots = pages / 2;
            let table_bytes = crate::util::align_up(pages * 4, PAGE_SIZE);
            let slot_bytes = crate::util::align_up(max_slots * size_of::<Slot>(), PAGE_SIZE);
            let base = os::reserve(len);
            let table = os::map(table_bytes);
            let slots = os::map(slot_bytes);
            if let (Some(b), Some(t), Some(s)) = (base, table, slots) {
                break (b.as_ptr() as usize, t, s, max_slots);
            }
            // SAFETY: whatever was mapped above is ours and unused.
            unsafe {
                if let Some(b) = base {
                    os::unmap(b.as_ptr(), len);
                }
                if let Some(t) = table {
                    os::unmap(t.as_ptr(), table_bytes);
                }
                if let Some(s) = slots {
                    os::unmap(s.as_ptr(), slot_bytes);
                }
            }
            len /= 2;
        };
        self.base = base;
        self.len = len;
        self.page_slot = table.as_ptr().cast();
        self.slots = slots.as_ptr().cast();
        self.max_slots = max_slots;
        self.q_limit = quarantine;
        // The first page stays PROT_NONE: an underflow of the first slot's block faults.
        self.bump = PAGE_SIZE;
        self.committed = PAGE_SIZE;
        // Mappings: the pool's two parts, plus (mprotect only) up to two per slot.
        self.vmas = 2;
        let max_map = os::read_number(c"/proc/sys/vm/max_map_count").unwrap_or(65530) as usize;
        self.vma_limit = max_map / 2;
        PAGE_SLOT.store(self.page_slot as usize, Ordering::Relaxed);
        SLOTS.store(self.slots as usize, Ordering::Relaxed);
        LEN.store(len, Ordering::Relaxed);
        BASE.store(base, Ordering::Release);
        true
    }

    /// The slot index of a pool address (its data or its guard page), if any.
    fn slot_of(&self, addr: usize) -> Option<usize> {
        slot_index(self.base, self.len, self.page_slot, addr)
    }

    /// A slot with at least `pages` data pages for a block, and whether it is new: a
    /// released slot of the class (its data pages still guarded), else a new one carved from
    /// the reservation (its guard page not installed yet), else one pushed out of the
    /// quarantine early. `None` when none can be had.
    fn take_slot(&mut self, pages: usize) -> Option<(usize, bool)> {
        let (class, class_pages) = slot_class(pages);
        if class >= SLOT_CLASSES || (class_pages + 1) * PAGE_SIZE > self.len {
            return None;
        }
        if let Some(idx) = self.pop_free(class) {
            return Some((idx, false));
        }
        if let Some(idx) = self.carve(class, class_pages) {
            return Some((idx, true));
        }
        // Full: release quarantined slots early, oldest first, until one of this class is
        // free (a bounded number: the quarantine is what catches uses after free).
        for _ in 0..64 {
            if !self.release_oldest() {
                break;
            }
            if let Some(idx) = self.pop_free(class) {
                return Some((idx, false));
            }
        }
        self.warn_once("the guard pool is full; some blocks are not guarded");
        None
    }

    fn pop_free(&mut self, class: usize) -> Option<usize> {
        let head = self.free_heads[class];
        if head == 0 {
            return None;
        }
        let idx = head as usize - 1;
        // SAFETY: an index on the free list.
        self.free_heads[class] = unsafe { (*self.slots.add(idx)).next };
        Some(idx)
    }

    /// A new slot of `pages` data pages and a guard page, from the unused reservation.
    fn carve(&mut self, class: usize, pages: usize) -> Option<usize> {
        let bytes = (pages + 1) * PAGE_SIZE;
        if self.nslots == self.max_slots || self.bump + bytes > self.len {
            return None;
        }
        if !os::guards_are_free() && self.vmas + 2 > self.vma_limit {
            self.warn_once(
                "near vm.max_map_count: further blocks are not guarded (guard pages split \
                 mappings on this kernel)",
            );
            return None;
        }
        while self.committed < self.bump + bytes {
            let step = COMMIT_STEP.min(self.len - self.committed);
            // SAFETY: inside our reservation.
            if !unsafe { os::commit_rw((self.base + self.committed) as *mut u8, step) } {
                return None;
            }
            self.committed += step;
        }
        let data = self.base + self.bump;
        if !os::guards_are_free() {
            self.vmas += 2;
        }
        let idx = self.nslots;
        self.nslots += 1;
        self.bump += bytes;
        // SAFETY: a record within the reserved table, never used before.
        unsafe {
            self.slots.add(idx).write(Slot {
                data,
                pages,
                ptr: 0,
                size: 0,
                class: class as u16,
                state: SlotState::Released,
                alloc_frames_len: 0,
                free_frames_len: 0,
                next: 0,
                alloc_tid: 0,
                free_tid: 0,
                alloc_frames: [0; FRAMES],
                free_frames: [0; FRAMES],
            });
            let first = (data - self.base) / PAGE_SIZE;
            for page in first..=first + pages {
                *self.page_slot.add(page) = idx as u32 + 1;
            }
        }
        Some(idx)
    }

    /// Puts a freed slot at the end of the quarantine and releases the oldest ones while it
    /// holds more than its limit.
    fn quarantine(&mut self, idx: usize) {
        // SAFETY: a slot index.
        let slot = unsafe { &mut *self.slots.add(idx) };
        slot.next = 0;
        self.q_bytes += slot.pages * PAGE_SIZE;
        self.q_count += 1;
        if self.q_tail == 0 {
            self.q_head = idx as u32 + 1;
        } else {
            // SAFETY: the tail is a slot index.
            unsafe { (*self.slots.add(self.q_tail as usize - 1)).next = idx as u32 + 1 };
        }
        self.q_tail = idx as u32 + 1;
        while (self.q_bytes > self.q_limit || self.q_count > self.q_max) && self.release_oldest() {}
    }

    /// Moves the oldest quarantined slot to its class's free list; `false` if none.
    fn release_oldest(&mut self) -> bool {
        if self.q_head == 0 {
            return false;
        }
        let idx = self.q_head as usize - 1;
        // SAFETY: a slot index.
        let slot = unsafe { &mut *self.slots.add(idx) };
        self.q_head = slot.next;
        if self.q_head == 0 {
            self.q_tail = 0;
        }
        self.q_bytes -= slot.pages * PAGE_SIZE;
        self.q_count -= 1;
        self.push_free(idx);
        true
    }

    /// Puts a slot whose data pages are guarded on its class's free list.
    fn push_free(&mut self, idx: usize) {
        // SAFETY: a slot index.
        let slot = unsafe { &mut *self.slots.add(idx) };
        slot.state = SlotState::Released;
        slot.next = self.free_heads[slot.class as usize];
        self.free_heads[slot.class as usize] = idx as u32 + 1;
    }

    fn warn_once(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            warn(what);
        }
    }
}

/// The slot index of a pool address, from the page table.
/// Whether the slot holding `p` recorded its allocation's stack (so its free records one
/// too); read without the lock, as the fault handler reads, before the free takes it.
fn recorded_stack(p: usize) -> bool {
    let base = BASE.load(Ordering::Acquire);
    let slots = SLOTS.load(Ordering::Relaxed) as *const Slot;
    let page_slot = PAGE_SLOT.load(Ordering::Relaxed) as *const u32;
    match slot_index(base, LEN.load(Ordering::Relaxed), page_slot, p) {
        // SAFETY: an index from the page table; records are never unmapped.
        Some(i) => unsafe { ptr::addr_of!((*slots.add(i)).alloc_frames_len).read_volatile() != 0 },
        None => true,
    }
}

fn slot_index(base: usize, len: usize, page_slot: *const u32, addr: usize) -> Option<usize> {
    let off = addr.wrapping_sub(base);
    if off >= len || page_slot.is_null() {
        return None;
    }
    // SAFETY: one entry per pool page; the table covers the whole reservation.
    let v = unsafe { *page_slot.add(off / PAGE_SIZE) };
    (v != 0).then(|| v as usize - 1)
}

fn warn(what: &str) {
    let mut line = Line::new();
    line.str("rampart: warning: ").str(what);
    line.emit();
}

mod fault;
mod sample;

use fault::{on_fault, report_access, report_slot_error, report_wild};
use sample::DIVERT_ALL;
pub use sample::{next_interval, sample_now};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_classes_cover_every_page_count() {
        let mut last = slot_class(1);
        assert_eq!(last, (0, 1));
        for pages in 2..100_000 {
            let (class, cp) = slot_class(pages);
            assert!(cp >= pages, "{pages} -> {cp}");
            assert!(
                cp <= pages + pages / 4 + 1,
                "{pages} -> {cp}: too much waste"
            );
            // Classes grow with the page count, one class per distinct size, no gaps.
            if cp == last.1 {
                assert_eq!(class, last.0);
            } else {
                assert_eq!(class, last.0 + 1, "{pages} pages");
                assert_eq!(pages, last.1 + 1, "{pages} pages");
            }
            assert_eq!(slot_class(cp), (class, cp), "a class's own size maps to it");
            last = (class, cp);
        }
        assert!(slot_class((64usize << 30) / PAGE_SIZE).0 < SLOT_CLASSES);
    }
}
