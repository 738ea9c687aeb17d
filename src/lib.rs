//! Shared helpers for the integration tests, benchmarks and examples.
//!
//! - [`XorShift64`]: a tiny deterministic RNG, so that every test and example runs the same
//!   sequence of operations on every run (seeds are fixed; only thread interleaving varies).
//! - A *block pattern*: the content a test writes into a block it owns, derived from a
//!   per-block `seed` and the byte's offset, so a check can tell a lost write, a block that
//!   moved by a few bytes, and a block swapped with another one apart. Byte `i` of every block
//!   with seed `s` is byte `i % 8` (little-endian) of [`pattern_word`]`(s, i / 8)`, whatever
//!   the block's length, so a prefix of a block (what `realloc` must keep) carries the same
//!   pattern as the whole block.
//! - [`first_nonzero`]: a zero check that runs at `memcmp` speed even in debug builds.
//! - [`RawBlock`]: an owned block taken straight from `rampart::Rampart` with an arbitrary
//!   layout, filled with its pattern, `Send`, freed on drop.
//!
//! Nothing here declares a `#[global_allocator]`: each test binary and example does that itself.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

/// Whether `addr` is a multiple of `align` (a power of two).
#[must_use]
pub const fn is_aligned(addr: usize, align: usize) -> bool {
    addr & (align - 1) == 0
}

/// `splitmix64`'s output function: a bijective mix of a 64-bit value.
#[must_use]
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64* — small, fast and deterministic; good enough to pick sizes and operations.
#[derive(Clone, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator whose sequence depends only on `seed` (any value, zero included).
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        // The state must never be zero; `| 1` keeps it odd.
        Self {
            state: splitmix64(seed) | 1,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`), by multiply-shift (no modulo bias worth speaking of).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "XorShift64::below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A value in `lo..=hi` (`lo <= hi`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi, "XorShift64::range({lo}, {hi})");
        let span = (hi - lo) as u64;
        match span.checked_add(1) {
            Some(n) => lo + self.below(n) as usize,
            None => self.next_u64() as usize,
        }
    }

    /// `true` with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Picks an index into a slice of length `len` (`len > 0`).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// Word `k` of the pattern of the block with seed `seed` (see the module docs).
#[inline]
#[must_use]
pub const fn pattern_word(seed: u64, k: usize) -> u64 {
    splitmix64(seed) ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Writes the pattern of `seed` over `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes (the bytes may be uninitialized; no
/// alignment is required).
pub unsafe fn fill_pattern_raw(ptr: *mut u8, len: usize, seed: u64) {
    let base = splitmix64(seed);
    let words = len / 8;
    for k in 0..words {
        let w = base ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        // SAFETY: `8 * k + 8 <= len`, inside the range the caller made writable; the write is
        // unaligned on purpose.
        unsafe { ptr.add(8 * k).cast::<u64>().write_unaligned(w.to_le()) };
    }
    let tail = pattern_word(seed, words).to_le_bytes();
    for (j, &b) in tail.iter().enumerate().take(len % 8) {
        // SAFETY: `8 * words + j < len`.
        unsafe { ptr.add(8 * words + j).write(b) };
    }
}

/// Writes the pattern of `seed` over `bytes`.
pub fn fill_pattern(bytes: &mut [u8], seed: u64) {
    // SAFETY: a `&mut [u8]` is valid for writes of its whole length.
    unsafe { fill_pattern_raw(bytes.as_mut_ptr(), bytes.len(), seed) }
}

/// Checks that `bytes` holds the pattern of `seed` (a prefix of it, when `bytes` is a prefix
/// of the block). Returns the offset of the first wrong byte.
pub fn check_pattern(bytes: &[u8], seed: u64) -> Result<(), usize> {
    let base = splitmix64(seed);
    let words = bytes.len() / 8;
    let ptr = bytes.as_ptr();
    for k in 0..words {
        let want = base ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        // SAFETY: `8 * k + 8 <= bytes.len()`: inside the slice, which is initialized; the read
        // is unaligned on purpose.
        let got = u64::from_le(unsafe { ptr.add(8 * k).cast::<u64>().read_unaligned() });
        if got != want {
            let first = ((got ^ want).trailing_zeros() / 8) as usize;
            return Err(8 * k + first);
        }
    }
    let tail = pattern_word(seed, words).to_le_bytes();
    for (j, &want) in tail.iter().enumerate().take(bytes.len() % 8) {
        if bytes[8 * words + j] != want {
            return Err(8 * words + j);
        }
    }
    Ok(())
}

/// [`check_pattern`] over `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for reads of `len` initialized bytes (for example a block this test
/// filled), not written by anyone else during the call.
pub unsafe fn check_pattern_raw(ptr: *const u8, len: usize, seed: u64) -> Result<(), usize> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller guarantees `len` readable, initialized, unaliased-by-writers bytes.
    check_pattern(unsafe { core::slice::from_raw_parts(ptr, len) }, seed)
}

/// Offset of the first non-zero byte of `bytes`, if any. Compares 4 KiB at a time against a
/// zero page (a `memcmp`), so it is fast even without optimization.
#[must_use]
pub fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    static ZEROS: [u8; 4096] = [0; 4096];
    for (n, chunk) in bytes.chunks(ZEROS.len()).enumerate() {
        if chunk != &ZEROS[..chunk.len()] {
            let j = chunk.iter().position(|&b| b != 0).unwrap_or(0);
            return Some(n * ZEROS.len() + j);
        }
    }
    None
}

