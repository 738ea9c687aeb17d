//! The C++ `operator new` / `operator delete` family (Itanium C++ ABI names, x86-64).
//!
//! The throwing `operator new`s must throw `std::bad_alloc` when memory is exhausted, which
//! Rust code cannot do (and the release profile is `panic = "abort"`, so no foreign exception
//! may unwind through a Rust frame). They are therefore naked functions: each calls
//! [`new_or_null`] (the allocation, with the program's `new_handler` retried as
//! the standard says) and, when that returns null, *jumps* — its own frame already gone — to
//! libstdc++'s `std::__throw_bad_alloc()`, looked up when first needed. A process without a
//! C++ runtime cannot be running C++ code that catches, so there it reports and aborts.
//! Limitation: a `new_handler` that throws aborts the process (it would unwind through
//! [`new_or_null`]).
//!
//! The sized `operator delete`s check the size they are given against the block (one compare
//! on the fast path).

use core::ffi::{c_char, c_void};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use rampart::api::{self, MIN_ALIGN};

/// Where a failed throwing `operator new` jumps (set by [`new_or_null`] before it returns
/// null): `std::__throw_bad_alloc`, or [`no_cxx_runtime`].
static THROW: AtomicUsize = AtomicUsize::new(0);

/// Allocates for `operator new`: retries through the program's `new_handler` while it has
/// one; on final failure prepares [`THROW`] and returns null.
extern "C" fn new_or_null(size: usize, align: usize) -> *mut c_void {
    loop {
        if let Some(p) = api::alloc(size, align.max(MIN_ALIGN)) {
            return p.as_ptr().cast();
        }
        match new_handler() {
            // SAFETY: a new_handler takes no arguments; if it throws, the process aborts
            // (documented above).
            Some(handler) => unsafe { handler() },
            None => break,
        }
    }
    let throw = lookup(c"_ZSt17__throw_bad_allocv").unwrap_or(no_cxx_runtime as *const () as usize);
    THROW.store(throw, Ordering::Release);
    ptr::null_mut()
}

extern "C" fn no_cxx_runtime() -> ! {
    rampart::internals::fatal(
        "out-of-memory",
        "operator new failed and there is no C++ runtime to throw std::bad_alloc",
        0,
    )
}

type Handler = unsafe extern "C" fn();

/// The program's `std::new_handler`, if libstdc++ is loaded and one is installed.
fn new_handler() -> Option<Handler> {
    let get = lookup(c"_ZSt15get_new_handlerv")?;
    // SAFETY: std::get_new_handler() takes nothing and returns a function pointer or null.
    let get: extern "C" fn() -> Option<Handler> = unsafe { core::mem::transmute(get) };
    get()
}

/// A symbol of the process (libstdc++'s, here), or `None`.
fn lookup(name: &core::ffi::CStr) -> Option<usize> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; no lock of ours is held.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr() as *const c_char) };
    (!p.is_null()).then_some(p as usize)
}

/// The common tail of the throwing `operator new`s: rdi = size, rsi = alignment. Returns the
/// block, or jumps to [`THROW`] with its own frame gone, so the exception unwinds straight
/// into the C++ caller.
#[unsafe(naked)]
unsafe extern "C" fn new_throwing(size: usize, align: usize) -> *mut c_void {
    core::arch::naked_asm!(
        "push rax", // realign the stack for the call
        "call {new}",
        "pop rcx",
        "test rax, rax",
        "jz 2f",
        "ret",
        "2:",
        "jmp qword ptr [rip + {throw}]",
        new = sym new_or_null,
        throw = sym THROW,
    )
}

macro_rules! throwing_new {
    ($($(#[$doc:meta])* $name:ident, $align:literal;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// Called by C++ code as its `operator new`; throws `std::bad_alloc` on failure.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name(size: usize) -> *mut c_void {
            core::arch::naked_asm!(
                concat!("mov esi, ", $align),
                "jmp {tail}",
                tail = sym new_throwing,
            )
        }
    )*};
}

throwing_new! {
    /// `operator new(size_t)`.
    _Znwm, 16;
    /// `operator new[](size_t)`.
    _Znam, 16;
}

/// `operator new(size_t, std::align_val_t)`.
///
/// # Safety
/// Called by C++ code as its `operator new`; throws `std::bad_alloc` on failure.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn _ZnwmSt11align_val_t(size: usize, align: usize) -> *mut c_void {
    core::arch::naked_asm!("jmp {tail}", tail = sym new_throwing)
}

