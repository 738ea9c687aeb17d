//! Thread-local slots in the initial-exec TLS model.
//!
//! A slot is read with two instructions (`mov` of its offset from the GOT, `mov` through
//! `%fs`), none of them a call. Rust's `thread_local!` is as cheap in an executable, but in
//! a shared library (librampart.so) it compiles to a `__tls_get_addr` call on every access
//! (11 more instructions and a clobbered register set, measured with callgrind). Like a
//! const-initialised `thread_local!` without `Drop` (docs/architecture.md), a slot never allocates,
//! registers nothing and has no destructor. Initial-exec TLS is valid in the executable and
//! in the libraries loaded at start-up (preload, or linked), which is how rampart runs.

/// Defines one initial-exec TLS slot named `$sym` (a symbol of its own, hidden), holding a
/// `*mut $ty` that starts out as the address of the static `$init`, with the accessors
/// `fn $get() -> *mut $ty` and `fn $set(*mut $ty)` for the calling thread's value.
macro_rules! initial_exec_slot {
    ($sym:literal, $ty:ty, $init:path, $get:ident, $set:ident) => {
        core::arch::global_asm!(
            concat!(".pushsection .tdata.", $sym, ",\"awT\",@progbits"),
            ".p2align 3",
            concat!(".globl ", $sym),
            concat!(".hidden ", $sym),
            concat!(".type ", $sym, ", @object"),
            concat!(".size ", $sym, ", 8"),
            concat!($sym, ":"),
            ".quad {init}",
            ".popsection",
            init = sym $init,
        );

        /// The calling thread's value of the slot.
        #[inline(always)]
        fn $get() -> *mut $ty {
            let v: *mut $ty;
            // SAFETY: reads this thread's copy of the slot defined just above, through its
            // initial-exec offset (valid wherever rampart runs, see `os::tls`).
            unsafe {
                core::arch::asm!(
                    concat!("mov {v}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                    "mov {v}, qword ptr fs:[{v}]",
                    v = out(reg) v,
                    options(nostack, preserves_flags, readonly, pure),
                );
            }
            v
        }

        /// Sets the calling thread's value of the slot.
        #[inline(always)]
        fn $set(v: *mut $ty) {
            // SAFETY: writes this thread's copy of the slot defined just above.
            unsafe {
                core::arch::asm!(
                    concat!("mov {t}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                    "mov qword ptr fs:[{t}], {v}",
                    t = out(reg) _,
                    v = in(reg) v,
                    options(nostack, preserves_flags),
                );
            }
        }
    };
}

pub(crate) use initial_exec_slot;
