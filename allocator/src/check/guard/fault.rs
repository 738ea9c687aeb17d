//! The fault callback of the guard modes and the reports of the guard pool: a fault in the
//! pool is classified against the slots around it (overflow, underflow, use after free) and
//! reported with the stacks of the access, the allocation and the free; errors found on a
//! call (double and invalid frees of guarded blocks) likewise.

use super::*;

/// The fault callback of the guard modes (see the module's doc): a fault in the pool is
/// reported (and is the process's end); any other is not ours.
pub(super) fn on_fault(f: &os::Fault) -> bool {
    if crate::check::zero::on_fault(f) {
        return true;
    }
    let base = BASE.load(Ordering::Acquire);
    let len = LEN.load(Ordering::Relaxed);
    if f.addr.wrapping_sub(base) >= len {
        return false;
    }
    let page_slot = PAGE_SLOT.load(Ordering::Relaxed) as *const u32;
    let slots = SLOTS.load(Ordering::Relaxed) as *const Slot;
    match classify_fault(f.addr, base, len, page_slot, slots) {
        Some((kind, slot)) => report_access(kind, f.write, f.addr, slot, f.pc, None),
        None => {
            Report::new(ErrorKind::WildAccess)
                .text(report::access(f.write))
                .at(f.addr)
                .text(", in rampart's guard pool but in no block")
                .emit();
        }
    }
    true
}

/// The kind of a fault at `addr` in the pool and the block it concerns: a fault in freed
/// data pages is a use after free; one in a guard page is an overflow of the block before it,
/// or an underflow of the block after it if that one's start is nearer.
fn classify_fault(
    addr: usize,
    base: usize,
    len: usize,
    page_slot: *const u32,
    slots: *const Slot,
) -> Option<(ErrorKind, &'static Slot)> {
    // SAFETY: indices from the table; records are never unmapped.
    let at = |a: usize| slot_index(base, len, page_slot, a).map(|i| unsafe { &*slots.add(i) });
    let before = at(addr);
    if let Some(s) = before {
        if addr < s.data_end() {
            // In the data pages: freed ones, or the guarded pages before a live block.
            let kind = if s.state == SlotState::Live && addr < s.ptr {
                ErrorKind::HeapBufferUnderflow
            } else {
                ErrorKind::UseAfterFree
            };
            return Some((kind, s));
        }
    }
    // In a guard page (or the pool's first page): which neighbour's edge is nearer?
    let next_page = (addr | (PAGE_SIZE - 1)) + 1;
    let after = at(next_page).filter(|n| n.data == next_page && n.state == SlotState::Live);
    let past_end = before.map(|s| addr - (s.ptr + s.size).min(addr));
    match (before, after) {
        (_, Some(n)) if past_end.is_none_or(|d| n.ptr - addr <= d) => {
            Some((ErrorKind::HeapBufferUnderflow, n))
        }
        (Some(s), _) if s.state != SlotState::Live => Some((ErrorKind::UseAfterFree, s)),
        (Some(s), _) => Some((ErrorKind::HeapBufferOverflow, s)),
        _ => None,
    }
}

/// Prints an access report: the first line (kind, read or write, address, offset from the
/// block, its size) and the stacks of the access (`pc`), the allocation and the free.
pub(super) fn report_access(
    kind: ErrorKind,
    write: Option<bool>,
    addr: usize,
    slot: &Slot,
    pc: Option<usize>,
    found: Option<&str>,
) {
    let mut r = Report::new(kind);
    r.text(report::access(write))
        .at(addr)
        .in_block(addr, slot.ptr, Some(slot.size));
    if let Some(when) = found {
        r.text(" (found when the block was ").text(when).text(")");
    }
    r.emit();
    report::print_access_stack(pc);
    print_slot_stacks(slot);
}

/// Prints the allocation and (if freed) the free stacks of a slot; nothing for a slot that
/// recorded none (the hardened mode's large blocks).
fn print_slot_stacks(slot: &Slot) {
    if slot.alloc_frames_len == 0 {
        return;
    }
    report::print_stack(
        &["allocated by"],
        slot.alloc_tid,
        &slot.alloc_frames[..slot.alloc_frames_len as usize],
    );
    if slot.state != SlotState::Live {
        report::print_stack(
            &["freed by"],
            slot.free_tid,
            &slot.free_frames[..slot.free_frames_len as usize],
        );
    }
}

/// Reports an error found on a call with a guarded block (`double-free`, `invalid-free`)
/// and aborts.
pub(super) fn report_slot_error(
    kind: ErrorKind,
    call: &str,
    why: &str,
    p: usize,
    slot: &Slot,
) -> ! {
    Report::new(kind)
        .text(call)
        .text(" ")
        .text(why)
        .at(p)
        .in_block(p, slot.ptr, Some(slot.size))
        .emit();
    report::print_call_stack(call);
    print_slot_stacks(slot);
    os::abort()
}

/// Reports a pointer into the pool that belongs to no slot, and aborts.
pub(super) fn report_wild(call: &str, p: usize) -> ! {
    report::on_call(
        ErrorKind::InvalidFree,
        call,
        "of a pointer rampart did not allocate",
        p,
    )
}