/// [`first_nonzero`] over `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for reads of `len` initialized bytes (memory from `alloc_zeroed` is).
#[must_use]
pub unsafe fn first_nonzero_raw(ptr: *const u8, len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable, initialized bytes.
    first_nonzero(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// A block taken straight from `rampart::Rampart` (not through the global allocator, so any
/// alignment can be asked for), filled with the pattern of its `seed`, freed on drop.
#[derive(Debug)]
pub struct RawBlock {
    ptr: NonNull<u8>,
    layout: Layout,
    seed: u64,
}

// SAFETY: a `RawBlock` owns its memory exclusively (like a `Box<[u8]>`) and rampart's
// `dealloc` may be called from any thread, so moving it to another thread is sound.
unsafe impl Send for RawBlock {}

impl RawBlock {
    /// Allocates `layout` (its size must be non-zero) and fills it with the pattern of `seed`.
    ///
    /// # Panics
    /// If rampart returns null or a pointer not aligned to `layout.align()`.
    #[must_use]
    pub fn new(layout: Layout, seed: u64) -> Self {
        assert!(layout.size() > 0, "RawBlock::new: zero-size layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { rampart::Rampart.alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            panic!("rampart returned null for {layout:?}");
        };
        assert!(
            is_aligned(ptr.as_ptr() as usize, layout.align()),
            "rampart returned {ptr:p}, misaligned for {layout:?}"
        );
        // SAFETY: a fresh block of `layout.size()` bytes, owned by us.
        unsafe { fill_pattern_raw(ptr.as_ptr(), layout.size(), seed) };
        Self { ptr, layout, seed }
    }

    /// The block's layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The block's address.
    #[must_use]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The seed its pattern was made from.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The block's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: we own `layout.size()` initialized bytes at `ptr` (filled in `new`), and
        // `&self` keeps anyone from writing them while the slice lives.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// Checks the block still holds its pattern; on failure, the first wrong offset.
    pub fn check(&self) -> Result<(), usize> {
        check_pattern(self.bytes(), self.seed)
    }
}

impl Drop for RawBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Rampart.alloc(self.layout)` and is freed exactly once.
        unsafe { rampart::Rampart.dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_prefix_is_consistent_and_detects_damage() {
        let mut long = vec![0u8; 1000];
        fill_pattern(&mut long, 7);
        for len in 0..long.len() {
            let mut short = vec![0u8; len];
            fill_pattern(&mut short, 7);
            assert_eq!(short[..], long[..len]);
        }
        assert_eq!(check_pattern(&long, 7), Ok(()));
        assert!(check_pattern(&long, 8).is_err());
        long[333] ^= 1;
        assert_eq!(check_pattern(&long, 7), Err(333));
        // A copy shifted by one byte does not pass as the original.
        let shifted = long[1..].to_vec();
        assert!(check_pattern(&shifted, 7).is_err());
    }

    #[test]
    fn zero_check_finds_the_byte() {
        let mut v = vec![0u8; 10_000];
        assert_eq!(first_nonzero(&v), None);
        v[9_999] = 1;
        assert_eq!(first_nonzero(&v), Some(9_999));
        v[4_096] = 1;
        assert_eq!(first_nonzero(&v), Some(4_096));
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (XorShift64::new(1), XorShift64::new(1));
        for _ in 0..1000 {
            let x = a.range(3, 9);
            assert_eq!(x, b.range(3, 9));
            assert!((3..=9).contains(&x));
        }
        assert_ne!(XorShift64::new(1).next_u64(), XorShift64::new(2).next_u64());
    }
}
