//! The benchmark runner: every workload under glibc, mimalloc, jemalloc, tcmalloc and
//! rampart, interleaved, several repetitions; medians of wall time, CPU time and peak RSS,
//! ratios to glibc and to the best peer, geometric means; a markdown table, an SVG chart, and
//! the callgrind fast-path figure of every allocator.
//!
//! ```text
//! cargo run --release --bin bench -- [--quick] [--reps N] [--out DIR] [--guard-modes|--guard-all]
//! ```
//!
//! `--guard-modes` measures what rampart's checks cost instead: glibc, rampart, and rampart
//! with `RAMPART_GUARD=sample` (the default 1 in 1000) and `RAMPART_REDZONE=16`.
//! `--guard-all`: glibc, rampart and rampart with `RAMPART_GUARD=all` (a debugging mode one
//! to two orders of magnitude slower on allocation-heavy workloads: use `--quick --reps 1`).
//!
//! It installs the peers from Debian (`libmimalloc2.0`, `libjemalloc2`,
//! `libtcmalloc-minimal4`) when they are missing and it runs as root, builds librampart,
//! compiles the C workloads of `benches/c/`, and checks, before timing anything, that each
//! preloaded allocator really served its workload (`LD_DEBUG=bindings` must show `malloc`
//! bound to that library: ld.so silently falls back to glibc when a preload fails).
//! `--quick` runs every workload at a fifth of its size, 3 repetitions (under 5 minutes on
//! 2 cores); the default is full size, 5 repetitions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};
use std::time::Instant;

use plotters::prelude::*;

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

/// An allocator under test: its name, the library to preload (none for glibc), and the
/// environment it runs with.
struct Alloc {
    name: &'static str,
    preload: Option<PathBuf>,
    env: Vec<(&'static str, &'static str)>,
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
}

fn main() {
    let opts = parse_args();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(&repo).expect("cd to the repository");
    let work = repo.join("target/bench");
    std::fs::create_dir_all(&work).expect("create target/bench");
    std::fs::create_dir_all(&opts.out).expect("create the output folder");

    let allocs = allocators(&repo, opts.guard_modes);
    let scale = if opts.quick { 0.2 } else { 1.0 };
    let workloads = workloads(&repo, &work, scale);
    println!(
        "bench: {} workloads x {} allocators x {} repetitions{}",
        workloads.len(),
        allocs.len(),
        opts.reps,
        if opts.quick {
            " (--quick: a fifth of full size)"
        } else {
            ""
        }
    );

    for w in &workloads {
        for a in &allocs {
            verify_preload(w, a, &work);
        }
    }
    println!("bench: every allocator was seen serving every workload (LD_DEBUG=bindings)");

    let mut samples: BTreeMap<(String, &str), Vec<Sample>> = BTreeMap::new();
    let total = opts.reps * workloads.len() * allocs.len();
    let mut done = 0;
    let started = Instant::now();
    for rep in 0..opts.reps {
        for w in &workloads {
            // Interleave: rotate the allocators' order every repetition.
            for k in 0..allocs.len() {
                let a = &allocs[(k + rep) % allocs.len()];
                let s = measure(w, a, &work);
                done += 1;
                println!(
                    "[{done:>3}/{total}] {:<14} {:<9} {:>7.2} s wall {:>7.2} s cpu {:>8.0} KiB  ({:.0} s elapsed)",
                    w.name,
                    a.name,
                    s.wall,
                    s.cpu,
                    s.rss_kib,
                    started.elapsed().as_secs_f64()
                );
                samples.entry((w.name.clone(), a.name)).or_default().push(s);
            }
        }
    }

    let fast_path = fast_path_figures(&allocs, &work);
    let table = report(&workloads, &allocs, &samples, &fast_path, &opts);
    let md = opts.out.join("results.md");
    std::fs::write(&md, &table).expect("write results.md");
    chart(&workloads, &allocs, &samples, &opts.out.join("chart.svg"));
    println!("\n{table}");
    println!(
        "bench: wrote {} and {}",
        md.display(),
        opts.out.join("chart.svg").display()
    );
}

fn parse_args() -> Options {
    let mut opts = Options {
        quick: false,
        guard_modes: 0,
        reps: 0,
        out: PathBuf::from("bench-results"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--guard-modes" => opts.guard_modes = 1,
            "--guard-all" => opts.guard_modes = 2,
            "--reps" => {
                opts.reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--out" => opts.out = PathBuf::from(args.next().unwrap_or_else(|| usage())),
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
        "usage: cargo run --release --bin bench -- [--quick] [--reps N] [--out DIR] [--guard-modes|--guard-all]"
    );
    exit(2);
}

/// glibc, the peers (installed from Debian if missing and possible), and rampart (built).
fn allocators(repo: &Path, guard_modes: u8) -> Vec<Alloc> {
    let mut missing: Vec<&str> = PEERS
        .iter()
        .filter(|(_, lib, _)| !Path::new(PEER_DIR).join(lib).exists())
        .map(|(_, _, pkg)| *pkg)
        .collect();
    // The tools the runner itself uses: /usr/bin/time for the measurements, valgrind for the
    // fast-path figure, and the real programs.
    for (tool, pkg) in [
        ("/usr/bin/time", "time"),
        ("/usr/bin/valgrind", "valgrind"),
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/sqlite3", "sqlite3"),
        ("/usr/bin/gcc", "gcc"),
        ("/usr/bin/redis-server", "redis-server"),
        ("/usr/bin/redis-benchmark", "redis-tools"),
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
    }];
    let rampart = repo.join("target/release/librampart.so");
    if guard_modes != 0 {
        let modes = if guard_modes == 1 {
            vec![
                ("rampart", vec![]),
                ("rampart-sample", vec![("RAMPART_GUARD", "sample")]),
                ("rampart-redzone", vec![("RAMPART_REDZONE", "16")]),
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
            });
        } else {
            println!("bench: {name} left out ({pkg} is not installed)");
        }
    }
    allocs.push(Alloc {
        name: "rampart",
        preload: Some(rampart),
        env: vec![],
    });
    allocs
}

