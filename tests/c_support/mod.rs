//! Shared by the C-side tests (`tests/c_api.rs`, `tests/c_threads.rs`): finding the built
//! `librampart.so` / `librampart.a`, compiling the C programs under `tests/c/` and
//! `examples/c/` with gcc, and running them (preloaded or not) under a watchdog.
//!
//! The libraries are looked up in the cargo target directory the test binary itself was
//! built in: test binaries live in `<target>/<profile>/deps/`, the libraries in
//! `<target>/<profile>/`. They are built by `cargo build --release -p rampart-ffi` (a test
//! cannot build them: cargo holds the target directory's lock while tests run), so a missing
//! library fails the test with that command in the message.
//!
//! Programs are compiled once per test run into `<target>/<profile>/c-tests/<name>`, through
//! a temporary name and a rename, so two concurrent runs never see a half-written binary.

#![allow(dead_code)] // each test binary uses its own subset

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How long a C program may run before the watchdog kills it: a guard against a deadlock
/// hanging CI, not a speed check (the programs take about a second).
pub const WATCHDOG: Duration = Duration::from_secs(300);

pub const SIGABRT: i32 = 6;
pub const SIGKILL: i32 = 9;

/// The repository root (the root package's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/<profile>`: the directory holding this test binary's `deps/` folder.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent directory");
    assert!(
        deps.file_name().is_some_and(|n| n == "deps"),
        "test binary {} is not in a cargo deps/ directory",
        exe.display()
    );
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// `librampart.so` next to this test binary's profile directory; panics with the build
/// command if it is missing.
pub fn lib_so() -> PathBuf {
    built_lib("librampart.so")
}

/// `librampart.a`, as [`lib_so`].
pub fn lib_a() -> PathBuf {
    built_lib("librampart.a")
}

fn built_lib(name: &str) -> PathBuf {
    let dir = profile_dir();
    let lib = dir.join(name);
    assert!(
        lib.is_file(),
        "{} not found: build it with cargo build --release -p rampart-ffi \
         (the tests look for it in {}, the profile directory they were built in)",
        lib.display(),
        dir.display()
    );
    warn_if_stale(&lib);
    lib
}

/// Prints a warning (does not fail) when a source file of the library is newer than the
/// built library: the tests would then check an old build.
fn warn_if_stale(lib: &Path) {
    let Ok(built) = lib.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let newest = ["allocator/src", "ffi/src"]
        .iter()
        .filter_map(|d| newest_mtime(&repo().join(d)))
        .max();
    if newest.is_some_and(|n| n > built) {
        eprintln!(
            "warning: {} is older than its sources; rebuild it with \
             cargo build --release -p rampart-ffi",
            lib.display()
        );
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(t);
    }
    newest
}

/// `ffi/include`, for `-I`.
pub fn include_dir() -> PathBuf {
    repo().join("ffi/include")
}

/// Where compiled C programs go.
pub fn build_dir() -> PathBuf {
    let dir = profile_dir().join("c-tests");
    std::fs::create_dir_all(&dir).expect("create the c-tests build directory");
    dir
}

/// Compiles with `gcc` (`g++` when `cxx`) into `build_dir()/out` and returns the path.
/// `args` are the sources, libraries and flags in link order. Panics with the full command
/// and gcc's output on failure.
pub fn compile_with(compiler: &str, out: &str, args: &[&std::ffi::OsStr]) -> PathBuf {
    let dest = build_dir().join(out);
    let tmp = build_dir().join(format!("{out}.{}.tmp", std::process::id()));
    let mut cmd = Command::new(compiler);
    cmd.current_dir(repo())
        .args(["-O2", "-g", "-Wall", "-Wextra", "-fno-builtin"])
        .args(args)
        .arg("-o")
        .arg(&tmp);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler} (is build-essential installed?): {e}"));
    let diagnostics = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "compiling {out} failed ({}):\n{cmd:?}\n{diagnostics}",
        output.status
    );
    if !diagnostics.trim().is_empty() {
        eprintln!("{compiler} warnings for {out}:\n{diagnostics}");
    }
    std::fs::rename(&tmp, &dest).expect("rename the compiled program into place");
    dest
}

