//! `librampart.so` / `librampart.a`: rampart as a C or C++ program's malloc.
//!
//! Preload it (`LD_PRELOAD=…/librampart.so program`, or the `rampart` launcher) or link the
//! static library, and every allocation of the process goes through rampart: the whole glibc
//! malloc family, its `__libc_*` aliases, the C23 sized frees, the glibc introspection calls,
//! and the C++ `operator new` / `operator delete` family. The direct API of
//! `include/rampart.h` (`rampart_malloc`, `rampart_stats_print`, …) is exported too.
//!
//! C semantics live here and only here: `errno`, `realloc(p, 0)`, overflow checks, the
//! alignment rules of each call. The core (`rampart::api`) works in `Option<NonNull<u8>>`.
//! The C symbols exist only in this crate, never in the `rampart` rlib, so a Rust program
//! that uses rampart as its global allocator keeps glibc's malloc for its C parts.

#![allow(non_snake_case)] // the C++ entry points are named by their mangled names

mod cxx;
mod info;

use core::ffi::{c_int, c_void};
use core::ptr::{self, NonNull};

use rampart::api::{self, MIN_ALIGN};
use rampart::internals::{set_errno, PAGE_SIZE};

/// `malloc`'s result for a core result: the pointer, or null with `errno = ENOMEM`.
#[inline(always)]
fn or_enomem(p: Option<NonNull<u8>>) -> *mut c_void {
    match p {
        Some(p) => p.as_ptr().cast(),
        None => enomem(),
    }
}

#[cold]
fn enomem() -> *mut c_void {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

#[cold]
fn einval() -> *mut c_void {
    set_errno(libc::EINVAL);
    ptr::null_mut()
}

/// `malloc(3)`: `size` bytes, 16-byte aligned; `malloc(0)` is a unique 16-byte block.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = api::alloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size)
}

/// Everything `malloc` cannot do from the thread's free list (without trying the fast path
/// again); a tail call, so the fast path needs no stack frame.
#[inline(never)]
fn malloc_slow(size: usize) -> *mut c_void {
    or_enomem(api::alloc_slow(size, MIN_ALIGN, false))
}

/// `free(3)`. `free(NULL)` does nothing; `errno` is preserved.
///
/// # Safety
/// `p` is null or a live block of this allocator; other pointers are reported and abort.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if let Some(p) = NonNull::new(p.cast::<u8>()) {
        // SAFETY: `p` is a live block of ours (free's contract; null was ruled out above).
        unsafe { api::free(p) }
    }
}

/// `calloc(3)`: zeroed memory for `n` elements of `size` bytes; `ENOMEM` on overflow.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => or_enomem(api::alloc_zeroed(total, MIN_ALIGN)),
        None => enomem(),
    }
}

/// `realloc(3)` as glibc does it: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees
/// `p` and returns NULL; on failure the old block is intact and `errno = ENOMEM`.
///
/// # Safety
/// `p` is null or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    let Some(old) = NonNull::new(p.cast::<u8>()) else {
        return malloc(size);
    };
    if size == 0 {
        // SAFETY: `old` is a live block of ours (realloc's contract), given up here; reports
        // name `realloc`.
        unsafe { api::free_sized(old, 0, MIN_ALIGN, "realloc") };
        return ptr::null_mut();
    }
    // SAFETY: per the contract; the block has the default alignment.
    or_enomem(unsafe { api::realloc(old, None, size, MIN_ALIGN) })
}

/// `reallocarray(3)`: `realloc(p, n * size)` with `ENOMEM` on overflow (the block is kept).
///
/// # Safety
/// As for [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: realloc's contract is this function's, which the caller keeps.
        Some(total) => unsafe { realloc(p, total) },
        None => enomem(),
    }
}

/// `posix_memalign(3)`: `EINVAL` (and `*memptr` untouched) unless `align` is a power of two
/// multiple of `sizeof(void *)`; `ENOMEM` when memory is exhausted. `errno` is not changed.
///
/// # Safety
/// `memptr` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<usize>()) {
        return libc::EINVAL;
    }
    match api::alloc(size, align.max(MIN_ALIGN)) {
        Some(p) => {
            // SAFETY: `memptr` points to a writable `void *` (posix_memalign's contract).
            unsafe { *memptr = p.as_ptr().cast() };
            0
        }
        None => libc::ENOMEM,
    }
}

/// `aligned_alloc(3)`: `EINVAL` unless `align` is a power of two (as glibc 2.38 and C23).
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return einval();
    }
    or_enomem(api::alloc(size, align.max(MIN_ALIGN)))
}

/// `memalign(3)` as glibc does it: an alignment that is not a power of two is rounded up to
/// one; an impossible one is `EINVAL`.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if align > usize::MAX / 2 + 1 {
        return einval();
    }
    or_enomem(api::alloc(size, align.next_power_of_two().max(MIN_ALIGN)))
}

/// `valloc(3)`: page-aligned memory.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    or_enomem(api::alloc(size, PAGE_SIZE))
}

/// `pvalloc(3)`: page-aligned memory, the size rounded up to whole pages (`pvalloc(0)` is one
/// page).
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match rampart::internals::checked_align_up(size.max(1), PAGE_SIZE) {
        Some(bytes) => or_enomem(api::alloc(bytes, PAGE_SIZE)),
        None => enomem(),
    }
}

