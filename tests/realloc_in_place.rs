//! `realloc` of a large block grows and shrinks in place when the pages after it are free.
//!
//! One test in its own binary (its own process), so no other test's allocations can take the
//! pages after the block between the calls.

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

#[test]
fn large_blocks_resize_in_place() {
    let layout = Layout::from_size_align(40_000, 16).unwrap();
    // SAFETY: the block is live between the calls and freed with its last layout.
    unsafe {
        let p = GLOBAL.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(0x3c, 40_000);
        // 40,000 B take 10 pages of a 16-page buddy block; the 6 after them are free.
        let q = GLOBAL.realloc(p, layout, 60_000);
        assert_eq!(p, q, "grew into the free pages after it");
        assert!(std::slice::from_raw_parts(q, 40_000)
            .iter()
            .all(|&b| b == 0x3c));
        let layout = Layout::from_size_align(60_000, 16).unwrap();
        let r = GLOBAL.realloc(q, layout, 36_000);
        assert_eq!(q, r, "shrank in place, freeing its tail");
        // The freed tail is free again: growing back stays in place too.
        let layout = Layout::from_size_align(36_000, 16).unwrap();
        let s = GLOBAL.realloc(r, layout, 64_000);
        assert_eq!(r, s);
        assert!(std::slice::from_raw_parts(s, 36_000)
            .iter()
            .all(|&b| b == 0x3c));
        GLOBAL.dealloc(s, Layout::from_size_align(64_000, 16).unwrap());
    }
}
