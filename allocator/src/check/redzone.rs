//! Redzones (`RAMPART_REDZONE=N`): canary bytes after every small block, and a pattern in
//! freed blocks.
//!
//! Guards against overflows that stay inside the heap (they land in the canary) and writes
//! after free (they spoil the pattern), without a page per block. Costs N bytes and a
//! trailer word per block (blocks move to larger size classes), and every allocation and
//! free take the slow paths, which write and check the bytes.
//!
//! A block of class size `B` holding a request of `size` bytes:
//!
//! ```text
//! [0, size)            the caller's bytes
//! [size, B - 8)        canary, at least N bytes: first byte 0 (a string overflow stops
//!                      there), then CANARY
//! [B - 8, B)           trailer: size | check << 32, check = hash(address, size)
//! ```
//!
//! A freed block: word 0 is the free-list link, `[8, B - 8)` FILL, and the last word a mark
//! `address ^ size << 47 ^ FREED` (so a freed block is recognised, with the size it had, even
//! if the write after free hit its first bytes). The canary is checked on free, on `realloc`
//! and at exit (`check_all`); the fill when the block is handed out again (a freed block's
//! first word is the allocator's, so a write there is not seen, nor one that spoils the mark). Requests that do not fit a size class
//! with their redzone are served as page runs (no redzone). A corrupted canary or fill is
//! reported (`redzone-overwritten`, `use-after-free`) and the process aborts.
//!
//! Spans holding such blocks are marked through their owner word (bit 0, see
//! `heap::owner_word`), so the free fast path leaves them to the slow path.

use core::ptr::{self, NonNull};

use super::report::{self, ErrorKind, Report};
use crate::size_class::{class_of_aligned, class_size};

/// Bytes of the trailer at the end of every block.
const TRAILER: usize = 8;
/// The canary's bytes after its first (zero) byte.
const CANARY: u8 = 0xca;
/// A freed block's fill.
const FILL: u8 = 0xdf;
/// The last word of a freed block is this xor its address xor its size shifted left by 47.
const FREED: usize = 0x0000_74ee_d0dd_b10c;
/// Bits of a user-space address (x86-64).
const ADDR_BITS: u32 = 47;

/// The mark of a freed block at `p` that held `size` bytes.
fn freed_mark(p: usize, size: usize) -> usize {
    p ^ (size << ADDR_BITS) ^ FREED
}

/// The size a freed block held, if its last word is the mark of a freed block.
///
/// # Safety
/// `p` is a block of `bsize` bytes (readable).
unsafe fn freed_size(p: usize, bsize: usize) -> Option<usize> {
    // SAFETY: `p` is a readable block of `bsize` bytes (freed_size's contract), at least 16
    // (the smallest class): its last word is inside it, and 8-aligned (blocks start and
    // class sizes are multiples of 16).
    let w = unsafe { ((p + bsize - TRAILER) as *const usize).read_volatile() };
    freed_word_size(w, p)
}

/// The size a freed block at `p` held, if `w` (its last word) is the mark of a freed block.
fn freed_word_size(w: usize, p: usize) -> Option<usize> {
    let w = w ^ FREED ^ p;
    (w & ((1 << ADDR_BITS) - 1) == 0).then_some(w >> ADDR_BITS)
}

/// The size a live block at `p` of `bsize` bytes holds, if `trailer` (its last word) is
/// the trailer of one: a size that leaves room for the canary, and its check.
fn live_size(trailer: u64, p: usize, bsize: usize) -> Option<usize> {
    let size = (trailer & 0xffff_ffff) as usize;
    (size + 1 + TRAILER <= bsize && trailer >> 32 == check_of(p, size)).then_some(size)
}

