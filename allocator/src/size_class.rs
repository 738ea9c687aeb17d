//! Size classes of the blocks a thread's heap serves.
//!
//! Classes are 16 B apart up to 128 B, then four per doubling (`2^b + k * 2^(b-2)`, k = 1..4)
//! up to [`SMALL_MAX`] = 1 MiB: 60 classes. Every class is a multiple of 16, so every block
//! is 16-byte aligned (glibc's guarantee) when its span starts on a page. The 40 classes up
//! to [`SMALL_CLASSES_MAX`] = 32 KiB are the small ones; the 20 above are the medium ones,
//! which exist so that blocks up to 1 MiB are served by the thread's heap like small ones (no
//! global lock on the same thread's malloc and free, one atomic push for another thread's
//! free), not as page runs of the page layer.
//!
//! Internal waste (block size minus request, over block size), checked by the tests below:
//! - worst case 93.8 % for a 1 B request (the 16 B minimum block); from 16 B up 46.9 % (a
//!   17 B request in the 32 B class) — the price of 16-byte alignment; from 64 B up under
//!   20 % (`(step - 1) / (2^b + step)`, e.g. a 16385 B request in the 20480 B class), the
//!   bound of four classes per doubling;
//! - average 10.6 % over requests uniform in 1 B ..= 32 KiB, and about 12 % over requests
//!   uniform in 1 B ..= 1 KiB.
//!
//! Of a medium block, only the pages the program touches cost memory: a fresh span's blocks
//! are carved a page at a time, so the waste of a block is address space until a larger
//! request of the same class writes it.
//!
//! Each class is carved from spans of a power-of-two number of pages (a buddy run). The span
//! size is the smallest run of at least 16 KiB holding 8 blocks (4 for classes above 4 KiB,
//! 2 above 256 KiB) whose tail waste is under 1/16, trying at most three larger runs for it
//! and never more than 2 MiB (high buddy orders are the scarce ones): small spans are at most
//! 256 KiB, medium ones 2 MiB. The worst tail waste of all classes is checked below too.

use crate::os::PAGE_SIZE;

/// Alignment every block has without asking (glibc's `MALLOC_ALIGNMENT` on x86-64).
pub const MIN_ALIGN: usize = 16;

/// Largest size served from size classes; larger requests go to the large-block layer.
pub const SMALL_MAX: usize = 1024 * 1024;

/// Number of size classes.
pub const NUM_CLASSES: usize = 60;

/// The largest small class (the classes above it, to [`SMALL_MAX`], are the medium ones).
pub const SMALL_CLASSES_MAX: usize = 32 * 1024;

/// The largest span order (2 MiB).
const MAX_SPAN_ORDER: u32 = 9;

/// Sizes up to this are classified by one table load ([`class_of_table`]).
pub const SMALL_TABLE_MAX: usize = 1024;
const TABLE_MAX: usize = SMALL_TABLE_MAX;

/// The block size of class `class` (`class < NUM_CLASSES`).
#[inline(always)]
pub const fn class_size(class: usize) -> usize {
    if class < 8 {
        16 * (class + 1)
    } else {
        let j = class - 8;
        let b = 7 + j / 4;
        let k = j % 4;
        (1 << b) + ((k + 1) << (b - 2))
    }
}

/// The class of a request of `size` bytes computed without the table (`size <= SMALL_MAX`).
#[inline(always)]
const fn class_of_computed(size: usize) -> usize {
    if size <= 128 {
        if size == 0 {
            0
        } else {
            (size - 1) / 16
        }
    } else {
        let s = size - 1;
        let b = (usize::BITS - 1 - s.leading_zeros()) as usize; // 2^b <= s < 2^(b+1)
        let k = (s - (1 << b)) >> (b - 2);
        8 + (b - 7) * 4 + k
    }
}

const fn build_table() -> [u8; TABLE_MAX / 16 + 1] {
    let mut t = [0u8; TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = class_of_computed(i * 16) as u8;
        i += 1;
    }
    t
}

/// `TABLE[(size + 15) / 16]` is the class of `size` for `size <= TABLE_MAX`.
static TABLE: [u8; TABLE_MAX / 16 + 1] = build_table();

/// The class of `size` for `size <= SMALL_TABLE_MAX`: one table load.
#[inline(always)]
pub fn class_of_table(size: usize) -> usize {
    debug_assert!(size <= TABLE_MAX);
    TABLE[(size + 15) >> 4] as usize
}

/// The smallest class whose blocks hold `size` bytes (`size <= SMALL_MAX`).
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= SMALL_MAX);
    if size <= TABLE_MAX {
        TABLE[(size + 15) >> 4] as usize
    } else {
        class_of_computed(size)
    }
}

/// The smallest class whose blocks hold `size` bytes and are all aligned to `align` (a power
/// of two up to a page), given that spans start on a page. `None` if no class fits.
pub fn class_of_aligned(size: usize, align: usize) -> Option<usize> {
    if size > SMALL_MAX || align > PAGE_SIZE {
        return None;
    }
    let mut class = class_of(size.max(align));
    while class < NUM_CLASSES {
        if class_size(class).is_multiple_of(align) {
            return Some(class);
        }
        class += 1;
    }
    None
}

const fn tail_waste_ok(size: usize, pages: usize) -> bool {
    let bytes = pages * PAGE_SIZE;
    (bytes % size) * 16 <= bytes
}

