//! Model-based property test: random sequences of `alloc` / `alloc_zeroed` / `realloc` /
//! `dealloc` on `rampart::Rampart`, each checked against a shadow model of the live blocks.
//!
//! After every operation:
//! - the pointer is non-null and aligned to the layout's alignment;
//! - the new block overlaps no live block (the model keeps live blocks ordered by address, so
//!   checking the two neighbours of the new block is enough);
//! - `alloc_zeroed` memory reads as zero over the whole requested size;
//! - after `realloc`, the first `min(old, new)` bytes still hold the block's pattern;
//! - the whole block is then written (the pattern of its id), proving it is usable.
//!
//! A block's full contents are checked before it is freed, and every block is checked and freed
//! at the end of a case.
//!
//! Size 0: `GlobalAlloc` forbids zero-size layouts (std never asks for one), so a drawn size
//! of 0 is mapped to a 1-byte layout. That keeps the smallest size class exercised as often as
//! `malloc(0)` would exercise it through the C API.

use core::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rampart_suite::{check_pattern_raw, fill_pattern_raw, first_nonzero_raw, is_aligned};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
        zeroed: bool,
    },
    /// Resize one live block: `which` picks among the live blocks in id order, as a fraction
    /// of `usize::MAX` (0 = oldest, `usize::MAX` = newest), so it shrinks toward the oldest.
    Realloc {
        which: usize,
        size: usize,
    },
    Free {
        which: usize,
    },
}

/// Sizes 0 B – 4 MiB, mostly small: 70% up to 512 B, 20% up to 64 KiB, 10% up to 4 MiB.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        70 => 0..=512usize,
        20 => 513..=64 * KIB,
        10 => 64 * KIB + 1..=4 * MIB,
    ]
}

/// Powers of two 1 B – 1 MiB, mostly ≤ 16 B.
fn align() -> impl Strategy<Value = usize> {
    prop_oneof![
        85 => (0u32..=4).prop_map(|s| 1usize << s),
        15 => (5u32..=20).prop_map(|s| 1usize << s),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        35 => (size(), align()).prop_map(|(size, align)| Op::Alloc { size, align, zeroed: false }),
        15 => (size(), align()).prop_map(|(size, align)| Op::Alloc { size, align, zeroed: true }),
        25 => (any::<usize>(), size()).prop_map(|(which, size)| Op::Realloc { which, size }),
        25 => any::<usize>().prop_map(|which| Op::Free { which }),
    ]
}

/// A live block as the model knows it. Its pattern seed is its id, which `realloc` keeps.
#[derive(Clone, Copy, Debug)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

/// The shadow model: live blocks by id, and the same blocks by address.
#[derive(Default)]
struct Model {
    by_id: BTreeMap<u64, Block>,
    /// start address -> (end address, id); live blocks never overlap.
    by_addr: BTreeMap<usize, (usize, u64)>,
    next_id: u64,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// `GlobalAlloc` forbids zero-size layouts: size 0 becomes 1 (see the module docs).
fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size.max(1), align).expect("sizes and alignments drawn are valid")
}

impl Model {
    /// Checks a block the allocator just returned and, if it is sound, records it as live.
    fn admit(&mut self, id: u64, ptr: *mut u8, layout: Layout) -> Result<(), TestCaseError> {
        if ptr.is_null() {
            return Err(fail(format!("null for {layout:?} (id {id})")));
        }
        let start = ptr as usize;
        if !is_aligned(start, layout.align()) {
            return Err(fail(format!("{ptr:p} misaligned for {layout:?} (id {id})")));
        }
        let end = start
            .checked_add(layout.size())
            .ok_or_else(|| fail(format!("{ptr:p} + {} wraps", layout.size())))?;
        if let Some((&s, &(e, other))) = self.by_addr.range(..=start).next_back() {
            if e > start {
                return Err(fail(format!(
                    "new block id {id} [{start:#x}, {end:#x}) overlaps live id {other} [{s:#x}, {e:#x})"
                )));
            }
        }
        if let Some((&s, &(e, other))) = self
            .by_addr
            .range((Bound::Excluded(start), Bound::Unbounded))
            .next()
        {
            if s < end {
                return Err(fail(format!(
                    "new block id {id} [{start:#x}, {end:#x}) overlaps live id {other} [{s:#x}, {e:#x})"
                )));
            }
        }
        self.by_addr.insert(start, (end, id));
        self.by_id.insert(id, Block { ptr, layout });
        Ok(())
    }

    /// Removes a block from the model (before it is freed or reallocated).
    fn forget(&mut self, id: u64) -> Block {
        let b = self.by_id.remove(&id).expect("id is live");
        self.by_addr.remove(&(b.ptr as usize));
        b
    }

    /// Checks the first `len` bytes of live block `id` hold its pattern.
    fn check(&self, id: u64, b: Block, len: usize, when: &str) -> Result<(), TestCaseError> {
        // SAFETY: `b` is a live block of at least `len` bytes that this model filled with the
        // pattern of `id` (or, after realloc, whose first `len` bytes the allocator must have
        // carried over from such a block).
        match unsafe { check_pattern_raw(b.ptr, len, id) } {
            Ok(()) => Ok(()),
            Err(at) => Err(fail(format!(
                "{when}: id {id} {:p} {:?}: byte {at} of {len} lost its pattern",
                b.ptr, b.layout
            ))),
        }
    }

