//! The heap profile (`RAMPART_PROFILE`) under `LD_PRELOAD`: the leak report at exit, the
//! accuracy of the sampled estimates, the raw profile file (at exit, on request, on a
//! signal, across `fork`), and real programs running clean while profiled.
//!
//! The C program `tests/c/profile_sites.c` has allocation sites with known figures; it is
//! linked with `-rdynamic`, so that the report's `dladdr` names its functions. Every case
//! proves that rampart served the allocations: the profile file exists only if it did.

mod c_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use c_support::{build_dir, gcc, preloaded, run, WATCHDOG};

/// The C program, compiled once per test run (the cases run in parallel threads).
fn sites() -> PathBuf {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            gcc(
                "profile_sites",
                &[
                    "-rdynamic",
                    "-fno-omit-frame-pointer",
                    "tests/c/profile_sites.c",
                    "-lpthread",
                ],
            )
        })
        .clone()
}

/// What the leak report says the dynamic loader holds (not counted as leaks): bytes, blocks.
fn loader_held(stderr: &str) -> (u64, u64) {
    let Some(i) = stderr.find("not counted: ") else {
        return (0, 0);
    };
    let words: Vec<&str> = stderr[i + 13..].split_whitespace().collect();
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

/// A fresh directory for one case's profiles.
fn out_dir(case: &str) -> PathBuf {
    let dir = build_dir().join(format!("profile-{case}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A raw profile, parsed (the parts the tests read).
#[derive(Debug, Default)]
struct Raw {
    pid: u32,
    rate: u64,
    reason: String,
    stacks: HashMap<u64, Vec<u64>>,
    /// Per kind (`live`, `peak`, `total`): stack id → (bytes, objects).
    amounts: HashMap<String, HashMap<u64, (u64, u64)>>,
    summary: HashMap<String, u64>,
    complete: bool,
}

impl Raw {
    fn read(path: &Path) -> Raw {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read the profile {}: {e}", path.display()));
        let mut raw = Raw::default();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("rampart-profile 1"), "{text}");
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                "pid" => raw.pid = f[1].parse().unwrap(),
                "rate" => raw.rate = f[1].parse().unwrap(),
                "reason" => raw.reason = f[1].to_owned(),
                "stack" => {
                    let frames = f[2..]
                        .iter()
                        .map(|h| u64::from_str_radix(h, 16).unwrap())
                        .collect();
                    raw.stacks.insert(f[1].parse().unwrap(), frames);
                }
                kind @ ("live" | "peak" | "total") => {
                    let id: u64 = f[1].parse().unwrap();
                    assert!(raw.stacks.contains_key(&id), "{line}: stack not defined");
                    raw.amounts
                        .entry(kind.to_owned())
                        .or_default()
                        .insert(id, (f[2].parse().unwrap(), f[3].parse().unwrap()));
                }
                "summary" => {
                    for pair in f[1..].chunks(2) {
                        raw.summary
                            .insert(pair[0].to_owned(), pair[1].parse().unwrap());
                    }
                }
                "end" => raw.complete = true,
                _ => {}
            }
        }
        assert!(raw.complete, "profile {} has no end line", path.display());
        raw
    }

    /// The sum of one kind's bytes and objects over every stack.
    fn sum(&self, kind: &str) -> (u64, u64) {
        self.amounts.get(kind).map_or((0, 0), |m| {
            m.values().fold((0, 0), |(b, o), &(x, y)| (b + x, o + y))
        })
    }
}

/// The profiles in `dir`.
fn profiles(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The leak report's stacks: (bytes, blocks, the function of the first frame that has a
/// name), from the stderr of a `RAMPART_PROFILE=leaks` run.
fn report_stacks(stderr: &str) -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(head) = line.strip_suffix(" blocks, allocated at:") else {
            continue;
        };
        let mut words = head.split_whitespace();
        let bytes: u64 = words.next().unwrap().parse().unwrap();
        let blocks: u64 = words.nth(2).unwrap().parse().unwrap();
        let mut name = String::from("?");
        while let Some(frame) = lines.peek() {
            if !frame.trim_start().starts_with('#') {
                break;
            }
            if name == "?" {
                if let Some(i) = frame.find(" in ") {
                    let sym = &frame[i + 4..];
                    name = sym[..sym.find('+').unwrap_or(sym.len())].to_owned();
                }
            }
            lines.next();
        }
        out.push((bytes, blocks, name));
    }
    out
}

fn profiled(program: &Path, dir: &Path, mode: &str, rate: u64) -> Command {
    let mut cmd = preloaded(program);
    cmd.env("RAMPART_PROFILE", mode)
        .env("RAMPART_PROFILE_RATE", rate.to_string())
        .env("RAMPART_PROFILE_OUT", dir.join("p-%p.prof"));
    cmd
}

