//! Every report of a memory error the program made, in one format:
//!
//! ```text
//! rampart: <kind>: <what happened> at 0x…[: offset N from a block of S bytes at 0x…][ (…)]
//! rampart:   <who> thread <tid>:            (stacks, where recorded)
//! rampart:     #0 0x… in symbol+0x… (module+0x…)
//! ```
//!
//! One line is composed at a time in a stack buffer and written with `write(2)`: nothing
//! here allocates, so a report can be made from inside malloc or a signal handler. The
//! allocator's own failures (an internal error, exhausted metadata, a broken invariant) are
//! reported by `util::fatal`, which the layers below this one use.

use crate::os;
use crate::util::Line;

/// What kind of error a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An access past the end of a block.
    HeapBufferOverflow,
    /// An access before the start of a block.
    HeapBufferUnderflow,
    /// An access to, or a write into, a block after its free.
    UseAfterFree,
    /// A free of a block that is free already.
    DoubleFree,
    /// A free, resize or size query of a pointer that is no block of ours, or a sized free
    /// with the wrong size or alignment.
    InvalidFree,
    /// A write over a block's redzone canary.
    RedzoneOverwritten,
    /// An access into the guard pool that belongs to no block.
    WildAccess,
}

impl ErrorKind {
    /// The kind's name, as reports print it.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::HeapBufferOverflow => "heap-buffer-overflow",
            ErrorKind::HeapBufferUnderflow => "heap-buffer-underflow",
            ErrorKind::UseAfterFree => "use-after-free",
            ErrorKind::DoubleFree => "double-free",
            ErrorKind::InvalidFree => "invalid-free",
            ErrorKind::RedzoneOverwritten => "redzone-overwritten",
            ErrorKind::WildAccess => "wild-access",
        }
    }
}

/// `read`, `write`, or `access` where the kind of access is not known.
pub fn access(write: Option<bool>) -> &'static str {
    match write {
        Some(true) => "write",
        Some(false) => "read",
        None => "access",
    }
}

/// The first line of a report, being composed: starts `rampart: <kind>: `.
pub struct Report {
    line: Line,
}

impl Report {
    /// A report of `kind`.
    pub fn new(kind: ErrorKind) -> Report {
        let mut line = Line::new();
        line.str("rampart: ").str(kind.name()).str(": ");
        Report { line }
    }

    /// Appends text.
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.line.str(s);
        self
    }

    /// Appends ` at 0x…`.
    pub fn at(&mut self, addr: usize) -> &mut Self {
        self.line.str(" at ").hex(addr as u64);
        self
    }

    /// Appends `: offset N from a block of S bytes at 0x…` (N negative before the block),
    /// the part that places an address against its block; `size` is `None` when it is not
    /// known any more (its record was overwritten).
    pub fn in_block(&mut self, addr: usize, block: usize, size: Option<usize>) -> &mut Self {
        self.line.str(": offset ");
        let offset = addr as i128 - block as i128;
        if offset < 0 {
            self.line.str("-");
        }
        self.line
            .dec(offset.unsigned_abs() as u64)
            .str(" from a block of ");
        match size {
            Some(size) => self.line.dec(size as u64).str(" bytes"),
            None => self.line.str("unknown size"),
        };
        self.line.str(" at ").hex(block as u64);
        self
    }

    /// Writes the line to stderr.
    pub fn emit(&mut self) {
        self.line.emit();
    }

    /// Writes the line, then the stack of `call`, the call that found the error (see
    /// [`print_call_stack`]; none for [`AT_EXIT`]), and aborts (SIGABRT): for errors found
    /// on a call, not on a fault.
    pub fn found_by(&mut self, call: &str) -> ! {
        self.emit();
        if call != AT_EXIT {
            print_call_stack(call);
        }
        os::abort()
    }
}

/// The `call` of the exit-time canary check. It runs with the page lock held, where a stack
/// walk (the unwinder, `dladdr` and the loader's lock) could wait on a thread in `dlopen`
/// that waits for the page lock, so its reports print no stack ([`Report::found_by`]); the
/// exit path's stack would say little anyway.
pub const AT_EXIT: &str = "exit";

