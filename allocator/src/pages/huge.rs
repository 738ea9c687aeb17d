//! Huge blocks: above the chunk size (or for larger alignments) a block is a mapping of its
//! own with a guard page after it, named in the page map, resized with `mremap`. Freed ones
//! are kept for reuse in a small cache (unmapped after the purge delay, or by a trim).
//!
//! They live in the page layer because they share its lock, its page map and its purge; the
//! large-block layer (`large/`) is the face the heaps call.

use core::mem::size_of;
use core::ptr::NonNull;

use super::{
    OsSource, PageSource, Pages, CHUNK_SIZE, GUARD_SIZE, HUGE_CACHE_MAX_BYTES, HUGE_CACHE_SLOTS,
    HUGE_META_BYTES, PAGE_SIZE,
};
use crate::os;

/// The metadata of a huge block mapped straight from the OS (above the chunk size).
#[repr(C)]
pub struct Huge {
    /// The mapping's first byte (the block's start).
    pub base: usize,
    /// Usable bytes of the mapping (a multiple of the page size; the guard page follows).
    pub len: usize,
    /// The block's heap-profile sample (`profile`), 0 when it is not sampled: the owner's
    /// field (`large` sets it for every block it hands out).
    pub sample: u32,
    /// The bytes the block was last allocated or resized to hold (what a sized free must
    /// claim): the owner's field, like `sample`.
    pub size: usize,
    /// Next descriptor in the recycling list.
    next_spare: *mut Huge,
}

impl<S: PageSource> Pages<S> {
    /// Maps a huge block of at least `len` bytes aligned to `align` (a power of two), with a
    /// guard page after it. Returns its descriptor, or `None` when memory is exhausted.
    pub fn huge_alloc(&mut self, len: usize, align: usize) -> Option<(NonNull<Huge>, bool)>
    where
        S: HugeSource,
    {
        let len = crate::util::checked_align_up(len, PAGE_SIZE)?;
        let h = self.huge_desc()?;
        // A cached mapping that fits (not more than twice the size, and aligned) is reused
        // as it is; its pages may hold old bytes.
        let align = align.max(CHUNK_SIZE);
        let hit = self
            .huge_cache
            .iter()
            .position(|&(b, l, _)| l >= len && l / 2 <= len && b & (align - 1) == 0);
        let (base, len, fresh) = if let Some(i) = hit {
            let (b, l, _) = self.huge_cache[i];
            self.huge_cache[i] = (0, 0, 0);
            self.huge_cached_bytes -= l;
            (b, l, false)
        } else {
            let Some(base) = self.source.huge_map(len, align) else {
                self.recycle_huge(h);
                return None;
            };
            (base.as_ptr() as usize, len, true)
        };
        if !self.map.set(&self.source, base, len, h as usize) {
            // Clear the slots that were set before the failure.
            self.map.set(&self.source, base, len, 0);
            // SAFETY: the mapping was just made, or just taken out of the cache: either way it
            // is ours, unused and named by no map slot now.
            unsafe { self.source.huge_unmap(base, len) };
            self.recycle_huge(h);
            return None;
        }
        // SAFETY: h is a descriptor we own.
        unsafe {
            (*h).base = base;
            (*h).len = len;
        }
        self.huge_bytes += len;
        self.huge_counts[0] += 1;
        self.note_peaks();
        NonNull::new(h).map(|h| (h, fresh))
    }

    /// Takes the cached huge mappings freed before `cutoff` (ms; all of them for `u64::MAX`)
    /// out of the cache into `out` as (base, usable bytes); returns how many. The caller
    /// unmaps them ([`PageSource::huge_release`]).
    pub(super) fn take_cached_huge(
        &mut self,
        cutoff: u64,
        out: &mut [(usize, usize); HUGE_CACHE_SLOTS],
    ) -> usize {
        let mut n = 0;
        for e in &mut self.huge_cache {
            let (base, len, freed) = *e;
            if len != 0 && freed <= cutoff {
                *e = (0, 0, 0);
                self.huge_cached_bytes -= len;
                out[n] = (base, len);
                n += 1;
            }
        }
        n
    }

