//! The hardened mode's quarantine of freed small blocks: each thread's heap holds its last
//! frees back before they can be reused, first in FIFO order ([`FIFO`] blocks), then in a
//! pool of [`POOL`] places from which a random one leaves at each free. A use after free
//! then meets a block still filled with the freed pattern (checked when the block is handed
//! out again) for at least [`FIFO`] frees, and an attacker cannot predict which freed block
//! the next allocation of a class returns. Bounded by count: at most `FIFO + POOL` blocks of
//! at most 32 KiB per thread.

/// Blocks held in order of their frees.
pub const FIFO: usize = 32;
/// Blocks held after the FIFO, one leaving at random per free.
pub const POOL: usize = 32;

/// One heap's quarantine (see the module's doc). Block addresses; 0 is an empty place.
#[repr(C)]
pub struct Quarantine {
    fifo: [usize; FIFO],
    pool: [usize; POOL],
    /// Index of the oldest block in `fifo`, and how many it holds.
    head: u32,
    len: u32,
    /// State of the random draws (a xorshift generator, seeded by the heap).
    rng: u64,
}

impl Quarantine {
    /// An empty quarantine.
    pub const fn new() -> Self {
        Quarantine {
            fifo: [0; FIFO],
            pool: [0; POOL],
            head: 0,
            len: 0,
            rng: 0,
        }
    }

    /// Seeds the random draws (from the heap's secret key).
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    /// Holds the freed block `p` back and returns the block that leaves the quarantine for
    /// reuse now, or 0 while it is filling up.
    pub fn push(&mut self, p: usize) -> usize {
        if (self.len as usize) < FIFO {
            let tail = (self.head as usize + self.len as usize) % FIFO;
            self.fifo[tail] = p;
            self.len += 1;
            return 0;
        }
        let oldest = core::mem::replace(&mut self.fifo[self.head as usize], p);
        self.head = (self.head + 1) % FIFO as u32;
        let i = (crate::util::xorshift64(&mut self.rng) % POOL as u64) as usize;
        core::mem::replace(&mut self.pool[i], oldest)
    }

    /// Empties the quarantine, handing every block it held to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(usize)) {
        for i in 0..self.len as usize {
            f(core::mem::take(
                &mut self.fifo[(self.head as usize + i) % FIFO],
            ));
        }
        self.head = 0;
        self.len = 0;
        for b in self.pool.iter_mut() {
            if *b != 0 {
                f(core::mem::take(b));
            }
        }
    }
}

impl Default for Quarantine {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_block_for_the_fifo_and_releases_each_once() {
        let mut q = Quarantine::new();
        q.seed(0x1234_5678_9abc_def1);
        let mut out = std::vec::Vec::new();
        for p in 1..=1000usize {
            let b = q.push(p * 16);
            if b != 0 {
                // No block leaves before FIFO later frees.
                assert!(b + FIFO * 16 <= p * 16, "block {b} left at free {p}");
                out.push(b);
            }
        }
        assert_eq!(out.len(), 1000 - FIFO - POOL);
        q.drain(|b| out.push(b));
        out.sort();
        assert_eq!(
            out,
            (1..=1000).map(|p| p * 16).collect::<std::vec::Vec<_>>()
        );
        // The random pool reorders: not every block left in the order it was freed.
        let mut q = Quarantine::new();
        q.seed(7);
        let order: std::vec::Vec<usize> = (1..=500usize)
            .map(|p| q.push(p))
            .filter(|&b| b != 0)
            .collect();
        assert!(order.windows(2).any(|w| w[1] < w[0]));
    }
}
