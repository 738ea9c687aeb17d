//! Purging: free pages that may hold data go back to the OS a purge delay after they were
//! freed, found through a queue of chunks rather than a scan, with the `madvise` calls made
//! while the page lock is dropped.

use core::ptr::{self, NonNull};

use super::{
    walk_chunk, Chunk, OsSource, Owner, PageSource, Pages, State, HUGE_CACHE_SLOTS, PAGES,
    PAGE_SIZE, PURGE_CALLS,
};

impl<S: PageSource> Pages<S> {
    /// Appends a chunk to the purge queue, stamped with the time now.
    ///
    /// # Safety
    /// `chunk` is live and not queued.
    pub(super) unsafe fn enqueue(&mut self, chunk: *mut Chunk) {
        let now = self.source.now_ms();
        // SAFETY: `chunk` is a live chunk's metadata (enqueue's contract), ours under the
        // page lock; `c` is not used once the old tail is written.
        let c = unsafe { &mut *chunk };
        c.queued = true;
        c.queued_ms = now;
        c.purge_next = ptr::null_mut();
        c.purge_prev = self.purge_tail;
        if self.purge_tail.is_null() {
            self.purge_head = chunk;
        } else {
            // SAFETY: the tail is a queued chunk, so live, and not `chunk`, which was not
            // queued (enqueue's contract).
            unsafe { (*self.purge_tail).purge_next = chunk };
        }
        self.purge_tail = chunk;
        self.source.purge_pending();
    }

    /// Takes a chunk out of the purge queue.
    ///
    /// # Safety
    /// `chunk` is live and queued.
    pub(super) unsafe fn dequeue(&mut self, chunk: *mut Chunk) {
        // SAFETY: `chunk` is a live chunk's metadata (dequeue's contract), ours under the
        // page lock; its queue neighbours, written below, are other chunks.
        let c = unsafe { &mut *chunk };
        c.queued = false;
        if c.purge_prev.is_null() {
            self.purge_head = c.purge_next;
        } else {
            // SAFETY: `chunk` is queued (dequeue's contract), so its predecessor in the
            // queue is a queued chunk, live.
            unsafe { (*c.purge_prev).purge_next = c.purge_next };
        }
        if c.purge_next.is_null() {
            self.purge_tail = c.purge_prev;
        } else {
            // SAFETY: `chunk` is queued, so its successor in the queue is a queued chunk,
            // live.
            unsafe { (*c.purge_next).purge_prev = c.purge_prev };
        }
    }

    /// Whether a purge step is due: the oldest queued chunk, or a cached huge mapping, has
    /// waited a purge delay, and no other purge is out. Reads the clock only when something
    /// waits.
    #[inline]
    pub fn purge_due(&mut self) -> bool {
        let out = self.purge_out_len + self.purge_huge_out;
        if out != 0 || (self.purge_head.is_null() && self.huge_cached_bytes == 0) {
            return false;
        }
        self.now_ms = self.source.now_ms();
        let cutoff = self.now_ms.saturating_sub(crate::config::purge_delay_ms());
        // SAFETY: queued chunks are live.
        (!self.purge_head.is_null() && unsafe { (*self.purge_head).queued_ms } <= cutoff)
            || self.huge_cache.iter().any(|e| e.1 != 0 && e.2 <= cutoff)
    }

    /// When the next purge step is due (the monotonic clock in milliseconds), as of the last
    /// clock reading (`now_ms`): the oldest queued chunk's or cached huge mapping's time plus
    /// the purge delay, or now while another purge is out; `None` when nothing waits.
    pub fn next_purge_ms(&self) -> Option<u64> {
        if self.purge_out_len + self.purge_huge_out != 0 {
            return Some(self.now_ms + crate::config::purge_delay_ms().max(1));
        }
        let delay = crate::config::purge_delay_ms();
        // SAFETY: queued chunks are live.
        let chunk = (!self.purge_head.is_null()).then(|| unsafe { (*self.purge_head).queued_ms });
        let huge = self
            .huge_cache
            .iter()
            .filter(|e| e.1 != 0)
            .map(|e| e.2)
            .min();
        match (chunk, huge) {
            (Some(a), Some(b)) => Some(a.min(b) + delay),
            (Some(t), None) | (None, Some(t)) => Some(t + delay),
            (None, None) => None,
        }
    }

