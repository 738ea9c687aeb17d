//! The thread registry: where heaps come from and go when their threads exit. A thread's
//! first allocation sets its heap up (adopting an exited thread's heap, or making one), its
//! `pthread` key destructor parks it, a growing heap takes over an exited heap's spans, and
//! the `fork` handlers keep the global locks consistent across `fork`. Also the merge of
//! every heap's counters for the statistics.

use super::*;

/// Heaps not owned by any thread, and where new heaps come from.
struct Registry {
    /// Heaps of exited threads, with their spans.
    abandoned: *mut Heap,
    /// Heaps whose spans another thread took over: empty, reused before making new ones.
    spare: *mut Heap,
    /// Every heap ever made, linked through `next_all` (heaps are never freed).
    all: *mut Heap,
    /// Unused room for new heaps in the current metadata block.
    next: usize,
    end: usize,
    key: Option<os::ThreadKey>,
    key_tried: bool,
    /// Heaps ever made, and adoptions of abandoned heaps (statistics).
    created: usize,
    adopted: usize,
    /// Abandoned heaps whose spans a running thread took over.
    taken_over: usize,
}

// SAFETY: the raw pointers are to heap metadata owned by the registry; access is locked.
unsafe impl Send for Registry {}

static REGISTRY: FutexLock<Registry> = FutexLock::new(Registry {
    abandoned: ptr::null_mut(),
    spare: ptr::null_mut(),
    all: ptr::null_mut(),
    next: 0,
    end: 0,
    key: None,
    key_tried: false,
    created: 0,
    adopted: 0,
    taken_over: 0,
});

/// How many heaps are on the abandoned list (read without the lock by the slow path, to
/// know whether there are spans to take over before growing).
pub(super) static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// Bytes of metadata mapped at a time for new heaps.
const HEAP_BLOCK: usize = 64 * 1024;

/// Sets up the calling thread's heap: adopts an abandoned one or makes a new one. Null when
/// memory is exhausted.
#[cold]
pub(super) fn thread_init() -> *mut Heap {
    // Before the heap is made: a new heap's redzone bit comes from the options.
    crate::check::guard::init_options();
    let (heap, key) = {
        let mut r = REGISTRY.lock();
        if !r.key_tried {
            r.key_tried = true;
            r.key = os::thread_key_create(thread_exit);
        }
        let heap = acquire_heap(&mut r);
        if heap.is_null() {
            return heap;
        }
        (heap, r.key)
    };

    set_current_heap(heap);
    // SAFETY: the calling thread's heap, just acquired.
    super::start_countdowns(unsafe { &mut *heap });
    if !FORK_HANDLERS.swap(true, Ordering::AcqRel) {
        // After HEAP is set and with no lock held: pthread_atfork may call malloc, which then
        // takes the fast path.
        os::atfork(fork_prepare, fork_parent, fork_child);
    }
    if let Some(key) = key {
        // SAFETY: the key's destructor is `thread_exit`, which takes this heap.
        unsafe { os::thread_key_set(key, heap.cast()) };
    }
    heap
}

use core::mem::size_of;

/// A heap for the calling thread: an exited thread's (with its spans), an emptied one, or a
/// new one. Null when memory is exhausted.
fn acquire_heap(r: &mut Registry) -> *mut Heap {
    if !r.abandoned.is_null() {
        let h = r.abandoned;
        // SAFETY: abandoned heaps are valid and owned by the registry.
        r.abandoned = unsafe { (*h).next_abandoned };
        ABANDONED.fetch_sub(1, Ordering::Relaxed);
        r.adopted += 1;
        // SAFETY: as above; ours now.
        unsafe { (*h).parked.store(false, Ordering::Release) };
        h
    } else if !r.spare.is_null() {
        let h = r.spare;
        // SAFETY: spare heaps are valid and owned by the registry.
        r.spare = unsafe { (*h).next_abandoned };
        r.adopted += 1;
        // SAFETY: as above; ours now.
        unsafe { (*h).parked.store(false, Ordering::Release) };
        h
    } else {
        if r.next + size_of::<Heap>() > r.end {
            let Some(block) = os::map(HEAP_BLOCK) else {
                return ptr::null_mut();
            };
            r.next = block.as_ptr() as usize;
            r.end = r.next + HEAP_BLOCK;
        }
        let h = r.next as *mut Heap;
        r.next += size_of::<Heap>().next_multiple_of(64);
        r.created += 1;
        let key = new_key(h as usize);
        let mut quarantine = Quarantine::new();
        quarantine.seed(key.rotate_left(32) as u64);
        // SAFETY: fresh metadata memory, big enough and aligned.
        unsafe {
            h.write(Heap {
                key,
                quarantine,
                next_all: r.all,
                redzone: (crate::config::redzone() != 0) as usize,
                ..Heap::new()
            })
        };
        r.all = h;
        h
    }
}

