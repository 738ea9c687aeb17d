//! Deterministic multi-thread stress test: blocks allocated on one thread and checked and
//! freed on another (the heap's remote-free path), and blocks that outlive the thread that
//! allocated them (a heap handed back at thread exit while its objects are still live).
//!
//! Every thread draws its operations from a fixed-seed [`XorShift64`], so each run does the
//! same work; only the interleaving of threads varies. Every block is filled with a pattern
//! that encodes (thread, sequence number) and is checked by whoever frees it. Nothing here
//! depends on timing.

use core::alloc::Layout;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use rampart_suite::{check_pattern, fill_pattern, RawBlock, XorShift64};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Fewer operations without optimization, so both profiles finish in seconds.
const fn scaled(release: usize) -> usize {
    if cfg!(debug_assertions) {
        release / 4
    } else {
        release
    }
}

/// The pattern seed of block `seq` of thread `thread`.
fn tag(thread: usize, seq: usize) -> u64 {
    ((thread as u64) << 40) | seq as u64
}

/// A block in one of the three shapes programs allocate: a `Vec<u8>` and a `Box<[u8]>`
/// through the global allocator (both rampart), and a raw `GlobalAlloc` block with an
/// arbitrary alignment.
#[derive(Debug)]
enum Block {
    Vec(Vec<u8>, u64),
    Boxed(Box<[u8]>, u64),
    Raw(RawBlock),
}

impl Block {
    /// A random block for thread `thread`'s `seq`-th allocation: 8 B – 64 KiB mostly (60% up
    /// to 512 B, 35% up to 64 KiB), 5% up to 1 MiB.
    fn new(rng: &mut XorShift64, thread: usize, seq: usize) -> Self {
        let size = match rng.below(100) {
            0..=59 => rng.range(8, 512),
            60..=94 => rng.range(513, 64 * KIB),
            _ => rng.range(64 * KIB + 1, MIB),
        };
        let seed = tag(thread, seq);
        match rng.below(3) {
            0 => {
                // Start small and grow, so the block also goes through realloc.
                let mut v = Vec::with_capacity(size / 4);
                v.resize(size, 0);
                fill_pattern(&mut v, seed);
                Block::Vec(v, seed)
            }
            1 => {
                let mut b = vec![0u8; size].into_boxed_slice();
                fill_pattern(&mut b, seed);
                Block::Boxed(b, seed)
            }
            _ => {
                // Alignment 1 B – 4 KiB mostly, sometimes 64 KiB or 1 MiB.
                let align = match rng.below(20) {
                    0 => 64 * KIB,
                    1 => MIB,
                    _ => 1 << rng.below(13),
                };
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                Block::Raw(RawBlock::new(layout, seed))
            }
        }
    }

    /// Panics unless the block still holds its pattern.
    fn verify(&self, checker: &str) {
        let (bytes, seed) = match self {
            Block::Vec(v, seed) => (&v[..], *seed),
            Block::Boxed(b, seed) => (&b[..], *seed),
            Block::Raw(r) => (r.bytes(), r.seed()),
        };
        if let Err(at) = check_pattern(bytes, seed) {
            panic!(
                "{checker}: block of thread {} seq {} ({} bytes at {:p}) is corrupt at byte {at}",
                seed >> 40,
                seed & ((1 << 40) - 1),
                bytes.len(),
                bytes.as_ptr()
            );
        }
    }
}

/// N threads, each allocating and freeing its own blocks and sending about a third of them to
/// other threads, which check and free them. A thread also forwards some blocks it received
/// to a third thread before freeing them. When a thread finishes its work it drops its
/// senders and then drains its own channel until every sender is gone, so no thread waits on
/// another while holding a sender (no deadlock) and every block is freed exactly once.
fn cross_thread_round(round: usize, threads: usize, ops: usize) {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = mpsc::channel::<Block>();
        senders.push(tx);
        receivers.push(rx);
    }
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(me, rx)| {
            let peers = senders.clone();
            thread::Builder::new()
                .name(format!("stress-{round}-{me}"))
                .spawn(move || {
                    let me_id = round * 100 + me;
                    let mut rng = XorShift64::new(0x5EED_0000 + me_id as u64);
                    let mut mine: Vec<Block> = Vec::new();
                    // Blocks this thread sent to another (forwards not counted again), and
                    // blocks it received and freed.
                    let (mut sent, mut freed_remote) = (0usize, 0usize);
                    for seq in 0..ops {
                        let block = Block::new(&mut rng, me_id, seq);
                        match rng.below(10) {
                            0..=2 => {
                                let to = (me + 1 + rng.index(threads - 1)) % threads;
                                peers[to]
                                    .send(block)
                                    .expect("receiver lives until all senders drop");
                                sent += 1;
                            }
                            _ => mine.push(block),
                        }
                        // Free one of our own blocks now and then (keeps ~32 live).
                        if mine.len() > 32 || (!mine.is_empty() && rng.chance(30)) {
                            let b = mine.swap_remove(rng.index(mine.len()));
                            b.verify("owner");
                        }
                        // Take what others sent: check and free it, or pass some on.
                        while let Ok(b) = rx.try_recv() {
                            b.verify("receiver");
                            if rng.chance(10) {
                                let to = rng.index(threads);
                                peers[to]
                                    .send(b)
                                    .expect("receiver lives until all senders drop");
                            } else {
                                drop(b);
                                freed_remote += 1;
                            }
                        }
                    }
                    for b in mine.drain(..) {
                        b.verify("owner at end");
                    }
                    drop(peers);
                    for b in rx {
                        b.verify("receiver at end");
                        freed_remote += 1;
                    }
                    (sent, freed_remote)
                })
                .expect("spawn")
        })
        .collect();
    drop(senders);
    let (mut sent, mut freed_remote) = (0, 0);
    for h in handles {
        let (s, f) = h.join().expect("worker panicked");
        sent += s;
        freed_remote += f;
    }
    // About 30% of all blocks cross threads (the RNG decides, not timing).
    assert!(sent > 0, "no block crossed threads");
    assert_eq!(
        sent, freed_remote,
        "blocks sent to other threads were not all freed there"
    );
}