    /// Starts one purge step, if one is due ([`Pages::purge_due`]): takes out the cached huge
    /// mappings older than the purge delay, and visits the oldest queued chunk if it has waited
    /// that long. The visit returns the free pages that the chunk's previous visit already
    /// found free and dirty ("ripe"), then ages the free dirty pages for the next visit, a
    /// delay later; so a page goes back to the OS between one and two delays after it was
    /// freed, whatever merges and splits its block went through meanwhile.
    ///
    /// Bounded work, whatever the size of the heap: one chunk's runs (at most
    /// [`PAGES_PER_CHUNK`], twice) and at most [`PURGE_CALLS`] page ranges. A visit cut short
    /// by that bound leaves the chunk at the head of the queue, due; the next step goes on.
    ///
    /// The free blocks holding the ranges are taken out of the free lists (state
    /// [`State::Purging`]), so the system calls can run with the page lock dropped
    /// ([`PurgeWork::run`]); [`Pages::purge_end`] puts them back. Until then no other purge
    /// starts.
    pub fn purge_begin(&mut self) -> PurgeWork {
        let mut w = PurgeWork::EMPTY;
        if !self.purge_due() {
            return w;
        }
        let cutoff = self.now_ms.saturating_sub(crate::config::purge_delay_ms());
        w.nhuge = self.take_cached_huge(cutoff, &mut w.huge);
        self.purge_huge_out = w.nhuge;
        let c = self.purge_head;
        // SAFETY: `c` is the queue's head, and queued chunks are live.
        if !c.is_null() && unsafe { (*c).queued_ms } <= cutoff {
            // SAFETY: `c` is the queue's head, so live and queued, and no other purge is out
            // (purge_due said so above; this one has only taken cached huge mappings).
            unsafe { self.visit(c, &mut w) };
        }
        w
    }

    /// The purge visit of one queued chunk (see [`Pages::purge_begin`]).
    ///
    /// # Safety
    /// `chunk` is live and queued, and no purge is out.
    unsafe fn visit(&mut self, chunk: *mut Chunk, w: &mut PurgeWork) {
        let mut visits = 0u64;
        let mut cut = false;
        // Return the ripe pages, taking their blocks out of the lists.
        // SAFETY: the chunk is live; the walk changes no run's extent.
        unsafe {
            walk_chunk(chunk, |c, p, n| {
                visits += 1;
                let c = &mut *c;
                if c.spans[p].state != State::Free || !(p..p + n).any(|q| c.ripe(q)) {
                    return true;
                }
                // Room for one more range and one more block out (with stretches joining
                // across blocks, a step can have more blocks out than ranges).
                if w.nranges == PURGE_CALLS || self.purge_out_len == PURGE_CALLS {
                    cut = true;
                    return false;
                }
                let order = c.spans[p].order;
                let cp: *mut Chunk = c;
                self.take_free(cp, p, order as u32);
                c.spans[p].state.set(State::Purging);
                self.purge_out[self.purge_out_len] = (cp, p as u16, order);
                self.purge_out_len += 1;
                let mut from = p;
                while let Some((start, end)) = c.next_stretch(from, p + n, Chunk::ripe) {
                    from = end;
                    let (addr, len) = (c.base + start * PAGE_SIZE, (end - start) * PAGE_SIZE);
                    // A stretch that goes on where the last one (of the block before) ends
                    // joins it: one madvise for both.
                    if let Some(last) = w.ranges[..w.nranges].last_mut() {
                        if last.0 + last.1 == addr {
                            last.1 += len;
                            continue;
                        }
                    }
                    if w.nranges == PURGE_CALLS {
                        cut = true;
                        return false;
                    }
                    w.ranges[w.nranges] = (addr, len);
                    w.nranges += 1;
                }
                true
            })
        };
        if !cut {
            // Age what is free and dirty now: it goes at the next visit, a delay from now.
            let mut newly_aged = false;
            // SAFETY: `chunk` is live (visit's contract); this walk only ages pages,
            // changing neither the chunk list nor any run's extent.
            unsafe {
                walk_chunk(chunk, |c, p, n| {
                    visits += 1;
                    let c = &mut *c;
                    if matches!(c.spans[p].state.get(), State::Free | State::Purging) {
                        newly_aged |= c.age(p, n);
                    }
                    true
                })
            };
            // SAFETY: the chunk is live and queued.
            unsafe {
                self.dequeue(chunk);
                if newly_aged {
                    self.enqueue(chunk);
                }
            }
        }
        self.purge_visits += visits;
    }

