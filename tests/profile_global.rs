//! The heap profile under `#[global_allocator]`: a Rust program on `rampart::Rampart` (no
//! `librampart.so`; the crate reads the same `RAMPART_*` variables) leaks from two named
//! functions, keeps a cache, churns short-lived blocks, and writes its profile on request
//! with `rampart::profile::write`; at exit the crate writes the exit profile and the leak
//! report, as the C library does (`tests/profile.rs`).
//!
//! Its own test binary without libtest's harness (`harness = false` in Cargo.toml): with
//! `PROFILE_GLOBAL_DIR` set it is the child; without, it runs itself in exact mode
//! (`RAMPART_PROFILE_RATE=1`) and checks the raw profiles. The child prints the addresses
//! of its leaking functions, so that the parent can attribute each stack's frames to them
//! (the nearest of the two starts at or below a return address, within 4 KiB).

mod c_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use c_support::{clear_rampart_env, run};

#[global_allocator]
static A: rampart::Rampart = rampart::Rampart;

#[inline(never)]
fn leak_vectors() {
    for _ in 0..3 {
        let v: Vec<u8> = Vec::with_capacity(1000);
        std::hint::black_box(&v);
        std::mem::forget(v);
    }
}

#[inline(never)]
fn leak_boxes() {
    for _ in 0..2 {
        let b = Box::new([7u64; 64]);
        std::hint::black_box(&b);
        Box::leak(b);
    }
}

#[inline(never)]
fn churn() -> usize {
    let mut n = 0;
    for i in 0..100_000usize {
        let v = vec![1u8; 64 + i % 512];
        n += std::hint::black_box(v).len();
    }
    n
}

fn main() {
    match std::env::var_os("PROFILE_GLOBAL_DIR") {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

fn child(dir: &Path) {
    leak_vectors();
    leak_boxes();
    let cache: Vec<Vec<u8>> = (0..100).map(|_| vec![0u8; 4000]).collect();
    churn();
    let totals = rampart::profile::write(dir.join("asked.prof")).expect("profile written");
    assert!(totals.live.bytes >= 400_000.0, "{totals:?}");
    drop(cache);
    println!(
        "fns {:x} {:x}",
        leak_vectors as fn() as usize, leak_boxes as fn() as usize
    );
}

/// Per stack id: its frames, and its live (bytes, objects).
fn read_live(path: &Path) -> Vec<(Vec<u64>, (u64, u64))> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.ends_with("end\n"),
        "incomplete profile {}",
        path.display()
    );
    let mut stacks: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut live = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "stack" => {
                let frames = f[2..]
                    .iter()
                    .map(|h| u64::from_str_radix(h, 16).unwrap())
                    .collect();
                stacks.insert(f[1].parse().unwrap(), frames);
            }
            "live" => {
                let id: u64 = f[1].parse().unwrap();
                live.push((
                    stacks[&id].clone(),
                    (f[2].parse().unwrap(), f[3].parse().unwrap()),
                ));
            }
            _ => {}
        }
    }
    live
}

fn parent() {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe
        .parent()
        .unwrap()
        .join(format!("profile-global-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(&exe);
    clear_rampart_env(&mut cmd);
    cmd.env("PROFILE_GLOBAL_DIR", &dir)
        .env("RAMPART_PROFILE", "leaks")
        .env("RAMPART_PROFILE_RATE", "1")
        .env("RAMPART_PROFILE_OUT", dir.join("exit-%p.prof"));
    let out = run(cmd, Duration::from_secs(120));
    out.assert_success();
    let fns: Vec<u64> = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("fns "))
        .unwrap_or_else(|| panic!("no addresses printed\n{}", out.describe()))
        .split(' ')
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect();
    let site = |frames: &[u64]| -> Option<usize> {
        frames.iter().find_map(|&pc| {
            fns.iter()
                .enumerate()
                .filter(|&(_, &f)| f <= pc && pc - f < 4096)
                .max_by_key(|&(_, &f)| f)
                .map(|(i, _)| i)
        })
    };
    let exit_profile = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("exit-")
        })
        .unwrap_or_else(|| panic!("no exit profile\n{}", out.describe()));
    let mut per_site = [(0u64, 0u64); 2];
    for (frames, (b, o)) in read_live(&exit_profile) {
        if let Some(i) = site(&frames) {
            per_site[i].0 += b;
            per_site[i].1 += o;
        }
    }
    let mut failed = false;
    if per_site != [(3000, 3), (1024, 2)] {
        eprintln!(
            "profile_global: leaks by site {per_site:?}, expected [(3000, 3), (1024, 2)]\n{}",
            out.describe()
        );
        failed = true;
    }
    // The profile written on request: the cache was live then (100 x 4000 bytes).
    let asked: u64 = read_live(&dir.join("asked.prof"))
        .iter()
        .map(|(_, (b, _))| b)
        .sum();
    if asked < 400_000 {
        eprintln!("profile_global: the requested profile holds {asked} live bytes");
        failed = true;
    }
    if !out.stderr.contains("rampart: leak report:") {
        eprintln!("profile_global: no leak report\n{}", out.describe());
        failed = true;
    }
    println!(
        "profile_global: leaks by site {per_site:?}, requested profile {asked} bytes live: {}",
        if failed { "FAILED" } else { "ok" }
    );
    std::process::exit(i32::from(failed));
}
