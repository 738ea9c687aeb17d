//! Named cases for rampart as a Rust `#[global_allocator]`: std collections at scale, zeroed
//! memory around page and chunk boundaries, realloc growth and shrink, extreme alignments,
//! and thread churn (blocks outliving their threads; allocation in thread-exit destructors).

use core::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;

use rampart_suite::{
    check_pattern, check_pattern_raw, fill_pattern, fill_pattern_raw, first_nonzero,
    first_nonzero_raw, is_aligned, pattern_word, RawBlock, XorShift64,
};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

#[test]
fn vec_grows_to_100_mb() {
    // Word by word: about 13 million pushes and ~25 reallocations.
    let words = 100 * MIB / 8;
    let mut v: Vec<u64> = Vec::new();
    for k in 0..words {
        v.push(pattern_word(1, k));
    }
    assert_eq!(v.len(), words);
    for (k, &w) in v.iter().enumerate() {
        assert_eq!(w, pattern_word(1, k), "word {k} of {words}");
    }
    drop(v);

    // Bytes appended in odd-sized pieces (realloc from sizes that are not powers of two).
    let piece: Vec<u8> = (0..=254u8).collect();
    let mut bytes: Vec<u8> = Vec::new();
    while bytes.len() < 100 * MIB {
        bytes.extend_from_slice(&piece);
    }
    for (n, chunk) in bytes.chunks(piece.len()).enumerate() {
        assert_eq!(chunk, &piece[..chunk.len()], "piece {n}");
    }
    // And back down.
    bytes.truncate(1000);
    bytes.shrink_to_fit();
    assert_eq!(&bytes[..255], &piece[..]);
}

#[test]
fn hash_map_with_a_million_entries() {
    let n = 1_000_000u64;
    let mut m: HashMap<u64, u64> = HashMap::new();
    for k in 0..n {
        assert!(m.insert(k, k.wrapping_mul(0x9E37_79B9)).is_none());
    }
    assert_eq!(m.len(), n as usize);
    for k in 0..n {
        assert_eq!(m.get(&k), Some(&k.wrapping_mul(0x9E37_79B9)), "key {k}");
    }
    for k in (0..n).step_by(2) {
        assert!(m.remove(&k).is_some());
    }
    m.shrink_to_fit();
    assert_eq!(m.len(), n as usize / 2);
    assert!(m
        .iter()
        .all(|(k, v)| k % 2 == 1 && *v == k.wrapping_mul(0x9E37_79B9)));

    // Owned keys and values of varied sizes: many small allocations of many classes.
    let mut rng = XorShift64::new(42);
    let mut owned: HashMap<String, Vec<u8>> = HashMap::new();
    for k in 0..100_000u64 {
        let mut v = vec![0u8; rng.range(0, 300)];
        fill_pattern(&mut v, k);
        owned.insert(format!("key-{k}"), v);
    }
    for k in 0..100_000u64 {
        let v = &owned[&format!("key-{k}")];
        assert_eq!(check_pattern(v, k), Ok(()), "value of key-{k}");
    }
}

#[test]
fn string_building() {
    let mut s = String::new();
    for i in 0..1_000_000u32 {
        write!(s, "{i},").expect("writing to a String cannot fail");
    }
    let mut count = 0u32;
    for (i, part) in s.trim_end_matches(',').split(',').enumerate() {
        assert_eq!(part.parse::<usize>().ok(), Some(i));
        count += 1;
    }
    assert_eq!(count, 1_000_000);

    // Many small strings, joined, repeated, sliced.
    let words: Vec<String> = (0..200_000).map(|i| format!("w{}", i % 1000)).collect();
    let joined = words.join(" ");
    assert_eq!(joined.split(' ').count(), words.len());
    let big = joined.repeat(3);
    assert_eq!(big.len(), joined.len() * 3);
    assert!(big.starts_with("w0 w1 w2"));
    let upper = big.to_uppercase();
    assert_eq!(upper.len(), big.len());
    assert!(upper.ends_with("W999"));
}

/// A `Box<[u8; N]>` made without an `N`-byte stack temporary (which would overflow the test
/// thread's stack for the large `N`).
fn boxed_array<const N: usize>() {
    let v = vec![0u8; N];
    let mut b: Box<[u8; N]> = v.into_boxed_slice().try_into().expect("length is N");
    assert_eq!(
        first_nonzero(&b[..]),
        None,
        "vec![0; {N}] is not zero (alloc_zeroed)"
    );
    fill_pattern(&mut b[..], N as u64);
    let c = b.clone();
    assert_eq!(check_pattern(&b[..], N as u64), Ok(()), "Box<[u8; {N}]>");
    assert_eq!(
        check_pattern(&c[..], N as u64),
        Ok(()),
        "clone of Box<[u8; {N}]>"
    );
}