    /// Ends a purge step from [`Pages::purge_begin`] once its system calls ran: the returned
    /// pages count as clean, and the blocks go back to the free lists (merging with free
    /// buddies). A range the OS refused keeps its data and is tried again a delay later.
    pub fn purge_end(&mut self, w: &PurgeWork) {
        for (i, &(addr, len)) in w.ranges[..w.nranges].iter().enumerate() {
            let Owner::Chunk(chunk) = self.map.lookup(addr) else {
                crate::util::fatal("internal-error", "purged range outside any chunk", addr);
            };
            // SAFETY: the range's block is out of the lists, so its chunk is still live.
            let c = unsafe { &mut *chunk };
            let (idx, n) = ((addr - c.base) / PAGE_SIZE, len / PAGE_SIZE);
            if w.done & (1 << i) != 0 {
                c.clear_dirty(idx, n);
                self.dirty_pages -= n;
                self.purged_bytes += len;
            } else {
                // Refused (an mlock'ed range, say): tried again a delay from now, behind the
                // other queued chunks, so that it never holds the head of the queue.
                if c.queued {
                    // SAFETY: `chunk` holds this range's block, which is out of the lists, so
                    // it is live; and it is queued (just tested).
                    unsafe { self.dequeue(chunk) };
                }
                // SAFETY: `chunk` holds this range's block, out of the lists, so it is live;
                // and it is not queued (dequeued just above if it was).
                unsafe { self.enqueue(chunk) };
            }
        }
        self.purged_bytes += w.huge[..w.nhuge].iter().map(|h| h.1).sum::<usize>();
        self.purge_huge_out = 0;
        self.give_back_out();
        if cfg!(debug_assertions) {
            self.validate_purge_queue();
        }
    }

    /// Puts the blocks of the purge that is out back into the free lists.
    fn give_back_out(&mut self) {
        let n = core::mem::take(&mut self.purge_out_len);
        for i in 0..n {
            let (chunk, idx, order) = self.purge_out[i];
            // SAFETY: a block taken out by `visit`: aligned, unused, in no list; its chunk
            // cannot have been released meanwhile (the block's pages were not free).
            unsafe { self.free_block(chunk, idx as usize, order as u32) };
        }
    }

    /// In a `fork` child: the thread that had a purge out does not exist there, so its blocks
    /// go back to the lists as they are (their pages keep their data and are purged later).
    ///
    /// The cached huge mappings it had taken out are forgotten, not unmapped: the purging
    /// thread may have unmapped them before the fork, and the kernel may then have given
    /// their addresses to a mapping made since (a new chunk of ours, a thread's stack), which
    /// unmapping would destroy. If they were still mapped, the child keeps that address space
    /// unused (at most the cache's bound; its pages shared copy-on-write with the parent).
    pub fn purge_abandon(&mut self) {
        self.purge_huge_out = 0;
        for i in 0..self.purge_out_len {
            let chunk = self.purge_out[i].0;
            // SAFETY: the out blocks' chunks are live.
            if unsafe { !(*chunk).queued } {
                // SAFETY: `chunk` holds a block out for purging, so it is live; and it is not
                // queued (just tested).
                unsafe { self.enqueue(chunk) };
            }
        }
        self.give_back_out();
    }