/// Frames of the stack a report prints for the call that found the error.
const CALL_FRAMES: usize = 24;

/// Reports an error found by `call` (`free`, `realloc`, `malloc_usable_size`, …) on the
/// pointer `p`: `rampart: <kind>: <call> <what> at 0x…`, placed against the block of ours it
/// lies in where the page layer knows one (`: offset N from a block of S bytes at 0x…`, S
/// the block's size: its class's, or its run's), then the stack of the call; aborts.
#[cold]
pub fn on_call(kind: ErrorKind, call: &str, what: &str, p: usize) -> ! {
    let mut r = Report::new(kind);
    r.text(call).text(" ").text(what).at(p);
    if let Some((block, size)) = crate::pages::MAP.block_of(p) {
        r.in_block(p, block, Some(size));
    }
    r.found_by(call)
}

/// Prints the stack of a faulting access (`rampart:   accessed by thread <tid>:`), from the
/// faulting instruction `pc` on (the fault handler's own frames skipped); nothing when the
/// fault gave no `pc`.
pub fn print_access_stack(pc: Option<usize>) {
    let Some(pc) = pc else {
        return;
    };
    let mut frames = [0usize; CALL_FRAMES];
    let n = os::backtrace(&mut frames, 0);
    let frames = match frames[..n].iter().position(|&f| f == pc) {
        Some(s) => &frames[s..n],
        None => &[pc][..],
    };
    print_stack(&["accessed by"], os::gettid(), frames);
}

/// Prints the stack of the call that found an error: `rampart:   <call> called by thread
/// <tid>:` and its frames.
pub fn print_call_stack(call: &str) {
    let mut frames = [0usize; CALL_FRAMES];
    // Walked as the guard walks (an allocation from inside the unwinder is not guarded).
    let n = crate::check::guard::traced_backtrace(&mut frames);
    print_stack(&[call, " called by"], os::gettid(), &frames[..n]);
}

/// Prints one stack of a report: `rampart:   <what…> thread <tid>:`, then its frames.
pub fn print_stack(what: &[&str], tid: u32, frames: &[usize]) {
    let mut line = Line::new();
    line.str("rampart:   ");
    for part in what {
        line.str(part);
    }
    line.str(" thread ").dec(tid as u64).str(":");
    line.emit();
    print_frames(frames);
}

/// Appends what the loader knows of the code address `pc`: ` in symbol+0xoff (module+0xoff)`.
pub fn describe_pc(line: &mut Line, pc: usize) {
    describe(line, os::symbolize(pc));
}

/// Appends a symbol from `os::symbolize` (see [`describe_pc`]).
fn describe(line: &mut Line, sym: Option<os::Symbol>) {
    if let Some((name, off, module, moff)) = sym {
        if let Some(name) = name {
            line.str(" in ")
                .str(core::str::from_utf8(name.to_bytes()).unwrap_or("?"))
                .str("+")
                .hex(off as u64);
        }
        if let Some(module) = module {
            line.str(" (")
                .str(core::str::from_utf8(module.to_bytes()).unwrap_or("?"))
                .str("+")
                .hex(moff as u64)
                .str(")");
        }
    }
}

/// Prints return addresses, symbolized where the loader knows them, leaving out the frames
/// of librampart itself (when it is a shared library of its own).
fn print_frames(frames: &[usize]) {
    let own_module = os::symbolize(print_frames as *const () as usize).and_then(|s| s.2);
    let separate = own_module.is_some_and(|m| m.to_bytes().ends_with(b".so"));
    let mut shown = 0;
    for &pc in frames {
        let sym = os::symbolize(pc);
        if separate && shown == 0 && sym.is_some_and(|s| s.2 == own_module) {
            continue;
        }
        let mut line = Line::new();
        line.str("rampart:     #")
            .dec(shown)
            .str(" ")
            .hex(pc as u64);
        describe(&mut line, sym);
        line.emit();
        shown += 1;
    }
    if shown == 0 {
        let mut line = Line::new();
        line.str("rampart:     (no frames)");
        line.emit();
    }
}
