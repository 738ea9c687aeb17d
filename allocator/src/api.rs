//! The allocator's semantics, shared by the C ABI and `GlobalAlloc`: allocate, free, resize
//! and query blocks of any size and power-of-two alignment. Results are
//! `Option<NonNull<u8>>`; C conventions (errno, `realloc(p, 0)`, overflow) belong to `ffi`.
//!
//! Every block is at least 16-byte aligned. Alignments up to a page are served from the size
//! classes (a class whose size is a multiple of the alignment), up to a chunk (4 MiB) from
//! the buddy layer's naturally aligned runs, and beyond that from an aligned mapping.

use core::ptr::{self, NonNull};

use crate::heap::{self, Block};
use crate::large;
use crate::size_class::{
    class_of, class_of_aligned, class_of_table, SMALL_CLASSES_MAX, SMALL_MAX, SMALL_TABLE_MAX,
};

pub use crate::size_class::MIN_ALIGN;

/// The largest request ever served: larger sizes fail, as `PTRDIFF_MAX` bounds C objects.
pub const MAX_SIZE: usize = isize::MAX as usize - (1 << 24);

/// Allocates `size` bytes aligned to `align` (a power of two). `None` when memory is exhausted.
#[inline(always)]
pub fn alloc(size: usize, align: usize) -> Option<NonNull<u8>> {
    if size <= SMALL_TABLE_MAX && align <= MIN_ALIGN {
        // SAFETY: the table's classes are below NUM_CLASSES.
        let p = unsafe { heap::alloc_fast(class_of_table(size)) };
        if !p.is_null() {
            // SAFETY: just checked.
            return Some(unsafe { NonNull::new_unchecked(p) });
        }
    }
    alloc_slow(size, align, false)
}

/// The fast path of [`alloc`] alone, for callers that keep their slow path a tail call: a
/// block of `size` bytes (at the default alignment) when the calling thread has one at hand,
/// else null (then call [`alloc_slow`], which does not try the fast path again).
#[inline(always)]
pub fn alloc_fast(size: usize) -> *mut u8 {
    if size <= SMALL_TABLE_MAX {
        // SAFETY: the table's classes are below NUM_CLASSES.
        return unsafe { heap::alloc_fast(class_of_table(size)) };
    }
    ptr::null_mut()
}

/// Allocates `size` zeroed bytes aligned to `align`.
#[inline]
pub fn alloc_zeroed(size: usize, align: usize) -> Option<NonNull<u8>> {
    alloc_slow(size, align, true)
}

/// Everything but the fast path's pop: the other small sizes, aligned small blocks, large
/// ones, zeroed blocks of any kind (`zero`), a thread's first allocation, and the
/// allocations the thread's countdown picks for the guard modes, redzones and the heap
/// profile. `align` is a power of two; `None` when memory is exhausted or the request
/// impossible.
///
/// Its frame marks where the allocator's code ends on a profiled allocation's stack: the
/// profile keeps the frames of its callers (see `os::backtrace_above`).
#[inline(never)]
pub fn alloc_slow(size: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
    let w = crate::heapprof::weight_of_size(size);
    let due = heap::sample_tick(w);
    if due != 0 {
        let marker = 0u8;
        let marker = core::hint::black_box(&marker) as *const u8 as usize;
        if let Some(p) = alloc_checked(size, align, zero, due, w, marker) {
            return Some(p);
        }
    }
    if zero && size > SMALL_CLASSES_MAX {
        // A zeroed medium request is a page run: fresh pages from the kernel need no
        // memset there (`FLAG_CLEAN`), where a block of a size class is cleared whole,
        // committing every page of it (a sparse `calloc` table, `vec![0; n]`).
        return large::alloc(size, align.max(MIN_ALIGN), true);
    }
    if size <= SMALL_MAX && align <= MIN_ALIGN {
        // SAFETY: class_of gives a class below NUM_CLASSES.
        let p = NonNull::new(unsafe { heap::alloc_small(class_of(size)) })?;
        if zero {
            // SAFETY: the block holds at least `size` bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), 0, size) };
        }
        return Some(p);
    }
    if size > MAX_SIZE || !align.is_power_of_two() {
        return None;
    }
    if let Some(class) = class_of_aligned(size, align) {
        // SAFETY: class_of_aligned gives a class below NUM_CLASSES.
        let p = NonNull::new(unsafe { heap::alloc_small(class) })?;
        if zero {
            // SAFETY: the block holds at least `size` bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), 0, size) };
        }
        return Some(p);
    }
    large::alloc(size, align, zero)
}

