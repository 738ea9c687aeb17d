//! The page map: a two-level radix tree from any address's 4 MiB slot to the chunk or huge
//! mapping that owns it, read without a lock by every free.

use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::{Chunk, Huge, PageSource, Span, CHUNK_SHIFT, PAGES_PER_CHUNK};

/// What the page map holds for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Nothing of ours.
    None,
    /// A chunk.
    Chunk(*mut Chunk),
    /// A huge mapping.
    Huge(*mut Huge),
}

// A small L1 (256 slots of 512 GiB each) and large L2 nodes (131072 slots of 4 MiB: 1 MiB of
// map per node, mapped lazily and touched a page per 2 GiB of heap): the L1 is a static initialised
// to point at the shared zero node, and each of its slots is a relocation the loader
// applies at start-up. With 8192 slots (13 bits) those were 196 KiB of relocation records
// and 64 KiB of data written at every start, some 260 KiB of every process's RSS.
pub(super) const L1_BITS: u32 = 8;
pub(super) const L2_BITS: u32 = 17;
const ADDR_BITS: u32 = CHUNK_SHIFT + L1_BITS + L2_BITS; // 47: the x86-64 user address space
pub(super) const L2_LEN: usize = 1 << L2_BITS;
const L2_BYTES: usize = L2_LEN * size_of::<usize>();

/// Tag of chunk entries in the page map: odd entries are chunks, even non-zero ones are huge.
pub(super) const TAG_CHUNK: usize = 1;

/// The page map: a two-level radix tree from an address's 4 MiB slot to its owner.
///
/// Every L1 slot starts out pointing at [`ZERO_L2`], a shared node of zero entries that is
/// never written, so a lookup needs no null test. The L1 index is masked rather than bounds
/// checked: an address at or above 2^47 (never one of ours: [`PageMap::set`] refuses them)
/// aliases a low slot, and every slow path confirms the block with the span's own bounds,
/// while the fast path's first write through such a pointer faults (it is non-canonical or
/// kernel space on x86-64).
pub struct PageMap {
    pub(super) l1: [AtomicPtr<AtomicUsize>; 1 << L1_BITS],
}

/// The shared all-zero L2 node (see [`PageMap`]).
static ZERO_L2: [AtomicUsize; L2_LEN] = [const { AtomicUsize::new(0) }; L2_LEN];

pub(super) const ZERO_L2_PTR: *mut AtomicUsize = (&raw const ZERO_L2).cast_mut().cast();

impl PageMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            l1: [const { AtomicPtr::new(ZERO_L2_PTR) }; 1 << L1_BITS],
        }
    }

    /// The raw entry for `addr`: odd for a chunk (its metadata address plus one), even and
    /// non-zero for a huge mapping, zero for nothing of ours. Safe on any address; addresses
    /// from 2^47 up alias low ones (see the type's doc).
    #[inline(always)]
    pub fn entry(&self, addr: usize) -> usize {
        let slot = addr >> CHUNK_SHIFT;
        // SAFETY: the index is masked to the L1 length.
        let l1 = unsafe {
            self.l1
                .get_unchecked((slot >> L2_BITS) & ((1 << L1_BITS) - 1))
        };
        let l2 = l1.load(Ordering::Acquire);
        // SAFETY: L2 nodes are L2_LEN entries long and never freed; the index is masked.
        unsafe { (*l2.add(slot & (L2_LEN - 1))).load(Ordering::Acquire) }
    }

    /// Decodes an entry.
    #[inline(always)]
    pub fn decode(entry: usize) -> Owner {
        if entry & TAG_CHUNK != 0 {
            Owner::Chunk((entry - TAG_CHUNK) as *mut Chunk)
        } else if entry != 0 {
            Owner::Huge(entry as *mut Huge)
        } else {
            Owner::None
        }
    }

    /// The run descriptor of the chunk page holding `addr` (in any state: the caller looks
    /// at it), or `None` when `addr` is in no chunk. Two loads and a tag test: the free fast
    /// path's lookup.
    #[inline(always)]
    pub fn span_of(&self, addr: usize) -> Option<NonNull<Span>> {
        let entry = self.entry(addr);
        if entry & TAG_CHUNK == 0 {
            return None;
        }
        let chunk = (entry - TAG_CHUNK) as *const Chunk;
        let idx = (addr >> 12) & (PAGES_PER_CHUNK - 1);
        // SAFETY: the entry names a live chunk's metadata (set up before the chunk entered
        // the map), idx is masked to its pages, and no page's run pointer is ever null (a
        // run's descriptor, or the vacant sentinel).
        Some(unsafe {
            NonNull::new_unchecked((*chunk).run.get_unchecked(idx).load(Ordering::Relaxed))
        })
    }

    /// The block of ours that `addr` lies in, as `(start, bytes)`, where the metadata tells:
    /// a carved block of a slab (its class's size), a large run, a huge block. `None` for
    /// free pages, blocks never carved and addresses outside our memory. For error reports,
    /// read without the page lock, as [`PageMap::lookup`] is: a descriptor another thread
    /// changes meanwhile at worst names a wrong block (a chunk released at that instant
    /// could take its descriptors with it, the race every lookup of a stale pointer has).
    pub fn block_of(&self, addr: usize) -> Option<(usize, usize)> {
        if let Some(s) = self.span_of(addr) {
            // SAFETY: the page map names only live chunks, whose descriptors are mapped.
            let s = unsafe { s.as_ref() };
            let off = addr.wrapping_sub(s.addr);
            // Read once: the division below must not see it change to 0.
            let size = s.block_size as usize;
            return match s.state.get() {
                super::State::Slab if size != 0 => {
                    let carved = s.bump.load(Ordering::Relaxed) as usize * size;
                    (off < carved).then(|| (s.addr + off / size * size, size))
                }
                super::State::Large => {
                    let len = s.npages as usize * super::PAGE_SIZE;
                    (off < len).then_some((s.addr, len))
                }
                _ => None,
            };
        }
        match self.lookup(addr) {
            Owner::Huge(h) => {
                // SAFETY: the map names a live huge descriptor.
                let (base, len) = unsafe { ((*h).base, (*h).len) };
                addr.wrapping_sub(base).lt(&len).then_some((base, len))
            }
            _ => None,
        }
    }

    /// The owner of `addr`.
    #[inline]
    pub fn lookup(&self, addr: usize) -> Owner {
        Self::decode(self.entry(addr))
    }

    /// Sets the entries of every slot of `[addr, addr + len)` to `value`; false if an L2 node
    /// could not be allocated (nothing is then changed for the slots not yet set).
    pub(super) fn set(
        &self,
        source: &impl PageSource,
        addr: usize,
        len: usize,
        value: usize,
    ) -> bool {
        let first = addr >> CHUNK_SHIFT;
        let last = (addr + len - 1) >> CHUNK_SHIFT;
        if last >> (ADDR_BITS - CHUNK_SHIFT) != 0 {
            return false;
        }
        for slot in first..=last {
            let l1 = &self.l1[slot >> L2_BITS];
            let mut l2 = l1.load(Ordering::Acquire);
            if l2 == ZERO_L2_PTR {
                if value == 0 {
                    continue;
                }
                match source.meta_alloc(L2_BYTES) {
                    Some(p) => {
                        l2 = p.as_ptr().cast::<AtomicUsize>();
                        l1.store(l2, Ordering::Release);
                    }
                    None => return false,
                }
            }
            // SAFETY: l2 is a live node of L2_LEN entries; the index is masked.
            unsafe { (*l2.add(slot & (L2_LEN - 1))).store(value, Ordering::Release) };
        }
        true
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}
