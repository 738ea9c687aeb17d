//! The benchmark runner: every workload under glibc, the peers (mimalloc 2, jemalloc and
//! tcmalloc from Debian; mimalloc 3, snmalloc and jemalloc built from the sources that their
//! crates.io crates vendor) and rampart, interleaved, several repetitions; medians of wall
//! time, CPU time and peak RSS, ratios to glibc and to the best peer, geometric means; a
//! markdown table, an SVG chart, and the callgrind fast-path figure of every allocator.
//!
//! ```text
//! cargo run --release --bin bench -- [--quick] [--reps N] [--out DIR] [--guard-modes|--guard-all|--scaling]
//! ```
//!
//! `--scaling` runs `benches/c/scaling.c` instead (larson-style and producer/consumer at 2,
//! 8, 32 and 64 threads, the same total work at every count) under every allocator, and
//! writes `scaling.md`: pairs per second, the 64-thread figure over the 2-thread one, and
//! each allocator's figure over mimalloc 3's (about 3 minutes; `--quick`: a quarter of the
//! work).
//!
//! `--guard-modes` measures what rampart's checks cost instead: glibc, rampart, and rampart
//! with `RAMPART_GUARD=sample` (the default 1 in 1000), `RAMPART_REDZONE=16`, the hardened
//! mode (`RAMPART_HARDEN=1`) and the heap profile at its default rate (`RAMPART_PROFILE=heap`, written to /dev/null at exit).
//! `--guard-all`: glibc, rampart and rampart with `RAMPART_GUARD=all` (a debugging mode one
//! to two orders of magnitude slower on allocation-heavy workloads: use `--quick --reps 1`).
//! Neither runs the peers.
//!
//! It installs the peers from Debian (`libmimalloc2.0`, `libjemalloc2`,
//! `libtcmalloc-minimal4`) when they are missing and it runs as root. It builds the others,
//! once, into `target/bench/peers/NAME.so` (`SOURCE_PEERS`: `mimalloc3` from
//! `libmimalloc-sys`'s `c_src/mimalloc/v3`, `snmalloc` from `snmalloc-sys`'s `upstream`,
//! `jemalloc-src` from `tikv-jemalloc-sys`'s `jemalloc`, each crate pinned to a version),
//! with the flags of the upstream build of the preloadable library, from the crates that
//! `cargo fetch` unpacks for a manifest it writes in `target/bench/peers/fetch`; nothing of
//! theirs enters the repository. A built library is reused while it is newer than that
//! manifest; a peer that cannot be fetched or built is left out, and the run says why. Their
//! versions, as their sources state them, are in the results' header.
//! It builds librampart, compiles the C workloads of `benches/c/`, and checks, before timing
//! anything, that each preloaded allocator really served its workload (`LD_DEBUG=bindings`
//! must show `malloc` bound to that library: ld.so silently falls back to glibc when a
//! preload fails).
//! `--quick` runs the C workloads, python3 and sqlite3 at a tenth of their size and redis
//! and gcc (the slowest) at a thirty-third, stress-ng's stressors at half, 3 repetitions:
//! about 2 minutes with the 8 allocators on a busy 2-core machine (its figures are
//! indicative: short runs weigh process start-up more), plus about a minute the first time,
//! for building the peers. The default is full size, 5 repetitions (26 minutes for the 8
//! allocators on a quiet 2-core machine, 2026-12-01). The preload check runs every workload at a
//! fiftieth of its size (it proves which library served `malloc`, not how fast). Every phase
//! prints its progress with an estimate of the time left, and the run says before it starts
//! how long it should take (from the times the last run of the same kind recorded in
//! `target/bench/`; an allocator new since then is taken to be as fast as the median of the
//! others).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};
use std::time::{Instant, SystemTime};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const PEER_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const PEERS: [(&str, &str, &str); 3] = [
    ("mimalloc", "libmimalloc.so.2", "libmimalloc2.0"),
    ("jemalloc", "libjemalloc.so.2", "libjemalloc2"),
    (
        "tcmalloc",
        "libtcmalloc_minimal.so.4",
        "libtcmalloc-minimal4",
    ),
];

/// What building a peer from source gave: its version, if its sources state one, or why it
/// could not be built.
type Built = Result<Option<String>, String>;

/// A peer built from the C or C++ sources that a crates.io crate vendors.
struct SourcePeer {
    /// Its name in the results.
    name: &'static str,
    /// The crate, and the exact version it is pinned to (the current one on crates.io when
    /// this was written), so that two runs measure the same code and a change of code is a
    /// change of this line.
    krate: &'static str,
    pin: &'static str,
    /// Builds the library `lib` from the crate's unpacked sources `src` (of crate version
    /// `crate_version`), with `dir` for scratch files and the build log; returns the
    /// allocator's version as its sources state it (`None` where they state none), or why it
    /// could not be built.
    build: fn(src: &Path, crate_version: &str, dir: &Path, lib: &Path) -> Built,
}

/// The strongest current peers that Debian does not package, or packages in an older
/// release: mimalloc 3 (Debian has 2.0), snmalloc, and jemalloc's current sources (Debian
/// has the 5.3.0 release).
const SOURCE_PEERS: [SourcePeer; 3] = [
    SourcePeer {
        name: "mimalloc3",
        krate: "libmimalloc-sys",
        pin: "0.1.49",
        build: build_mimalloc3,
    },
    SourcePeer {
        name: "snmalloc",
        krate: "snmalloc-sys",
        pin: "0.7.6",
        build: build_snmalloc,
    },
    SourcePeer {
        name: "jemalloc-src",
        krate: "tikv-jemalloc-sys",
        pin: "0.7.1",
        build: build_jemalloc,
    },
];

/// An allocator under test: its name, the library to preload (none for glibc), the
/// environment it runs with, and its version where the runner learnt it building the
/// library (otherwise it is asked of the system).
struct Alloc {
    name: &'static str,
    preload: Option<PathBuf>,
    env: Vec<(&'static str, &'static str)>,
    version: Option<String>,
}

/// A workload: how to run it at a scale.
struct Workload {
    name: String,
    what: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// One measured run.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_kib: f64,
}

struct Options {
    quick: bool,
    /// 0: the peers; 1: rampart's production checks; 2: `RAMPART_GUARD=all`.
    guard_modes: u8,
    reps: usize,
    out: PathBuf,
    /// `--replot DIR`: redraw DIR/chart.svg from DIR/results.md, running nothing.
    replot: Option<PathBuf>,
    /// `--scaling`: the thread-scaling table (`benches/c/scaling.c`) instead of the suite.
    scaling: bool,
}

