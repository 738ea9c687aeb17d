//! Runtime options: every bad value and every unknown `RAMPART_*` name is reported once on
//! stderr and ignored (the default stays), and never stops the program. Checked through the
//! effective options that `RAMPART_VERBOSE=1` prints.

mod c_support;

use std::path::PathBuf;
use std::sync::OnceLock;

use c_support::{gcc, preloaded, run, Outcome, WATCHDOG};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

fn run_with(vars: &[(&str, &str)]) -> Outcome {
    // Compiled once for all the tests of this file (they run in parallel).
    static PROG: OnceLock<PathBuf> = OnceLock::new();
    let prog = PROG.get_or_init(|| gcc("options", &["tests/c/options.c", "-lpthread"]));
    let mut cmd = preloaded(prog);
    cmd.env("RAMPART_VERBOSE", "1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = run(cmd, WATCHDOG);
    out.assert_success();
    out
}

/// The one `rampart: options:` line.
fn options_line(out: &Outcome) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("rampart: options:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one options line\n{}",
        out.describe()
    );
    lines[0].to_string()
}

/// Asserts that the options line shows every `NAME=value` of `wants`.
fn assert_shows(line: &str, wants: &[&str]) {
    for want in wants {
        assert!(line.contains(want), "{want} missing: {line}");
    }
}

fn assert_warned_once(out: &Outcome, name: &str, what: &str) {
    let n = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("rampart: warning: {name} ")) && l.contains(what))
        .count();
    assert_eq!(
        n,
        1,
        "expected one warning for {name} ({what})\n{}",
        out.describe()
    );
}

#[test]
fn good_values_take_effect() {
    let out = run_with(&[("RAMPART_PURGE_DELAY_MS", "250"), ("RAMPART_HUGEPAGE", "1")]);
    let line = options_line(&out);
    assert!(line.contains("RAMPART_PURGE_DELAY_MS=250"), "{line}");
    assert!(line.contains("RAMPART_HUGEPAGE=1"), "{line}");
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
}

#[test]
fn bad_values_warn_once_and_keep_the_default() {
    let out = run_with(&[
        ("RAMPART_PURGE_DELAY_MS", "soon"),
        ("RAMPART_HUGEPAGE", "2"),
        ("RAMPART_STATS", "maybe"),
    ]);
    let line = options_line(&out);
    let default = format!(
        "RAMPART_PURGE_DELAY_MS={}",
        rampart::internals::DEFAULT_PURGE_DELAY_MS
    );
    assert!(line.contains(&default), "{line}");
    assert!(line.contains("RAMPART_HUGEPAGE=0"), "{line}");
    assert!(line.contains("RAMPART_STATS=0"), "{line}");
    assert_warned_once(&out, "RAMPART_PURGE_DELAY_MS", "bad value");
    assert_warned_once(&out, "RAMPART_HUGEPAGE", "bad value");
    assert_warned_once(&out, "RAMPART_STATS", "bad value");
    assert!(
        !out.stderr.contains("rampart: statistics"),
        "{}",
        out.describe()
    );
}

#[test]
fn out_of_range_delay_keeps_the_default() {
    let out = run_with(&[("RAMPART_PURGE_DELAY_MS", "99999999")]);
    let default = format!(
        "RAMPART_PURGE_DELAY_MS={}",
        rampart::internals::DEFAULT_PURGE_DELAY_MS
    );
    assert!(options_line(&out).contains(&default));
    assert_warned_once(&out, "RAMPART_PURGE_DELAY_MS", "bad value");
}

#[test]
fn unknown_names_and_too_long_paths_warn_once() {
    let long_path = "/tmp/".to_string() + &"x".repeat(5000);
    let out = run_with(&[("RAMPART_BOGUS", "1"), ("RAMPART_HEAPMAP", &long_path)]);
    assert_warned_once(&out, "RAMPART_BOGUS", "is not a rampart option");
    assert_warned_once(&out, "RAMPART_HEAPMAP", "");
}

#[test]
fn guard_options_take_effect() {
    let out = run_with(&[
        ("RAMPART_GUARD", "sample"),
        ("RAMPART_GUARD_SAMPLE", "77"),
        ("RAMPART_REDZONE", "32"),
        ("RAMPART_QUARANTINE", "1048576"),
    ]);
    let line = options_line(&out);
    assert_shows(
        &line,
        &[
            "RAMPART_GUARD=sample",
            "RAMPART_GUARD_SAMPLE=77",
            "RAMPART_REDZONE=32",
            "RAMPART_QUARANTINE=1048576",
        ],
    );
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
}

#[test]
fn bad_guard_values_warn_once_and_keep_the_default() {
    let out = run_with(&[
        ("RAMPART_GUARD", "everything"),
        ("RAMPART_GUARD_SAMPLE", "0"),
        ("RAMPART_REDZONE", "5000"),
        ("RAMPART_QUARANTINE", "lots"),
    ]);
    let line = options_line(&out);
    let default_sample = format!(
        "RAMPART_GUARD_SAMPLE={}",
        rampart::internals::DEFAULT_GUARD_SAMPLE
    );
    assert_shows(
        &line,
        &[
            "RAMPART_GUARD=off",
            &default_sample,
            "RAMPART_REDZONE=0",
            "RAMPART_QUARANTINE=default",
        ],
    );
    for name in [
        "RAMPART_GUARD",
        "RAMPART_GUARD_SAMPLE",
        "RAMPART_REDZONE",
        "RAMPART_QUARANTINE",
    ] {
        assert_warned_once(&out, name, "bad value");
    }
}

#[test]
fn profile_and_purger_options_take_effect_and_bad_values_warn() {
    let dir = std::env::temp_dir().join(format!("rampart-options-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("p-%p.prof");
    let out = run_with(&[
        ("RAMPART_PROFILE", "leaks"),
        ("RAMPART_PROFILE_RATE", "4096"),
        ("RAMPART_PROFILE_OUT", out_path.to_str().unwrap()),
        ("RAMPART_PURGE_THREAD", "0"),
    ]);
    let line = options_line(&out);
    assert_shows(
        &line,
        &[
            "RAMPART_PROFILE=leaks",
            "RAMPART_PROFILE_RATE=4096",
            "RAMPART_PURGE_THREAD=0",
        ],
    );
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
    // The profile went where RAMPART_PROFILE_OUT said.
    let written: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(written.len(), 1, "{}", out.describe());
    std::fs::remove_dir_all(&dir).unwrap();
    let out = run_with(&[
        ("RAMPART_PROFILE", "everything"),
        ("RAMPART_PROFILE_RATE", "0"),
        ("RAMPART_PROFILE_SIGNAL", "9"),
        ("RAMPART_PROFILE_LEAK_EXITCODE", "300"),
    ]);
    for name in [
        "RAMPART_PROFILE",
        "RAMPART_PROFILE_RATE",
        "RAMPART_PROFILE_SIGNAL",
        "RAMPART_PROFILE_LEAK_EXITCODE",
    ] {
        assert_warned_once(&out, name, "bad value");
    }
    assert!(!options_line(&out).contains("RAMPART_PROFILE="));
}