    fn huge_desc(&mut self) -> Option<*mut Huge> {
        if self.spare_huge.is_null() {
            let page = self
                .source
                .meta_alloc(HUGE_META_BYTES)?
                .as_ptr()
                .cast::<Huge>();
            for i in 0..HUGE_META_BYTES / size_of::<Huge>() {
                // SAFETY: the page holds this many descriptors.
                self.recycle_huge(unsafe { page.add(i) });
            }
        }
        let h = self.spare_huge;
        // SAFETY: recycled descriptors are valid.
        self.spare_huge = unsafe { (*h).next_spare };
        Some(h)
    }

    fn recycle_huge(&mut self, h: *mut Huge) {
        // SAFETY: the descriptor is unused.
        unsafe { (*h).next_spare = self.spare_huge };
        self.spare_huge = h;
    }

    /// Unmaps a huge block.
    ///
    /// # Safety
    /// `h` is a live huge descriptor whose block nobody uses any more.
    pub unsafe fn huge_free(&mut self, h: NonNull<Huge>)
    where
        S: HugeSource,
    {
        // SAFETY: `h` is a live huge descriptor (huge_free's contract).
        let (base, len) = unsafe { (h.as_ref().base, h.as_ref().len) };
        self.map.set(&self.source, base, len, 0);
        let slot = self.huge_cache.iter().position(|e| e.1 == 0);
        match slot {
            Some(i) if self.huge_cached_bytes + len <= HUGE_CACHE_MAX_BYTES => {
                self.now_ms = self.source.now_ms();
                self.huge_cache[i] = (base, len, self.now_ms);
                self.huge_cached_bytes += len;
                self.source.purge_pending();
            }
            // SAFETY: the block is no longer used or mapped to an owner.
            _ => unsafe { self.source.huge_unmap(base, len) },
        }
        self.huge_bytes -= len;
        self.huge_counts[1] += 1;
        self.recycle_huge(h.as_ptr());
    }

    /// Resizes a huge block to hold `new_len` bytes, in place or by moving its pages (never by
    /// copying) to a place aligned to `align` (at least a chunk). Returns whether it worked;
    /// on failure the block is unchanged.
    ///
    /// # Safety
    /// `h` is a live huge descriptor; the caller owns its block.
    pub unsafe fn huge_resize(&mut self, mut h: NonNull<Huge>, new_len: usize, align: usize) -> bool
    where
        S: HugeSource,
    {
        let size = new_len;
        let Some(new_len) = crate::util::checked_align_up(new_len, PAGE_SIZE) else {
            return false;
        };
        // SAFETY: `h` is a live huge descriptor (huge_resize's contract).
        let (base, len) = unsafe { (h.as_ref().base, h.as_ref().len) };
        if new_len == len {
            // SAFETY: `h` is the caller's live block's descriptor (huge_resize's contract).
            unsafe { h.as_mut().size = size };
            return true;
        }
        // SAFETY: `[base, base + len)` is the live block of `h`, which the caller owns
        // (huge_resize's contract): what huge_remap asks.
        let Some(new_base) = (unsafe { self.source.huge_remap(base, len, new_len, align) }) else {
            return false;
        };
        let new_base = new_base.as_ptr() as usize;
        let hv = h.as_ptr() as usize;
        self.map.set(&self.source, base, len, 0);
        if !self.map.set(&self.source, new_base, new_len, hv) {
            // The pages have moved and no map node could be had for their new place: the
            // block can be neither described nor moved back safely.
            crate::util::fatal(
                "out-of-memory",
                "page map node for a moved huge block",
                new_base,
            );
        }
        // SAFETY: `h` is a live huge descriptor whose block the caller owns (huge_resize's
        // contract), so nobody else writes it; the page lock serialises the page layer.
        unsafe {
            h.as_mut().base = new_base;
            h.as_mut().len = new_len;
            h.as_mut().size = size;
        }
        self.huge_bytes = self.huge_bytes - len + new_len;
        self.note_peaks();
        true
    }
}

/// A page source that can also map huge blocks (above the chunk size).
///
/// # Safety
/// As for [`PageSource`]; besides, `huge_map(len, align)` returns `len` zeroed read-write
/// bytes aligned to `align` with a guard page after them, overlapping nothing else live, and
/// `huge_remap` returns the same bytes (contents kept up to the smaller length) at an
/// address aligned as asked, or `None` with the block unchanged.
pub unsafe trait HugeSource: PageSource {
    /// Maps `len` bytes (a page multiple) aligned to `align`, with a guard after them.
    fn huge_map(&self, len: usize, align: usize) -> Option<NonNull<u8>>;
    /// Unmaps a block from [`HugeSource::huge_map`] or [`HugeSource::huge_remap`].
    ///
    /// # Safety
    /// The block is unused.
    unsafe fn huge_unmap(&self, base: usize, len: usize);
    /// Resizes a block, moving its pages (without copying) to a new place aligned to
    /// `align.max(CHUNK_SIZE)` if it cannot grow where it is. `None` (block unchanged) when
    /// memory is exhausted.
    ///
    /// # Safety
    /// The block is live and owned by the caller.
    unsafe fn huge_remap(
        &self,
        base: usize,
        len: usize,
        new_len: usize,
        align: usize,
    ) -> Option<NonNull<u8>>;
}

