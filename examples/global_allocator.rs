//! rampart as a Rust program's `#[global_allocator]`: a sharded key-value store shared by
//! worker threads.
//!
//! Four workers insert `String` keys with `Vec<u8>` values of varied sizes (a few bytes to
//! 64 KiB), look keys up, delete them, and move values to other workers through hand-off
//! queues, where the receiving thread checks and frees memory another thread allocated. The
//! store is 16 `HashMap`s, each behind a `parking_lot::Mutex`.
//!
//! Every thread follows a fixed-seed RNG, so the work is the same on every run. A worker only
//! writes the keys it owns (`key % WORKERS == worker`) and keeps its own record of what each
//! of them should hold; reads may hit any key and check the value they find is well-formed.
//! At the end the store must equal the union of the workers' records, and the checksum over
//! it is the same on every run (only the number of lookup hits depends on thread timing).
//!
//! Run with `cargo run --release --example global_allocator`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::thread;
use std::time::Instant;

use parking_lot::Mutex;
use rampart_suite::{check_pattern, fill_pattern, XorShift64};

// Built with `--features system-allocator`, the same program runs on glibc's malloc, for
// side-by-side measurements.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

/// The allocator this build runs on.
const ALLOCATOR: &str = if cfg!(feature = "system-allocator") {
    "glibc"
} else {
    "rampart"
};

const WORKERS: usize = 4;
const SHARDS: usize = 16;
const KEYS: u64 = 40_000;
const OPS_PER_WORKER: usize = 1_500_000;

/// A value: 8 bytes of header (key and version), then the pattern of (key, version).
fn make_value(key: u64, version: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; 8 + len];
    v[..4].copy_from_slice(&(key as u32).to_le_bytes());
    v[4..8].copy_from_slice(&version.to_le_bytes());
    fill_pattern(&mut v[8..], seed(key, version));
    v
}

fn seed(key: u64, version: u32) -> u64 {
    key << 32 | u64::from(version)
}

/// Checks a value is the one `make_value` would make for `key` (any version); returns it.
fn check_value(key: u64, v: &[u8]) -> u32 {
    assert!(v.len() >= 8, "key {key}: value of {} bytes", v.len());
    let k = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
    let version = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
    assert_eq!(u64::from(k), key, "value stored under the wrong key");
    if let Err(at) = check_pattern(&v[8..], seed(key, version)) {
        panic!(
            "key {key} version {version}: value corrupt at byte {}",
            8 + at
        );
    }
    version
}

fn key_name(key: u64) -> String {
    format!("user:{key:08}")
}

fn key_of(name: &str) -> u64 {
    name[5..].parse().expect("a key name")
}

fn shard_of(key: u64) -> usize {
    (key as usize).wrapping_mul(0x9E37_79B9) % SHARDS
}

/// Value lengths: mostly small, some page-sized, a few up to 64 KiB.
fn value_len(rng: &mut XorShift64) -> usize {
    match rng.below(100) {
        0..=79 => rng.range(0, 120),
        80..=96 => rng.range(121, 4096),
        _ => rng.range(4097, 64 << 10),
    }
}

/// Values moved to one worker: (key name, value), allocated by another thread.
type Inbox = Mutex<Vec<(String, Vec<u8>)>>;

struct Store {
    shards: Vec<Mutex<HashMap<String, Vec<u8>>>>,
    /// `handoff[i]`: values moved to worker `i`.
    handoff: Vec<Inbox>,
}

#[derive(Default)]
struct Tally {
    inserts: u64,
    lookups: u64,
    hits: u64,
    deletes: u64,
    moved_out: u64,
    moved_in: u64,
    /// What each owned key should hold at the end: key -> (version, value length).
    expect: HashMap<u64, (u32, usize)>,
}