/// A new heap's free-list key: eight bytes from the kernel, else (no `getrandom`) a mix of
/// the heap's address, the time and a counter, which still keeps links from being
/// addresses in the clear.
fn new_key(h: usize) -> usize {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let k = os::random_u64().unwrap_or_else(|| {
        FALLBACK.fetch_add(h as u64 ^ os::now_ms(), Ordering::Relaxed);
        crate::util::splitmix64(&FALLBACK)
    });
    // Never 0: a key of 0 would leave links in the clear.
    (k as usize) | 1 << 63
}

/// An allocation by a thread whose clean-up already ran (a later `pthread` key destructor or
/// C++ `thread_local` destructor allocating): borrows a heap for this one block and parks it
/// again at once, so nothing is left with a thread that is about to disappear.
#[cold]
pub(super) fn alloc_while_exiting(class: usize) -> *mut u8 {
    let heap = acquire_heap(&mut REGISTRY.lock());
    if heap.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: the heap is ours until parked again below.
    unsafe {
        let p = counted_alloc_from(&mut *heap, class, &PageLayer);
        park(heap);
        p
    }
}

/// Empties what it can of `heap` and puts it on the abandoned list.
///
/// # Safety
/// The calling thread owns `heap` and will not use it again.
unsafe fn park(heap: *mut Heap) {
    // SAFETY: the calling thread owns `heap` and is done with it (the caller's contract);
    // its spans are the page layer's.
    unsafe { abandon(&mut *heap, &PageLayer) };
    let mut r = REGISTRY.lock();
    // SAFETY: still ours until it is on the abandoned list, which the lock held here guards.
    unsafe {
        (*heap).next_abandoned = r.abandoned;
        (*heap).parked.store(true, Ordering::Release);
    }
    r.abandoned = heap;
    ABANDONED.fetch_add(1, Ordering::Relaxed);
}

/// Whether the `fork` handlers are registered.
static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);

/// Before `fork`: take every global lock, so the child does not inherit one held by a thread
/// that does not exist there (lock order: registry, then pages, as everywhere).
extern "C" fn fork_prepare() {
    crate::heapprof::fork_prepare();
    crate::check::guard::fork_prepare();
    core::mem::forget(REGISTRY.lock());
    core::mem::forget(PAGES.lock());
}

/// After `fork`, in the parent: release what `fork_prepare` took.
extern "C" fn fork_parent() {
    // SAFETY: fork_prepare took both locks in this thread and forgot the guards.
    unsafe {
        PAGES.force_unlock();
        REGISTRY.force_unlock();
    }
    crate::check::guard::fork_parent();
    crate::heapprof::fork_parent();
}

/// After `fork`, in the child (one thread): the locks are free again. The other threads'
/// heaps stay as they were: their blocks can still be freed (remote frees), and the child's
/// thread keeps its own heap.
extern "C" fn fork_child() {
    os::forget_tid();
    // SAFETY: the child has one thread; the locks' holders (our prepare step) are gone.
    unsafe {
        PAGES.reset_after_fork();
        REGISTRY.reset_after_fork();
    }
    PAGES.lock().purge_abandon();
    crate::pages::purger::after_fork_child();
    crate::check::guard::fork_child();
    crate::heapprof::fork_child();
}

/// The `pthread` key destructor: the thread is exiting.
unsafe extern "C" fn thread_exit(heap: *mut c_void) {
    let heap = heap.cast::<Heap>();
    if heap.is_null() || heap == EMPTY_HEAP_PTR || heap == EXITING_HEAP_PTR {
        return;
    }
    // From now on this thread's frees go through the remote path, and a malloc (by a later
    // destructor) borrows a heap for one block (alloc_while_exiting).
    set_current_heap(EXITING_HEAP_PTR);
    // SAFETY: the heap was this thread's and nobody else touches its lists.
    unsafe { park(heap) };
}

