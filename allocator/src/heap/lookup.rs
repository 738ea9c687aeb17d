//! The one lookup of a pointer: what an address is (small block, large run, huge block,
//! guarded block, or no block of ours), for free's slow path, `realloc`, the size queries and
//! the error reports.

use super::*;

/// The usable size of a block from [`alloc_small`], or of any block rampart returned; reports
/// and aborts on a pointer rampart did not return.
///
/// # Safety
/// `p` is non-null.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    match lookup(p) {
        Block::Small(s) => {
            // SAFETY: the lookup found `p` to be a carved block of the live slab `s`.
            let span = unsafe { s.as_ref() };
            if has_redzones(span) {
                // SAFETY: a carved block of a marked span.
                return unsafe {
                    crate::check::redzone::check_live(
                        p as usize,
                        span.block_size as usize,
                        "malloc_usable_size",
                    )
                };
            }
            span.block_size as usize
        }
        // SAFETY: the lookup found `p` to be the start of the live large run `s`.
        Block::Large(s) => large::run_capacity(unsafe { s.as_ref() }),
        // SAFETY: the lookup found `p` to be the start of the live huge block `h`.
        Block::Huge(h) => unsafe { h.as_ref().len },
        Block::Guarded => crate::check::guard::size_of_live(p as usize, "malloc_usable_size"),
        Block::Zero => crate::check::zero::size_of_live(p as usize, "malloc_usable_size"),
        Block::Invalid(why) => invalid(p, "malloc_usable_size", why),
    }
}

/// What an address is: the answer of [`lookup`].
#[derive(Clone, Copy, Debug)]
pub enum Block {
    /// A carved block of a slab span (live, or free in its span's list: the lookup does not
    /// tell, the free and redzone checks do).
    Small(NonNull<Span>),
    /// The start of a large run.
    Large(NonNull<Span>),
    /// The start of a huge mapping.
    Huge(NonNull<crate::pages::Huge>),
    /// An address in the guard pool (the pool tells which block, if any).
    Guarded,
    /// An address in the hardened mode's region of zero-size blocks (`check::zero`).
    Zero,
    /// No block of ours starts here.
    Invalid(Invalid),
}

/// Why an address is no block (see [`Block::Invalid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// In free pages of a chunk: most likely a block freed before (its run went back).
    FreePages,
    /// Inside a block or run of ours, but not at its start.
    Interior,
    /// In no memory of ours.
    Foreign,
}

/// The one lookup of a pointer: what `p` is, for free (past its fast path), realloc, the size
/// queries and the error reports alike. Two loads for a chunk address (the page map, then the
/// page's run descriptor), plus the span's own bounds; the guard pool and huge mappings are
/// asked only for addresses outside chunks. Any address may be passed: none is dereferenced,
/// only the page layer's metadata is read.
pub fn lookup(p: *mut u8) -> Block {
    if let Some(nn) = MAP.span_of(p as usize) {
        // SAFETY: the page map names only live chunks, whose descriptors stay mapped.
        let span = unsafe { nn.as_ref() };
        return match span.state.get() {
            State::Slab if slab::is_block_start(span, p as usize) => Block::Small(nn),
            // A run the heap profile keeps for reuse was freed by the program.
            State::Large if span.addr == p as usize && large::is_cached(span) => {
                Block::Invalid(Invalid::FreePages)
            }
            State::Large if span.addr == p as usize => Block::Large(nn),
            State::Free | State::Purging => Block::Invalid(Invalid::FreePages),
            _ => Block::Invalid(Invalid::Interior),
        };
    }
    if crate::check::guard::contains(p as usize) {
        return Block::Guarded;
    }
    if crate::check::zero::contains(p as usize) {
        return Block::Zero;
    }
    match MAP.lookup(p as usize) {
        // SAFETY: the map names a live huge descriptor.
        Owner::Huge(h) if unsafe { (*h).base } == p as usize => {
            // SAFETY: non-null.
            Block::Huge(unsafe { NonNull::new_unchecked(h) })
        }
        Owner::Huge(_) => Block::Invalid(Invalid::Interior),
        _ => Block::Invalid(Invalid::Foreign),
    }
}

/// [`lookup`] for a block its caller says it owns (`realloc`): reports and aborts on a
/// pointer that is no block of ours, naming `call`.
pub fn lookup_owned(p: *mut u8, call: &str) -> Block {
    match lookup(p) {
        Block::Invalid(why) => invalid(p, call, why),
        b => b,
    }
}

/// Reports a pointer that is no block of ours, handed to `call` (`free`, `realloc`, a size
/// query), and aborts.
#[cold]
pub(super) fn invalid(p: *mut u8, call: &str, why: Invalid) -> ! {
    let what = match why {
        Invalid::FreePages => "of a pointer into free pages (double free?)",
        Invalid::Interior => "of a pointer that is not the start of a block",
        Invalid::Foreign => "of a pointer rampart did not allocate",
    };
    report::on_call(ErrorKind::InvalidFree, call, what, p as usize)
}
