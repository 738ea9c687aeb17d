//! Slabs: a page run carved into blocks of one size class.
//!
//! Free blocks are linked through their first word, inside the span's own memory: no header
//! sits in front of any block. The link is stored encoded, xor the owner heap's secret key
//! ([`read_link`], [`write_link`]): a block's first word never holds a heap address in the
//! clear, and a link overwritten by a use after free decodes to a wild address rather than
//! one the attacker chose (in the hardened mode the next block is checked when a block is
//! popped, see `heap::check_list_head`). A span's blocks are in one of four places:
//! - handed out to the program (`used` counts them, together with the next two);
//! - on the owner heap's remote list, freed by another thread and not yet collected;
//! - on the span's local free list `free` (freed by the owner, or carved);
//! - never carved yet: the bytes from `bump` to the end, touched only when carved, so a new
//!   span costs no page faults for blocks never used.
//!
//! `used` also carries two marks of the heap layer, so that the free fast path notices both
//! "the span became empty" and "the span was full" with one decrement and one signed test
//! (`used <= 0`):
//! - [`CURRENT_REF`]: the heap allocating from the span holds one reference while it is its
//!   class's current span, so `used` cannot reach 0 under a steady malloc/free loop;
//! - [`FULL_MARK`] (`i32::MIN`): added while the span is full and in no heap list, making
//!   `used` negative.
//!
//! Invariant (checked by [`validate`]):
//! `used == (capacity - len(free) - uncarved) + CURRENT_REF·[current] + FULL_MARK·[full]`
//! where `uncarved = capacity - bump` (`bump` counts carved blocks), and every block on `free`
//! is a carved block boundary.

use core::ptr;
use core::sync::atomic::Ordering;

use crate::os::PAGE_SIZE;
use crate::pages::{Span, State};
use crate::size_class::{blocks_per_span, class_size, span_order};
use crate::util::invariant;

/// Held in `used` by the heap while the span is its current span.
pub const CURRENT_REF: i32 = 1;
/// Added to `used` while the span is full and in no heap list.
pub const FULL_MARK: i32 = i32::MIN;

/// After a block was freed to a span and `used` decremented: does the span need the slow path
/// (it became empty, or it was full)? One signed test for both cases.
#[inline(always)]
pub fn needs_attention(used: i32) -> bool {
    used <= 0
}

/// The free-list link stored in the free block `b`, decoded with the owner heap's `key`.
///
/// # Safety
/// `b` is a free block of a slab whose owner heap's key is `key`.
#[inline(always)]
pub unsafe fn read_link(b: *mut u8, key: usize) -> *mut u8 {
    // SAFETY: `b` is a free block (read_link's contract): its first word is the link.
    (unsafe { *(b as *const usize) } ^ key) as *mut u8
}

/// Stores the link to `next` in the free block `b`, encoded with the owner heap's `key`.
///
/// # Safety
/// `b` is a block of a slab owned by the caller, free or being freed.
#[inline(always)]
pub unsafe fn write_link(b: *mut u8, next: *mut u8, key: usize) {
    // SAFETY: `b` is the caller's block (write_link's contract), 16 bytes at least.
    unsafe { *(b as *mut usize) = next as usize ^ key };
}

/// How many bytes of fresh blocks one carve touches at most (one page, like the kernel's
/// fault granule; at least one block is always carved).
const CARVE_BYTES: usize = PAGE_SIZE;
/// The most blocks one carve makes (a page of the smallest class).
const MAX_CARVE: usize = CARVE_BYTES / crate::size_class::MIN_ALIGN;

/// Turns a fresh run into an empty slab of `class` owned by `owner`.
///
/// # Safety
/// `s` is a run of `2^span_order(class)` pages just taken from the page layer.
pub unsafe fn init(s: *mut Span, class: usize, owner: usize) {
    // SAFETY: the caller hands us the descriptor of a run we now own.
    let s = unsafe { &mut *s };
    debug_assert_eq!(s.npages as usize, 1 << span_order(class));
    let size = class_size(class);
    s.state.set(State::Slab);
    s.class = class as u8;
    s.block_size = size as u32;
    s.divisor = u64::MAX / size as u64 + 1;
    s.used = 0;
    s.bump.store(0, Ordering::Relaxed);
    s.free = ptr::null_mut();
    s.owner.store(owner, core::sync::atomic::Ordering::Relaxed);
}