    /// One whole purge step with the lock held throughout (unit tests).
    #[cfg(test)]
    pub fn purge_step(&mut self) {
        let mut w = self.purge_begin();
        if !w.is_empty() {
            // SAFETY: the work was just taken out by purge_begin and is run once.
            unsafe { w.run(&self.source) };
            self.purge_end(&w);
        }
    }
}

/// Purge work taken out under the page lock by [`Pages::purge_begin`], to be run without it
/// ([`PurgeWork::run`]) and ended under it again ([`Pages::purge_end`]).
pub struct PurgeWork {
    /// Page ranges (address, bytes) of free blocks to decommit.
    pub(super) ranges: [(usize, usize); PURGE_CALLS],
    pub(super) nranges: usize,
    /// Cached huge mappings (base, usable bytes) to unmap.
    huge: [(usize, usize); HUGE_CACHE_SLOTS],
    pub(super) nhuge: usize,
    /// Bit `i`: `ranges[i]` was decommitted.
    done: u64,
}

const _: () = assert!(PURGE_CALLS <= u64::BITS as usize);

impl PurgeWork {
    const EMPTY: PurgeWork = PurgeWork {
        ranges: [(0, 0); PURGE_CALLS],
        nranges: 0,
        huge: [(0, 0); HUGE_CACHE_SLOTS],
        nhuge: 0,
        done: 0,
    };

    /// Whether there is nothing to do (and nothing to end).
    pub fn is_empty(&self) -> bool {
        self.nranges == 0 && self.nhuge == 0
    }

    /// Makes the system calls: decommits the ranges, unmaps the huge mappings.
    ///
    /// # Safety
    /// The work came from `purge_begin` of the page layer over `source`, is run once, and
    /// its `purge_end` has not been called yet.
    pub unsafe fn run<S: PageSource>(&mut self, source: &S) {
        for (i, &(addr, len)) in self.ranges[..self.nranges].iter().enumerate() {
            // SAFETY: the range lies in a free block taken out of the lists: nobody can
            // be handed its pages before purge_end.
            let ok = unsafe { source.decommit(NonNull::new_unchecked(addr as *mut u8), len) };
            self.done |= (ok as u64) << i;
        }
        for &(base, len) in &self.huge[..self.nhuge] {
            // SAFETY: a mapping taken out of the huge cache: ours and unused.
            unsafe { source.huge_release(base, len) };
        }
    }
}

/// Runs `f` on the process's page layer under its lock, then, when one is due, a purge step
/// whose system calls run with the lock dropped. Every operation that frees or allocates
/// page runs goes through here, so purging keeps pace without a thread of its own.
#[inline]
pub fn with<R>(f: impl FnOnce(&mut Pages<OsSource>) -> R) -> R {
    let mut pages = PAGES.lock();
    let r = f(&mut pages);
    if pages.purge_due() {
        purge_unlocked(pages);
    }
    r
}

/// Runs one purge step with the page lock dropped around its system calls (the lock is
/// taken again to end it).
#[cold]
#[inline(never)]
pub(super) fn purge_unlocked(mut pages: crate::util::FutexGuard<'_, Pages<OsSource>>) {
    let mut w = pages.purge_begin();
    drop(pages);
    if !w.is_empty() {
        // SAFETY: the work was just taken out and is run once, before its end.
        unsafe { w.run(&OsSource) };
        PAGES.lock().purge_end(&w);
    }
}