    fn pick(&self, which: usize) -> Option<u64> {
        let n = ((self.by_id.len() as u128 * which as u128) >> usize::BITS) as usize;
        self.by_id.keys().nth(n).copied()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc {
                size,
                align,
                zeroed,
            } => {
                let layout = layout(size, align);
                let id = self.next_id;
                self.next_id += 1;
                // SAFETY: `layout` has a non-zero size.
                let ptr = unsafe {
                    if zeroed {
                        rampart::Rampart.alloc_zeroed(layout)
                    } else {
                        rampart::Rampart.alloc(layout)
                    }
                };
                self.admit(id, ptr, layout)?;
                if zeroed {
                    // SAFETY: a live `alloc_zeroed` block of `layout.size()` bytes: initialized.
                    if let Some(at) = unsafe { first_nonzero_raw(ptr, layout.size()) } {
                        return Err(fail(format!(
                            "alloc_zeroed {layout:?} -> {ptr:p}: byte {at} is not zero"
                        )));
                    }
                }
                // SAFETY: a live block of `layout.size()` bytes owned by the model.
                unsafe { fill_pattern_raw(ptr, layout.size(), id) };
            }
            Op::Realloc { which, size } => {
                let Some(id) = self.pick(which) else {
                    return Ok(());
                };
                let old = self.forget(id);
                let new_size = size.max(1);
                // SAFETY: `old.ptr` is live and was allocated by rampart with `old.layout`;
                // `new_size` is non-zero and, rounded up to the alignment, far below isize::MAX.
                let ptr = unsafe { rampart::Rampart.realloc(old.ptr, old.layout, new_size) };
                let new_layout = layout(new_size, old.layout.align());
                if ptr.is_null() {
                    // The old block is still live and ours; put it back so it is freed.
                    self.admit(id, old.ptr, old.layout)?;
                    return Err(fail(format!(
                        "realloc {:p} {:?} -> {new_size} returned null",
                        old.ptr, old.layout
                    )));
                }
                self.admit(id, ptr, new_layout)?;
                let kept = old.layout.size().min(new_size);
                self.check(
                    id,
                    self.by_id[&id],
                    kept,
                    &format!("after realloc from {:?} at {:p}", old.layout, old.ptr),
                )?;
                // SAFETY: a live block of `new_size` bytes owned by the model; rewriting the
                // kept prefix writes the same bytes and proves it writable too.
                unsafe { fill_pattern_raw(ptr, new_size, id) };
            }
            Op::Free { which } => {
                let Some(id) = self.pick(which) else {
                    return Ok(());
                };
                let b = self.by_id[&id];
                self.check(id, b, b.layout.size(), "before free")?;
                self.forget(id);
                // SAFETY: `b` is live, allocated by rampart with `b.layout`, freed once.
                unsafe { rampart::Rampart.dealloc(b.ptr, b.layout) };
            }
        }
        Ok(())
    }

    /// Checks and frees every live block.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        while let Some((&id, &b)) = self.by_id.iter().next() {
            self.check(id, b, b.layout.size(), "at end of case")?;
            self.forget(id);
            // SAFETY: `b` is live, allocated by rampart with `b.layout`, freed once.
            unsafe { rampart::Rampart.dealloc(b.ptr, b.layout) };
        }
        Ok(())
    }
}

impl Drop for Model {
    /// On a failed case, free what is left without checking it, so that shrinking (which
    /// replays many failing cases) does not pile up leaked memory.
    fn drop(&mut self) {
        for b in self.by_id.values() {
            // SAFETY: every block in the model is live and allocated by rampart with
            // `b.layout`; the map is dropped right after, so none is freed twice.
            unsafe { rampart::Rampart.dealloc(b.ptr, b.layout) };
        }
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for (n, op) in ops.iter().enumerate() {
        model
            .apply(op)
            .map_err(|e| fail(format!("op {n} {op:?}: {e}")))?;
    }
    model.finish()
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Debug builds run fewer cases to stay within about a minute.
        cases: if cfg!(debug_assertions) { 128 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operation_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..=200)) {
        run(&ops)?;
    }
}

/// Every size 1–2 KiB, and the powers of two ±1 up to 4 MiB, at alignments 1–4 KiB, each
/// grown and shrunk by realloc: the boundaries of size classes and page runs, which random
/// sizes hit only by luck.
#[test]
fn size_class_boundaries() {
    let mut sizes: Vec<usize> = (1..=2 * KIB).collect();
    for shift in 11..=22 {
        let p = 1usize << shift;
        sizes.extend([p - 1, p, p + 1]);
    }
    for align_shift in [0u32, 3, 4, 6, 12] {
        let align = 1usize << align_shift;
        let mut model = Model::default();
        let mut ops = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            ops.push(Op::Alloc {
                size,
                align,
                zeroed: n % 3 == 0,
            });
            // Keep about 64 blocks live so that neighbours exist to overlap with.
            if n >= 64 {
                ops.push(Op::Free { which: 0 });
            }
            if n % 7 == 0 {
                ops.push(Op::Realloc {
                    which: usize::MAX,
                    size: size * 2 + 1,
                });
                ops.push(Op::Realloc {
                    which: usize::MAX,
                    size: size / 2,
                });
            }
        }
        for (n, op) in ops.iter().enumerate() {
            if let Err(e) = model.apply(op) {
                panic!("align {align}: op {n} {op:?}: {e}");
            }
        }
        if let Err(e) = model.finish() {
            panic!("align {align}: {e}");
        }
    }
}