#[test]
fn exact_leak_report_names_the_two_leaking_functions_with_their_bytes() {
    let prog = sites();
    let dir = out_dir("exact");
    let mut cmd = profiled(&prog, &dir, "leaks", 1);
    cmd.arg("leaks");
    let out = run(cmd, WATCHDOG);
    out.assert_success();
    let mut stacks = report_stacks(&out.stderr);
    stacks.sort();
    assert_eq!(
        stacks,
        vec![
            (1000, 10, "leak_small".to_owned()),
            (15000, 5, "leak_zeroed".to_owned())
        ],
        "the leak report names exactly the two leaking functions\n{}",
        out.describe()
    );
    assert!(
        out.stderr
            .contains("16000 bytes in 15 blocks still allocated at exit"),
        "{}",
        out.describe()
    );
    let files = profiles(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let raw = Raw::read(&files[0]);
    assert_eq!((raw.rate, raw.reason.as_str()), (1, "exit"));
    // The raw profile holds every live block, the loader's (the thread-local storage of the
    // exited threads, whose stacks glibc keeps) too.
    let (lb, lo) = loader_held(&out.stderr);
    assert_eq!(raw.sum("live"), (16000 + lb, 15 + lo));
    assert_eq!(raw.summary["live_bytes"], 16000 + lb);
    // Everything allocated is counted exactly: the leaks, the cache (1000 x 4000), the
    // threads' blocks (400 x 200) and the churn (200000 blocks of 64 to 575 bytes).
    let churn: u64 = (0..200000u64).map(|i| 64 + i % 512).sum();
    let (total, objects) = raw.sum("total");
    let expected = 16000 + 4_000_000 + 80_000 + churn;
    assert!(
        total >= expected && objects >= 15 + 1000 + 400 + 200000,
        "total {total} bytes / {objects} blocks, expected at least {expected}"
    );
    // The peak held the cache and the leaks at once.
    assert!(raw.summary["peak_bytes"] >= 4_016_000, "{:?}", raw.summary);
}

#[test]
fn a_leak_exit_status_is_set_only_when_something_leaked() {
    let prog = sites();
    for (arg, want) in [("leaks", 23), ("noleaks", 0)] {
        let dir = out_dir(&format!("exitcode-{arg}"));
        let mut cmd = profiled(&prog, &dir, "leaks", 1);
        cmd.env("RAMPART_PROFILE_LEAK_EXITCODE", "23").arg(arg);
        let out = run(cmd, WATCHDOG);
        assert_eq!(out.status.code(), Some(want), "{}", out.describe());
        if want == 0 {
            assert!(
                out.stderr.contains("rampart: no leaks"),
                "{}",
                out.describe()
            );
        }
    }
}

#[test]
fn sampled_estimates_are_within_a_quarter_of_the_truth_at_the_default_rate() {
    let prog = sites();
    let dir = out_dir("estimate");
    let mut cmd = profiled(&prog, &dir, "leaks", 512 << 10);
    cmd.arg("estimate");
    let out = run(cmd, WATCHDOG);
    out.assert_success();
    let stacks = report_stacks(&out.stderr);
    // Each cache, and the array of pointers its function allocates for it.
    let truth_of = |site: &str| match site {
        "keep_small" => (128u64 << 20) + (8 << 20),
        _ => (128u64 << 20) + 2048 * 8,
    };
    for site in ["keep_small", "keep_large"] {
        let truth = truth_of(site);
        let bytes: u64 = stacks.iter().filter(|s| s.2 == site).map(|s| s.0).sum();
        let ratio = bytes as f64 / truth as f64;
        assert!(
            (0.75..=1.25).contains(&ratio),
            "{site}: estimated {bytes} bytes live against {truth} ({ratio:.3})\n{}",
            out.describe()
        );
    }
    assert!(
        !stacks.iter().any(|s| s.2 == "churn"),
        "the short-lived site is not in the live profile\n{}",
        out.describe()
    );
    let raw = Raw::read(&profiles(&dir)[0]);
    // Allocated over the run: the caches, their arrays and 1 M churned blocks of 64..575.
    let churn: u64 = (0..1_000_000u64).map(|i| 64 + i % 512).sum();
    let total = raw.sum("total").0 as f64;
    let expected = (truth_of("keep_small") + truth_of("keep_large") + churn) as f64;
    assert!(
        (total / expected - 1.0).abs() < 0.25,
        "total {total} against {expected}"
    );
}

#[test]
fn a_fork_child_writes_a_profile_of_its_own() {
    let prog = sites();
    let dir = out_dir("fork");
    let mut cmd = profiled(&prog, &dir, "leaks", 1);
    cmd.arg("fork");
    let out = run(cmd, WATCHDOG);
    out.assert_success();
    let files = profiles(&dir);
    assert_eq!(files.len(), 2, "one profile per process: {files:?}");
    let raws: Vec<Raw> = files.iter().map(|f| Raw::read(f)).collect();
    // The program prints "parent P child C".
    let pids: Vec<u32> = out
        .stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{}", out.describe());
    let by_pid = |pid: u32| {
        raws.iter()
            .find(|r| r.pid == pid)
            .unwrap_or_else(|| panic!("no profile of pid {pid}: {files:?}"))
    };
    let (parent, child) = (by_pid(pids[0]), by_pid(pids[1]));
    assert_eq!(parent.sum("live"), (1000, 1), "parent: its own leak only");
    // The child inherited the parent's block (it is in its heap too) and leaked its own.
    assert_eq!(child.sum("live"), (3000, 2), "child");
    let reports = report_stacks(&out.stderr);
    assert!(
        reports
            .iter()
            .any(|r| r == &(2000, 1, "child_leak".to_owned())),
        "{}",
        out.describe()
    );
}

#[test]
fn profiles_are_written_on_request_and_on_a_signal() {
    let prog = sites();
    let dir = out_dir("write");
    let asked = dir.join("asked.prof");
    let mut cmd = profiled(&prog, &dir, "heap", 1);
    cmd.env("RAMPART_PROFILE_SIGNAL", "12")
        .arg("write")
        .arg(&asked);
    let out = run(cmd, WATCHDOG);
    out.assert_success();
    let raw = Raw::read(&asked);
    assert_eq!(raw.reason, "request");
    assert!(raw.sum("live").0 >= 4_000_000, "the cache is live");
    let signalled: Vec<PathBuf> = profiles(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    assert_eq!(signalled.len(), 1, "{:?}", profiles(&dir));
    let raw = Raw::read(&signalled[0]);
    assert_eq!(raw.reason, "signal");
    assert!(raw.sum("live").0 >= 4_000_000, "the cache is live");
}

/// A freed sampled block's run is kept for the next sample (its pages stay committed), so
/// a second free of it must still be caught: the lookup sees it as freed memory.
#[test]
fn a_double_free_of_a_sampled_block_is_reported() {
    let prog = sites();
    let dir = out_dir("double");
    let mut cmd = profiled(&prog, &dir, "heap", 1);
    c_support::no_core_dumps(&mut cmd);
    cmd.arg("double");
    let out = run(cmd, WATCHDOG);
    assert_eq!(out.signal(), Some(c_support::SIGABRT), "{}", out.describe());
    assert!(
        out.stderr.contains("rampart: invalid-free") && out.stderr.contains("double free?"),
        "{}",
        out.describe()
    );
}

#[test]
fn writing_a_profile_fails_cleanly_when_profiling_is_off() {
    let prog = sites();
    let dir = out_dir("off");
    let mut cmd = preloaded(&prog);
    cmd.arg("write").arg(dir.join("never.prof"));
    let out = run(cmd, WATCHDOG);
    assert_eq!(out.status.code(), Some(3), "{}", out.describe());
    assert!(profiles(&dir).is_empty());
}

/// Real programs give the same output profiled (at the default rate, and sampling every
/// 4 KiB) as without, and leave a profile with samples in it.
#[test]
fn real_programs_run_clean_while_profiled() {
    let cases: &[(&str, &[&str])] = &[
        (
            "python3",
            &[
                "-c",
                "import json,collections\nd={str(i):list(range(i%50)) for i in range(20000)}\n\
                 s=json.dumps(d)\nprint(len(s), sum(len(v) for v in json.loads(s).values()))\n\
                 print(collections.Counter(len(k) for k in d).most_common(3))",
            ],
        ),
        (
            "sqlite3",
            &[
                ":memory:",
                "create table t(a,b); with recursive c(x) as (select 1 union all select x+1 \
                 from c where x<50000) insert into t select x, hex(randomblob(20)) from c; \
                 create index i on t(b); select count(*), sum(length(b)) from t;",
            ],
        ),
        (
            "perl",
            &[
                "-e",
                "my %h; $h{$_} = [1..($_ % 30)] for 1..30000; my $n = 0; $n += @$_ for values %h; print \"$n\\n\";",
            ],
        ),
    ];
    for &(prog, args) in cases {
        let Ok(path) = which(prog) else {
            panic!("{prog} not installed (the CI script installs it)");
        };
        let mut plain = preloaded(&path);
        plain.args(args);
        let want = run(plain, WATCHDOG);
        want.assert_success();
        for rate in [512u64 << 10, 4096] {
            let dir = out_dir(&format!("{prog}-{rate}"));
            let mut cmd = profiled(&path, &dir, "heap", rate);
            cmd.args(args);
            let got = run(cmd, WATCHDOG);
            got.assert_success();
            assert_eq!(got.stdout, want.stdout, "{prog} at rate {rate}");
            let files = profiles(&dir);
            assert!(!files.is_empty(), "{prog}: no profile written");
            let raw = Raw::read(&files[0]);
            assert!(
                raw.summary["samples"] > 0,
                "{prog} at rate {rate}: no samples"
            );
            assert!(!raw.stacks.is_empty());
        }
    }
}

fn which(prog: &str) -> Result<PathBuf, ()> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(prog);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(())
}