fn main() {
    let run_started = Instant::now();
    let opts = parse_args();
    if let Some(dir) = &opts.replot {
        replot(dir);
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(&repo).expect("cd to the repository");
    let work = repo.join("target/bench");
    std::fs::create_dir_all(&work).expect("create target/bench");
    std::fs::create_dir_all(&opts.out).expect("create the output folder");

    let allocs = allocators(&repo, opts.guard_modes);
    if opts.scaling {
        scaling(&repo, &work, &allocs, &opts);
        return;
    }
    let sizes = if opts.quick {
        Sizes::QUICK
    } else {
        Sizes::FULL
    };
    let workloads = workloads(&repo, &work, &work, sizes);
    let record = work.join(format!("times-{}.tsv", opts.kind()));
    let last = read_times(&record);
    println!(
        "bench: {} workloads x {} allocators x {} repetitions{}",
        workloads.len(),
        allocs.len(),
        opts.reps,
        if opts.quick {
            " (--quick: C workloads, python3 and sqlite3 at 1/10 of full size, redis and gcc at 1/33, stress-ng at 1/2)"
        } else {
            ""
        }
    );
    match estimate(&workloads, &allocs, opts.reps, &last) {
        Some(secs) => println!(
            "bench: its timed runs should take about {} (from the last {} run's times, {}); the preload check and the callgrind phase add about half a minute",
            minutes(secs),
            opts.kind(),
            record.display()
        ),
        None => println!(
            "bench: no earlier {} run of these workloads recorded here; on a quiet 2-core \
             machine a full run takes about 3.5 minutes per allocator, a --quick one about 15 \
             seconds per allocator ({} here)",
            opts.kind(),
            allocs.len()
        ),
    }

    // The preload check, on small versions of the same workloads.
    let checks = workloads_named(&repo, &work, Sizes::CHECK);
    let mut progress = Progress::new("preload check", checks.len() * allocs.len());
    for w in &checks {
        for a in &allocs {
            verify_preload(w, a, &work);
            progress.tick(&format!(
                "{:<14} {:<12} malloc bound to its library",
                w.name, a.name
            ));
        }
    }
    println!("bench: every allocator was seen serving every workload (LD_DEBUG=bindings)");

    let mut samples: BTreeMap<(String, &str), Vec<Sample>> = BTreeMap::new();
    let mut progress = Progress::new("timed runs", opts.reps * workloads.len() * allocs.len());
    // What is left is estimated from the last run's times where there are some, else from
    // the runs so far.
    let mut expected_left = estimate(&workloads, &allocs, opts.reps, &last);
    for rep in 0..opts.reps {
        for w in &workloads {
            // Interleave: rotate the allocators' order every repetition.
            for k in 0..allocs.len() {
                let a = &allocs[(k + rep) % allocs.len()];
                let s = measure(w, a, &work);
                if let Some(left) = expected_left.as_mut() {
                    *left -= expected(&last, &w.name, a.name).unwrap_or(s.wall);
                }
                progress.tick_with(
                    &format!(
                        "{:<14} {:<12} {:>7.2} s wall {:>7.2} s cpu {:>8.0} KiB",
                        w.name, a.name, s.wall, s.cpu, s.rss_kib
                    ),
                    expected_left,
                );
                samples.entry((w.name.clone(), a.name)).or_default().push(s);
            }
        }
    }
    write_times(&record, &samples);

    let fast_path = fast_path_figures(&allocs, &work);
    let about = about_the_run(&allocs, &opts);
    let table = report(&workloads, &allocs, &samples, &fast_path, &opts, &about);
    let md = opts.out.join("results.md");
    std::fs::write(&md, &table).expect("write results.md");
    chart(
        &workloads,
        &allocs,
        &samples,
        &about,
        &opts.out.join("chart.svg"),
    );
    println!("\n{table}");
    println!(
        "bench: wrote {} and {} in {}",
        md.display(),
        opts.out.join("chart.svg").display(),
        minutes(run_started.elapsed().as_secs_f64())
    );
}

/// Compiles `benches/c/NAME.c` into `WORK/NAME` (`gcc -O2 -pthread`) unless the program is
/// newer than its source; panics when gcc fails.
fn compile_c(repo: &Path, work: &Path, name: &str) -> PathBuf {
    let src = repo.join(format!("benches/c/{name}.c"));
    let exe = work.join(name);
    let fresh = matches!((modified(&exe), modified(&src)), (Some(e), Some(s)) if e >= s);
    let ok = fresh
        || Command::new("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(ok, "gcc failed on {}", src.display());
    exe
}

/// The thread counts of the scaling table.
const SCALING_THREADS: [usize; 4] = [2, 8, 32, 64];

/// `--scaling`: `benches/c/scaling.c`'s two patterns (larson, prodcons) at 2, 8, 32 and 64
/// threads under every allocator, interleaved, `reps` times; the median pairs per second of
/// each, its ratio at 64 threads to its own at 2, and its ratio to mimalloc 3's at the same
/// count. Writes `scaling.md` in the output folder.
fn scaling(repo: &Path, work: &Path, allocs: &[Alloc], opts: &Options) {
    let exe = compile_c(repo, work, "scaling");
    let scale = if opts.quick { 0.25 } else { 1.0 };
    let case = |pattern: &str, threads: usize, scale: f64| Workload {
        name: format!("{pattern}-{threads}"),
        what: format!("{pattern} at {threads} threads"),
        argv: vec![
            exe.display().to_string(),
            pattern.into(),
            threads.to_string(),
            format!("{scale}"),
        ],
        env: vec![],
    };
    let patterns = ["larson", "prodcons"];
    for a in allocs {
        verify_preload(&case("larson", 2, 0.01), a, work);
    }
    println!("bench: every allocator was seen serving the scaling program (LD_DEBUG=bindings)");
    let cases: Vec<(usize, usize)> = (0..patterns.len())
        .flat_map(|p| (0..SCALING_THREADS.len()).map(move |t| (p, t)))
        .collect();
    let mut rates: BTreeMap<(usize, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut progress = Progress::new("scaling runs", opts.reps * cases.len() * allocs.len());
    for rep in 0..opts.reps {
        for &(p, t) in &cases {
            let w = case(patterns[p], SCALING_THREADS[t], scale);
            for k in 0..allocs.len() {
                let ai = (k + rep) % allocs.len();
                let out = command(&w, &allocs[ai])
                    .stdout(Stdio::piped())
                    .output()
                    .expect("run the scaling program");
                let text = String::from_utf8_lossy(&out.stdout);
                let rate = text
                    .split_whitespace()
                    .skip_while(|&f| f != "ops_per_sec")
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok());
                let Some(rate) = rate.filter(|_| out.status.success()) else {
                    panic!(
                        "{} under {}: {}\n{text}",
                        w.name, allocs[ai].name, out.status
                    );
                };
                progress.tick(&format!(
                    "{:<14} {:<12} {:>7.2} M pairs/s",
                    w.name,
                    allocs[ai].name,
                    rate / 1e6
                ));
                rates.entry((p, t, ai)).or_default().push(rate);
            }
        }
    }
    let med = |p, t, a| median(rates[&(p, t, a)].clone());
    let reference = allocs.iter().position(|a| a.name == "mimalloc3");
    let about = about_the_run(allocs, opts);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{}, {}: `cargo run --release --bin bench -- --scaling{}`\n",
        about.date,
        about.machine,
        if opts.quick { " --quick" } else { "" }
    );
    let _ = writeln!(md, "Versions: {}.\n", about.versions_line(", "));
    let _ = writeln!(
        md,
        "Million malloc+free pairs per second of wall time, medians of {} interleaved runs of \
         `benches/c/scaling.c` at scale {scale} (the same total work at every thread count); \
         `64/2`: the 64-thread figure over the 2-thread one (on this machine's cores, its \
         per-core ratio); `×m3`: over mimalloc 3's at the same count.\n",
        opts.reps
    );
    for (p, pattern) in patterns.iter().enumerate() {
        let _ = write!(md, "| {pattern} | ");
        for t in SCALING_THREADS {
            let _ = write!(md, "{t} threads | ");
        }
        let _ = writeln!(
            md,
            "64/2 | {} |",
            if reference.is_some() {
                "×m3 at 2 / 8 / 32 / 64"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "|---|{}---|---|", "---|".repeat(SCALING_THREADS.len()));
        for (ai, a) in allocs.iter().enumerate() {
            let _ = write!(md, "| {} | ", a.name);
            for t in 0..SCALING_THREADS.len() {
                let _ = write!(md, "{:.2} | ", med(p, t, ai) / 1e6);
            }
            let _ = write!(
                md,
                "{:.2} | ",
                med(p, SCALING_THREADS.len() - 1, ai) / med(p, 0, ai)
            );
            if let Some(r) = reference {
                let ratios: Vec<String> = (0..SCALING_THREADS.len())
                    .map(|t| format!("{:.2}", med(p, t, ai) / med(p, t, r)))
                    .collect();
                let _ = write!(md, "{}", ratios.join(" / "));
            }
            let _ = writeln!(md, " |");
        }
        let _ = writeln!(md);
    }
    let path = opts.out.join("scaling.md");
    std::fs::write(&path, &md).expect("write scaling.md");
    println!("\n{md}");
    println!("bench: wrote {}", path.display());
}

/// How big each kind of workload runs: `c` scales the C workloads, python3 and sqlite3;
/// `heavy` scales redis and gcc, whose runs are the longest; `stress` scales stress-ng's
/// stressors, whose full runs are short (about a second) and would be all noise at a tenth.
#[derive(Clone, Copy)]
struct Sizes {
    c: f64,
    heavy: f64,
    stress: f64,
}

impl Sizes {
    const FULL: Sizes = Sizes {
        c: 1.0,
        heavy: 1.0,
        stress: 1.0,
    };
    const QUICK: Sizes = Sizes {
        c: 0.1,
        heavy: 0.03,
        stress: 0.5,
    };
    /// The preload check: enough for each program to call malloc, no more.
    const CHECK: Sizes = Sizes {
        c: 0.02,
        heavy: 0.01,
        stress: 0.02,
    };
}

/// The workloads at the check sizes, under the same names as the timed ones (their input
/// files in `target/bench/check`).
fn workloads_named(repo: &Path, work: &Path, sizes: Sizes) -> Vec<Workload> {
    let check = work.join("check");
    std::fs::create_dir_all(&check).expect("create target/bench/check");
    workloads(repo, work, &check, sizes)
}

/// A phase's progress: `[done/total]`, the time so far, and an estimate of what is left.
struct Progress {
    phase: &'static str,
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    fn new(phase: &'static str, total: usize) -> Self {
        println!("bench: {phase}: {total} runs");
        Progress {
            phase,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// One step done; what is left is extrapolated from the steps so far.
    fn tick(&mut self, what: &str) {
        self.tick_with(what, None);
    }

    /// One step done; `left` is the caller's estimate of the seconds left, if it has one.
    fn tick_with(&mut self, what: &str, left: Option<f64>) {
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left =
            left.unwrap_or_else(|| elapsed / self.done as f64 * (self.total - self.done) as f64);
        println!(
            "[{:>3}/{}] {what}  ({} {:.0} s, about {} left)",
            self.done,
            self.total,
            self.phase,
            elapsed,
            minutes(left.max(0.0))
        );
    }
}

/// `90` → "1 min 30 s".
fn minutes(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// Median wall seconds per (workload, allocator) of the last run of the same kind.
type Times = BTreeMap<(String, String), f64>;

fn read_times(path: &Path) -> Times {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (w, a, t) = (f.next()?, f.next()?, f.next()?.parse().ok()?);
            Some(((w.to_string(), a.to_string()), t))
        })
        .collect()
}

fn write_times(path: &Path, samples: &BTreeMap<(String, &'static str), Vec<Sample>>) {
    let mut t = String::new();
    for ((w, a), v) in samples {
        let _ = writeln!(
            t,
            "{w}\t{a}\t{:.3}",
            median(v.iter().map(|s| s.wall).collect())
        );
    }
    let _ = std::fs::write(path, t);
}

/// Seconds one run of `workload` under `alloc` should take: the last run's time, or, for an
/// allocator that has none (one added since), the median of the other allocators' times on
/// that workload; `None` where the workload has no time recorded.
fn expected(last: &Times, workload: &str, alloc: &str) -> Option<f64> {
    if let Some(&t) = last.get(&(workload.to_string(), alloc.to_string())) {
        return Some(t);
    }
    let others: Vec<f64> = last
        .iter()
        .filter(|((w, _), _)| w == workload)
        .map(|(_, &t)| t)
        .collect();
    (!others.is_empty()).then(|| median(others))
}

/// Seconds the timed runs should take, from the last run's times; `None` unless every
/// workload has some.
fn estimate(workloads: &[Workload], allocs: &[Alloc], reps: usize, last: &Times) -> Option<f64> {
    let mut secs = 0.0;
    for w in workloads {
        for a in allocs {
            secs += expected(last, &w.name, a.name)?;
        }
    }
    Some(secs * reps as f64)
}

/// What the table's and the chart's titles say about the run: date, machine, kind, versions.
struct About {
    date: String,
    machine: String,
    kind: String,
    versions: Vec<(String, String)>,
}

impl About {
    /// "--quick, N runs each" or "full size, N runs each".
    fn kind(quick: bool, runs: impl std::fmt::Display) -> String {
        let size = if quick { "--quick" } else { "full size" };
        format!("{size}, {runs} runs each")
    }

    /// "name version" of every allocator, joined by `sep`.
    fn versions_line(&self, sep: &str) -> String {
        self.versions_lines(sep, usize::MAX).join(sep)
    }

    /// The same, in lines of at most `width` characters where it can (an allocator's
    /// "name version" is never split).
    fn versions_lines(&self, sep: &str, width: usize) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        for (n, v) in &self.versions {
            let item = format!("{n} {v}");
            match lines.last_mut() {
                Some(l) if l.chars().count() + sep.len() + item.chars().count() <= width => {
                    l.push_str(sep);
                    l.push_str(&item);
                }
                _ => lines.push(item),
            }
        }
        lines
    }
}

fn about_the_run(allocs: &[Alloc], opts: &Options) -> About {
    let sh = |cmd: &str| -> String {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let machine = format!(
        "{} cores{}, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cpu.is_empty() {
            String::new()
        } else {
            format!(" ({})", cpu.trim())
        },
        sh("uname -r")
    );
    let mut versions = Vec::new();
    // The guard modes' variants are rampart with options: one version line for all of them.
    for a in allocs.iter().filter(|a| !a.name.starts_with("rampart-")) {
        // The peers built from source carry theirs.
        if let Some(v) = &a.version {
            versions.push((a.name.to_string(), v.clone()));
            continue;
        }
        let v = match a.name {
            "glibc" => sh("getconf GNU_LIBC_VERSION | cut -d' ' -f2"),
            "rampart" => {
                let commit = sh("git rev-parse --short HEAD");
                let dirty = if sh("git status --porcelain --untracked-files=no").is_empty() {
                    ""
                } else {
                    "+changes"
                };
                format!("{} ({commit}{dirty})", env!("CARGO_PKG_VERSION"))
            }
            n => {
                let pkg = PEERS.iter().find(|p| p.0 == n).map_or("", |p| p.2);
                let v = sh(&format!(
                    "dpkg-query -W -f='${{Version}}' {pkg} 2>/dev/null"
                ));
                format!("{v} (Debian)")
            }
        };
        versions.push((a.name.to_string(), v));
    }
    About {
        date: sh("date -u +%Y-%m-%d"),
        machine,
        kind: About::kind(opts.quick, opts.reps),
        versions,
    }
}

impl Options {
    /// The kind of run, for the record of its times: quick or full, peers or guard modes.
    fn kind(&self) -> String {
        let size = if self.quick { "quick" } else { "full" };
        let set = ["peers", "guard-modes", "guard-all"][self.guard_modes as usize];
        format!("{size}-{set}")
    }
}

fn parse_args() -> Options {
    let mut opts = Options {
        quick: false,
        guard_modes: 0,
        reps: 0,
        out: PathBuf::from("bench-results"),
        replot: None,
        scaling: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--guard-modes" => opts.guard_modes = 1,
            "--guard-all" => opts.guard_modes = 2,
            "--scaling" => opts.scaling = true,
            "--reps" => {
                opts.reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--out" => opts.out = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--replot" => opts.replot = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            _ => usage(),
        }
    }
    if opts.reps == 0 {
        opts.reps = if opts.quick { 3 } else { 5 };
    }
    opts
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo run --release --bin bench -- [--quick] [--reps N] [--out DIR] [--guard-modes|--guard-all|--scaling]\n       cargo run --release --bin bench -- --replot DIR   (redraws DIR/chart.svg from DIR/results.md)"
    );
    exit(2);
}

/// glibc, the peers (installed from Debian if missing and possible, or built from source),
/// and rampart (built).
fn allocators(repo: &Path, guard_modes: u8) -> Vec<Alloc> {
    let mut missing: Vec<&str> = PEERS
        .iter()
        .filter(|(_, lib, _)| !Path::new(PEER_DIR).join(lib).exists())
        .map(|(_, _, pkg)| *pkg)
        .collect();
    // The tools the runner itself uses: /usr/bin/time for the measurements, valgrind for the
    // fast-path figure, g++ and make for the peers built from source, and the real programs.
    for (tool, pkg) in [
        ("/usr/bin/time", "time"),
        ("/usr/bin/valgrind", "valgrind"),
        ("/usr/bin/g++", "g++"),
        ("/usr/bin/make", "make"),
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/sqlite3", "sqlite3"),
        ("/usr/bin/gcc", "gcc"),
        ("/usr/bin/redis-server", "redis-server"),
        ("/usr/bin/redis-benchmark", "redis-tools"),
        ("/usr/bin/stress-ng", "stress-ng"),
    ] {
        if !Path::new(tool).exists() {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() {
        println!("bench: installing {}", missing.join(" "));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q"])
                .args(&missing)
                .status();
        } else {
            println!(
                "bench: not root; install them with apt-get install -y {}",
                missing.join(" ")
            );
        }
    }
    let status = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "rampart-ffi"])
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo build --release -p rampart-ffi failed"
    );
    let mut allocs = vec![Alloc {
        name: "glibc",
        preload: None,
        env: vec![],
        version: None,
    }];
    let rampart = repo.join("target/release/librampart.so");
    if guard_modes != 0 {
        let modes = if guard_modes == 1 {
            vec![
                ("rampart", vec![]),
                ("rampart-sample", vec![("RAMPART_GUARD", "sample")]),
                ("rampart-redzone", vec![("RAMPART_REDZONE", "16")]),
                ("rampart-harden", vec![("RAMPART_HARDEN", "1")]),
                (
                    "rampart-profile",
                    vec![
                        ("RAMPART_PROFILE", "heap"),
                        ("RAMPART_PROFILE_OUT", "/dev/null"),
                    ],
                ),
            ]
        } else {
            vec![
                ("rampart", vec![]),
                ("rampart-all", vec![("RAMPART_GUARD", "all")]),
            ]
        };
        for (name, env) in modes {
            allocs.push(Alloc {
                name,
                preload: Some(rampart.clone()),
                env,
                version: None,
            });
        }
        return allocs;
    }
    for (name, lib, pkg) in PEERS {
        let path = Path::new(PEER_DIR).join(lib);
        if path.exists() {
            allocs.push(Alloc {
                name,
                preload: Some(path),
                env: vec![],
                version: None,
            });
        } else {
            println!("bench: {name} left out ({pkg} is not installed)");
        }
    }
    for (name, lib, version) in source_peers(&repo.join("target/bench")) {
        allocs.push(Alloc {
            name,
            preload: Some(lib),
            env: vec![],
            version: Some(version),
        });
    }
    allocs.push(Alloc {
        name: "rampart",
        preload: Some(rampart),
        env: vec![],
        version: None,
    });
    allocs
}

