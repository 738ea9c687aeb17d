//! Small leaf helpers used by every layer: bit arithmetic, the allocator's own lock, and
//! allocation-free error reports.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::os;

/// Rounds `x` up to a multiple of `align` (a power of two). The caller rules out overflow.
#[inline(always)]
pub const fn align_up(x: usize, align: usize) -> usize {
    (x + align - 1) & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
#[inline(always)]
pub const fn checked_align_up(x: usize, align: usize) -> Option<usize> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// The base-2 logarithm of the smallest power of two `>= x` (`x >= 1`).
#[inline(always)]
pub const fn log2_ceil(x: usize) -> u32 {
    if x <= 1 {
        0
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// The next number of a splitmix64 generator over the shared counter `state` (Steele,
/// Lea and Flood): one relaxed add and a few multiplies, lock-free, good enough for
/// sampling intervals (not for secrets).
pub fn splitmix64(state: &core::sync::atomic::AtomicU64) -> u64 {
    let mut z = state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The next number of Marsaglia's xorshift64 generator over `state` (a zero state is
/// taken as 1): cheap draws for a thread's own shuffles, unpredictable to a program that
/// never sees the state (seeded from a heap's secret key), not for secrets themselves.
pub fn xorshift64(state: &mut u64) -> u64 {
    let mut x = (*state).max(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// A mutual-exclusion lock that never allocates: a spin phase, then `futex` sleeps
/// (Drepper's three-state mutex: 0 free, 1 locked, 2 locked with waiters).
///
/// parking_lot cannot be used on a malloc path: its contended path allocates its parking
/// table and so recurses into malloc (docs/architecture.md).
pub struct FutexLock<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time.
unsafe impl<T: Send> Sync for FutexLock<T> {}
// SAFETY: moving the lock moves the value; no thread-affine state.
unsafe impl<T: Send> Send for FutexLock<T> {}

impl<T> FutexLock<T> {
    /// A new unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            state: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, sleeping while another thread holds it.
    #[inline]
    pub fn lock(&self) -> FutexGuard<'_, T> {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        FutexGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        for _ in 0..100 {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == 0
                && self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            os::futex_wait(&self.state, 2);
        }
    }

    /// Releases the lock without a guard: used by the `fork` handlers, which take locks in
    /// the parent's prepare step and release them in a different function.
    ///
    /// # Safety
    /// The calling thread (or its forked child) must hold the lock through a guard that was
    /// forgotten with `core::mem::forget`.
    pub unsafe fn force_unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            os::futex_wake_one(&self.state);
        }
    }

    /// Resets the lock to unlocked in a child after `fork`, whatever the parent's state.
    ///
    /// # Safety
    /// Only the single thread of a freshly forked child may call this.
    pub unsafe fn reset_after_fork(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}

/// Access to the value of a held [`FutexLock`]; releases it when dropped.
pub struct FutexGuard<'a, T> {
    lock: &'a FutexLock<T>,
}

impl<T> Deref for FutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for FutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, so no other reference exists.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for FutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.lock.state.swap(0, Ordering::Release) == 2 {
            os::futex_wake_one(&self.lock.state);
        }
    }
}