#[repr(C, align(4096))]
struct PageAligned([u8; 4096]);

#[repr(C, align(64))]
struct CacheLine([u64; 8]);

#[test]
fn boxes_of_various_sizes() {
    boxed_array::<1>();
    boxed_array::<7>();
    boxed_array::<8>();
    boxed_array::<15>();
    boxed_array::<16>();
    boxed_array::<17>();
    boxed_array::<100>();
    boxed_array::<255>();
    boxed_array::<256>();
    boxed_array::<1000>();
    boxed_array::<4095>();
    boxed_array::<4096>();
    boxed_array::<4097>();
    boxed_array::<65536>();
    boxed_array::<{ 1 << 20 }>();
    boxed_array::<{ (4 << 20) + 1 }>();

    let boxes: Vec<Box<PageAligned>> = (0..32u8)
        .map(|i| Box::new(PageAligned([i; 4096])))
        .collect();
    for (i, b) in boxes.iter().enumerate() {
        assert!(is_aligned(&**b as *const PageAligned as usize, 4096));
        assert!(b.0.iter().all(|&x| x == i as u8));
    }
    let lines: Vec<Box<CacheLine>> = (0..1000u64).map(|i| Box::new(CacheLine([i; 8]))).collect();
    for (i, b) in lines.iter().enumerate() {
        assert!(is_aligned(&**b as *const CacheLine as usize, 64));
        assert_eq!(b.0, [i as u64; 8]);
    }
    // Zero-sized boxes never reach the allocator, but must still work beside it.
    let units: Vec<Box<()>> = (0..100).map(|_| Box::new(())).collect();
    assert_eq!(units.len(), 100);
}

#[test]
fn alloc_zeroed_around_page_and_chunk_boundaries() {
    let sizes = [
        1,
        15,
        16,
        17,
        4095,
        4096,
        4097,
        32 * KIB - 1,
        32 * KIB,
        32 * KIB + 1,
        64 * KIB,
        2 * MIB,
        4 * MIB,
        4 * MIB + 1,
        64 * MIB,
    ];
    for align in [8, 4096] {
        for size in sizes {
            let l = Layout::from_size_align(size, align).expect("valid layout");
            for round in 0..3 {
                // Dirty a block of this layout first, so that memory the allocator recycles
                // has to be zeroed again.
                // SAFETY: non-zero size; the block is written within its size and freed once.
                unsafe {
                    let p = rampart::Rampart.alloc(l);
                    assert!(!p.is_null(), "alloc {l:?}");
                    p.write_bytes(0xAB, size);
                    rampart::Rampart.dealloc(p, l);
                }
                // SAFETY: non-zero size.
                let p = unsafe { rampart::Rampart.alloc_zeroed(l) };
                assert!(!p.is_null(), "alloc_zeroed {l:?}");
                assert!(is_aligned(p as usize, align), "alloc_zeroed {l:?} -> {p:p}");
                // SAFETY: a live block of `size` bytes from alloc_zeroed: initialized.
                let nz = unsafe { first_nonzero_raw(p, size) };
                assert_eq!(nz, None, "alloc_zeroed {l:?} round {round}: byte not zero");
                // SAFETY: as above; then freed once with its layout.
                unsafe {
                    p.write_bytes(0xCD, size);
                    rampart::Rampart.dealloc(p, l);
                }
            }
            // vec![0; n] goes through alloc_zeroed as well.
            let v = vec![0u8; size];
            assert_eq!(first_nonzero(&v), None, "vec![0u8; {size}]");
        }
    }
}