/// Moves every span of `from` to `to`, with `owner` as their new owner, re-encoding their
/// free lists from the old heap's key `old_key` to the new one's, `new_key`.
///
/// # Safety
/// The caller owns both lists' heaps, and their keys are `old_key` and `new_key`.
unsafe fn move_spans(
    from: &mut SpanList,
    to: &mut SpanList,
    owner: usize,
    old_key: usize,
    new_key: usize,
) {
    loop {
        let s = from.pop();
        if s.is_null() {
            return;
        }
        // SAFETY: a listed span is live and in no other list once popped; its free blocks
        // are linked with the old heap's key (the caller's contract), and ours to relink.
        unsafe {
            let mut b = (*s).free;
            while !b.is_null() {
                let next = slab::read_link(b, old_key);
                slab::write_link(b, next, new_key);
                b = next;
            }
            (*s).owner.store(owner, Ordering::Relaxed);
            to.push(s);
        }
    }
}

/// Takes over every span of one abandoned heap (a thread that exited): its remote blocks are
/// collected, its empty spans retired, and its partial and full spans become `h`'s. The
/// emptied heap goes to the spare list. Returns whether there was one.
///
/// A thread that read a span's old owner just before the change may still push a block to
/// the old heap's remote list; whoever collects that list next (the next thread to reuse the
/// spare heap) forwards it to the span's new owner.
///
/// # Safety
/// `h` is the calling thread's heap.
#[cold]
pub(super) unsafe fn take_over_abandoned(h: &mut Heap) -> bool {
    let old = {
        let mut r = REGISTRY.lock();
        let old = r.abandoned;
        if old.is_null() {
            return false;
        }
        // A heap made with the other redzone setting (only possible for heaps made before the
        // options could be read) keeps its spans: their marks must match their blocks.
        // SAFETY: abandoned heaps are valid and owned by the registry.
        if unsafe { (*old).redzone } != h.redzone {
            return false;
        }
        // SAFETY: `old` heads the abandoned list, which the registry lock held here guards.
        r.abandoned = unsafe { (*old).next_abandoned };
        ABANDONED.fetch_sub(1, Ordering::Relaxed);
        old
    };
    let me = owner_word(h);
    // SAFETY: `old` is ours alone now (taken off the registry); `h` is the caller's.
    unsafe {
        let o = &mut *old;
        collect_remote(o, &PageLayer);
        for class in 0..NUM_CLASSES {
            debug_assert_eq!(o.current[class], EMPTY_SPAN_PTR);
            move_spans(
                &mut o.partial[class],
                &mut h.partial[class],
                me,
                o.key,
                h.key,
            );
            move_spans(&mut o.full[class], &mut h.full[class], me, o.key, h.key);
        }
        // The blocks its quarantine held go to their spans (now mostly `h`'s), through `h`
        // as a raw pointer (the path `free_local` takes to it).
        let heap_ptr: *mut Heap = h;
        o.quarantine
            .drain(|b| release_quarantined(heap_ptr, b as *mut u8, "free"));
        let mut r = REGISTRY.lock();
        o.next_abandoned = r.spare;
        r.spare = old;
        r.taken_over += 1;
    }
    if cfg!(debug_assertions) {
        // SAFETY: the caller's own heap, with the spans it just took over.
        unsafe { validate_heap(h) };
    }
    true
}

/// Empties what it can of a heap whose thread is leaving: remote blocks are collected, empty
/// spans go back to the page layer, and the current spans join the partial lists.
///
/// # Safety
/// `h` is owned by the calling thread, which will not use it again; its spans came from
/// `src`.
pub(super) unsafe fn abandon(h: &mut Heap, src: &impl SpanSource) {
    // SAFETY: the caller owns `h`, whose spans are `src`'s.
    unsafe { collect_remote(h, src) };
    for class in 0..NUM_CLASSES {
        let s = h.current[class];
        if s != EMPTY_SPAN_PTR {
            h.current[class] = EMPTY_SPAN_PTR;
            // SAFETY: the current span is a live slab of this heap, in no list.
            unsafe {
                (*s).used -= CURRENT_REF;
                if (*s).used == 0 {
                    retire(s, src);
                } else if (*s).free.is_null() && !slab::can_carve(&*s) {
                    (*s).used += FULL_MARK;
                    h.full[class].push(s);
                } else {
                    h.partial[class].push(s);
                }
            }
        }
    }
    if cfg!(debug_assertions) {
        // SAFETY: the calling thread's heap, about to be parked.
        unsafe { validate_heap(h) };
    }
}