/// A fixed buffer for composing one report line without allocating.
pub struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 1024],
            len: 0,
        }
    }

    /// Appends text (truncated at the buffer's end).
    pub fn str(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }

    /// Appends a decimal number.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // ASCII digits are valid UTF-8.
        self.str(core::str::from_utf8(&digits[i..]).unwrap_or("?"))
    }

    /// Appends a hexadecimal number with a `0x` prefix.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut v = v;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.str("0x");
        self.str(core::str::from_utf8(&digits[i..]).unwrap_or("?"))
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the line (plus a newline) to stderr.
    pub fn emit(&mut self) {
        self.str("\n");
        os::write_stderr(self.as_bytes());
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

/// The index of the first byte of `bytes` that is not `want`, or `None`: 32 bytes at a time
/// (the redzone and guard-slack checks scan up to a page per call).
pub fn first_not(bytes: &[u8], want: u8) -> Option<usize> {
    let pattern = u64::from_ne_bytes([want; 8]);
    let base = bytes.as_ptr();
    // SAFETY: `i + 8 <= bytes.len()` at every call below, so the 8 bytes lie in `bytes`.
    let word = |i: usize| unsafe { (base.add(i) as *const u64).read_unaligned() } ^ pattern;
    // 32 bytes a step, the four words' differences or-ed together: one branch a step (the
    // checks of the hardened and redzone modes scan every freed block).
    let mut at = 0;
    while at + 32 <= bytes.len() {
        if word(at) | word(at + 8) | word(at + 16) | word(at + 24) != 0 {
            break;
        }
        at += 32;
    }
    bytes[at..].iter().position(|&b| b != want).map(|i| at + i)
}

/// The index of the last byte of `bytes` that is not `want`, or `None` (as [`first_not`],
/// from the end).
pub fn last_not(bytes: &[u8], want: u8) -> Option<usize> {
    let pattern = u64::from_ne_bytes([want; 8]);
    let mut chunks = bytes.rchunks_exact(8);
    let mut end = bytes.len();
    for c in chunks.by_ref() {
        let word = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if word != pattern {
            return c.iter().rposition(|&b| b != want).map(|i| end - 8 + i);
        }
        end -= 8;
    }
    chunks.remainder().iter().rposition(|&b| b != want)
}

/// Checks one invariant of a `validate` function (they run in tests and, in debug builds, at
/// the layers' boundaries): when `$cond` is false, reports `$what` (with an address, if given)
/// through [`fatal`] and aborts. Never a panic: that could neither unwind out of the
/// allocator nor print without allocating, with the allocator's locks held.
macro_rules! invariant {
    ($cond:expr, $what:literal) => {
        $crate::util::invariant!($cond, $what, 0)
    };
    ($cond:expr, $what:literal, $addr:expr) => {
        if !$cond {
            $crate::util::fatal("invariant-broken", $what, $addr as usize)
        }
    };
}
pub(crate) use invariant;

/// Reports an impossible internal state or a detected heap corruption and aborts.
#[cold]
#[inline(never)]
pub fn fatal(kind: &str, what: &str, addr: usize) -> ! {
    let mut line = Line::new();
    line.str("rampart: ")
        .str(kind)
        .str(": ")
        .str(what)
        .str(" at ")
        .hex(addr as u64);
    line.emit();
    os::abort()
}

/// The natural logarithm of a positive, finite `x` (the heap profile's exponential
/// intervals). Ours rather than libm's: calling `f64::ln` made librampart depend on libm,
/// whose mapping costs every process that preloads it some 300 KiB of RSS. `x = m * 2^e`
/// with `m` in `[sqrt(1/2), sqrt(2))`, and `ln(m) = 2 atanh(s)`, `s = (m - 1) / (m + 1)`,
/// `|s| < 0.172`, summed to `s^19` (relative error below 1e-15, checked by a test).
pub fn ln(x: f64) -> f64 {
    const LN2: f64 = core::f64::consts::LN_2;
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return f64::NAN;
    }
    let mut bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64;
    if e == 0 {
        // Subnormal: scale into the normal range first.
        bits = (x * (1u64 << 54) as f64).to_bits();
        e = ((bits >> 52) & 0x7ff) as i64 - 54;
    }
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let mut e = e - 1023;
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 20.0 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    2.0 * sum + e as f64 * LN2
}