// SAFETY: huge blocks are fresh anonymous mappings aligned by `map_aligned` with a guard
// page installed after them; mremap moves pages without changing their contents.
unsafe impl HugeSource for OsSource {
    fn huge_map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        let p = os::map_aligned(len.checked_add(GUARD_SIZE)?, align)?;
        // SAFETY: the guard is the last page of the mapping just made.
        unsafe {
            os::guard_install(p.as_ptr().add(len), GUARD_SIZE);
            if crate::config::hugepage() {
                os::advise_hugepage(p.as_ptr(), len);
            }
        }
        Some(p)
    }

    unsafe fn huge_unmap(&self, base: usize, len: usize) {
        // SAFETY: the caller gives the block and its guard back.
        unsafe { os::unmap(base as *mut u8, len + GUARD_SIZE) };
    }

    unsafe fn huge_remap(
        &self,
        base: usize,
        len: usize,
        new_len: usize,
        align: usize,
    ) -> Option<NonNull<u8>> {
        let p = base as *mut u8;
        if new_len < len {
            // Shrink: guard the new end, unmap the rest.
            // SAFETY: `[base, base + len)` is the caller's live block (huge_remap's
            // contract); the page at `new_len` is inside it, past the bytes kept.
            unsafe { os::guard_install(p.add(new_len), GUARD_SIZE) };
            // SAFETY: `[new_len + GUARD_SIZE, len + GUARD_SIZE)` from `p` is the rest of the
            // block's mapping (its old guard page included), past the new guard: unused.
            unsafe { os::unmap(p.add(new_len + GUARD_SIZE), len - new_len) };
            return NonNull::new(p);
        }
        // Grow: the guard page becomes data; guard again at the new end.
        // SAFETY: the page at `base + len` is the guard page installed after the caller's
        // block when it was mapped or last resized: part of its mapping.
        unsafe { os::guard_remove(p.add(len), GUARD_SIZE) };
        let total = new_len + GUARD_SIZE;
        // SAFETY: `[base, base + len + GUARD_SIZE)` is the whole mapping of the caller's
        // block with its guard page (huge_remap's contract).
        if unsafe { os::remap_in_place(p, len + GUARD_SIZE, total) } {
            // SAFETY: the mapping now holds `total` bytes from `p`; its last page, past the
            // block's new `new_len` bytes, holds nothing.
            unsafe { os::guard_install(p.add(new_len), GUARD_SIZE) };
            return NonNull::new(p);
        }
        // Move to a fresh chunk-aligned reservation, without copying.
        let Some(dest) = os::map_aligned(total, align.max(CHUNK_SIZE)) else {
            // SAFETY: the mapping is unchanged; its page at `len` is the old guard page,
            // opened above and holding nothing: guarded again.
            unsafe { os::guard_install(p.add(len), GUARD_SIZE) };
            return None;
        };
        // SAFETY: `[base, base + len + GUARD_SIZE)` is the whole mapping of the caller's
        // block, and `dest` a reservation of `total` bytes just made, ours.
        if !unsafe { os::remap_to(p, len + GUARD_SIZE, total, dest.as_ptr()) } {
            // SAFETY: `dest` was mapped just above and nothing uses it.
            unsafe { os::unmap(dest.as_ptr(), total) };
            // SAFETY: the old mapping is unchanged (the move failed); its page at `len` is
            // the old guard page, opened above and holding nothing: guarded again.
            unsafe { os::guard_install(p.add(len), GUARD_SIZE) };
            return None;
        }
        // SAFETY: the block's pages now lie at `dest`, `total` bytes mapped; its last page,
        // past the block's `new_len` bytes, holds nothing.
        unsafe { os::guard_install(dest.as_ptr().add(new_len), GUARD_SIZE) };
        Some(dest)
    }
}
