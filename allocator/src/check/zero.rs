//! Zero-size blocks of the hardened mode (`RAMPART_HARDEN`): `malloc(0)` returns a unique
//! pointer into a region that faults on any access, so reading or writing a block of no
//! bytes stops on the faulting instruction (elsewhere `malloc(0)` is a 16-byte block of the
//! smallest class, whose bytes can be used unseen).
//!
//! The region is one `PROT_NONE` reservation of [`REGION_BYTES`], cut into 16-byte slots
//! handed out once each, in address order (a slot is never reused, so a pointer to a freed
//! zero-size block stays recognisable). A bitmap beside it says which slots are live: a
//! second free, a `realloc` or a size query of a freed one is a double free. When every slot
//! has been handed out, `malloc(0)` falls back to a 16-byte block (and says so once).
//! Costs address space only: no page of the region is ever touched; the bitmap's pages are
//! touched as slots are used (one page per 512 Ki allocations).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::report::{self, ErrorKind, Report};
use crate::os;

/// Address space of the region: 64 Mi zero-size blocks.
const REGION_BYTES: usize = 1 << 30;
/// Bytes per slot (malloc's alignment).
const SLOT: usize = 16;
const SLOTS: usize = REGION_BYTES / SLOT;

/// The region's first byte (0 until made), the next slot's index, and the live bitmap.
static BASE: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The region's set-up: 0 not tried, 1 being made, 2 made, 3 refused. Made once, by the
/// first `malloc(0)`; a thread that finds it being made does not wait (no lock, so nothing
/// to leave held across `fork`): its `malloc(0)` is a 16-byte block.
static SETUP: AtomicU8 = AtomicU8::new(0);

/// The region and its bitmap, made on first use; `None` when the address space is refused
/// (or another thread is making it right now).
fn region() -> Option<(usize, *const AtomicU64)> {
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        return Some((base, LIVE.load(Ordering::Relaxed) as *const AtomicU64));
    }
    if SETUP
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    let made = os::map(SLOTS / 8).and_then(|bitmap| match os::reserve(REGION_BYTES) {
        Some(r) => Some((r.as_ptr() as usize, bitmap.as_ptr() as usize)),
        None => {
            // SAFETY: the bitmap was just mapped, and nobody else knows it.
            unsafe { os::unmap(bitmap.as_ptr(), SLOTS / 8) };
            None
        }
    });
    let Some((base, bitmap)) = made else {
        SETUP.store(3, Ordering::Relaxed);
        return None;
    };
    LIVE.store(bitmap, Ordering::Relaxed);
    BASE.store(base, Ordering::Release);
    SETUP.store(2, Ordering::Relaxed);
    Some((base, bitmap as *const AtomicU64))
}

/// A fresh zero-size block, or `None` when the region cannot be made or is used up (the
/// caller then serves the request as a 16-byte block).
pub fn alloc() -> Option<NonNull<u8>> {
    let (base, live) = region()?;
    if NEXT.load(Ordering::Relaxed) >= SLOTS {
        return None;
    }
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    if i >= SLOTS {
        if i == SLOTS {
            os::write_stderr(
                b"rampart: warning: 64 Mi zero-size blocks made; malloc(0) now returns 16-byte blocks\n",
            );
        }
        return None;
    }
    // SAFETY: the bitmap has a bit per slot, and `i < SLOTS`.
    unsafe { (*live.add(i / 64)).fetch_or(1 << (i % 64), Ordering::Relaxed) };
    NonNull::new((base + i * SLOT) as *mut u8)
}

/// Whether `p` lies in the region.
#[inline]
pub fn contains(p: usize) -> bool {
    let base = BASE.load(Ordering::Relaxed);
    base != 0 && p.wrapping_sub(base) < REGION_BYTES
}

/// The slot of `p` if it is the start of one that was handed out, with its bit.
fn slot_of(p: usize) -> Option<(&'static AtomicU64, u64)> {
    let (base, live) = region()?;
    let off = p.wrapping_sub(base);
    let i = off / SLOT;
    if off % SLOT != 0 || i >= NEXT.load(Ordering::Relaxed).min(SLOTS) {
        return None;
    }
    // SAFETY: `i < SLOTS`, and the bitmap is never unmapped.
    Some((unsafe { &*live.add(i / 64) }, 1 << (i % 64)))
}

/// Reports a pointer of the region that is not a live zero-size block, handed to `call`.
fn reject(p: usize, call: &str, freed: bool) -> ! {
    let (kind, why) = if freed {
        (ErrorKind::DoubleFree, "of a block that is already free")
    } else {
        (
            ErrorKind::InvalidFree,
            "of a pointer that is not the start of a block",
        )
    };
    let mut r = Report::new(kind);
    r.text(call).text(" ").text(why).at(p);
    r.in_block(p, p & !(SLOT - 1), Some(0));
    r.found_by(call)
}

/// Frees the zero-size block `p` (in the region); reports a double or invalid free.
/// `claimed` is a sized free's size (0, the only size such a block has, or none).
pub fn free(p: usize, claimed: usize, call: &str) {
    let Some((word, bit)) = slot_of(p) else {
        reject(p, call, false)
    };
    if claimed != 0 {
        report::on_call(
            ErrorKind::InvalidFree,
            call,
            "with a size the block was not allocated with",
            p,
        );
    }
    if word.fetch_and(!bit, Ordering::Relaxed) & bit == 0 {
        reject(p, call, true);
    }
}

/// Checks that `p` is a live zero-size block (for `realloc` and size queries, named by
/// `call`): its size, 0.
pub fn size_of_live(p: usize, call: &str) -> usize {
    match slot_of(p) {
        Some((word, bit)) if word.load(Ordering::Relaxed) & bit != 0 => 0,
        Some(_) => reject(p, call, true),
        None => reject(p, call, false),
    }
}

/// The report of a fault in the region (a read or write of a zero-size block): says whether
/// the address was one.
pub fn on_fault(f: &os::Fault) -> bool {
    if !contains(f.addr) {
        return false;
    }
    let block = f.addr & !(SLOT - 1);
    Report::new(ErrorKind::HeapBufferOverflow)
        .text(report::access(f.write))
        .at(f.addr)
        .in_block(f.addr, block, Some(0))
        .emit();
    report::print_access_stack(f.pc);
    true
}