/// `malloc_usable_size(3)`: bytes usable in the block (at least what was asked); 0 for NULL.
///
/// # Safety
/// `p` is null or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    match NonNull::new(p.cast::<u8>()) {
        // SAFETY: `p` is a live block of ours (the caller's contract; null ruled out).
        Some(p) => unsafe { api::usable_size(p) },
        None => 0,
    }
}

/// `cfree(3)`: an old name of `free`.
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: free's contract, which the caller keeps.
    unsafe { free(p) }
}

/// C23 `free_sized`: frees a block of `size` bytes (rejects a size the block was not
/// allocated with: see `heap::free_sized` for the check).
///
/// # Safety
/// As for [`free`]; `size` is the size the block was allocated with.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, size: usize) {
    // SAFETY: free_checked's contract is free's, which the caller keeps.
    unsafe { free_checked(p, size, MIN_ALIGN, "free_sized") }
}

/// C23 `free_aligned_sized`: frees a block allocated with `align` (a power of two) and `size`
/// (rejects a size or alignment the block was not allocated with).
///
/// # Safety
/// As for [`free`]; `align` and `size` are those the block was allocated with.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, align: usize, size: usize) {
    // SAFETY: free_checked's contract is free's, which the caller keeps.
    unsafe { free_checked(p, size, align, "free_aligned_sized") }
}

/// Frees `p` after checking the size and alignment its caller claims for it; reports name
/// `call`.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
unsafe fn free_checked(p: *mut c_void, size: usize, align: usize, call: &'static str) {
    let Some(block) = NonNull::new(p.cast::<u8>()) else {
        return;
    };
    if align > MIN_ALIGN && block.as_ptr() as usize & (align - 1) != 0 {
        rampart::internals::fatal(
            "invalid-free",
            "aligned free of a block not so aligned",
            p as usize,
        );
    }
    // SAFETY: per the contract (a size the block does not match is reported inside).
    unsafe { api::free_sized(block, size, align, call) }
}

// The `__libc_*` names, which some programs and libraries call to reach "the real malloc".

/// `__libc_malloc`: [`malloc`].
#[no_mangle]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc(size)
}

/// `__libc_free`: [`free`].
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: free's contract, which the caller keeps.
    unsafe { free(p) }
}

/// `__libc_calloc`: [`calloc`].
#[no_mangle]
pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    calloc(n, size)
}

/// `__libc_realloc`: [`realloc`].
///
/// # Safety
/// As for [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: realloc's contract, which the caller keeps.
    unsafe { realloc(p, size) }
}

/// `__libc_memalign`: [`memalign`].
#[no_mangle]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

/// `__libc_valloc`: [`valloc`].
#[no_mangle]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc(size)
}

/// `__libc_pvalloc`: [`pvalloc`].
#[no_mangle]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc(size)
}

// The direct API of include/rampart.h: the same allocator under names of its own, usable
// beside another malloc (static linking without replacing malloc is not supported: the
// static library defines malloc too).

/// `rampart_malloc`: as [`malloc`].
#[no_mangle]
pub extern "C" fn rampart_malloc(size: usize) -> *mut c_void {
    malloc(size)
}

/// `rampart_calloc`: as [`calloc`].
#[no_mangle]
pub extern "C" fn rampart_calloc(n: usize, size: usize) -> *mut c_void {
    calloc(n, size)
}

/// `rampart_realloc`: as [`realloc`].
///
/// # Safety
/// As for [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn rampart_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: realloc's contract, which the caller keeps.
    unsafe { realloc(p, size) }
}

/// `rampart_free`: as [`free`].
///
/// # Safety
/// As for [`free`].
#[no_mangle]
pub unsafe extern "C" fn rampart_free(p: *mut c_void) {
    // SAFETY: free's contract, which the caller keeps.
    unsafe { free(p) }
}

/// `rampart_aligned_alloc`: as [`aligned_alloc`].
#[no_mangle]
pub extern "C" fn rampart_aligned_alloc(align: usize, size: usize) -> *mut c_void {
    aligned_alloc(align, size)
}

/// `rampart_usable_size`: as [`malloc_usable_size`].
///
/// # Safety
/// As for [`malloc_usable_size`].
#[no_mangle]
pub unsafe extern "C" fn rampart_usable_size(p: *mut c_void) -> usize {
    // SAFETY: malloc_usable_size's contract, which the caller keeps.
    unsafe { malloc_usable_size(p) }
}

/// `rampart_trim`: returns free memory to the OS now; the bytes given back.
#[no_mangle]
pub extern "C" fn rampart_trim() -> usize {
    api::trim()
}

/// `rampart_stats_print`: writes rampart's statistics to stderr.
#[no_mangle]
pub extern "C" fn rampart_stats_print() {
    rampart::stats_print();
}

/// Runs at load time (before `main`): reads the options. Allocation may already have
/// happened by then (the dynamic loader and libc start-up call malloc); the allocator does
/// not need this to work.
extern "C" fn on_load() {
    info::read_options();
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

use core::mem::size_of;