/// An allocation the countdown picked (`due`: `heap::SAMPLE_*`): profiled, else guarded (in
/// `all` mode, or when sampled), else with a redzone (if on; requests too large for one are
/// served as page runs). `w` is its countdown weight, `marker` an address in
/// [`alloc_slow`]'s frame. `None` hands the request back to the normal path.
#[cold]
fn alloc_checked(
    size: usize,
    align: usize,
    zero: bool,
    due: u8,
    w: usize,
    marker: usize,
) -> Option<NonNull<u8>> {
    if size > MAX_SIZE || !align.is_power_of_two() {
        return None;
    }
    if due & heap::SAMPLE_PROFILE != 0 {
        if let Some(p) = alloc_profiled(size, align, zero, w, marker) {
            return Some(p);
        }
    }
    if due & heap::SAMPLE_GUARD == 0 {
        return None;
    }
    if crate::check::guard::active()
        && crate::config::guard_mode() != crate::config::GuardMode::Off
        && heap::guard_sample_now()
    {
        if let Some(p) = crate::check::guard::alloc(size, align, true) {
            return Some(p);
        }
    }
    let harden = crate::config::harden();
    if harden && size == 0 && align <= MIN_ALIGN {
        if let Some(p) = crate::check::zero::alloc() {
            return Some(p);
        }
    }
    // Redzones only from a heap whose spans are marked for them (a heap made before the
    // options were read is not, and its blocks take the unchecked paths).
    if crate::config::redzone() == 0 || !heap::current_heap_has_redzones() {
        return if harden && size > SMALL_CLASSES_MAX {
            crate::check::guard::alloc(size, align, false)
        } else {
            None
        };
    }
    crate::check::redzone::class_for(size, align)
        .and_then(|class| {
            // SAFETY: class_for gives a class below NUM_CLASSES.
            let b = NonNull::new(unsafe { heap::alloc_small(class) })?;
            if harden {
                // SAFETY: this thread just took a block of `class`.
                unsafe { heap::check_list_head(class) };
            }
            // SAFETY: a block of `class` just handed out by this thread's heap, whose spans
            // carry redzones while the option is on (it was, above).
            unsafe { crate::check::redzone::prepare(b, class, size, zero) };
            Some(b)
        })
        // The hardened mode guards every block too large for a redzone: its own slot, a
        // guard page after it, inaccessible and quarantined once freed.
        .or_else(|| {
            harden
                .then(|| crate::check::guard::alloc(size, align, false))
                .flatten()
        })
        .or_else(|| large::alloc(size.max(SMALL_CLASSES_MAX + 1), align, zero))
}

/// A profiled allocation: a page run (or huge block) of its own, whose descriptor names its
/// sample, so that its free is recognised without a table (see `profile`). `None` (the
/// normal path then serves it, unsampled) inside another sample of this thread's, or when
/// memory is exhausted.
#[cold]
#[inline(never)]
fn alloc_profiled(
    size: usize,
    align: usize,
    zero: bool,
    w: usize,
    marker: usize,
) -> Option<NonNull<u8>> {
    if !crate::heapprof::enter() {
        return None;
    }
    let mut frames = [0usize; crate::heapprof::FRAMES];
    let n = crate::heapprof::capture(&mut frames, marker);
    let p =
        cached_run(size, align, zero).or_else(|| large::alloc(size, align.max(MIN_ALIGN), zero));
    if let Some(p) = p {
        let id = crate::heapprof::record_alloc(size, w, &frames[..n]);
        // SAFETY: a live large block just allocated, ours.
        unsafe { large::set_sample(p, id) };
    }
    crate::heapprof::leave();
    p
}