#[test]
fn cross_thread_frees() {
    for round in 0..3 {
        cross_thread_round(round, 6, scaled(6_000));
    }
}

/// Short-lived producer threads hand every block they allocated to a long-lived consumer and
/// exit; only after the producers are joined does the consumer check and free the blocks. The
/// consumer keeps half of each round's blocks and frees them in the next round, after new
/// producer threads (which may reuse the dead threads' heaps) have run.
#[test]
fn blocks_outlive_their_threads() {
    const ROUNDS: usize = 4;
    const PRODUCERS: usize = 8;
    let per_producer = scaled(2_000);

    let inbox: Arc<Mutex<Vec<Block>>> = Arc::new(Mutex::new(Vec::new()));
    // The main thread tells the consumer when all of a round's producers have exited.
    let (go_tx, go_rx) = mpsc::channel::<usize>();
    let (done_tx, done_rx) = mpsc::channel::<usize>();

    let consumer = {
        let inbox = Arc::clone(&inbox);
        thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                let mut rng = XorShift64::new(0xC0_5E);
                let mut kept: Vec<Block> = Vec::new();
                for _round in go_rx {
                    // Blocks kept from the previous round: their threads are long gone.
                    for b in kept.drain(..) {
                        b.verify("consumer, a round later");
                    }
                    let blocks = std::mem::take(&mut *inbox.lock());
                    let n = blocks.len();
                    for b in blocks {
                        b.verify("consumer");
                        if rng.chance(50) {
                            kept.push(b);
                        }
                    }
                    done_tx.send(n).expect("main waits for done");
                }
                for b in kept {
                    b.verify("consumer at end");
                }
            })
            .expect("spawn consumer")
    };

    for round in 0..ROUNDS {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let inbox = Arc::clone(&inbox);
                thread::spawn(move || {
                    let me_id = 1_000 + round * PRODUCERS + p;
                    let mut rng = XorShift64::new(me_id as u64);
                    let mut scratch: Vec<Block> = Vec::new();
                    let mut handed = Vec::new();
                    for seq in 0..per_producer {
                        let block = Block::new(&mut rng, me_id, seq);
                        // Most blocks go to the consumer; a few are freed here, interleaved
                        // with the live ones in the same pages.
                        if rng.chance(80) {
                            handed.push(block);
                        } else {
                            scratch.push(block);
                        }
                        if scratch.len() > 16 {
                            scratch
                                .swap_remove(rng.index(scratch.len()))
                                .verify("producer");
                        }
                    }
                    for b in scratch {
                        b.verify("producer at end");
                    }
                    let n = handed.len();
                    inbox.lock().extend(handed);
                    n
                })
            })
            .collect();
        let handed: usize = producers
            .into_iter()
            .map(|h| h.join().expect("producer panicked"))
            .sum();
        // Every producer has exited; now the consumer checks and frees their blocks.
        go_tx.send(round).expect("consumer alive");
        let received = done_rx.recv().expect("consumer finished the round");
        assert_eq!(
            received, handed,
            "round {round}: blocks lost between threads"
        );
    }
    drop(go_tx);
    consumer.join().expect("consumer panicked");
}

/// Two threads pass blocks of one size class back and forth, each freeing what the other
/// allocated, so remote frees land on pages their owner is allocating from at the same time.
#[test]
fn ping_pong_same_size_class() {
    let rounds = scaled(40_000);
    for size in [16usize, 48, 256, 4 * KIB, 40 * KIB] {
        let (a_tx, a_rx) = mpsc::sync_channel::<Vec<Box<[u8]>>>(4);
        let (b_tx, b_rx) = mpsc::sync_channel::<Vec<Box<[u8]>>>(4);
        let player = move |me: usize,
                           tx: mpsc::SyncSender<Vec<Box<[u8]>>>,
                           rx: mpsc::Receiver<Vec<Box<[u8]>>>| {
            let mut seq = 0usize;
            let batch = |seq: &mut usize| -> Vec<Box<[u8]>> {
                (0..8)
                    .map(|_| {
                        let mut b = vec![0u8; size].into_boxed_slice();
                        fill_pattern(&mut b, tag(me, *seq));
                        *seq += 1;
                        b
                    })
                    .collect()
            };
            // Seqs of the other side's batches, in order: channels are FIFO.
            let mut their_seq = 0usize;
            for _ in 0..rounds / 8 {
                tx.send(batch(&mut seq)).expect("peer alive");
                let got = rx.recv().expect("peer alive");
                for b in got {
                    if let Err(at) = check_pattern(&b, tag(1 - me, their_seq)) {
                        panic!(
                            "size {size}: block {their_seq} of thread {} corrupt at {at}",
                            1 - me
                        );
                    }
                    their_seq += 1;
                }
            }
        };
        let a = thread::spawn(move || player(0, a_tx, b_rx));
        let b = thread::spawn(move || player(1, b_tx, a_rx));
        a.join().expect("player 0 panicked");
        b.join().expect("player 1 panicked");
    }
}