/// `operator new[](size_t, std::align_val_t)`.
///
/// # Safety
/// Called by C++ code as its `operator new`; throws `std::bad_alloc` on failure.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn _ZnamSt11align_val_t(size: usize, align: usize) -> *mut c_void {
    core::arch::naked_asm!("jmp {tail}", tail = sym new_throwing)
}

/// `operator new(size_t, const std::nothrow_t&)`: null on failure.
#[no_mangle]
pub extern "C" fn _ZnwmRKSt9nothrow_t(size: usize, _nt: *const c_void) -> *mut c_void {
    new_or_null(size, MIN_ALIGN)
}

/// `operator new[](size_t, const std::nothrow_t&)`: null on failure.
#[no_mangle]
pub extern "C" fn _ZnamRKSt9nothrow_t(size: usize, _nt: *const c_void) -> *mut c_void {
    new_or_null(size, MIN_ALIGN)
}

/// `operator new(size_t, std::align_val_t, const std::nothrow_t&)`: null on failure.
#[no_mangle]
pub extern "C" fn _ZnwmSt11align_val_tRKSt9nothrow_t(
    size: usize,
    align: usize,
    _nt: *const c_void,
) -> *mut c_void {
    new_or_null(size, align)
}

/// `operator new[](size_t, std::align_val_t, const std::nothrow_t&)`: null on failure.
#[no_mangle]
pub extern "C" fn _ZnamSt11align_val_tRKSt9nothrow_t(
    size: usize,
    align: usize,
    _nt: *const c_void,
) -> *mut c_void {
    new_or_null(size, align)
}

/// Every `operator delete`: frees `p` (null does nothing).
///
/// # Safety
/// `p` is null or a live block of this allocator, not used after this.
#[inline(always)]
unsafe fn delete(p: *mut c_void) {
    if let Some(p) = NonNull::new(p.cast::<u8>()) {
        // SAFETY: `p` is a live block of ours, given up (this function's contract); no size
        // is claimed.
        unsafe { api::free_sized(p, 0, api::MIN_ALIGN, "operator delete") }
    }
}

/// Every sized `operator delete`: frees `p`, reporting a `size` the block was not allocated
/// with.
///
/// # Safety
/// As for [`delete`].
#[inline(always)]
unsafe fn delete_sized(p: *mut c_void, size: usize) {
    if let Some(p) = NonNull::new(p.cast::<u8>()) {
        // SAFETY: `p` is a live block of ours, given up (this function's contract).
        unsafe { api::free_sized(p, size, api::MIN_ALIGN, "operator delete") }
    }
}

macro_rules! deletes {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $body:expr;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// `p` is null or a live block of this allocator, from the matching `operator new`.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) {
            // SAFETY: the caller's contract.
            unsafe { $body }
        }
    )*};
}

deletes! {
    /// `operator delete(void*)`.
    _ZdlPv(p: *mut c_void) => delete(p);
    /// `operator delete[](void*)`.
    _ZdaPv(p: *mut c_void) => delete(p);
    /// `operator delete(void*, size_t)`: checks the size.
    _ZdlPvm(p: *mut c_void, size: usize) => delete_sized(p, size);
    /// `operator delete[](void*, size_t)`: checks the size.
    _ZdaPvm(p: *mut c_void, size: usize) => delete_sized(p, size);
    /// `operator delete(void*, std::align_val_t)`.
    _ZdlPvSt11align_val_t(p: *mut c_void, _align: usize) => delete(p);
    /// `operator delete[](void*, std::align_val_t)`.
    _ZdaPvSt11align_val_t(p: *mut c_void, _align: usize) => delete(p);
    /// `operator delete(void*, size_t, std::align_val_t)`: checks the size and alignment.
    _ZdlPvmSt11align_val_t(p: *mut c_void, size: usize, align: usize) => crate::free_checked(p, size, align, "operator delete");
    /// `operator delete[](void*, size_t, std::align_val_t)`: checks the size and alignment.
    _ZdaPvmSt11align_val_t(p: *mut c_void, size: usize, align: usize) => crate::free_checked(p, size, align, "operator delete");
    /// `operator delete(void*, const std::nothrow_t&)`.
    _ZdlPvRKSt9nothrow_t(p: *mut c_void, _nt: *const c_void) => delete(p);
    /// `operator delete[](void*, const std::nothrow_t&)`.
    _ZdaPvRKSt9nothrow_t(p: *mut c_void, _nt: *const c_void) => delete(p);
    /// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdlPvSt11align_val_tRKSt9nothrow_t(p: *mut c_void, _align: usize, _nt: *const c_void) => delete(p);
    /// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdaPvSt11align_val_tRKSt9nothrow_t(p: *mut c_void, _align: usize, _nt: *const c_void) => delete(p);
}