/// Blocks the slab holds.
#[inline]
pub fn capacity(s: &Span) -> usize {
    blocks_per_span(s.class as usize)
}

/// Whether the span has blocks that were never carved.
#[inline]
pub fn can_carve(s: &Span) -> bool {
    (s.bump.load(Ordering::Relaxed) as usize) < capacity(s)
}

/// Carves up to a page's worth of never-used blocks onto the (empty) free list, its links
/// encoded with `key`. Returns whether any block was carved.
///
/// # Safety
/// `s` is a live slab owned by the calling thread, whose heap's key is `key`, with an empty
/// local free list.
pub unsafe fn carve(s: &mut Span, key: usize) -> bool {
    debug_assert!(s.free.is_null());
    let size = s.block_size as usize;
    let start = s.bump.load(Ordering::Relaxed) as usize;
    let left = capacity(s) - start;
    if left == 0 {
        return false;
    }
    let n = (CARVE_BYTES / size).clamp(1, left);
    let marked = s.owner.load(core::sync::atomic::Ordering::Relaxed) & 1 != 0;
    let base = s.addr + start * size;
    // Blocks are linked in address order, or in the hardened mode in a random order, so
    // that which block comes next is not known; only then is there an order to build.
    s.free = if marked && crate::config::harden() {
        let mut order = [0u16; MAX_CARVE];
        for (i, o) in order.iter_mut().enumerate().take(n) {
            *o = i as u16;
        }
        let mut rng = (key as u64 ^ base as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in (1..n).rev() {
            order.swap(
                i,
                (crate::util::xorshift64(&mut rng) % (i as u64 + 1)) as usize,
            );
        }
        // SAFETY: blocks `0..n` from `base` are the span's never-used range, ours (carve's
        // contract); `order` is a permutation of `0..n`.
        unsafe { link_blocks(base, size, n, key, marked, |i| order[i] as usize) }
    } else {
        // SAFETY: as above; the identity is one to one.
        unsafe { link_blocks(base, size, n, key, marked, |i| i) }
    };
    s.bump.store((start + n) as u16, Ordering::Relaxed);
    true
}

/// Links `n` blocks of `size` bytes from `base` into a free list, the `i`-th on it being
/// block `slot(i)` (the last links to null), its links encoded with `key`; returns the
/// list's head. With `marked` (a span with redzones), each block's last word is cleared so
/// that stale bytes there (from an earlier slab on these pages) never look like the mark of
/// a freed block to the redzone checks (see `redzone`); elsewhere it is left alone, so
/// carving never touches more than the link's page.
///
/// # Safety
/// Blocks `0..n` from `base` lie in a never-used range of a slab the caller owns, and
/// `slot` maps `0..n` onto `0..n` one to one.
#[inline(always)]
unsafe fn link_blocks(
    base: usize,
    size: usize,
    n: usize,
    key: usize,
    marked: bool,
    slot: impl Fn(usize) -> usize,
) -> *mut u8 {
    let block = |i: usize| (base + slot(i) * size) as *mut u8;
    for i in 0..n {
        let b = block(i);
        let next = if i + 1 < n {
            block(i + 1)
        } else {
            ptr::null_mut()
        };
        // SAFETY: the block (16 bytes at least) is one of the caller's never-used blocks.
        unsafe {
            write_link(b, next, key);
            if marked {
                (b.add(size - 8) as *mut usize).write(0);
            }
        }
    }
    block(0)
}

/// Whether the offset `off` into a slab is a multiple of its block size (Lemire's
/// divisibility test: one multiplication, one compare).
#[inline(always)]
pub fn on_block_boundary(s: &Span, off: usize) -> bool {
    (off as u64).wrapping_mul(s.divisor) < s.divisor
}

/// Whether `p` is the start of a block of the slab `s` that was carved (for the slow paths'
/// invalid-free checks).
#[inline]
pub fn is_block_start(s: &Span, p: usize) -> bool {
    let off = p.wrapping_sub(s.addr);
    off < s.bump.load(Ordering::Relaxed) as usize * s.block_size as usize
        && on_block_boundary(s, off)
}

/// Checks the slab invariant, `used - marks == carved - on_free <= capacity` (the marks:
/// [`CURRENT_REF`] for a heap's current span, [`FULL_MARK`] for a full one), and that a full
/// span has nothing to hand out; reports and aborts on a violation (`util::invariant`).
///
/// # Safety
/// `s` is a live slab owned by the calling thread, whose heap's key is `key`.
pub unsafe fn validate(s: &Span, current: bool, key: usize) {
    invariant!(
        s.state == State::Slab,
        "a heap's span is not a slab",
        s.addr
    );
    let carved = s.bump.load(Ordering::Relaxed) as usize;
    let mut on_free = 0;
    let mut b = s.free;
    while !b.is_null() {
        invariant!(
            is_block_start(s, b as usize),
            "free list entry is not a block",
            b
        );
        on_free += 1;
        invariant!(on_free <= carved, "free list cycle", s.addr);
        // SAFETY: b is a free block of the span, whose heap's key is `key`.
        b = unsafe { read_link(b, key) };
    }
    // Blocks on a remote list still count as used until collected.
    let full = s.used < 0;
    let marks = if current { CURRENT_REF } else { 0 } + if full { FULL_MARK } else { 0 };
    let out = s.used - marks;
    invariant!(
        out as usize == carved - on_free,
        "span's used count",
        s.addr
    );
    invariant!(out as usize <= capacity(s), "span's used count", s.addr);
    if full {
        invariant!(
            s.free.is_null() && !can_carve(s),
            "a full span has free blocks",
            s.addr
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::tests::{fake_map, FakeSource};
    use crate::pages::Pages;
    use crate::size_class::NUM_CLASSES;

    #[test]
    fn carve_pop_push_keeps_the_invariant() {
        const KEY: usize = 0x5eed_f00d_dead_beef;
        let mut pages = Pages::new(FakeSource::new(4), fake_map());
        for class in 0..NUM_CLASSES {
            let order = span_order(class);
            let s = pages
                .alloc_run(1 << order, order, State::Slab)
                .unwrap()
                .as_ptr();
            // SAFETY: s is a fresh run of the right size.
            unsafe { init(s, class, 1) };
            // SAFETY: s is live and ours.
            let span = unsafe { &mut *s };
            let mut got = Vec::new();
            loop {
                if span.free.is_null() {
                    // SAFETY: free list is empty.
                    if !unsafe { carve(span, KEY) } {
                        break;
                    }
                }
                let b = span.free;
                // SAFETY: b is a free block: its first word (the link) is readable, and is
                // not the next block's address in the clear.
                let raw = unsafe { *(b as *const usize) };
                assert!(raw != b as usize + class_size(class) && raw != 0);
                // SAFETY: b is a free block of a span keyed with KEY.
                span.free = unsafe { read_link(b, KEY) };
                span.used += 1;
                got.push(b as usize);
                // SAFETY: the span is ours.
                unsafe { validate(span, false, KEY) };
            }
            assert_eq!(got.len(), blocks_per_span(class));
            assert_eq!(span.used as usize, capacity(span));
            got.sort();
            for w in got.windows(2) {
                assert_eq!(w[1] - w[0], class_size(class));
            }
            assert!(got.iter().all(|b| b % 16 == 0));
            for &b in got.iter().rev() {
                // SAFETY: b is a block we hold.
                unsafe { write_link(b as *mut u8, span.free, KEY) };
                span.free = b as *mut u8;
                span.used -= 1;
            }
            // SAFETY: the span is ours.
            unsafe { validate(span, false, KEY) };
            assert!(!is_block_start(span, got[0] + 1));
            assert!(!is_block_start(
                span,
                span.addr + capacity(span) * class_size(class)
            ));
            for off in 0..span.npages as usize * PAGE_SIZE {
                assert_eq!(
                    on_block_boundary(span, off),
                    off % class_size(class) == 0,
                    "{off}"
                );
            }
            // SAFETY: the span is empty and ours.
            unsafe { pages.free_run(core::ptr::NonNull::new_unchecked(s)) };
        }
        pages.validate();
    }
}