/// Grows a block by realloc from 16 B to 64 MiB, doubling, then shrinks it back, checking at
/// every step that the contents survived and the alignment was kept.
#[test]
fn realloc_doubling_to_64_mib_and_back() {
    for align in [1, 8, 64, 4096, 64 * KIB] {
        let seed = align as u64;
        let mut l = Layout::from_size_align(16, align).expect("valid layout");
        // SAFETY: non-zero size.
        let mut p = unsafe { rampart::Rampart.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: a live block of `l.size()` bytes.
        unsafe { fill_pattern_raw(p, l.size(), seed) };
        let mut sizes: Vec<usize> = (4..=26).map(|s| 1usize << s).collect();
        sizes.extend((4..26).rev().map(|s| 1usize << s));
        for new_size in sizes {
            // SAFETY: `p` is live with layout `l`; `new_size` is non-zero and small.
            let q = unsafe { rampart::Rampart.realloc(p, l, new_size) };
            assert!(!q.is_null(), "realloc {l:?} -> {new_size}");
            assert!(
                is_aligned(q as usize, align),
                "realloc {l:?} -> {new_size} = {q:p}"
            );
            let kept = l.size().min(new_size);
            // SAFETY: `q` is live with at least `kept` bytes carried over from `p`.
            let ok = unsafe { check_pattern_raw(q, kept, seed) };
            assert_eq!(ok, Ok(()), "realloc {l:?} -> {new_size}: contents lost");
            p = q;
            l = Layout::from_size_align(new_size, align).expect("valid layout");
            // SAFETY: a live block of `new_size` bytes.
            unsafe { fill_pattern_raw(p, new_size, seed) };
        }
        // SAFETY: `p` is live with layout `l`, freed once.
        unsafe { rampart::Rampart.dealloc(p, l) };
    }

    // The same through Vec: exact reservations, then shrink_to_fit.
    let mut v: Vec<u8> = vec![0; 16];
    fill_pattern(&mut v, 99);
    while v.len() < 64 * MIB {
        let n = v.len();
        v.reserve_exact(n);
        v.resize(2 * n, 0);
        assert_eq!(check_pattern(&v[..n], 99), Ok(()), "Vec grown to {}", 2 * n);
        fill_pattern(&mut v, 99);
    }
    while v.len() > 16 {
        let n = v.len() / 2;
        v.truncate(n);
        v.shrink_to_fit();
        assert_eq!(check_pattern(&v, 99), Ok(()), "Vec shrunk to {n}");
    }
}

#[test]
fn alignments_from_1_b_to_64_mib() {
    for shift in 0..=26u32 {
        let align = 1usize << shift;
        let mut live: Vec<(usize, usize)> = Vec::new();
        let mut blocks = Vec::new();
        for size in [1, 100, 5000, MIB] {
            let l = Layout::from_size_align(size, align).expect("valid layout");
            let b = RawBlock::new(l, (shift as u64) << 32 | size as u64);
            assert!(is_aligned(b.addr(), align), "{l:?} -> {:#x}", b.addr());
            live.push((b.addr(), b.addr() + size));
            blocks.push(b);
            // SAFETY: non-zero size; checked, written and freed once below.
            let z = unsafe { rampart::Rampart.alloc_zeroed(l) };
            assert!(!z.is_null(), "alloc_zeroed {l:?}");
            assert!(is_aligned(z as usize, align), "alloc_zeroed {l:?} -> {z:p}");
            // SAFETY: a live zeroed block of `size` bytes; written, then freed once.
            unsafe {
                assert_eq!(first_nonzero_raw(z, size), None, "alloc_zeroed {l:?}");
                z.write_bytes(0xFF, size);
                rampart::Rampart.dealloc(z, l);
            }
        }
        live.sort_unstable();
        for w in live.windows(2) {
            assert!(w[0].1 <= w[1].0, "align {align}: blocks overlap: {w:?}");
        }
        for b in &blocks {
            assert_eq!(b.check(), Ok(()), "{:?}", b.layout());
        }
    }
}

/// Counts thread-exit destructors that ran and found their data intact.
static TLS_DROPS: AtomicUsize = AtomicUsize::new(0);
static KEY_DTORS: AtomicUsize = AtomicUsize::new(0);

/// Thread-local data that owns heap memory and checks it when the thread exits.
struct TlsCache(Vec<Vec<u8>>);

impl Drop for TlsCache {
    fn drop(&mut self) {
        if self
            .0
            .iter()
            .enumerate()
            .all(|(i, v)| check_pattern(v, i as u64).is_ok())
        {
            TLS_DROPS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

thread_local! {
    static CACHE: RefCell<TlsCache> = const { RefCell::new(TlsCache(Vec::new())) };
}

/// A pthread key whose destructor allocates and frees. glibc runs key destructors after the
/// thread's Rust TLS destructors, in key order, so this one (created after rampart's key, if
/// rampart made one at start-up) runs after rampart handed the thread's heap back: rampart must
/// still serve a thread that allocates at that point.
fn late_key() -> libc::pthread_key_t {
    static KEY: OnceLock<libc::pthread_key_t> = OnceLock::new();

    extern "C" fn dtor(data: *mut libc::c_void) {
        // SAFETY: `data` is the `Box<Vec<u8>>` leaked in `thread_churn` for this key; glibc
        // passes it to this destructor exactly once.
        let v = unsafe { Box::from_raw(data.cast::<Vec<u8>>()) };
        let mut fresh = vec![0u8; 3000];
        fill_pattern(&mut fresh, 7);
        let more: Vec<Box<[u8]>> = (1..40).map(|n| vec![n as u8; n * 50].into()).collect();
        if check_pattern(&v, 5).is_ok()
            && check_pattern(&fresh, 7).is_ok()
            && more
                .iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|&x| x == i as u8 + 1))
        {
            KEY_DTORS.fetch_add(1, Ordering::Relaxed);
        }
    }

    *KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is writable; `dtor` has the signature pthread expects.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(dtor)) };
        assert_eq!(r, 0, "pthread_key_create");
        key
    })
}