fn worker(me: usize, store: &Store) -> Tally {
    let mut rng = XorShift64::new(0xA110_C000 + me as u64);
    let mut t = Tally::default();
    let mut version = 0u32;
    let own_key =
        |rng: &mut XorShift64| rng.below(KEYS / WORKERS as u64) * WORKERS as u64 + me as u64;
    for op in 0..OPS_PER_WORKER {
        match rng.below(100) {
            // Insert or overwrite one of our keys.
            0..=39 => {
                let key = own_key(&mut rng);
                version += 1;
                let len = value_len(&mut rng);
                let value = make_value(key, version, len);
                store.shards[shard_of(key)]
                    .lock()
                    .insert(key_name(key), value);
                t.expect.insert(key, (version, len));
                t.inserts += 1;
            }
            // Look up any key (anyone's): check what is there.
            40..=79 => {
                let key = rng.below(KEYS);
                let name = key_name(key);
                let shard = store.shards[shard_of(key)].lock();
                if let Some(v) = shard.get(&name) {
                    check_value(key, v);
                    t.hits += 1;
                }
                t.lookups += 1;
            }
            // Delete one of our keys.
            80..=91 => {
                let key = own_key(&mut rng);
                let old = store.shards[shard_of(key)].lock().remove(&key_name(key));
                if let Some(v) = old {
                    check_value(key, &v);
                }
                t.expect.remove(&key);
                t.deletes += 1;
            }
            // Move one of our values to another worker, which checks and frees it.
            _ => {
                let key = own_key(&mut rng);
                let taken = store.shards[shard_of(key)]
                    .lock()
                    .remove_entry(&key_name(key));
                if let Some((name, v)) = taken {
                    let to = (me + 1 + rng.index(WORKERS - 1)) % WORKERS;
                    store.handoff[to].lock().push((name, v));
                    t.expect.remove(&key);
                    t.moved_out += 1;
                }
            }
        }
        // Now and then, take in what others moved to us.
        if op % 64 == 0 {
            let inbox = std::mem::take(&mut *store.handoff[me].lock());
            for (name, v) in inbox {
                check_value(key_of(&name), &v);
                t.moved_in += 1;
            }
        }
    }
    t
}

fn main() {
    let start = Instant::now();
    let store = Store {
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        handoff: (0..WORKERS).map(|_| Mutex::new(Vec::new())).collect(),
    };
    let tallies: Vec<Tally> = thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|me| {
                let store = &store;
                thread::Builder::new()
                    .name(format!("worker-{me}"))
                    .spawn_scoped(s, move || worker(me, store))
                    .expect("spawn worker")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });

    // Values still waiting in hand-off queues: check and free them on this thread.
    let mut moved_in: u64 = tallies.iter().map(|t| t.moved_in).sum();
    for q in &store.handoff {
        for (name, v) in q.lock().drain(..) {
            check_value(key_of(&name), &v);
            moved_in += 1;
        }
    }
    let moved_out: u64 = tallies.iter().map(|t| t.moved_out).sum();
    assert_eq!(moved_in, moved_out, "values lost in hand-off");

    // The store must hold exactly what the owners recorded; the checksum is order-free.
    let mut expected: HashMap<u64, (u32, usize)> = HashMap::new();
    for t in &tallies {
        expected.extend(t.expect.iter().map(|(&k, &v)| (k, v)));
    }
    let mut checksum = 0u64;
    let mut live = 0usize;
    let mut bytes = 0usize;
    for shard in &store.shards {
        for (name, v) in shard.lock().iter() {
            let key = key_of(name);
            let version = check_value(key, v);
            assert_eq!(
                expected.get(&key),
                Some(&(version, v.len() - 8)),
                "key {key}: store and owner disagree"
            );
            let mut h = DefaultHasher::new();
            (key, version, v.len()).hash(&mut h);
            checksum = checksum.wrapping_add(h.finish());
            live += 1;
            bytes += v.len();
        }
    }
    assert_eq!(live, expected.len(), "keys missing from the store");

    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let ops = (WORKERS * OPS_PER_WORKER) as u64;
    println!(
        "global_allocator example on {ALLOCATOR}: {WORKERS} workers, {ops} ops \
         ({} inserts, {} lookups with {} hits, {} deletes, {moved_out} moved between threads)",
        sum(|t| t.inserts),
        sum(|t| t.lookups),
        sum(|t| t.hits),
        sum(|t| t.deletes),
    );
    println!(
        "final store: {live} keys, {bytes} bytes, checksum {checksum:#018x} (verified against the owners' records)"
    );
    println!("elapsed: {:.2?}", start.elapsed());
    #[cfg(not(feature = "system-allocator"))]
    println!("rampart pages: {:?}", rampart::internals::page_usage());
}