/// The C workloads of benches/c/ (compiled here) and the real programs.
fn workloads(repo: &Path, work: &Path, scale: f64) -> Vec<Workload> {
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
        let exe = work.join(name);
        let ok = Command::new("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "gcc failed on {}", src.display());
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
    let sql = work.join("bench.sql");
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
    let requests = (100_000.0 * scale) as u64;
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
    // gcc: a large generated C file.
    let funcs = (3000.0 * scale) as u64;
    let c = work.join("big.c");
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
        wall: v[0],
        cpu: v[1] + v[2],
        rss_kib: v[3],
    }
}

/// callgrind instructions per malloc(64)+free pair of each allocator, from the C loop of
/// benches/c/pairs.c run for 1 M and 2 M pairs. `None` where valgrind is missing.
fn fast_path_figures(allocs: &[Alloc], work: &Path) -> Vec<(String, Option<f64>)> {
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
    for a in allocs {
        if !ok || !have_valgrind {
            out.push((a.name.to_string(), None));
            continue;
        }
        let count = |n: u64| -> Option<f64> {
            let mut cmd = Command::new("valgrind");
            cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
                .arg(&exe)
                .arg("64")
                .arg(n.to_string());
            if let Some(lib) = &a.preload {
                cmd.env("LD_PRELOAD", lib);
            }
            cmd.envs(a.env.iter().copied());
            let o = cmd.stdout(Stdio::null()).output().ok()?;
            let err = String::from_utf8_lossy(&o.stderr);
            err.lines()
                .find_map(|l| l.split("Collected :").nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let per_pair = match (count(1_000_000), count(2_000_000)) {
            (Some(a1), Some(a2)) => Some((a2 - a1) / 1_000_000.0),
            _ => None,
        };
        println!(
            "bench: fast path {:<9} {}",
            a.name,
            per_pair.map_or("n/a".into(), |v| format!("{v:.1} instructions per pair"))
        );
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
    fast_path: &[(String, Option<f64>)],
    opts: &Options,
) -> String {
    let med = medians(samples);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Medians of {} interleaved runs{}; time and RSS also as ratios to glibc (×g) and to the best peer of mimalloc, jemalloc, tcmalloc (×p).\n",
        opts.reps,
        if opts.quick { " at a fifth of full size (--quick)" } else { "" }
    );
    let _ = writeln!(
        t,
        "| workload | allocator | wall s | ×g | ×p | cpu s | peak RSS MiB | ×g | ×p |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    // With --guard-modes, ×p compares with rampart with its checks off instead.
    let guard_modes = allocs.iter().any(|a| a.name.starts_with("rampart-"));
    if guard_modes {
        let _ = writeln!(
            t,
            "(--guard-modes: ×p is the ratio to `rampart` with its checks off.)\n"
        );
    }
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
            .and_then(|(_, v)| *v);
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
    let _ = writeln!(t, "\nWorkloads:\n");
    for w in workloads {
        let _ = writeln!(t, "- `{}`: {}", w.name, w.what);
    }
    t
}

/// Two panels of grouped bars: wall time and peak RSS relative to glibc, per workload.
fn chart(
    workloads: &[Workload],
    allocs: &[Alloc],
    samples: &BTreeMap<(String, &'static str), Vec<Sample>>,
    path: &Path,
) {
    let med = medians(samples);
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).expect("draw");
    let panels = root.split_evenly((2, 1));
    for (panel, (title, pick)) in panels.iter().zip([
        ("wall time relative to glibc (lower is better)", 0usize),
        ("peak RSS relative to glibc (lower is better)", 2usize),
    ]) {
        let ratio = |w: &Workload, a: &Alloc| {
            let v = med[&(w.name.clone(), a.name)];
            let g = med[&(w.name.clone(), "glibc")];
            let (x, y) = if pick == 0 { (v.0, g.0) } else { (v.2, g.2) };
            x / y
        };
        let top = workloads
            .iter()
            .flat_map(|w| allocs.iter().map(move |a| (w, a)))
            .map(|(w, a)| ratio(w, a))
            .fold(1.0f64, f64::max)
            .min(4.0)
            * 1.1;
        let mut c = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..workloads.len() as f64, 0f64..top)
            .expect("chart");
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(workloads.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < workloads.len() {
                    workloads[i].name.clone()
                } else {
                    String::new()
                }
            })
            .y_desc("× glibc")
            .draw()
            .expect("mesh");
        let width = 0.8 / allocs.len() as f64;
        for (k, a) in allocs.iter().enumerate() {
            let color = colors[k % colors.len()];
            c.draw_series(workloads.iter().enumerate().map(|(i, w)| {
                let x0 = i as f64 + 0.1 + k as f64 * width;
                let v = ratio(w, a).min(top);
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
            }))
            .expect("bars")
            .label(a.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        c.draw_series(LineSeries::new(
            [(0.0, 1.0), (workloads.len() as f64, 1.0)],
            BLACK.stroke_width(1),
        ))
        .expect("line");
        c.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .expect("legend");
    }
    root.present().expect("write the chart");
}
