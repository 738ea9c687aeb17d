//! What a Rust program can ask rampart: its figures, the table, memory back, a heap map.
//!
//! The program keeps a cache of 20,000 buffers (0–8 KiB) and 64 blocks of 256 KiB, prints a
//! few of `rampart::stats()`'s fields, drops the cache, gives the free memory back with
//! `rampart::trim()`, writes the heap map, and prints the statistics table.
//!
//! Run with `cargo run --release --example stats` (the map goes to `heap.svg` in the
//! temporary directory, or to the path given as the first argument).

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

fn main() {
    let map = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("heap.svg"));

    let cache: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; i * 7 % 8192]).collect();
    let large: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 256 << 10]).collect();
    let st = rampart::stats();
    println!(
        "with the cache: {} KiB in use, {} KiB committed, {} small and {} large blocks live",
        st.in_use >> 10,
        st.committed >> 10,
        st.small_blocks.live(),
        st.large_blocks.live()
    );

    drop(cache);
    drop(large);
    let returned = rampart::trim();
    let st = rampart::stats();
    println!(
        "after drop and trim: {} KiB in use, {} KiB committed, {} KiB returned by the trim",
        st.in_use >> 10,
        st.committed >> 10,
        returned >> 10
    );

    match rampart::heapmap::write(&map) {
        Ok(t) => println!(
            "heap map: {} ({} chunks, {} pages of small-block spans)",
            map.display(),
            t.chunks,
            t.slab
        ),
        Err(e) => eprintln!("heap map {}: {e}", map.display()),
    }
    rampart::stats_print();
}
