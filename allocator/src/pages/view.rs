//! Read-only views of the page layer, for walks that count or draw the heap.

use core::sync::atomic::Ordering;

use super::map::{L2_BITS, L2_LEN, ZERO_L2_PTR};
use super::{Owner, PageMap, PageSource, Pages, State, CHUNK_SHIFT, PAGES_PER_CHUNK};

/// A run of pages (or a free buddy block) as read-only walks see it (see
/// [`Pages::for_each_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunView {
    /// The first page's index in its chunk.
    pub index: usize,
    /// Pages in the run.
    pub npages: usize,
    /// What the run is.
    pub state: State,
    /// Slab: the size class.
    pub class: u8,
    /// Slab: the block size in bytes.
    pub block_size: usize,
    /// Slab: blocks counted as handed out (including blocks on remote lists and the heap's
    /// reference while it is a current span), read without the owner's cooperation: a
    /// snapshot, as in [`PageUsage::slab_used_bytes`].
    pub used_blocks: usize,
    /// Slab: blocks carved so far (from the run's start; the rest were never handed out and
    /// hold whatever bytes the pages held before), read without the owner's cooperation.
    pub carved_blocks: usize,
    /// Slab: the owner word (the heap layer's; 0 for none).
    pub owner: usize,
    /// Pages of the run that may hold data (committed); for a slab or large run, all of them.
    pub dirty_pages: usize,
}

/// A live chunk as read-only walks see it (see [`Pages::chunk_views`]).
#[derive(Clone, Copy, Debug)]
pub struct ChunkView {
    /// The chunk's first byte (its [`GUARD_SIZE`] guard follows its last page).
    pub base: usize,
    /// Whether this is a wholly free chunk kept mapped ([`Pages::kept`]).
    pub kept: bool,
    /// Per page, whether it may hold data (was handed out and not returned to the OS since).
    pub dirty: [u64; PAGES_PER_CHUNK / 64],
}

impl ChunkView {
    /// Whether page `p` may hold data.
    #[inline]
    pub fn page_dirty(&self, p: usize) -> bool {
        self.dirty[p / 64] & (1 << (p % 64)) != 0
    }
}

/// Read-only accessors for walks that draw or count the heap (the heap map): nothing here
/// changes the page layer or allocates; callers hold the lock, as for every other call.
impl<S: PageSource> Pages<S> {
    /// The live chunks (the kept ones included), in the order of the chunk list (newest first).
    pub fn chunk_views(&self) -> impl Iterator<Item = ChunkView> + '_ {
        let mut c = self.all;
        core::iter::from_fn(move || {
            if c.is_null() {
                return None;
            }
            // SAFETY: listed chunks are live; only plain fields are copied out.
            let chunk = unsafe { &*c };
            c = chunk.next_chunk;
            Some(ChunkView {
                base: chunk.base,
                kept: chunk.kept,
                dirty: chunk.dirty,
            })
        })
    }

    /// Calls `f` for every run and free block of the live chunk at `base`, in page order
    /// (their page counts add up to [`PAGES_PER_CHUNK`]). Returns `false`, calling nothing,
    /// when no live chunk starts at `base`.
    pub fn for_each_run(&self, base: usize, mut f: impl FnMut(RunView)) -> bool {
        let Owner::Chunk(c) = self.map.lookup(base) else {
            return false;
        };
        // SAFETY: the map names only live chunks' metadata.
        let chunk = unsafe { &*c };
        if chunk.base != base {
            return false;
        }
        let mut p = 0;
        while p < PAGES_PER_CHUNK {
            let s = &chunk.spans[p];
            let n = (s.npages as usize).clamp(1, PAGES_PER_CHUNK - p);
            let dirty_pages = (p..p + n)
                .filter(|&q| chunk.dirty[q / 64] & (1 << (q % 64)) != 0)
                .count();
            let slab = s.state == State::Slab;
            f(RunView {
                index: p,
                npages: n,
                state: match s.state.get() {
                    State::Purging => State::Free,
                    state => state,
                },
                class: if slab { s.class } else { 0 },
                block_size: if slab { s.block_size as usize } else { 0 },
                owner: if slab {
                    s.owner.load(core::sync::atomic::Ordering::Relaxed)
                } else {
                    0
                },
                carved_blocks: if slab {
                    s.bump.load(core::sync::atomic::Ordering::Relaxed) as usize
                } else {
                    0
                },
                used_blocks: if slab {
                    (s.used & i32::MAX).max(0) as usize
                } else {
                    0
                },
                dirty_pages,
            });
            p += n;
        }
        true
    }

    /// Calls `f(base, len)` for every huge block (mapped straight from the OS, a guard page
    /// after it), in address order, found by walking the page map's populated nodes.
    pub fn for_each_huge(&self, mut f: impl FnMut(usize, usize)) {
        for (i, l1) in self.map.l1.iter().enumerate() {
            let l2 = l1.load(Ordering::Acquire);
            if l2 == ZERO_L2_PTR {
                continue;
            }
            for j in 0..L2_LEN {
                // SAFETY: l2 is a live node of L2_LEN entries (never freed).
                let entry = unsafe { (*l2.add(j)).load(Ordering::Acquire) };
                if let Owner::Huge(h) = PageMap::decode(entry) {
                    let slot = (i << L2_BITS) | j;
                    // SAFETY: the map names only live huge descriptors.
                    let (hb, hl) = unsafe { ((*h).base, (*h).len) };
                    // Report each block once, at the slot of its first byte.
                    if hb >> CHUNK_SHIFT == slot {
                        f(hb, hl);
                    }
                }
            }
        }
    }
}