/// Before memory is given back to the OS (`malloc_trim`): makes every block that is free but
/// held by a heap free in its span, so empty spans go back to the page layer. That is: the
/// calling thread's remote list is collected and its empty current spans released, and the
/// remote lists of the heaps of exited threads are collected too. Other running threads'
/// heaps are theirs alone; their remote lists wait for their own slow paths.
pub fn release_held_blocks() {
    let heap = current_heap();
    if heap != EMPTY_HEAP_PTR && heap != EXITING_HEAP_PTR {
        // SAFETY: the calling thread's own heap.
        let h = unsafe { &mut *heap };
        // SAFETY: the calling thread's own heap, whose spans are the page layer's.
        unsafe { collect_remote(h, &PageLayer) };
        for class in 0..NUM_CLASSES {
            let s = h.current[class];
            // SAFETY: the current span is a live slab of this heap; if only the heap's own
            // reference holds it, it is empty and goes back.
            unsafe {
                if s != EMPTY_SPAN_PTR && (*s).used == CURRENT_REF {
                    h.current[class] = EMPTY_SPAN_PTR;
                    (*s).used = 0;
                    retire(s, &PageLayer);
                }
            }
        }
    }
    // Take the abandoned heaps off the registry, drain them, and put them back.
    let mut list = {
        let mut r = REGISTRY.lock();
        let list = r.abandoned;
        r.abandoned = ptr::null_mut();
        list
    };
    // (ABANDONED keeps counting them meanwhile: a take-over that finds the list empty just
    // grows instead.)
    let (mut first, mut last) = (ptr::null_mut::<Heap>(), ptr::null_mut::<Heap>());
    while !list.is_null() {
        // SAFETY: taken off the registry, so ours alone until put back.
        unsafe {
            let next = (*list).next_abandoned;
            collect_remote(&mut *list, &PageLayer);
            (*list).next_abandoned = ptr::null_mut();
            if first.is_null() {
                first = list;
            } else {
                (*last).next_abandoned = list;
            }
            last = list;
            list = next;
        }
    }
    if !first.is_null() {
        let mut r = REGISTRY.lock();
        // SAFETY: `last` ends the drained list; it is ours until published here.
        unsafe { (*last).next_abandoned = r.abandoned };
        r.abandoned = first;
    }
}

/// The block counts of every heap ever made, merged into `out` (allocations and frees per
/// class, remote frees), and per class the number of heaps whose current span is of that
/// class (each holds one reference in its span's count). A snapshot: running threads go on
/// counting meanwhile.
pub fn merge_counters(out: &mut HeapTotals) {
    let r = REGISTRY.lock();
    let mut h = r.all;
    while !h.is_null() {
        // SAFETY: heaps are never freed; the counters are read with relaxed loads, `current`
        // racily for heaps of running threads (a snapshot).
        unsafe {
            let c = &(*h).counters;
            for class in 0..NUM_CLASSES {
                out.allocated[class] += c.alloc[class].get();
                out.freed[class] += c.free[class].get();
                if core::ptr::read_volatile(&(*h).current[class]) != EMPTY_SPAN_PTR {
                    out.current_spans[class] += 1;
                }
            }
            out.remote_frees += c.remote_free.get();
            h = (*h).next_all;
        }
    }
    for (class, n) in ORPHAN_FREES.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        out.freed[class] += n;
        out.remote_frees += n;
    }
    out.heaps = ThreadHeaps {
        created: r.created,
        reused: r.adopted,
        taken_over: r.taken_over,
    };
}

/// The counts of every heap ever made (see [`merge_counters`]).
#[derive(Clone, Copy, Debug)]
pub struct HeapTotals {
    /// Small blocks allocated, per class.
    pub allocated: [u64; NUM_CLASSES],
    /// Small blocks freed, per class.
    pub freed: [u64; NUM_CLASSES],
    /// Per class, the heaps whose current span is of that class.
    pub current_spans: [u64; NUM_CLASSES],
    /// Frees of blocks owned by another heap.
    pub remote_frees: u64,
    /// The registry's counts.
    pub heaps: ThreadHeaps,
}

impl Default for HeapTotals {
    fn default() -> Self {
        Self {
            allocated: [0; NUM_CLASSES],
            freed: [0; NUM_CLASSES],
            current_spans: [0; NUM_CLASSES],
            remote_frees: 0,
            heaps: ThreadHeaps::default(),
        }
    }
}

/// Counts of the heap registry, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadHeaps {
    /// Heaps ever made.
    pub created: usize,
    /// Heaps reused by a new thread (an exited thread's, or an emptied one).
    pub reused: usize,
    /// Exited threads' heaps whose spans a running thread took over.
    pub taken_over: usize,
}

/// Counts of the heap registry, for statistics and tests.
pub fn registry_counts() -> ThreadHeaps {
    let r = REGISTRY.lock();
    ThreadHeaps {
        created: r.created,
        reused: r.adopted,
        taken_over: r.taken_over,
    }
}
