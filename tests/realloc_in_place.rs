//! `realloc` of a large block (above the size classes' 1 MiB) grows and shrinks in place
//! when the pages after it are free.
//!
//! One test in its own binary (its own process), so no other test's allocations can take the
//! pages after the block between the calls.

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

#[test]
fn large_blocks_resize_in_place() {
    let layout = Layout::from_size_align(1_200_000, 16).unwrap();
    // SAFETY: the block is live between the calls and freed with its last layout.
    unsafe {
        let p = GLOBAL.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(0x3c, 1_200_000);
        // 1,200,000 B take 293 pages of a 512-page buddy block; the 219 after them are free.
        let q = GLOBAL.realloc(p, layout, 1_800_000);
        assert_eq!(p, q, "grew into the free pages after it");
        assert!(std::slice::from_raw_parts(q, 1_200_000)
            .iter()
            .all(|&b| b == 0x3c));
        let layout = Layout::from_size_align(1_800_000, 16).unwrap();
        let r = GLOBAL.realloc(q, layout, 1_100_000);
        assert_eq!(q, r, "shrank in place, freeing its tail");
        // The freed tail is free again: growing back stays in place too.
        let layout = Layout::from_size_align(1_100_000, 16).unwrap();
        let s = GLOBAL.realloc(r, layout, 2_000_000);
        assert_eq!(r, s);
        assert!(std::slice::from_raw_parts(s, 1_100_000)
            .iter()
            .all(|&b| b == 0x3c));
        GLOBAL.dealloc(s, Layout::from_size_align(2_000_000, 16).unwrap());
    }
}