/// When `p` was last modified; `None` where it does not exist.
fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The peers of `SOURCE_PEERS`, as (name, library, version): each built once into
/// `work/peers/NAME.so`, its version beside it in `NAME.version`, and reused while both are
/// newer than the fetch manifest (rewritten only when a pin changes). A peer that cannot be
/// fetched, built, or run is left out, with the reason printed: the others still run.
fn source_peers(work: &Path) -> Vec<(&'static str, PathBuf, String)> {
    let dir = work.join("peers");
    let manifest = match write_fetch_manifest(&dir.join("fetch")) {
        Ok(m) => m,
        Err(e) => {
            println!("bench: the peers built from source left out (writing their manifest: {e})");
            return Vec::new();
        }
    };
    let fresh =
        |p: &Path| matches!((modified(p), modified(&manifest)), (Some(f), Some(m)) if f > m);
    let mut out = Vec::new();
    let mut todo = Vec::new();
    for peer in &SOURCE_PEERS {
        let lib = dir.join(format!("{}.so", peer.name));
        let version_file = dir.join(format!("{}.version", peer.name));
        match std::fs::read_to_string(&version_file) {
            Ok(v) if fresh(&lib) && fresh(&version_file) => {
                println!("bench: {} {v}: {}, built before", peer.name, lib.display());
                out.push((peer.name, lib, v));
            }
            _ => todo.push((peer, lib, version_file)),
        }
    }
    if todo.is_empty() {
        return out;
    }
    let started = Instant::now();
    println!(
        "bench: building {} from the sources of {}",
        todo.iter().map(|t| t.0.name).collect::<Vec<_>>().join(", "),
        todo.iter()
            .map(|t| format!("{} {}", t.0.krate, t.0.pin))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sources = match fetch_sources(&manifest) {
        Ok(s) => s,
        Err(why) => {
            for (peer, _, _) in &todo {
                println!("bench: {} left out ({why})", peer.name);
            }
            return out;
        }
    };
    for (peer, lib, version_file) in todo {
        let Some((src, crate_version)) = sources.get(peer.krate) else {
            println!(
                "bench: {} left out ({} is not among the fetched crates)",
                peer.name, peer.krate
            );
            continue;
        };
        // A failed build must not leave a library that looks built: the version file is
        // written last.
        let _ = std::fs::remove_file(&version_file);
        let t = Instant::now();
        let built = (peer.build)(src, crate_version, &dir, &lib).and_then(|v| {
            smoke_test(&lib)?;
            Ok(v)
        });
        match built {
            Ok(v) => {
                // tikv-jemalloc-sys's version carries jemalloc's after a `+`: said once.
                let from = format!(
                    "({} {})",
                    peer.krate,
                    crate_version.split('+').next().unwrap_or_default()
                );
                let version = v.map_or(from.clone(), |v| format!("{v} {from}"));
                if let Err(e) = std::fs::write(&version_file, &version) {
                    println!(
                        "bench: {} left out (writing {}: {e})",
                        peer.name,
                        version_file.display()
                    );
                    continue;
                }
                println!(
                    "bench: {} {version}: built {} from {} in {}",
                    peer.name,
                    lib.display(),
                    src.display(),
                    minutes(t.elapsed().as_secs_f64())
                );
                out.push((peer.name, lib, version));
            }
            Err(why) => println!(
                "bench: {} left out (building it from {}: {why})",
                peer.name,
                src.display()
            ),
        }
    }
    println!(
        "bench: the peers from source took {}",
        minutes(started.elapsed().as_secs_f64())
    );
    out
}

/// Writes, in `fetch`, the manifest of a package that only depends on the pinned crates of
/// `SOURCE_PEERS` (nothing of it is compiled: `cargo fetch` unpacks their sources), unless
/// it already says that; returns its path. Its own `[workspace]`: it lies inside the
/// repository's folder, which holds the rampart workspace.
fn write_fetch_manifest(fetch: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(fetch)?;
    let mut text = String::from(
        "# Written by src/bin/bench.rs: the crates whose vendored sources it builds its peers from.\n\
         [package]\nname = \"bench-peer-sources\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[lib]\npath = \"lib.rs\"\n\n[dependencies]\n",
    );
    for p in &SOURCE_PEERS {
        let _ = writeln!(
            text,
            "{} = {{ version = \"={}\", default-features = false }}",
            p.krate, p.pin
        );
    }
    text.push_str("\n[workspace]\n");
    let manifest = fetch.join("Cargo.toml");
    // Rewritten only when it changes: its time is what the built libraries are compared with.
    if std::fs::read_to_string(&manifest).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&manifest, text)?;
    }
    std::fs::write(fetch.join("lib.rs"), "")?;
    Ok(manifest)
}

