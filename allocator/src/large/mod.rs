//! Large blocks: above the largest size class.
//!
//! Up to a chunk (4 MiB) a block is a page-granular run of the buddy layer, so the waste is
//! under a page; alignment up to a chunk comes from the buddy blocks' natural alignment. Above
//! that (or for larger alignments) a block is its own mapping with a guard page after it
//! ("huge"), which `realloc` resizes with `mremap`: in place where the address space allows,
//! else by moving the pages, never by copying.
//!
//! Memory fresh from the OS is known to be zero (a chunk page never handed out, a new
//! mapping), so zeroed allocations skip the memset there.

use core::ptr::{self, NonNull};

use crate::os::PAGE_SIZE;
use crate::pages::{self, Huge, Span, State, CHUNK_SIZE, FLAG_CLEAN, PAGES, PAGES_PER_CHUNK};
use crate::util::checked_align_up;

/// Allocates a large block of `size` bytes aligned to `align` (a power of two); zeroed if
/// `zero`. `None` when memory is exhausted or the size is impossible.
pub fn alloc(size: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
    let bytes = checked_align_up(size.max(1), PAGE_SIZE)?;
    let npages = bytes / PAGE_SIZE;
    if npages <= PAGES_PER_CHUNK && align <= CHUNK_SIZE {
        let align_order = (align.max(PAGE_SIZE) / PAGE_SIZE).trailing_zeros();
        let s = pages::with(|p| p.alloc_run(npages, align_order, State::Large))?;
        // SAFETY: a fresh run we own.
        let span = unsafe { &mut *s.as_ptr() };
        span.owner.store(0, core::sync::atomic::Ordering::Relaxed);
        span.divisor = 0;
        let p = span.addr as *mut u8;
        if zero && span.flags & FLAG_CLEAN == 0 {
            // SAFETY: the run is ours and `size` bytes long at least.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        return NonNull::new(p);
    }
    let (mut h, fresh) = PAGES.lock().huge_alloc(bytes, align)?;
    // SAFETY: a live huge descriptor, ours until the block is freed.
    unsafe {
        h.as_mut().sample = 0;
        h.as_mut().size = size;
    }
    // SAFETY: as above.
    let p = unsafe { h.as_ref().base } as *mut u8;
    if zero && !fresh {
        // SAFETY: a reused mapping of at least `size` bytes, ours now.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    NonNull::new(p)
}

/// Marks the large block `p` (just returned by [`alloc`]) as the heap profile's sample `id`
/// (see `profile`): a large run keeps it in its descriptor's `divisor` (a slab's field,
/// unused by runs), a huge block in its own.
///
/// # Safety
/// `p` is a live block from [`alloc`], owned by the caller.
pub unsafe fn set_sample(p: NonNull<u8>, id: u32) {
    if let Some(mut s) = pages::MAP.span_of(p.as_ptr() as usize) {
        // SAFETY: the run of a live large block of the caller's: its descriptor is ours.
        unsafe { s.as_mut().divisor = u64::from(id) };
    } else if let pages::Owner::Huge(h) = pages::MAP.lookup(p.as_ptr() as usize) {
        // SAFETY: the live huge block of the caller's: its descriptor is ours.
        unsafe { (*h).sample = id };
    }
}

/// The heap profile's sample of a large run (0: none).
pub fn run_sample(s: &Span) -> u32 {
    s.divisor as u32
}

/// The `divisor` of a run the heap profile keeps for its next sample (see
/// `heapprof::record_free_and_keep`): freed by the program, still a large run to the page layer, and
/// classified as freed memory by every lookup.
const CACHED: u64 = u64::MAX;

/// Whether a large run is one the heap profile keeps (freed; see [`CACHED`]).
pub fn is_cached(s: &Span) -> bool {
    s.divisor == CACHED
}

/// Marks a large run as kept by the heap profile (`cached`), or as a live block again.
///
/// # Safety
/// `s` is a large run that nobody else uses: freed by the program (to keep it), or just
/// taken from the profile's cache (to hand it out).
pub unsafe fn set_cached(mut s: NonNull<Span>, cached: bool) {
    // SAFETY: the caller's run, used by nobody else.
    unsafe { s.as_mut().divisor = if cached { CACHED } else { 0 } };
}

/// Frees a large run.
///
/// # Safety
/// `s` is a live large run that nobody uses any more.
pub unsafe fn free_run(s: NonNull<Span>) {
    // SAFETY: `s` is a live large run that nobody uses any more (free_run's contract): what
    // Pages::free_run asks.
    unsafe { pages::with(|p| p.free_run(s)) };
}

/// Frees a huge block.
///
/// # Safety
/// `h` is a live huge block that nobody uses any more.
pub unsafe fn free_huge(h: NonNull<Huge>) {
    // SAFETY: `h` is a live huge block that nobody uses any more (free_huge's contract): what
    // Pages::huge_free asks.
    unsafe { pages::with(|p| p.huge_free(h)) };
}

/// Bytes usable in a large run.
pub fn run_capacity(s: &Span) -> usize {
    s.npages as usize * PAGE_SIZE
}

/// Resizes a large run in place to hold `new_size` bytes (growing into free pages after it,
/// or freeing its tail). Returns whether the block now holds `new_size` bytes at its address.
///
/// # Safety
/// `s` is a live large run owned by the caller.
pub unsafe fn resize_run(s: NonNull<Span>, new_size: usize) -> bool {
    let Some(bytes) = checked_align_up(new_size.max(1), PAGE_SIZE) else {
        return false;
    };
    let npages = bytes / PAGE_SIZE;
    // SAFETY: `s` is a live large run (resize_run's contract), so a valid descriptor.
    let old = unsafe { s.as_ref().npages } as usize;
    if npages == old {
        return true;
    }
    if npages < old {
        // SAFETY: `s` is a live run owned by the caller (resize_run's contract), and its
        // pages from `npages` on lie past `new_size`, which the caller keeps to: unused.
        unsafe { pages::with(|p| p.shrink_run(s, npages)) };
        return true;
    }
    // SAFETY: `s` is a live run (resize_run's contract): what grow_run asks.
    npages <= PAGES_PER_CHUNK && unsafe { PAGES.lock().grow_run(s, npages) }
}

/// Resizes a huge block without copying (mremap). Returns whether it now holds `new_size`
/// bytes; its address may have changed (read it from the descriptor), keeping the alignment
/// `align` the block was allocated with.
///
/// # Safety
/// `h` is a live huge block owned by the caller, allocated with alignment `align`.
pub unsafe fn resize_huge(h: NonNull<Huge>, new_size: usize, align: usize) -> bool {
    // SAFETY: `h` is a live huge block owned by the caller (resize_huge's contract): what
    // huge_resize asks.
    unsafe { PAGES.lock().huge_resize(h, new_size, align) }
}