/// Rounds of 64 threads that each allocate a mix of blocks, free some, fill thread-local
/// data, and exit; the main thread checks and frees what they returned only after joining
/// them (their heaps are gone by then), keeping half until the next round.
#[test]
fn thread_churn() {
    const ROUNDS: usize = 5;
    const THREADS: usize = 64;
    let key = late_key();
    let mut carried: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut carried_raw: Vec<RawBlock> = Vec::new();
    TLS_DROPS.store(0, Ordering::Relaxed);
    KEY_DTORS.store(0, Ordering::Relaxed);
    for round in 0..ROUNDS {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                thread::spawn(move || {
                    let id = (round * THREADS + t) as u64;
                    let mut rng = XorShift64::new(id);
                    let mut kept = Vec::new();
                    let mut raw = Vec::new();
                    for i in 0..200u64 {
                        let size = if rng.chance(90) {
                            rng.range(1, 1024)
                        } else {
                            rng.range(1025, 256 * KIB)
                        };
                        let seed = id << 32 | i;
                        let mut v = vec![0u8; size];
                        fill_pattern(&mut v, seed);
                        if rng.chance(50) {
                            kept.push((v, seed));
                        }
                        if rng.chance(10) {
                            let align = 1 << rng.below(16);
                            let l = Layout::from_size_align(size, align).expect("valid");
                            raw.push(RawBlock::new(l, seed));
                        }
                    }
                    CACHE.with(|c| {
                        let mut c = c.borrow_mut();
                        for i in 0..20u64 {
                            let mut v = vec![0u8; 100 + 37 * i as usize];
                            fill_pattern(&mut v, i);
                            c.0.push(v);
                        }
                    });
                    let mut late = Box::new(vec![0u8; 777]);
                    fill_pattern(&mut late, 5);
                    // SAFETY: `key` is a valid key; the value is a leaked Box that the key's
                    // destructor takes back.
                    let r = unsafe { libc::pthread_setspecific(key, Box::into_raw(late).cast()) };
                    assert_eq!(r, 0, "pthread_setspecific");
                    (kept, raw)
                })
            })
            .collect();
        let mut returned = Vec::new();
        for h in handles {
            returned.push(h.join().expect("churn thread panicked"));
        }
        // All of this round's threads have exited.
        for (v, seed) in carried.drain(..) {
            assert_eq!(check_pattern(&v, seed), Ok(()), "block of an earlier round");
        }
        for b in carried_raw.drain(..) {
            assert_eq!(b.check(), Ok(()), "raw block of an earlier round");
        }
        for (kept, raw) in returned {
            for (n, (v, seed)) in kept.into_iter().enumerate() {
                assert_eq!(check_pattern(&v, seed), Ok(()), "block of an exited thread");
                if n % 2 == 0 {
                    carried.push((v, seed));
                }
            }
            for (n, b) in raw.into_iter().enumerate() {
                assert_eq!(b.check(), Ok(()), "raw block of an exited thread");
                if n % 2 == 0 {
                    carried_raw.push(b);
                }
            }
        }
    }
    assert_eq!(TLS_DROPS.load(Ordering::Relaxed), ROUNDS * THREADS);
    assert_eq!(KEY_DTORS.load(Ordering::Relaxed), ROUNDS * THREADS);
}