/// A run the heap profile kept from an earlier sample (see `heapprof::record_free_and_keep`) of the
/// page count `size` needs, as a live block, zeroed if `zero`; `None` when there is none or
/// the alignment asks for more than a page.
fn cached_run(size: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
    if align > crate::os::PAGE_SIZE {
        return None;
    }
    let npages =
        crate::util::checked_align_up(size.max(1), crate::os::PAGE_SIZE)? / crate::os::PAGE_SIZE;
    let s = NonNull::new(crate::heapprof::take_run(npages)? as *mut crate::pages::Span)?;
    // SAFETY: a run the cache held (freed by the program, used by nobody), ours now.
    unsafe { large::set_cached(s, false) };
    // SAFETY: as above: a live descriptor of a run of `npages` pages.
    let p = unsafe { s.as_ref().addr } as *mut u8;
    if zero {
        // SAFETY: the run holds at least `size` bytes, ours.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    NonNull::new(p)
}

/// Frees a block.
///
/// # Safety
/// `p` was returned by this allocator and not freed since. Pointers that were not are
/// reported where the checks can see them (see `heap::free`).
#[inline(always)]
pub unsafe fn free(p: NonNull<u8>) {
    // SAFETY: `p` is non-null (a NonNull), returned by this allocator and not freed since
    // (free's contract): what heap::free asks.
    unsafe { heap::free(p.as_ptr()) }
}

/// Frees a block its caller says was allocated with `size` bytes (0: no claim) aligned to
/// `align`; a block that does not match the claim is reported as an invalid free (abort;
/// see `heap::free_sized` for what matches). Reports name `call`, the caller's entry point
/// (`free_sized`, `operator delete`, `dealloc`, …).
///
/// # Safety
/// As for [`free`].
#[inline(always)]
pub unsafe fn free_sized(p: NonNull<u8>, size: usize, align: usize, call: &'static str) {
    // SAFETY: `p` is non-null (a NonNull), returned by this allocator and not freed since
    // (free_sized's contract, as for free): what heap::free_sized asks; a wrong `size` is
    // reported there, not trusted.
    unsafe { heap::free_sized(p.as_ptr(), size, align, call) }
}

/// Gives free memory back to the OS now (`malloc_trim`): blocks held on remote lists the
/// calling thread may collect are freed into their spans, empty spans go back to the page
/// layer, and every free page that may hold data is decommitted. Returns the bytes given
/// back.
pub fn trim() -> usize {
    heap::release_held_blocks();
    crate::heapprof::drain_runs(|s| {
        if let Some(s) = NonNull::new(s as *mut crate::pages::Span) {
            // SAFETY: a run the profile's cache held: freed by the program, used by nobody.
            unsafe {
                large::set_cached(s, false);
                large::free_run(s);
            }
        }
    });
    crate::pages::PAGES.lock().trim()
}

/// The number of usable bytes of a block (at least what was asked for).
///
/// # Safety
/// `p` was returned by this allocator and not freed since.
pub unsafe fn usable_size(p: NonNull<u8>) -> usize {
    // SAFETY: `p` is non-null (a NonNull), which is all heap::usable_size asks; it is also a
    // live block of ours (usable_size's contract), so no report ends the process.
    unsafe { heap::usable_size(p.as_ptr()) }
}

/// Resizes a block to `new_size` bytes keeping its alignment `align`, in place where it can,
/// else by moving it (copying `min(old_size, new_size)` bytes, where `old_size` is what the
/// caller knows of the old block's size, or its usable size). On `None` the old block is
/// untouched and still owned by the caller.
///
/// # Safety
/// `p` was returned by this allocator with alignment `align` and not freed since; `old_size`,
/// if given, is no more than its usable size.
pub unsafe fn realloc(
    p: NonNull<u8>,
    old_size: Option<usize>,
    new_size: usize,
    align: usize,
) -> Option<NonNull<u8>> {
    if new_size > MAX_SIZE {
        return None;
    }
    // `p` is the caller's live block (realloc's contract): the lookup finds what it is.
    let usable = match heap::lookup_owned(p.as_ptr(), "realloc") {
        Block::Small(s) => {
            // SAFETY: the lookup found `p` to be a carved block of the live slab `s`.
            let span = unsafe { s.as_ref() };
            let size = span.block_size as usize;
            if heap::has_redzones(span) {
                // Always moves: the new block gets a fresh canary, the old one is checked.
                // SAFETY: a carved block of a marked span (the caller's live block).
                unsafe { crate::check::redzone::check_live(p.as_ptr() as usize, size, "realloc") }
            } else if new_size <= size && heap::claim_matches(new_size, align, span.class as usize)
            {
                // Keep the block while the new size maps to its class: a sized free of the
                // new size must find the class it names (see `heap::free_sized`).
                return Some(p);
            } else {
                size
            }
        }
        Block::Guarded => crate::check::guard::size_of_live(p.as_ptr() as usize, "realloc"),
        Block::Zero => crate::check::zero::size_of_live(p.as_ptr() as usize, "realloc"),
        Block::Large(s) => {
            // SAFETY: the lookup found `p` at the start of the live large run `s`.
            let run = unsafe { s.as_ref() };
            let cap = large::run_capacity(run);
            let sample = large::run_sample(run);
            // SAFETY: `s` is the live large run of `p`, which the caller owns (realloc's
            // contract): resize_run's contract.
            if new_size > SMALL_MAX && unsafe { large::resize_run(s, new_size) } {
                if sample != 0 {
                    crate::heapprof::record_resize(sample, new_size);
                }
                return Some(p);
            }
            cap
        }
        Block::Huge(h) => {
            // SAFETY: the lookup found `p` at the start of the live huge block `h`.
            let len = unsafe { h.as_ref().len };
            // SAFETY: `h` is the live huge block of `p`, owned by the caller and allocated
            // with alignment `align` (realloc's contract): resize_huge's contract.
            let resized = new_size > crate::pages::CHUNK_SIZE / 2
                && unsafe { large::resize_huge(h, new_size, align) };
            if resized {
                // SAFETY: `h` still describes the caller's live block after the resize (which
                // may have moved it: its base is the new start).
                let h = unsafe { h.as_ref() };
                if h.sample != 0 {
                    crate::heapprof::record_resize(h.sample, new_size);
                }
                return NonNull::new(h.base as *mut u8);
            }
            len
        }
        Block::Invalid(_) => unreachable!("lookup_owned reports invalid pointers"),
    };
    let q = alloc(new_size, align)?;
    let n = old_size.unwrap_or(usable).min(usable).min(new_size);
    // SAFETY: both blocks hold at least `n` bytes and are distinct.
    unsafe {
        ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), n);
        heap::free(p.as_ptr());
    }
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_large_huge_round_trip() {
        for &(size, align) in &[
            (1, 1),
            (16, 16),
            (100, 64),
            (5000, 4096),
            (32 * 1024, 16),
            (32 * 1024 + 1, 16),
            (100_000, 16),
            (100_000, 4096),
            (1 << 20, 16),
            ((1 << 20) + 1, 16),
            (100_000, 8192),
            (3 << 20, 1 << 20),
            (5 << 20, 16),
            (1000, 8 << 20),
            (64 << 20, 64 << 20),
        ] {
            let p = alloc(size, align).unwrap();
            assert_eq!(
                p.as_ptr() as usize % align.max(MIN_ALIGN),
                0,
                "{size} {align}"
            );
            // SAFETY: p is a live block of `size` bytes.
            unsafe {
                ptr::write_bytes(p.as_ptr(), 0xab, size);
                assert!(usable_size(p) >= size);
                free(p);
            }
            heap::validate_current_thread();
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_after_reuse() {
        for &size in &[24, 4000, 40_000, 1 << 20, 6 << 20] {
            for _ in 0..3 {
                let p = alloc(size, 16).unwrap();
                // SAFETY: `p` was just allocated with `size` bytes; freed once, here.
                unsafe {
                    ptr::write_bytes(p.as_ptr(), 0xff, size);
                    free(p);
                }
                let z = alloc_zeroed(size, 16).unwrap();
                // SAFETY: live block of `size` bytes.
                let bytes = unsafe { core::slice::from_raw_parts(z.as_ptr(), size) };
                assert!(bytes.iter().all(|&b| b == 0), "size {size}");
                // SAFETY: `z` was allocated just above and not freed yet.
                unsafe { free(z) };
            }
        }
    }

    #[test]
    fn realloc_keeps_contents_across_all_kinds() {
        let mut p = alloc(8, 16).unwrap();
        let mut size = 8usize;
        // SAFETY: p is live with `size` bytes.
        unsafe { ptr::write_bytes(p.as_ptr(), 0x5a, size) };
        while size < 24 << 20 {
            let new = size * 3;
            // SAFETY: `p` is the live block of `size` bytes from alloc or the previous
            // realloc (each unwrapped: none failed), not freed since.
            p = unsafe { realloc(p, Some(size), new, 16) }.unwrap();
            // SAFETY: p holds `new` bytes, the first `size` of them written.
            unsafe {
                let old = core::slice::from_raw_parts(p.as_ptr(), size);
                assert!(
                    old.iter().all(|&b| b == 0x5a),
                    "lost contents growing to {new}"
                );
                ptr::write_bytes(p.as_ptr(), 0x5a, new);
            }
            size = new;
        }
        while size > 8 {
            let new = size / 5;
            // SAFETY: `p` is the live block of `size` bytes from alloc or the previous
            // realloc (each unwrapped: none failed), not freed since.
            p = unsafe { realloc(p, Some(size), new, 16) }.unwrap();
            // SAFETY: p holds `new` bytes.
            let kept = unsafe { core::slice::from_raw_parts(p.as_ptr(), new) };
            assert!(
                kept.iter().all(|&b| b == 0x5a),
                "lost contents shrinking to {new}"
            );
            size = new;
        }
        // SAFETY: `p` is the block the last realloc returned, live: not freed since.
        unsafe { free(p) };
    }

    #[test]
    fn spans_of_exited_threads_are_taken_over() {
        // This thread sets up its own heap first, so that it cannot simply adopt the other
        // thread's heap below: it must take its spans over.
        // SAFETY: a live block, freed at once.
        unsafe { free(alloc(48, 16).unwrap()) };
        let before = heap::registry_counts();
        // A thread fills spans of the 48-byte class, hands half of its blocks over and exits.
        let kept: Vec<usize> = std::thread::spawn(|| {
            let blocks: Vec<usize> = (0..20_000)
                .map(|_| alloc(48, 16).unwrap().as_ptr() as usize)
                .collect();
            let mut kept = Vec::new();
            for (i, b) in blocks.into_iter().enumerate() {
                if i % 2 == 0 {
                    kept.push(b);
                } else {
                    // SAFETY: a live block of this thread.
                    unsafe { free(NonNull::new(b as *mut u8).unwrap()) };
                }
            }
            kept
        })
        .join()
        .unwrap();
        // Freed here, after the owner exited: they go to the abandoned heap's remote list.
        for b in kept {
            // SAFETY: live blocks handed to this thread.
            unsafe { free(NonNull::new(b as *mut u8).unwrap()) };
        }
        // This thread needs new spans of the class: before growing, it takes over the
        // abandoned heap (unless a new thread of another test adopted it first).
        let mine: Vec<_> = (0..20_000).map(|_| alloc(48, 16).unwrap()).collect();
        heap::validate_current_thread();
        let counts = heap::registry_counts();
        assert!(
            counts.taken_over > before.taken_over || counts.reused > before.reused,
            "{counts:?}"
        );
        for p in mine {
            // SAFETY: `p` is one of `mine`, allocated by this thread above, freed once here.
            unsafe { free(p) };
        }
        heap::validate_current_thread();
    }

    #[test]
    fn huge_realloc_keeps_large_alignments() {
        for align in [8 << 20, 32 << 20] {
            let mut p = alloc(5 << 20, align).unwrap();
            let mut size = 5 << 20;
            // SAFETY: p is live with `size` bytes.
            unsafe { ptr::write_bytes(p.as_ptr(), 0x77, size) };
            // Block growth in place: map something right after the block's guard page.
            let after = (p.as_ptr() as usize + size + crate::pages::GUARD_SIZE) as *mut u8;
            // SAFETY: a hint only (no MAP_FIXED); it replaces nothing.
            let blocker = unsafe {
                libc::mmap(
                    after.cast(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            for new in [40 << 20, 100 << 20] {
                // SAFETY: `p` is the live block of `size` bytes and alignment `align` from
                // alloc or the previous realloc (unwrapped), not freed since.
                p = unsafe { realloc(p, Some(size), new, align) }.unwrap();
                assert_eq!(
                    p.as_ptr() as usize % align,
                    0,
                    "realloc to {new} lost alignment {align}"
                );
                // SAFETY: p holds `new` bytes, the first `size` written.
                let kept = unsafe { core::slice::from_raw_parts(p.as_ptr(), size) };
                assert!(kept.iter().all(|&b| b == 0x77));
                // SAFETY: p holds `new` bytes.
                unsafe { ptr::write_bytes(p.as_ptr(), 0x77, new) };
                size = new;
            }
            // SAFETY: live block; the blocker is ours.
            unsafe {
                free(p);
                libc::munmap(blocker, 4096);
            }
        }
    }

    #[test]
    fn impossible_requests_fail_cleanly() {
        assert!(alloc(usize::MAX, 16).is_none());
        assert!(alloc(MAX_SIZE + 1, 16).is_none());
        assert!(alloc(1 << 47, 16).is_none(), "128 TiB cannot be mapped");
    }

    #[test]
    fn blocks_freed_by_another_thread_are_reused() {
        let blocks: Vec<usize> = (0..10_000)
            .map(|i| alloc(16 + i % 200, 16).unwrap().as_ptr() as usize)
            .collect();
        std::thread::spawn(move || {
            for b in blocks {
                // SAFETY: live blocks handed to this thread.
                unsafe { free(NonNull::new(b as *mut u8).unwrap()) };
            }
        })
        .join()
        .unwrap();
        // The owner collects the remote frees on its slow path.
        let again: Vec<_> = (0..10_000)
            .map(|i| alloc(16 + i % 200, 16).unwrap())
            .collect();
        heap::validate_current_thread();
        for p in again {
            // SAFETY: `p` is one of `again`, allocated by this thread above, freed once here.
            unsafe { free(p) };
        }
        heap::validate_current_thread();
    }
}
