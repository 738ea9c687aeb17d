//! `rampart::Rampart` as a Rust `#[global_allocator]`.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use crate::api;

/// The rampart allocator, for `#[global_allocator]`:
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: rampart::Rampart = rampart::Rampart;
/// ```
///
/// It only replaces Rust's allocations: C code in the same process keeps glibc's malloc (use
/// `librampart.so` for that), and rampart then stays off the program break.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rampart;

// SAFETY: every method returns blocks of at least the layout's size and alignment, or null,
// and frees only what it returned (the api layer's contract).
unsafe impl GlobalAlloc for Rampart {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        api::alloc(layout.size(), layout.align()).map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // The page map gives the size class at the same cost as the layout would, and keeps
        // the checks of a free that does not match its allocation; the layout is used on
        // `realloc` to copy only the bytes in use.
        // SAFETY: GlobalAlloc's contract: `p` came from this allocator and is non-null. No
        // size is claimed (0); reports name `dealloc`.
        unsafe { api::free_sized(NonNull::new_unchecked(p), 0, api::MIN_ALIGN, "dealloc") }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        api::alloc_zeroed(layout.size(), layout.align()).map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `p` is a block this allocator returned, so non-null.
        let p = unsafe { NonNull::new_unchecked(p) };
        // SAFETY: GlobalAlloc's contract: `p` is a live block of `layout` from this allocator
        // (so aligned to `layout.align()`, usable size at least `layout.size()`).
        unsafe { api::realloc(p, Some(layout.size()), new_size, layout.align()) }
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}