/// The check half of a trailer.
fn check_of(p: usize, size: usize) -> u64 {
    let mut z = (p ^ size.rotate_left(40)) as u64 ^ 0x2545_f491_4f6c_dd1d;
    z = (z ^ (z >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (z ^ (z >> 32)) & 0xffff_ffff
}

/// The size class of a block holding `size` bytes aligned to `align` with its redzone, or
/// `None` when no class holds it (the caller serves it as a page run, without a redzone).
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    let need = size.checked_add(crate::config::redzone().max(1) + TRAILER)?;
    if need > crate::size_class::SMALL_CLASSES_MAX {
        // Medium blocks get no redzone: filling and checking up to 1 MiB on every free and
        // reuse would touch every page of the block.
        return None;
    }
    class_of_aligned(need, align.max(crate::size_class::MIN_ALIGN))
}

/// Makes a block of `class` (from [`class_for`]) just taken from a span with redzones into a
/// redzoned block holding `size` bytes: checks the fill it kept since its last free, zeroes
/// the caller's bytes if `zero`, writes the canary and the trailer.
///
/// # Safety
/// `b` is a block of `class` just handed out to the caller by a heap whose spans carry
/// redzones, and `class == class_for(size, align)` for some `align`.
pub unsafe fn prepare(b: NonNull<u8>, class: usize, size: usize, zero: bool) {
    let p = b.as_ptr() as usize;
    let bsize = class_size(class);
    // SAFETY: `b` is a whole block of `bsize` bytes just handed out to the caller
    // (prepare's contract), off a free list or freshly carved: readable, as check_fill asks.
    unsafe { check_fill(p, bsize, if zero { "calloc" } else { "malloc" }) };
    // The first word held the block's free-list link (encoded): cleared, so a program that
    // reads a fresh block learns nothing of the heap from it.
    // SAFETY: the block is the caller's, 16 bytes at least.
    unsafe { (p as *mut usize).write(0) };
    // SAFETY: the block of `bsize` bytes at `p` is the caller's, and class_for's class
    // holds `size + 1 + TRAILER` bytes at least (prepare's contract): arm's contract. Armed
    // before any byte of the fill changes, so the exit check of another thread never sees a
    // freed mark over a spoiled fill.
    unsafe { arm(p, size, bsize) };
    if zero {
        // SAFETY: the caller's block holds `size` bytes and more: its class comes from
        // class_for, which adds the redzone and the trailer (prepare's contract).
        unsafe { ptr::write_bytes(b.as_ptr(), 0, size) };
    }
}

/// Writes the canary and the trailer of a block of `bsize` bytes holding `size`.
///
/// # Safety
/// `p` is a block of `bsize` bytes owned by the caller, `size + 1 + TRAILER <= bsize`.
unsafe fn arm(p: usize, size: usize, bsize: usize) {
    let canary_end = p + bsize - TRAILER;
    // The trailer is cleared first and set last: meanwhile the block is neither freed nor
    // live to the exit check of another thread, which skips it (it would see a freed mark
    // over a fill the canary spoils, or a live trailer over a canary not yet written).
    // SAFETY: the last TRAILER bytes of the caller's block (arm's contract), 8-aligned.
    unsafe { (canary_end as *mut u64).write_volatile(0) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    // SAFETY: `size + 1 + TRAILER <= bsize` and the block of `bsize` bytes at `p` is the
    // caller's (arm's contract), so byte `size` is inside it.
    unsafe { *((p + size) as *mut u8) = 0 };
    // SAFETY: `[p + size + 1, canary_end)` lies inside the caller's block (arm's contract:
    // `size + 1 <= bsize - TRAILER`).
    unsafe { ptr::write_bytes((p + size + 1) as *mut u8, CANARY, canary_end - p - size - 1) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    // SAFETY: `[canary_end, p + bsize)` is the last TRAILER bytes of the caller's block,
    // 8-aligned (blocks and class sizes are multiples of 16).
    unsafe { (canary_end as *mut u64).write_volatile(size as u64 | check_of(p, size) << 32) };
}

/// The requested size of a live block with a redzone, after checking its canary (reports
/// and aborts on damage; a block that looks freed is reported as a double free, under the
/// name of `call`).
///
/// # Safety
/// `p` is the start of a carved block of `bsize` bytes in a marked span.
pub unsafe fn check_live(p: usize, bsize: usize, call: &str) -> usize {
    // SAFETY: `p` starts a carved block of `bsize` bytes (check_live's contract), at least
    // 16 (the smallest class): its last TRAILER bytes are inside it, readable.
    let trailer = unsafe { ((p + bsize - TRAILER) as *const u64).read_unaligned() };
    if let Some(size) = live_size(trailer, p, bsize) {
        // SAFETY: the live block's canary lies inside it (`size + 1 + TRAILER <= bsize`,
        // tested just above), readable (check_live's contract).
        if let Some(i) = unsafe { canary_damage(p, size, bsize) } {
            overwritten(p, size as u64, size + i, call);
        }
        return size;
    }
    // SAFETY: `p` is a readable block of `bsize` bytes (check_live's contract): what
    // freed_size asks.
    if unsafe { freed_size(p, bsize) }.is_some() {
        report::on_call(
            ErrorKind::DoubleFree,
            call,
            "of a block that is already free",
            p,
        );
    }
    // The trailer itself is damaged: the overflow ran to the block's end.
    overwritten(p, 0, bsize - TRAILER, call)
}

/// The offset into the canary of a live block at `p` (holding `size` bytes of a block of
/// `bsize`) of its first damaged byte, if any.
///
/// # Safety
/// `p` is a readable block of `bsize` bytes, `size + 1 + TRAILER <= bsize`.
unsafe fn canary_damage(p: usize, size: usize, bsize: usize) -> Option<usize> {
    // SAFETY: `[p + size, p + bsize - TRAILER)` lies inside the block (the contract).
    let canary =
        unsafe { core::slice::from_raw_parts((p + size) as *const u8, bsize - TRAILER - size) };
    if canary[0] != 0 {
        Some(0)
    } else {
        crate::util::first_not(&canary[1..], CANARY).map(|i| i + 1)
    }
}

/// Checks a block being freed by `call` (`free`, `operator delete`, …; named in reports) and
/// fills it with the freed pattern (after which its first word is free to link it).
/// Returns the size it held.
///
/// `has_prev`: the block is not its span's first, so the block before it is carved too and
/// its trailer (the bytes just before `p`) is checked: an underflow of `p` lands there.
///
/// # Safety
/// As for [`check_live`]; the block is being freed by the caller.
pub unsafe fn retire(p: usize, bsize: usize, claimed: usize, call: &str, has_prev: bool) -> usize {
    // SAFETY: `p` starts a carved block of `bsize` bytes in a marked span (retire's
    // contract, as for check_live).
    let size = unsafe { check_live(p, bsize, call) };
    // SAFETY: with `has_prev`, the carved block before `p` in its span is readable.
    if has_prev && !unsafe { trailer_intact(p - bsize, bsize) } {
        Report::new(ErrorKind::HeapBufferUnderflow)
            .text("write")
            .at(p - 1)
            .in_block(p - 1, p, Some(size))
            .text(" (found on free: the bytes before the block were overwritten)")
            .found_by(call);
    }
    // A redzoned block knows the size it was allocated with: a sized free must name it.
    if claimed != 0 && claimed != size {
        report::on_call(
            ErrorKind::InvalidFree,
            call,
            "with a size the block was not allocated with",
            p,
        );
    }
    // SAFETY: the block is the caller's and at least 16 bytes long. The trailer is cleared
    // first and the mark written last: meanwhile the exit check of another thread skips the
    // block, rather than see a live one whose canary the fill spoils, or a freed one whose
    // fill is not written yet (see `arm`).
    unsafe {
        let last = (p + bsize - TRAILER) as *mut usize;
        last.write_volatile(0);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        ptr::write_bytes((p + 8) as *mut u8, FILL, bsize - 8 - TRAILER);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        last.write_volatile(freed_mark(p, size));
    }
    size
}

/// Whether the last word of the carved block `p` of `bsize` bytes is one this module wrote:
/// a live block's trailer, a freed block's mark, or the zero of a block carved and never
/// used (see `slab::carve`).
///
/// # Safety
/// `p` is a carved block of `bsize` bytes in a marked span (readable).
unsafe fn trailer_intact(p: usize, bsize: usize) -> bool {
    // SAFETY: as the contract says; the last word lies inside the block.
    // One read, every test on it: the block's owner may be re-arming it meanwhile (a freed
    // mark becoming a live trailer), and two reads could see one state each.
    let trailer = unsafe { ((p + bsize - TRAILER) as *const u64).read_volatile() };
    trailer == 0
        || live_size(trailer, p, bsize).is_some()
        || freed_word_size(trailer as usize, p).is_some()
}

/// Checks that a retired block (freed, filled, then held in the hardened mode's quarantine)
/// still holds its fill as it leaves the quarantine: a write after free is reported then,
/// before the block can be reused.
///
/// # Safety
/// `p` is a retired block of `bsize` bytes in a marked span, not yet reused.
pub unsafe fn check_retired(p: usize, bsize: usize) {
    // SAFETY: as the contract says: readable, off any list yet.
    unsafe { check_fill(p, bsize, "free") };
}

/// Checks the fill of a block just handed out, if it was freed with one.
///
/// # Safety
/// `p` is a block of `bsize` bytes just taken off a free list.
unsafe fn check_fill(p: usize, bsize: usize, call: &str) {
    // SAFETY: `p` is a block of `bsize` bytes just taken off a free list (check_fill's
    // contract), readable: what freed_size asks.
    let Some(old) = (unsafe { freed_size(p, bsize) }) else {
        return;
    };
    // SAFETY: `[p + 8, p + bsize - TRAILER)` lies inside the block at `p`, readable
    // (check_fill's contract): `bsize` is at least 16, the smallest class.
    let fill = unsafe { core::slice::from_raw_parts((p + 8) as *const u8, bsize - 8 - TRAILER) };
    if let Some(i) = crate::util::first_not(fill, FILL) {
        // At exit another thread may have taken the block since its mark was read: it arms
        // the block (the mark goes) before writing into it, so a mark still there means the
        // write was a use after free.
        // SAFETY: as above.
        if call == report::AT_EXIT && unsafe { freed_size(p, bsize) } != Some(old) {
            return;
        }
        let at = p + 8 + i;
        Report::new(ErrorKind::UseAfterFree)
            .text("write")
            .at(at)
            .in_block(at, p, Some(old))
            .text(match call {
                "malloc" | "calloc" => " (found when the freed block was reused)",
                report::AT_EXIT => " (found at exit)",
                _ => " (found when the freed block left the quarantine)",
            })
            .found_by(call);
    }
}

/// Reports a canary (or trailer) overwritten at `offset` into the block at `p` of `size`
/// bytes (0 with a non-zero offset: unknown, its trailer was overwritten too), found by
/// `call`, and aborts.
#[cold]
fn overwritten(p: usize, size: u64, offset: usize, call: &str) -> ! {
    let known = !(size == 0 && offset != 0);
    let mut r = Report::new(ErrorKind::RedzoneOverwritten);
    r.text("byte")
        .at(p + offset)
        .in_block(p + offset, p, known.then_some(size as usize));
    if !known {
        r.text(" (its trailer was overwritten too)");
    }
    r.text(" (found on ").text(call).text(")").found_by(call)
}

/// Checks the canary of every live block with a redzone (at exit), blocks whose trailer is
/// intact, and the fill of every block marked freed (a write after free that no reuse
/// found), in the spans whose owner word `quiet` accepts: spans no running thread but the
/// caller can hand blocks out of. A span of another running thread is skipped: its blocks
/// may be freed and handed out again while they are read (a block freed and reallocated
/// with the same size between two reads would look damaged).
pub fn check_all(quiet: impl Fn(usize) -> bool) {
    let pages = crate::pages::PAGES.lock();
    for chunk in pages.chunk_views() {
        pages.for_each_run(chunk.base, |run| {
            if run.state != crate::pages::State::Slab || run.block_size < 16 || !quiet(run.owner) {
                return;
            }
            let start = chunk.base + run.index * crate::os::PAGE_SIZE;
            let bsize = run.block_size;
            // Carved blocks only: the others may hold an earlier slab's stale marks.
            let end = start
                + run
                    .carved_blocks
                    .min(run.npages * crate::os::PAGE_SIZE / bsize)
                    * bsize;
            let mut p = start;
            while p + bsize <= end {
                // SAFETY: slab memory is mapped and readable while the chunk lives (we hold
                // the page lock); reads of never-carved blocks see zeros or stale bytes.
                unsafe {
                    // Other threads may still free and allocate: the canary is checked
                    // against the trailer read here, and damage found is reported only if
                    // the trailer is still that value (else the block changed hands).
                    let trailer = ((p + bsize - TRAILER) as *const u64).read_volatile();
                    if let Some(size) = live_size(trailer, p, bsize) {
                        if canary_damage(p, size, bsize).is_some()
                            && ((p + bsize - TRAILER) as *const u64).read_volatile() == trailer
                        {
                            check_live(p, bsize, report::AT_EXIT);
                        }
                    } else {
                        check_fill(p, bsize, report::AT_EXIT);
                    }
                }
                p += bsize;
            }
        });
    }
}