/// `cargo fetch`es the manifest's crates and finds, with `cargo metadata`, where each one's
/// sources are unpacked: crate name → (source folder, version).
fn fetch_sources(manifest: &Path) -> Result<BTreeMap<String, (PathBuf, String)>, String> {
    let cargo = |args: &[&str]| -> Result<String, String> {
        let o = Command::new("cargo")
            .args(args)
            .arg("--manifest-path")
            .arg(manifest)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cargo {}: {e}", args[0]))?;
        if !o.status.success() {
            // Its "error: ..." line, else its last words.
            let err = String::from_utf8_lossy(&o.stderr);
            let mut lines = err.lines().map(str::trim).filter(|l| !l.is_empty());
            let said = lines
                .clone()
                .find(|l| l.starts_with("error"))
                .or_else(|| lines.next_back())
                .unwrap_or("");
            return Err(format!("cargo {} failed: {said}", args[0]));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    cargo(&["fetch", "-q"])?;
    let metadata = cargo(&["metadata", "-q", "--format-version", "1"])?;
    // Every package's "manifest_path" is the Cargo.toml in its source folder, which a registry
    // crate unpacks as NAME-VERSION: the folder names the crate and its version.
    let mut found = BTreeMap::new();
    for tail in metadata.split("\"manifest_path\":\"").skip(1) {
        let path = Path::new(tail.split('"').next().unwrap_or_default());
        let Some(src) = path.parent() else { continue };
        let folder = src.file_name().unwrap_or_default().to_string_lossy();
        for p in &SOURCE_PEERS {
            if let Some(v) = folder.strip_prefix(&format!("{}-", p.krate)) {
                if v.starts_with(|c: char| c.is_ascii_digit()) {
                    found.insert(p.krate.to_string(), (src.to_path_buf(), v.to_string()));
                }
            }
        }
    }
    Ok(found)
}

/// Runs one command of a build with its output appended to `log`; the error names the
/// command and its last lines of output.
fn build_step(cmd: &mut Command, log: &Path) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    let mut all = std::fs::read_to_string(log).unwrap_or_default();
    all.push_str(&text);
    let _ = std::fs::write(log, all);
    if o.status.success() {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(format!(
        "{program} failed ({}): {} (all of it in {})",
        o.status,
        lines[lines.len().saturating_sub(3)..].join(" / "),
        log.display()
    ))
}

/// A library just built must at least start a shell that allocates (ld.so refuses a library
/// with an unresolved symbol, and a broken one crashes): else the preload check would stop
/// the whole run on it.
fn smoke_test(lib: &Path) -> Result<(), String> {
    let o = Command::new("/bin/sh")
        .args(["-c", "echo ok"])
        .env("LD_PRELOAD", lib)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("/bin/sh: {e}"))?;
    if o.status.success() && o.stdout == b"ok\n" {
        Ok(())
    } else {
        Err(format!(
            "/bin/sh does not run on it ({}: {})",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// mimalloc 3 (libmimalloc-sys keeps it in `c_src/mimalloc/v3`, v2 beside it) as the
/// preloadable library of its CMakeLists.txt's release build: `src/static.c` (which includes
/// every source file) as C11, `-O3 -DNDEBUG`, the defines of the shared library that
/// overrides malloc (`MI_MALLOC_OVERRIDE`, `MI_SHARED_LIB`, `MI_BUILD_RELEASE`), its flags
/// for gcc (`-fvisibility=hidden -ftls-model=initial-exec -fno-builtin-malloc`), linked with
/// the libraries it finds (pthread, rt, atomic). Its default of allowing transparent huge
/// pages is kept (`MI_NO_THP` is off upstream): where the kernel's THP mode is `madvise`, it
/// asks for them, which shows in its peak RSS and, on short runs, its page-fault time. The
/// version is `MI_MALLOC_VERSION` of `include/mimalloc.h` (major, then two digits of minor,
/// two of patch).
fn build_mimalloc3(src: &Path, _: &str, dir: &Path, lib: &Path) -> Built {
    let v3 = src.join("c_src/mimalloc/v3");
    let header = v3.join("include/mimalloc.h");
    let text =
        std::fs::read_to_string(&header).map_err(|e| format!("{}: {e}", header.display()))?;
    let n: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("#define MI_MALLOC_VERSION"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no MI_MALLOC_VERSION in {}", header.display()))?;
    println!(
        "bench: mimalloc3: {} says MI_MALLOC_VERSION {n}",
        header.display()
    );
    let log = dir.join("mimalloc3.log");
    let _ = std::fs::remove_file(&log);
    build_step(
        Command::new("gcc")
            .args(["-std=gnu11", "-O3", "-DNDEBUG", "-fPIC", "-shared"])
            .args([
                "-DMI_MALLOC_OVERRIDE",
                "-DMI_SHARED_LIB",
                "-DMI_SHARED_LIB_EXPORT",
            ])
            .args(["-DMI_BUILD_RELEASE", "-DMI_CMAKE_BUILD_TYPE=release"])
            .args([
                "-Wall",
                "-Wextra",
                "-Wno-unknown-pragmas",
                "-Wstrict-prototypes",
            ])
            .args([
                "-fvisibility=hidden",
                "-ftls-model=initial-exec",
                "-fno-builtin-malloc",
            ])
            .arg("-I")
            .arg(v3.join("include"))
            .arg(v3.join("src/static.c"))
            .arg("-o")
            .arg(lib)
            .args(["-lpthread", "-lrt", "-latomic"]),
        &log,
    )?;
    Ok(Some(format!("{}.{}.{}", n / 10000, n / 100 % 100, n % 100)))
}

/// snmalloc (snmalloc-sys vendors it in `upstream`) as its CMakeLists.txt builds
/// `libsnmallocshim.so` for Linux with g++: `override/malloc.cc` and `override/new.cc` as
/// C++20, `-O3 -DNDEBUG`, hidden visibility with the entry points exported, its code
/// generation flags (`-mcx16 -mprfchw -ftls-model=initial-exec -fomit-frame-pointer
/// -ffunction-sections -fno-rtti`), the thread cleanup it picks on Linux
/// (`CXX11_THREAD_ATEXIT_DIRECT`), the defines its configure checks yield on glibc (getentropy,
/// linux/random.h, linux/futex.h, pthread_atfork; `MALLOC_USABLE_SIZE_QUALIFIER=const`,
/// which it always sets), libstdc++ linked statically. Not its `-Werror`: a new warning of a
/// newer compiler is no reason to lose the peer. Its sources state no version (the
/// CMakeLists `project` has none): the crate's is reported.
fn build_snmalloc(src: &Path, _: &str, dir: &Path, lib: &Path) -> Built {
    let up = src.join("upstream");
    let log = dir.join("snmalloc.log");
    let _ = std::fs::remove_file(&log);
    build_step(
        Command::new("g++")
            .args(["-std=c++20", "-O3", "-DNDEBUG", "-fPIC", "-shared"])
            .args([
                "-fvisibility=hidden",
                "-fno-rtti",
                "-Wall",
                "-Wextra",
                "-Wundef",
            ])
            .args(["-mcx16", "-mprfchw", "-ftls-model=initial-exec"])
            .args(["-fomit-frame-pointer", "-ffunction-sections"])
            .args([
                "-DSNMALLOC_USE_WAIT_ON_ADDRESS=1",
                "-DSNMALLOC_NO_REALLOCARRAY",
                "-DSNMALLOC_NO_REALLOCARR",
                "-DSNMALLOC_PLATFORM_HAS_GETENTROPY",
                "-DSNMALLOC_PTHREAD_ATFORK_WORKS",
                "-DSNMALLOC_HAS_LINUX_RANDOM_H",
                "-DSNMALLOC_HAS_LINUX_FUTEX_H",
                "-DMALLOC_USABLE_SIZE_QUALIFIER=const",
                "-DSNMALLOC_USE_CXX11_THREAD_ATEXIT_DIRECT",
                "-DSNMALLOC_EXPORT=__attribute__((visibility(\"default\")))",
                "-DSNMALLOC_CHECK_LOADS=false",
                "-DSNMALLOC_PAGEID=false",
            ])
            .arg("-I")
            .arg(up.join("src"))
            .arg(up.join("src/snmalloc/override/malloc.cc"))
            .arg(up.join("src/snmalloc/override/new.cc"))
            .arg("-o")
            .arg(lib)
            .args([
                "-static-libstdc++",
                "-Wl,--no-undefined",
                "-pthread",
                "-latomic",
            ]),
        &log,
    )?;
    Ok(None)
}

/// jemalloc (tikv-jemalloc-sys vendors its sources in `jemalloc`, and the configure script
/// generated from them in `configure`) configured out of tree in `dir/jemalloc-build` with
/// jemalloc's defaults (no prefix: it overrides malloc; its C++ operators, as Debian's has),
/// and `make lib/libjemalloc.so.2`. The sources have no VERSION file nor git history: the
/// version is the one the crate's version carries after its `+` (`--with-version`, as its
/// build.rs does), read back from the `JEMALLOC_VERSION` of the generated jemalloc.h.
fn build_jemalloc(src: &Path, crate_version: &str, dir: &Path, lib: &Path) -> Built {
    let je_version = crate_version
        .split_once('+')
        .map(|v| v.1)
        .ok_or_else(|| format!("the crate's version {crate_version} names no jemalloc version"))?;
    let build = dir.join("jemalloc-build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).map_err(|e| format!("{}: {e}", build.display()))?;
    let log = dir.join("jemalloc-src.log");
    let _ = std::fs::remove_file(&log);
    build_step(
        Command::new("sh")
            .arg(src.join("configure/configure"))
            .arg(format!("--srcdir={}", src.join("jemalloc").display()))
            .arg(format!("--with-version={je_version}"))
            .current_dir(&build),
        &log,
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    build_step(
        Command::new("make")
            .arg(format!("-j{jobs}"))
            .arg("lib/libjemalloc.so.2")
            .current_dir(&build),
        &log,
    )?;
    std::fs::copy(build.join("lib/libjemalloc.so.2"), lib)
        .map_err(|e| format!("copy lib/libjemalloc.so.2: {e}"))?;
    let header = build.join("include/jemalloc/jemalloc.h");
    let text =
        std::fs::read_to_string(&header).map_err(|e| format!("{}: {e}", header.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("#define JEMALLOC_VERSION \""))
        .and_then(|v| v.split('"').next())
        .ok_or_else(|| format!("no JEMALLOC_VERSION in {}", header.display()))?;
    println!(
        "bench: jemalloc-src: {} says JEMALLOC_VERSION \"{version}\"",
        header.display()
    );
    // 5.3.1-0-g81034ce1f1373e37dc865038e1bc8eeecf559ce8: the commit's first 7 digits say it.
    Ok(Some(match version.split_once("-g") {
        Some((release, commit)) => format!("{release}-g{}", &commit[..commit.len().min(7)]),
        None => version.to_string(),
    }))
}

/// The C workloads of benches/c/ (compiled into `work` where the binary is older than its
/// source) and the real programs, with their input files in `data`.
fn workloads(repo: &Path, work: &Path, data: &Path, sizes: Sizes) -> Vec<Workload> {
    let scale = sizes.c;
    let mut out = Vec::new();
    let c_programs = [
        (
            "server",
            "threads exchanging blocks of random sizes and lifetimes",
        ),
        ("prodcons", "producer threads feeding consumer threads"),
        (
            "false_sharing",
            "small objects of different threads written in a loop",
        ),
        ("shortlived", "a long run of small short-lived objects"),
        ("fragment", "random sizes 16 B - 64 KiB, random lifetimes"),
        ("large", "blocks of 64 KiB - 32 MiB grown with realloc"),
        ("churn", "short-lived threads whose blocks outlive them"),
        (
            "freemany",
            "200,000 blocks (8 B - 104 KiB) over many chunks, all freed",
        ),
    ];
    for (name, what) in c_programs {
        let src = repo.join(format!("benches/c/{name}.c"));
        if !src.exists() {
            println!("bench: {name} left out ({} is missing)", src.display());
            continue;
        }
        let exe = compile_c(repo, work, name);
        out.push(Workload {
            name: name.into(),
            what: what.into(),
            argv: vec![exe.display().to_string(), format!("{scale}")],
            env: vec![],
        });
    }
    // python3, pure Python, with Python's own small-object allocator off so that every object
    // is a malloc (PYTHONMALLOC=malloc).
    let n = (300_000.0 * scale) as u64;
    let py = format!(
        "import json\nd = {{}}\nfor i in range({n}):\n    d[str(i)] = [i, str(i) * 3, {{'k': i}}]\n\
         s = json.dumps(d)\nt = json.loads(s)\nprint(len(s), sum(v[0] for v in t.values()))\n"
    );
    out.push(Workload {
        name: "python3".into(),
        what: format!("pure-Python dicts, lists, strings and json ({n} keys), PYTHONMALLOC=malloc"),
        argv: vec!["/usr/bin/python3".into(), "-c".into(), py],
        env: vec![("PYTHONMALLOC".into(), "malloc".into())],
    });
    // sqlite3: bulk insert and queries.
    let rows = (100_000.0 * scale) as u64;
    let sql = data.join("bench.sql");
    let mut s = String::from(
        "BEGIN;\nCREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v REAL, grp INT);\n",
    );
    for i in 0..rows {
        let _ = writeln!(
            s,
            "INSERT INTO t VALUES({i}, 'name-{i}-{}', {}.5, {});",
            i * 7919 % 1000,
            i % 977,
            i % 100
        );
    }
    s.push_str(
        "COMMIT;\nCREATE INDEX t_grp ON t(grp);\nSELECT grp, count(*), sum(v), max(name) FROM t GROUP BY grp ORDER BY 3 DESC LIMIT 3;\n\
         SELECT count(*) FROM t a JOIN t b ON a.id = b.id + 1 WHERE a.grp = b.grp + 1;\n\
         SELECT length(group_concat(name)) FROM (SELECT name FROM t ORDER BY name);\n",
    );
    std::fs::write(&sql, s).expect("write bench.sql");
    out.push(Workload {
        name: "sqlite3".into(),
        what: format!("{rows} rows inserted in a transaction, an index, aggregates, a join"),
        argv: vec![
            "/usr/bin/sqlite3".into(),
            ":memory:".into(),
            format!(".read {}", sql.display()),
        ],
        env: vec![],
    });
    // redis-server under redis-benchmark: the server, the client and redis-cli all run on the
    // allocator under test (the whole script is preloaded); the server's port is fixed per
    // run of the runner, on loopback.
    let requests = (100_000.0 * sizes.heavy) as u64;
    let port = 20_000 + (std::process::id() % 20_000);
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null & \
         pid=$!; for i in $(seq 100); do redis-cli -p {port} ping >/dev/null 2>&1 && break; sleep 0.05; done; \
         redis-benchmark -p {port} -n {requests} -r 100000 -q -t set,get,lpush,lrange_100,incr >/dev/null || exit 1; \
         redis-cli -p {port} shutdown nosave >/dev/null 2>&1; wait $pid"
    );
    if Path::new("/usr/bin/redis-server").exists() && Path::new("/usr/bin/redis-benchmark").exists()
    {
        out.push(Workload {
            name: "redis".into(),
            what: format!("redis-server under redis-benchmark -n {requests} (set, get, lpush, lrange_100, incr)"),
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            env: vec![],
        });
    } else {
        println!("bench: redis left out (install redis-server and redis-tools)");
    }
    // stress-ng's allocator stressors, each run to a fixed number of bogo operations
    // (--malloc-ops, per worker) so that its wall time measures it: the throughput ratio is
    // the inverse of the time ratio (the report lists both).
    if Path::new("/usr/bin/stress-ng").exists() {
        for (name, what, args, ops) in [
            (
                "stress-malloc",
                "stress-ng --malloc 2",
                &["--malloc", "2"][..],
                100_000.0,
            ),
            (
                "stress-pthreads",
                "stress-ng --malloc 1 --malloc-pthreads 4",
                &["--malloc", "1", "--malloc-pthreads", "4"][..],
                50_000.0,
            ),
            (
                "stress-thresh",
                "stress-ng --malloc 2 --malloc-thresh 1024",
                &["--malloc", "2", "--malloc-thresh", "1024"][..],
                100_000.0,
            ),
        ] {
            let ops = ((ops * sizes.stress) as u64).max(1000);
            let mut argv = vec!["/usr/bin/stress-ng".to_string(), "-q".to_string()];
            argv.extend(args.iter().map(|a| a.to_string()));
            argv.extend(["--malloc-ops".to_string(), ops.to_string()]);
            out.push(Workload {
                name: name.into(),
                what: format!("{what} --malloc-ops {ops} (random sizes up to 64 KiB)"),
                argv,
                env: vec![],
            });
        }
    } else {
        println!("bench: stress-ng left out (install stress-ng)");
    }
    // gcc: a large generated C file.
    let funcs = (3000.0 * sizes.heavy) as u64;
    let c = data.join("big.c");
    let mut s = String::new();
    for i in 0..funcs {
        let _ = writeln!(
            s,
            "int f{i}(int x) {{ int a[16]; for (int j = 0; j < 16; j++) a[j] = x * j + {i}; \
             int s = 0; for (int j = 0; j < 16; j++) s += a[j] ^ (a[(j + 3) % 16] >> 1); return s; }}"
        );
    }
    std::fs::write(&c, s).expect("write big.c");
    out.push(Workload {
        name: "gcc".into(),
        what: format!("gcc -O2 -c on a generated file of {funcs} functions"),
        argv: vec![
            "/usr/bin/gcc".into(),
            "-O2".into(),
            "-c".into(),
            c.display().to_string(),
            "-o".into(),
            "/dev/null".into(),
        ],
        env: vec![],
    });
    out
}

fn command(w: &Workload, a: &Alloc) -> Command {
    let mut cmd = Command::new(&w.argv[0]);
    cmd.args(&w.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in &w.env {
        cmd.env(k, v);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("RAMPART_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(a.env.iter().copied());
    match &a.preload {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    cmd
}

/// Runs `w` once under `a` with `LD_DEBUG=bindings` and checks that `malloc` was bound to the
/// allocator's library (glibc's libc for glibc) in the process it started.
fn verify_preload(w: &Workload, a: &Alloc, work: &Path) {
    let prefix = work.join(format!("ld-{}-{}", w.name, a.name));
    for f in ld_debug_files(work, &prefix) {
        let _ = std::fs::remove_file(f);
    }
    let mut cmd = command(w, a);
    cmd.env("LD_DEBUG", "bindings")
        .env("LD_DEBUG_OUTPUT", &prefix)
        .stderr(Stdio::null());
    let status = cmd.status().expect("run the workload");
    assert!(
        status.success(),
        "{} under {} failed: {status}",
        w.name,
        a.name
    );
    let lib = match &a.preload {
        Some(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
        None => "libc.so.6".into(),
    };
    let mut bound = false;
    for f in ld_debug_files(work, &prefix) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        bound |= text.lines().any(|l| {
            l.contains("normal symbol `malloc'")
                && l.contains(&format!("/{lib} "))
                && l.contains(" to ")
        });
        let _ = std::fs::remove_file(f);
    }
    if !bound {
        eprintln!(
            "bench: {} did not run on {} (no malloc binding to {lib}): refusing to time it",
            w.name, a.name
        );
        exit(1);
    }
}

/// The files `LD_DEBUG_OUTPUT=prefix` made (one per process: `prefix.PID`).
fn ld_debug_files(work: &Path, prefix: &Path) -> Vec<PathBuf> {
    let stem = prefix
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir(work)
        .expect("read target/bench")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&stem))
        .map(|e| e.path())
        .collect()
}

/// One timed run, measured by /usr/bin/time (wall, user + system, max RSS).
fn measure(w: &Workload, a: &Alloc, work: &Path) -> Sample {
    let out = work.join("time.out");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-q", "-f", "%e %U %S %M", "-o"]).arg(&out);
    let inner = command(w, a);
    cmd.arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let status = cmd.status().expect("run /usr/bin/time");
    assert!(
        status.success(),
        "{} under {} failed: {status}",
        w.name,
        a.name
    );
    let text = std::fs::read_to_string(&out).expect("read time.out");
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(v.len() >= 4, "unexpected /usr/bin/time output: {text}");
    Sample {
        // %e counts hundredths of a second: a run it reports as 0.00 (a --quick workload on
        // a fast allocator) counts as half of one, so that every ratio to it is finite.
        wall: v[0].max(0.005),
        cpu: v[1] + v[2],
        rss_kib: v[3],
    }
}

/// callgrind instructions per malloc(64)+free pair of each allocator, from the C loop of
/// benches/c/pairs.c run for 1 M and 2 M pairs; or why there is no figure. A run that fails
/// under valgrind counts for nothing (valgrind still reports what it counted until the
/// failure): snmalloc, for one, does not start there, as valgrind gives a program less
/// address space than snmalloc reserves for its pagemap.
fn fast_path_figures(allocs: &[Alloc], work: &Path) -> Vec<(String, Result<f64, String>)> {
    let exe = work.join("pairs");
    let ok = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg("benches/c/pairs.c")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    let mut out = Vec::new();
    let mut progress = Progress::new("fast path (callgrind)", allocs.len());
    for a in allocs {
        // Under valgrind, RAMPART_GUARD=all's 2 M guarded blocks would take hours.
        let guard_all = a
            .env
            .iter()
            .any(|&(k, v)| k == "RAMPART_GUARD" && v == "all");
        let count = |n: u64| -> Result<f64, String> {
            let mut cmd = Command::new("valgrind");
            cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
                .arg(&exe)
                .arg("64")
                .arg(n.to_string());
            if let Some(lib) = &a.preload {
                cmd.env("LD_PRELOAD", lib);
            }
            cmd.envs(a.env.iter().copied());
            let o = cmd
                .stdout(Stdio::null())
                .output()
                .map_err(|e| format!("valgrind: {e}"))?;
            let err = String::from_utf8_lossy(&o.stderr);
            if !o.status.success() {
                // The program's own last words, not valgrind's (its lines start with ==PID==).
                let said = err
                    .lines()
                    .rfind(|l| !l.starts_with("==") && !l.trim().is_empty())
                    .unwrap_or("");
                return Err(format!(
                    "it fails under valgrind, {}, saying \"{said}\"",
                    o.status
                ));
            }
            err.lines()
                .find_map(|l| l.split("Collected :").nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| "no count in callgrind's output".to_string())
        };
        let per_pair = if guard_all {
            Err("a debugging mode: not counted".to_string())
        } else if !ok {
            Err("benches/c/pairs.c did not compile".to_string())
        } else if !have_valgrind {
            Err("valgrind is missing".to_string())
        } else {
            count(1_000_000).and_then(|a1| Ok((count(2_000_000)? - a1) / 1_000_000.0))
        };
        progress.tick(&format!(
            "fast path {:<12} {}",
            a.name,
            match &per_pair {
                Ok(v) => format!("{v:.1} instructions per pair"),
                Err(why) => format!("n/a ({why})"),
            }
        ));
        out.push((a.name.to_string(), per_pair));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

type Medians = BTreeMap<(String, &'static str), (f64, f64, f64)>;

fn medians(samples: &BTreeMap<(String, &'static str), Vec<Sample>>) -> Medians {
    samples
        .iter()
        .map(|(k, v)| {
            let m = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
            (k.clone(), (m(|s| s.wall), m(|s| s.cpu), m(|s| s.rss_kib)))
        })
        .collect()
}

fn report(
    workloads: &[Workload],
    allocs: &[Alloc],
    samples: &BTreeMap<(String, &'static str), Vec<Sample>>,
    fast_path: &[(String, Result<f64, String>)],
    opts: &Options,
    about: &About,
) -> String {
    let med = medians(samples);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{}, {}: `cargo run --release --bin bench --{}{}`\n",
        about.date,
        about.machine,
        if opts.quick { " --quick" } else { "" },
        match opts.guard_modes {
            1 => " --guard-modes",
            2 => " --guard-all",
            _ => "",
        }
    );
    let _ = writeln!(t, "Versions: {}.\n", about.versions_line(", "));
    let peer_names: Vec<&str> = allocs
        .iter()
        .map(|a| a.name)
        .filter(|&n| n != "glibc" && !n.starts_with("rampart"))
        .collect();
    let _ = writeln!(
        t,
        "Medians of {} interleaved runs{}; time and RSS also as ratios to glibc (×g) and to the best peer{} (×p).\n",
        opts.reps,
        if opts.quick {
            " at reduced sizes (--quick: C workloads, python3 and sqlite3 at 1/10, redis and gcc at 1/33, stress-ng at 1/2)"
        } else {
            ""
        },
        if peer_names.is_empty() {
            String::new()
        } else {
            format!(" of {}", peer_names.join(", "))
        }
    );
    // With --guard-modes, ×p compares with rampart with its checks off instead.
    let guard_modes = allocs.iter().any(|a| a.name.starts_with("rampart-"));
    if guard_modes {
        let _ = writeln!(
            t,
            "(--guard-modes: ×p is the ratio to `rampart` with its checks off.)\n"
        );
    }
    let _ = writeln!(
        t,
        "| workload | allocator | wall s | ×g | ×p | cpu s | peak RSS MiB | ×g | ×p |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    let mut time_ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rss_ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut time_vs_p: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rss_vs_p: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for w in workloads {
        let g = med[&(w.name.clone(), "glibc")];
        let peers: Vec<(f64, f64, f64)> = allocs
            .iter()
            .filter(|a| {
                if guard_modes {
                    a.name == "rampart"
                } else {
                    a.name != "glibc" && a.name != "rampart"
                }
            })
            .map(|a| med[&(w.name.clone(), a.name)])
            .collect();
        let best_t = peers.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let best_r = peers.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
        for a in allocs {
            let (wall, cpu, rss) = med[&(w.name.clone(), a.name)];
            time_ratios.entry(a.name).or_default().push(wall / g.0);
            rss_ratios.entry(a.name).or_default().push(rss / g.2);
            time_vs_p.entry(a.name).or_default().push(wall / best_t);
            rss_vs_p.entry(a.name).or_default().push(rss / best_r);
            let _ = writeln!(
                t,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} |",
                w.name,
                a.name,
                wall,
                wall / g.0,
                wall / best_t,
                cpu,
                rss / 1024.0,
                rss / g.2,
                rss / best_r
            );
        }
    }
    let _ = writeln!(t, "\nGeometric means over the {} workloads, and the fast path (callgrind instructions per malloc(64)+free pair, C loop through the PLT, benches/c/pairs.c):\n", workloads.len());
    let _ = writeln!(
        t,
        "| allocator | time ×glibc | peak RSS ×glibc | time ×p | peak RSS ×p | fast path |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    for a in allocs {
        let fp = fast_path
            .iter()
            .find(|(n, _)| n == a.name)
            .and_then(|(_, v)| v.as_ref().ok());
        let _ = writeln!(
            t,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            a.name,
            geomean(&time_ratios[a.name]),
            geomean(&rss_ratios[a.name]),
            geomean(&time_vs_p[a.name]),
            geomean(&rss_vs_p[a.name]),
            fp.map_or("n/a".into(), |v| format!("{v:.0}"))
        );
    }
    let missing: Vec<String> = fast_path
        .iter()
        .filter_map(|(n, v)| v.as_ref().err().map(|why| format!("{n} ({why})")))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(t, "\nNo fast-path figure for {}.", missing.join(", "));
    }
    // stress-ng's rows as throughput (bogo operations per second) relative to glibc's.
    let stress: Vec<&Workload> = workloads
        .iter()
        .filter(|w| w.name.starts_with("stress-"))
        .collect();
    if !stress.is_empty() {
        let _ = writeln!(
            t,
            "\nstress-ng's allocator stressors as throughput relative to glibc (higher is better; a fixed number of bogo operations, so the inverse of the time ratio):\n"
        );
        let names: Vec<&str> = allocs.iter().map(|a| a.name).collect();
        let _ = writeln!(t, "| stressor | {} |", names.join(" | "));
        let _ = writeln!(t, "|---{}|", "|---".repeat(names.len()));
        for w in stress {
            let g = med[&(w.name.clone(), "glibc")].0;
            let cells: Vec<String> = allocs
                .iter()
                .map(|a| format!("{:.2}", g / med[&(w.name.clone(), a.name)].0))
                .collect();
            let _ = writeln!(t, "| `{}` | {} |", w.name, cells.join(" | "));
        }
    }
    let _ = writeln!(t, "\nWorkloads:\n");
    for w in workloads {
        let _ = writeln!(t, "- `{}`: {}", w.name, w.what);
    }
    t
}

/// Redraws `dir/chart.svg` from the medians and the header of `dir/results.md` (so a chart
/// can be drawn again, after a change to the chart's code, without repeating the runs).
fn replot(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("results.md")).unwrap_or_else(|e| {
        eprintln!("bench: read {}: {e}", dir.join("results.md").display());
        exit(1);
    });
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let mut workloads: Vec<Workload> = Vec::new();
    let mut allocs: Vec<Alloc> = Vec::new();
    let mut samples: BTreeMap<(String, &'static str), Vec<Sample>> = BTreeMap::new();
    // The rows of the table of medians, from its header to its end: the other tables' rows
    // can have as many cells (the stressors' has one per allocator).
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("| workload | allocator |"))
        .take_while(|l| l.starts_with('|'));
    for line in rows {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        // | workload | allocator | wall s | ×g | ×p | cpu s | peak RSS MiB | ×g | ×p |
        if f.len() != 11 {
            continue;
        }
        let (Ok(wall), Ok(cpu), Ok(rss)) = (f[3].parse(), f[6].parse(), f[7].parse::<f64>()) else {
            continue;
        };
        let (w, a) = (f[1], f[2]);
        if !workloads.iter().any(|x| x.name == w) {
            workloads.push(Workload {
                name: w.to_string(),
                what: String::new(),
                argv: Vec::new(),
                env: Vec::new(),
            });
        }
        let name = match allocs.iter().find(|x| x.name == a) {
            Some(x) => x.name,
            None => {
                let name = leak(a);
                allocs.push(Alloc {
                    name,
                    preload: None,
                    env: Vec::new(),
                    version: None,
                });
                name
            }
        };
        samples
            .entry((w.to_string(), name))
            .or_default()
            .push(Sample {
                wall,
                cpu,
                rss_kib: rss * 1024.0,
            });
    }
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let (date, machine) = first
        .split_once(": `")
        .map(|(head, _)| head)
        .and_then(|h| h.split_once(", "))
        .unwrap_or(("?", "?"));
    let versions = text
        .lines()
        .find_map(|l| l.strip_prefix("Versions: "))
        .unwrap_or_default()
        .trim_end_matches('.')
        .split(", ")
        .filter_map(|v| v.split_once(' '))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("Medians of "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    let about = About {
        date: date.to_string(),
        machine: machine.to_string(),
        kind: About::kind(first.contains("--quick"), runs),
        versions,
    };
    if workloads.is_empty() || !allocs.iter().any(|a| a.name == "glibc") {
        eprintln!(
            "bench: no table of medians with a glibc row in {}",
            dir.display()
        );
        exit(1);
    }
    chart(
        &workloads,
        &allocs,
        &samples,
        &about,
        &dir.join("chart.svg"),
    );
    println!("bench: redrew {}", dir.join("chart.svg").display());
}

/// Two panels of grouped bars: wall time and peak RSS relative to glibc, per workload, on a
/// logarithmic axis (labelled ticks from the smallest ratio to the largest), so that no bar
/// is clipped; bars start at 1 (glibc), and a bar beyond ×1.5 or below ×0.67 carries its
/// value. The title says the date, the machine, the kind of run and the versions.
fn chart(
    workloads: &[Workload],
    allocs: &[Alloc],
    samples: &BTreeMap<(String, &'static str), Vec<Sample>>,
    about: &About,
    path: &Path,
) {
    let med = medians(samples);
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    // The versions of eight allocators take more than one line of the title's width.
    let versions = about.versions_lines(" · ", 170);
    let head_height = 34 + 18 * versions.len() as u32;
    let root = SVGBackend::new(path, (1200, 808 + head_height)).into_drawing_area();
    root.fill(&WHITE).expect("draw");
    let (head, body) = root.split_vertically(head_height);
    head.draw_text(
        &format!(
            "rampart against its peers · {} · {} · {}",
            about.date, about.kind, about.machine
        ),
        &("sans-serif", 16).into_font().color(&BLACK),
        (12, 8),
    )
    .expect("title");
    for (i, line) in versions.iter().enumerate() {
        head.draw_text(
            line,
            &("sans-serif", 13).into_font().color(&BLACK),
            (12, 30 + 18 * i as i32),
        )
        .expect("versions");
    }
    let panels = body.split_evenly((2, 1));
    for (panel, (title, pick)) in panels.iter().zip([
        (
            "wall time relative to glibc = 1× (log scale; lower is better)",
            0usize,
        ),
        (
            "peak RSS relative to glibc = 1× (log scale; lower is better)",
            2usize,
        ),
    ]) {
        let ratio = |w: &Workload, a: &Alloc| {
            let v = med[&(w.name.clone(), a.name)];
            let g = med[&(w.name.clone(), "glibc")];
            let (x, y) = if pick == 0 { (v.0, g.0) } else { (v.2, g.2) };
            x / y
        };
        let all: Vec<f64> = workloads
            .iter()
            .flat_map(|w| allocs.iter().map(move |a| (w, a)))
            .map(|(w, a)| ratio(w, a))
            .collect();
        // Powers of two around every ratio, with room above the largest for its label.
        let top = all
            .iter()
            .copied()
            .fold(1.0f64, f64::max)
            .log2()
            .ceil()
            .max(1.0)
            + 0.4;
        // Room below the smallest for its label, as above the largest.
        let bottom = (all.iter().copied().fold(1.0f64, f64::min).log2() - 0.4)
            .floor()
            .min(-1.0);
        let (lo, hi) = (2f64.powf(bottom), 2f64.powf(top));
        let mut c = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(26)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..workloads.len() as f64, (lo..hi).log_scale())
            .expect("chart");
        let ticks: Vec<f64> = (bottom as i32..=top.floor() as i32)
            .map(|e| 2f64.powi(e))
            .collect();
        c.configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(workloads.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < workloads.len() {
                    workloads[i].name.clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|_| String::new())
            .y_desc("× glibc")
            .draw()
            .expect("mesh");
        // The axis's ticks: the powers of two, labelled.
        for &t in &ticks {
            c.draw_series(LineSeries::new(
                [(0.0, t), (workloads.len() as f64, t)],
                BLACK.mix(if t == 1.0 { 0.9 } else { 0.15 }).stroke_width(1),
            ))
            .expect("tick line");
            c.draw_series(std::iter::once(Text::new(
                if t >= 1.0 {
                    format!("{t:.0}×")
                } else {
                    format!("{t}×")
                },
                (-0.02 * workloads.len() as f64, t),
                TextStyle::from(("sans-serif", 12).into_font())
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            )))
            .expect("tick label");
        }
        // glibc is the 1× line; the others are bars.
        let bars: Vec<&Alloc> = allocs.iter().filter(|a| a.name != "glibc").collect();
        let width = 0.8 / bars.len() as f64;
        for (k, a) in bars.into_iter().enumerate() {
            let color = colors[(k + 1) % colors.len()];
            c.draw_series(workloads.iter().enumerate().map(|(i, w)| {
                let x0 = i as f64 + 0.1 + k as f64 * width;
                let v = ratio(w, a);
                Rectangle::new([(x0, 1.0), (x0 + width * 0.9, v)], color.filled())
            }))
            .expect("bars")
            .label(a.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
            // The values of the bars far from glibc.
            c.draw_series(workloads.iter().enumerate().filter_map(|(i, w)| {
                let v = ratio(w, a);
                if (0.67..=1.5).contains(&v) {
                    return None;
                }
                let x = i as f64 + 0.1 + (k as f64 + 0.45) * width;
                let (y, vpos) = if v > 1.0 {
                    (v * 1.04, VPos::Bottom)
                } else {
                    (v / 1.04, VPos::Top)
                };
                Some(Text::new(
                    format!("{v:.1}"),
                    (x, y),
                    TextStyle::from(("sans-serif", 10).into_font())
                        .pos(Pos::new(HPos::Center, vpos)),
                ))
            }))
            .expect("values");
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .expect("legend");
    }
    root.present().expect("write the chart");
}