/// [`compile_with`] `gcc`, the arguments given as strings or paths.
pub fn gcc<S: AsRef<std::ffi::OsStr>>(out: &str, args: &[S]) -> PathBuf {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    compile_with("gcc", out, &args)
}

/// What a finished (or killed) program left.
pub struct Outcome {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Outcome {
    /// The signal that ended the program, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// A description for failure messages: command, status, and both outputs (their last
    /// 6,000 characters each).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "command: {}", self.command);
        let _ = writeln!(
            s,
            "status: {}{} after {:.1?}",
            self.status,
            if self.timed_out {
                " (killed by the test's watchdog: hung or deadlocked)"
            } else {
                ""
            },
            self.elapsed
        );
        let _ = writeln!(s, "--- stdout ---\n{}", tail(&self.stdout, 6000));
        let _ = writeln!(s, "--- stderr ---\n{}", tail(&self.stderr, 6000));
        s
    }

    /// Panics with [`Outcome::describe`] unless the program exited with status 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success() && !self.timed_out,
            "program failed\n{}",
            self.describe()
        );
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it (SIGKILL) if it runs
/// past `limit`.
pub fn run(mut cmd: Command, limit: Duration) -> Outcome {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    Outcome {
        command,
        status,
        stdout,
        stderr,
        timed_out,
        elapsed,
    }
}

/// A command for `program` with `librampart.so` preloaded (and no other `RAMPART_*`
/// variables than the caller sets).
pub fn preloaded(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_PRELOAD", lib_so());
    clear_rampart_env(&mut cmd);
    cmd
}

/// Removes inherited `RAMPART_*` variables, so a developer's shell settings do not change
/// what the programs print.
pub fn clear_rampart_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RAMPART_") {
            cmd.env_remove(k);
        }
    }
}

/// Parses rampart's statistics line `thread heaps  N created, M reused ...` from `stderr`.
pub fn heap_counts(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|l| l.contains("thread heaps"))?;
    let rest = line.split("thread heaps").nth(1)?;
    let mut words = rest.split_whitespace();
    let created = words.next()?.parse().ok()?;
    (words.next()? == "created,").then_some(())?;
    let reused = words.next()?.parse().ok()?;
    (words.next()? == "reused").then_some(())?;
    Some((created, reused))
}

/// Core dumps off in the child: tests that crash programs on purpose (a hundred of them in
/// `tests/guard.rs`) would otherwise each write one, or wait on a crash collector, where
/// `ulimit -c` allows it.
pub fn no_core_dumps(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec; it only calls
    // setrlimit, which is async-signal-safe, on a local `rlimit`.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
            Ok(())
        });
    }
}

/// The first line of a fault report, parsed.
#[derive(Debug)]
pub struct FaultLine<'a> {
    pub kind: &'a str,
    pub access: &'a str,
    pub addr: u64,
    pub offset: i64,
    pub block: u64,
    pub base: u64,
}

/// Parses `rampart: KIND: ACCESS at 0xADDR: offset OFFSET from a block of N bytes at 0xBASE`
/// (the whole line; nothing before or after).
pub fn parse_fault_line(line: &str) -> Option<FaultLine<'_>> {
    let rest = line.strip_prefix("rampart: ")?;
    let (kind, rest) = rest.split_once(": ")?;
    let (access, rest) = rest.split_once(" at 0x")?;
    let (addr, rest) = rest.split_once(": offset ")?;
    let (offset, rest) = rest.split_once(" from a block of ")?;
    let (block, base) = rest.split_once(" bytes at 0x")?;
    let hex = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some(FaultLine {
        kind,
        access,
        addr: hex(addr)?,
        offset: offset.parse().ok()?,
        block: block.parse().ok()?,
        base: hex(base)?,
    })
}