/// `e^x - 1` for `x <= 0` (the heap profile's sampling probability, `1 - e^(-w/rate)`), ours
/// for the reason [`ln`] is: a series where `|x| < 0.5` (no cancellation), else `2^k e^r - 1`
/// with `|r| <= ln(2) / 2`. Positive `x` is outside its use and gives NaN.
pub fn exp_m1(x: f64) -> f64 {
    const LN2: f64 = core::f64::consts::LN_2;
    if x.is_nan() || x > 0.0 {
        return f64::NAN;
    }
    if x < -40.0 {
        // e^x < 5e-18: below half an ulp of 1, so e^x - 1 rounds to -1.
        return -1.0;
    }
    let series = |r: f64| {
        // r + r^2/2! + ... + r^18/18!: the terms fall below 1e-17 of the sum for |r| < 0.5.
        let mut term = r;
        let mut sum = r;
        let mut k = 2.0;
        while k < 19.0 {
            term *= r / k;
            sum += term;
            k += 1.0;
        }
        sum
    };
    if x > -0.5 {
        return series(x);
    }
    let k = (x / LN2 - 0.5) as i64; // rounds toward the nearest (x < 0); k >= -58
    let r = x - k as f64 * LN2;
    let scale = f64::from_bits(((k + 1023) as u64) << 52); // 2^k, a normal float
    (series(r) + 1.0) * scale - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_m1_match_libm() {
        let mut x = 1e-300f64;
        while x < 1e300 {
            for f in [1.0, 1.3, 1.41, 1.42, 1.7, 1.999] {
                let v = x * f;
                let (ours, want) = (ln(v), v.ln());
                assert!(
                    (ours - want).abs() <= 4e-16 * want.abs().max(1.0),
                    "ln({v}) = {ours}, libm {want}"
                );
            }
            x *= 7.3;
        }
        assert_eq!(ln(1.0), 0.0);
        assert!(ln(0.0).is_nan() && ln(-1.0).is_nan() && ln(f64::INFINITY).is_nan());
        let mut x = -1e-12f64;
        while x > -800.0 {
            for f in [1.0, 1.25, 1.5, 1.9] {
                let v = x * f;
                let (ours, want) = (exp_m1(v), v.exp_m1());
                assert!(
                    (ours - want).abs() <= 1e-15 * want.abs() + 1e-300,
                    "exp_m1({v}) = {ours}, libm {want}"
                );
            }
            x *= 1.7;
        }
        assert_eq!(exp_m1(0.0), 0.0);
        assert!(exp_m1(1.0).is_nan());
    }

    #[test]
    fn rounding() {
        assert_eq!(align_up(0, 16), 0);
        assert_eq!(align_up(17, 16), 32);
        assert_eq!(checked_align_up(usize::MAX, 16), None);
        assert_eq!(log2_ceil(1), 0);
        assert_eq!(log2_ceil(2), 1);
        assert_eq!(log2_ceil(3), 2);
        assert_eq!(log2_ceil(4096), 12);
        assert_eq!(log2_ceil(4097), 13);
    }

    #[test]
    fn pattern_scans_find_the_odd_byte() {
        for len in 0..100 {
            let clean = vec![0xabu8; len];
            assert_eq!(first_not(&clean, 0xab), None);
            assert_eq!(last_not(&clean, 0xab), None);
            for bad in 0..len {
                let mut v = clean.clone();
                v[bad] = 0;
                assert_eq!(first_not(&v, 0xab), Some(bad), "len {len} bad {bad}");
                assert_eq!(last_not(&v, 0xab), Some(bad), "len {len} bad {bad}");
                if bad + 3 < len {
                    v[bad + 3] = 1;
                    assert_eq!(first_not(&v, 0xab), Some(bad));
                    assert_eq!(last_not(&v, 0xab), Some(bad + 3));
                }
            }
        }
    }

    #[test]
    fn line_formats_numbers() {
        let mut l = Line::new();
        l.str("a=")
            .dec(0)
            .str(" b=")
            .dec(1234567890123)
            .str(" c=")
            .hex(0xdead_beef);
        assert_eq!(l.as_bytes(), b"a=0 b=1234567890123 c=0xdeadbeef");
    }

    #[test]
    fn lock_excludes() {
        use std::sync::Arc;
        let lock = Arc::new(FutexLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 80_000);
    }
}
