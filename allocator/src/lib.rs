//! rampart (skeleton: forwards to the system allocator until the core lands).
use core::alloc::{GlobalAlloc, Layout};
/// The allocator.
pub struct Rampart;
// SAFETY: forwards to System.
unsafe impl GlobalAlloc for Rampart {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}