/// The fewest blocks a span of blocks of `size` bytes holds.
const fn min_blocks(size: usize) -> usize {
    if size <= PAGE_SIZE {
        8
    } else if size <= 256 * 1024 {
        4
    } else {
        2
    }
}

/// The buddy order (log2 of pages) of the spans of class `class`.
const fn compute_span_order(class: usize) -> u8 {
    let size = class_size(class);
    let mut order = 2u32; // 16 KiB
    let min_blocks = min_blocks(size);
    while (PAGE_SIZE << order) < min_blocks * size {
        order += 1;
    }
    let mut tries = 0;
    while tries < 3 && order < MAX_SPAN_ORDER && !tail_waste_ok(size, 1 << order) {
        order += 1;
        tries += 1;
    }
    order as u8
}

const fn build_orders() -> [u8; NUM_CLASSES] {
    let mut t = [0u8; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = compute_span_order(c);
        c += 1;
    }
    t
}

static SPAN_ORDERS: [u8; NUM_CLASSES] = build_orders();

/// The buddy order (log2 of the page count) of a span of class `class`.
#[inline]
pub fn span_order(class: usize) -> u32 {
    SPAN_ORDERS[class] as u32
}

/// How many blocks a span of class `class` holds.
#[inline]
pub fn blocks_per_span(class: usize) -> usize {
    (PAGE_SIZE << span_order(class)) / class_size(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_sorted_aligned_and_dense_enough() {
        assert_eq!(class_size(0), 16);
        assert_eq!(class_size(NUM_CLASSES - 1), SMALL_MAX);
        for c in 1..NUM_CLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(class_size(c) % 16, 0);
        }
        // At most 4 classes in any doubling (lo, 2*lo].
        for c in 0..NUM_CLASSES {
            let lo = class_size(c);
            let n = (0..NUM_CLASSES).filter(|&d| class_size(d) > lo && class_size(d) <= 2 * lo);
            assert!(n.count() <= 4, "more than 4 classes above {lo}");
        }
    }

    #[test]
    fn class_of_is_the_smallest_fit() {
        for size in 0..=SMALL_MAX {
            let c = class_of(size);
            assert!(class_size(c) >= size, "{size}");
            if c > 0 {
                assert!(class_size(c - 1) < size.max(1), "{size}");
            }
            assert_eq!(c, class_of_computed(size));
        }
    }

    #[test]
    fn internal_waste_is_as_stated() {
        let waste =
            |s: usize| (class_size(class_of(s)) - s) as f64 / class_size(class_of(s)) as f64;
        let worst = (1..=SMALL_MAX).map(waste).fold(0.0, f64::max);
        let worst_from_16 = (16..=SMALL_MAX).map(waste).fold(0.0, f64::max);
        let worst_from_64 = (64..=SMALL_MAX).map(waste).fold(0.0, f64::max);
        let avg = (1..=SMALL_CLASSES_MAX).map(waste).sum::<f64>() / SMALL_CLASSES_MAX as f64;
        let avg_1k = (1..=1024).map(waste).sum::<f64>() / 1024.0;
        assert!((worst - 15.0 / 16.0).abs() < 1e-9, "worst {worst}");
        assert!(
            (worst_from_16 - 15.0 / 32.0).abs() < 1e-9,
            "worst from 16 {worst_from_16}"
        );
        assert!(worst_from_64 < 0.2, "worst from 64 {worst_from_64}");
        assert!(avg < 0.11, "average waste {avg}");
        assert!(avg_1k < 0.13, "average waste to 1 KiB {avg_1k}");
    }

    #[test]
    fn spans_hold_enough_blocks_with_little_tail_waste() {
        for c in 0..NUM_CLASSES {
            let size = class_size(c);
            let bytes = PAGE_SIZE << span_order(c);
            assert!(bytes >= 16 * 1024);
            let min_blocks = if size <= 4096 {
                8
            } else if size <= 262144 {
                4
            } else {
                2
            };
            assert!(blocks_per_span(c) >= min_blocks, "class {c}");
            let tail = bytes - blocks_per_span(c) * size;
            if span_order(c) < MAX_SPAN_ORDER {
                assert!(tail * 16 <= bytes, "class {c} tail waste {tail} of {bytes}");
            } else {
                // At the largest order the tail may be larger (address space only: a tail
                // is never carved, so never touched).
                assert!(tail * 4 <= bytes, "class {c} tail waste {tail} of {bytes}");
            }
            let max_order = if size <= SMALL_CLASSES_MAX { 6 } else { 9 };
            assert!(span_order(c) <= max_order, "class {c} span too large");
        }
        assert_eq!(class_size(39), SMALL_CLASSES_MAX);
    }

    #[test]
    fn aligned_classes() {
        assert_eq!(class_of_aligned(1, 64).map(class_size), Some(64));
        assert_eq!(class_of_aligned(100, 256).map(class_size), Some(256));
        assert_eq!(class_of_aligned(1000, 512).map(class_size), Some(1024));
        assert_eq!(class_of_aligned(5000, 4096).map(class_size), Some(8192));
        assert_eq!(class_of_aligned(5000, 8192), None);
        for align in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for size in [1, 15, 17, 100, 1000, 3000, 20000] {
                let c = class_of_aligned(size, align).unwrap();
                assert_eq!(class_size(c) % align, 0);
                assert!(class_size(c) >= size);
            }
        }
    }
}
