//! Real programs under preload: python3, sqlite3, git, perl, redis-server and gcc run with
//! `librampart.so` as their malloc, on generated work whose results are checked against the
//! same program on glibc's malloc (and, where cheap, against values computed here).
//!
//! # Proof that rampart served the program
//! `ld.so` silently ignores an `LD_PRELOAD` it cannot load, and the program then runs on
//! glibc's malloc and passes anyway. So every run on rampart sets `RAMPART_STATS=1`, and the
//! test finds, in the program's stderr, the statistics block rampart prints at exit
//! (`rampart: statistics (pid N)`) *for the pid of the process the test started*, with
//! non-zero `chunks mapped`. Where a program starts children (git gc, the gcc driver), the
//! blocks of other pids show that the children were served too. The redis server is also
//! checked while it runs: `/proc/<pid>/maps` must map `librampart.so`. perl is started
//! through the `rampart` launcher (`rampart --stats -- perl …`), the others with `LD_PRELOAD`
//! set directly; the launcher execs, so the pid is perl's.
//!
//! # What the tests need
//! `librampart.so` and the `rampart` launcher, built beside the test binary's profile
//! directory: `cargo build --release -p rampart-ffi` before `cargo test --release`. The
//! programs come from Debian packages (installed by `.ci/run`); a missing one fails its test
//! with the package's name, it never skips. Programs are taken from `/usr/bin` explicitly, and
//! every child gets a small fixed environment (`PATH=/usr/bin:/bin`, `LC_ALL=C`, `HOME` and
//! `TMPDIR` in the test's scratch directory), so neither a pyenv shim, nor `/usr/local/bin/git`,
//! nor the caller's locale or configuration changes the results.
//!
//! Generated inputs and outputs live in a scratch directory under the target directory
//! (`CARGO_TARGET_TMPDIR`), removed when the test passes and kept (and named on stderr) when
//! it fails. Every child runs under a watchdog that kills it and fails the test if it hangs;
//! nothing here measures or asserts a time.
//!
//! sqlite3, git, perl and gcc also run in rampart's hardened mode (`RAMPART_HARDEN=1`), and
//! sqlite3 and git in `RAMPART_GUARD=sample` with every eligible block guarded, with the same
//! checks: a correct program must give the same results and no report (a false positive
//! would abort it).

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rampart_suite::XorShift64;

/// How long any one child may run before it is called hung and killed (a guard against a
/// deadlocked allocator hanging CI; generous, not a speed check).
const WATCHDOG: Duration = Duration::from_secs(300);

/// Lines of a child's stderr shown when it fails.
const TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------------------------
// The library, the launcher and the programs
// ---------------------------------------------------------------------------------------------

/// The profile directory the test binary was built in (`<target>/<profile>/deps/<test>` →
/// `<target>/<profile>`), where `cargo build -p rampart-ffi` puts the library and launcher.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("cannot find the profile directory above {}", exe.display()))
        .to_path_buf()
}

/// A file cargo builds from the `rampart-ffi` package, or a failure that says how to build it.
fn ffi_artifact(name: &str) -> PathBuf {
    let dir = profile_dir();
    let path = dir.join(name);
    if !path.is_file() {
        let release = if dir.file_name().is_some_and(|n| n == "release") {
            " --release"
        } else {
            ""
        };
        panic!(
            "{} is missing: build it with `cargo build{release} -p rampart-ffi` (same target \
             directory as the tests) before running these tests",
            path.display()
        );
    }
    path
}

/// `librampart.so`, beside the test binary's profile directory.
fn library() -> PathBuf {
    ffi_artifact("librampart.so")
}

/// The `rampart` launcher, beside the library.
fn launcher() -> PathBuf {
    ffi_artifact("rampart")
}

/// `path`, which Debian package `package` installs, or a failure naming the package.
fn program(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if !p.is_file() {
        panic!(
            "{path} is not installed: this test needs the Debian package `{package}` \
             (`apt-get install {package}`; `.ci/run` installs it)"
        );
    }
    p
}

/// Which malloc a child runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Malloc {
    /// glibc's, the reference.
    Glibc,
    /// rampart's, by `LD_PRELOAD` with `RAMPART_STATS=1`.
    Rampart,
    /// rampart's hardened mode: the same, with `RAMPART_HARDEN=1` (correct programs must
    /// run clean and give the same results: no false positive).
    Hardened,
    /// rampart's `sample` guard mode with every eligible block guarded
    /// (`RAMPART_GUARD=sample RAMPART_GUARD_SAMPLE=1`): no false positive either.
    Sampled,
}

impl Malloc {
    fn name(self) -> &'static str {
        match self {
            Malloc::Glibc => "glibc",
            Malloc::Rampart => "rampart",
            Malloc::Hardened => "rampart-hardened",
            Malloc::Sampled => "rampart-sampled",
        }
    }
}

/// A command for `program` with the fixed environment (see the module docs), on `malloc`.
fn command(program: &Path, malloc: Malloc, scratch: &Scratch) -> Command {
    let mut cmd = Command::new(program);
    base_env(&mut cmd, scratch);
    if malloc != Malloc::Glibc {
        cmd.env("LD_PRELOAD", library()).env("RAMPART_STATS", "1");
    }
    if malloc == Malloc::Hardened {
        cmd.env("RAMPART_HARDEN", "1");
    }
    if malloc == Malloc::Sampled {
        cmd.env("RAMPART_GUARD", "sample")
            .env("RAMPART_GUARD_SAMPLE", "1");
    }
    cmd
}

/// Replaces `cmd`'s environment with the fixed one (no `LD_PRELOAD`, no `RAMPART_*`), and
/// starts the child with every signal at its default action.
fn base_env(cmd: &mut Command, scratch: &Scratch) {
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", scratch.path())
        .env("TMPDIR", scratch.path())
        .env("LC_ALL", "C");
    default_signals(cmd);
}

/// Sets every signal's action back to the default in the child, before it execs. A signal
/// ignored by whoever started the test runner stays ignored across `fork` and `exec` (a
/// background job of a shell, `nohup`: SIGINT, SIGQUIT, SIGHUP), and programs see it:
/// CPython's `test_threading` then cannot raise `KeyboardInterrupt` with SIGINT and fails,
/// on glibc as on rampart. (Handlers are reset by `exec` anyway; std already unblocks the
/// signal mask and resets SIGPIPE.)
fn default_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls `signal`,
    // which is async-signal-safe, with SIG_DFL; SIGKILL and SIGSTOP are left out (their
    // action cannot be changed).
    unsafe {
        cmd.pre_exec(|| {
            for sig in 1..libc::SIGRTMIN() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch directory
// ---------------------------------------------------------------------------------------------

/// A directory under the target directory for one test's files; removed on success, kept for
/// inspection when the test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("programs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a child
// ---------------------------------------------------------------------------------------------

/// A finished child: its pid, exit status, stdout (in a file) and stderr.
struct Finished {
    label: String,
    pid: u32,
    status: ExitStatus,
    stdout_path: PathBuf,
    stderr: String,
}

impl Finished {
    /// The child's stdout as text.
    fn stdout(&self) -> String {
        let bytes = fs::read(&self.stdout_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.stdout_path.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Fails with the status and the tail of stderr unless the child exited with status 0.
    fn expect_success(self) -> Self {
        if !self.status.success() {
            panic!(
                "{} failed: {}\n{}",
                self.label,
                self.status,
                self.output_tails()
            );
        }
        self
    }

    /// The last lines of stdout and stderr, for failure messages.
    fn output_tails(&self) -> String {
        let stdout = fs::read(&self.stdout_path).unwrap_or_default();
        format!(
            "--- stdout (last {TAIL_LINES} lines) ---\n{}\n--- stderr (last {TAIL_LINES} lines) \
             ---\n{}",
            tail(&String::from_utf8_lossy(&stdout)),
            tail(&self.stderr)
        )
    }
}

/// The last [`TAIL_LINES`] lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// A child with its stdout and stderr in files under the scratch directory (no pipes, so a
/// chatty child cannot block on a full pipe).
struct Running {
    label: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Running {
    /// Starts `cmd` with stdin from `input` (or `/dev/null`); `label` names the run in files
    /// and messages, and must be unique within the scratch directory.
    fn start(cmd: &mut Command, scratch: &Scratch, label: &str, input: Option<&Path>) -> Self {
        let file_label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let stdout_path = scratch.join(&format!("{file_label}.stdout"));
        let stderr_path = scratch.join(&format!("{file_label}.stderr"));
        let create = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let stdin = match input {
            Some(p) => {
                Stdio::from(File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            }
            None => Stdio::null(),
        };
        cmd.stdin(stdin)
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start {:?}: {e}", cmd.get_program()));
        Running {
            label: label.to_string(),
            child,
            stdout_path,
            stderr_path,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr written so far.
    fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Waits for the child, killing it and failing if it outlives `limit`.
    fn wait(mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > limit => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} hung: killed after {limit:?} (a deadlock?)\n--- stderr (last \
                         {TAIL_LINES} lines) ---\n{}",
                        self.label,
                        tail(&self.stderr_so_far())
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{}: wait: {e}", self.label),
            }
        };
        Finished {
            label: self.label.clone(),
            pid: self.child.id(),
            status,
            stdout_path: self.stdout_path.clone(),
            stderr: self.stderr_so_far(),
        }
    }
}

/// Runs `cmd` to completion under the watchdog; does not check its status.
fn run_with_input(
    cmd: &mut Command,
    scratch: &Scratch,
    label: &str,
    input: Option<&Path>,
) -> Finished {
    Running::start(cmd, scratch, label, input).wait(WATCHDOG)
}

/// Runs `cmd` to completion under the watchdog and requires exit status 0.
fn run(cmd: &mut Command, scratch: &Scratch, label: &str) -> Finished {
    run_with_input(cmd, scratch, label, None).expect_success()
}

// ---------------------------------------------------------------------------------------------
// rampart's statistics blocks
// ---------------------------------------------------------------------------------------------

/// One `rampart: statistics (pid N)` block from a stderr.
#[derive(Debug, Default)]
struct Stats {
    pid: u32,
    /// The `… KiB` rows by name (`chunks mapped`, `in use`, …), in KiB.
    kib: BTreeMap<String, u64>,
    heaps_created: u64,
    heaps_reused: u64,
    /// `guarded blocks  allocated N`: blocks of the guard pool (where every block is
    /// guarded, a program may never map a chunk).
    guarded: u64,
}

impl Stats {
    fn kib(&self, row: &str) -> u64 {
        self.kib.get(row).copied().unwrap_or(0)
    }
}

const STATS_HEADER: &str = "rampart: statistics (pid ";

/// Every statistics block in `stderr`, in order.
fn parse_stats(stderr: &str) -> Vec<Stats> {
    let mut blocks = Vec::new();
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(STATS_HEADER) else {
            continue;
        };
        let Some(pid) = rest.strip_suffix(')').and_then(|p| p.parse().ok()) else {
            continue;
        };
        let mut block = Stats {
            pid,
            ..Stats::default()
        };
        while let Some(row) = lines.next_if(|l| l.starts_with("  ")) {
            let row = row.trim();
            if let Some(rest) = row.strip_prefix("guarded blocks") {
                block.guarded = rest
                    .trim()
                    .strip_prefix("allocated ")
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
            } else if let Some(rest) = row.strip_prefix("thread heaps") {
                // "N created, M reused after their thread exited"
                let numbers: Vec<u64> = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|w| w.parse().ok())
                    .collect();
                if let [created, reused, ..] = numbers[..] {
                    block.heaps_created = created;
                    block.heaps_reused = reused;
                }
            } else if let Some(value) = row.strip_suffix(" KiB") {
                if let Some((name, number)) = value.rsplit_once(' ') {
                    if let Ok(n) = number.parse() {
                        block.kib.insert(name.trim().to_string(), n);
                    }
                }
            }
        }
        blocks.push(block);
    }
    blocks
}

/// The statistics block of the run's own process, which must exist and show chunks mapped
/// (or, where every block is guarded, guarded blocks): the proof that rampart was this
/// process's malloc.
fn served(run: &Finished) -> Stats {
    let blocks = parse_stats(&run.stderr);
    let Some(block) = blocks.into_iter().find(|b| b.pid == run.pid) else {
        panic!(
            "{}: no `{STATS_HEADER}{})` block in its stderr ({}). Either rampart did not \
             serve it (ld.so ignores an LD_PRELOAD it cannot load, and the program then runs \
             on glibc's malloc), or the process died before its exit handlers ran, or \
             librampart.so did not print its statistics at exit\n{}",
            run.label,
            run.pid,
            run.status,
            run.output_tails()
        );
    };
    assert!(
        block.kib("chunks mapped") > 0 || block.guarded > 0,
        "{}: rampart's statistics show no chunks mapped and no guarded block, so it served \
         no allocation: \
         {block:?}\n{}",
        run.label,
        run.output_tails()
    );
    block
}

// ---------------------------------------------------------------------------------------------
// Comparing results
// ---------------------------------------------------------------------------------------------

/// Fails, showing the first differing line, unless `rampart` equals `glibc`.
fn assert_same_text(what: &str, glibc: &str, rampart: &str) {
    if glibc == rampart {
        return;
    }
    let g: Vec<&str> = glibc.lines().collect();
    let r: Vec<&str> = rampart.lines().collect();
    let first = g
        .iter()
        .zip(&r)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(r.len()));
    let context =
        |lines: &[&str]| lines[first.saturating_sub(3)..(first + 4).min(lines.len())].join("\n");
    panic!(
        "{what}: the output on rampart differs from the output on glibc at line {} ({} lines \
         on glibc, {} on rampart)\n--- glibc ---\n{}\n--- rampart ---\n{}",
        first + 1,
        g.len(),
        r.len(),
        context(&g),
        context(&r)
    );
}

/// Fails, showing the first differing line, unless the two files are equal.
fn assert_same_files(what: &str, glibc: &Path, rampart: &Path) {
    let open =
        |p: &Path| BufReader::new(File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
    let (mut g, mut r) = (open(glibc), open(rampart));
    let (mut gl, mut rl) = (Vec::new(), Vec::new());
    let mut line = 0u64;
    loop {
        gl.clear();
        rl.clear();
        let gn = g.read_until(b'\n', &mut gl).expect("read glibc output");
        let rn = r.read_until(b'\n', &mut rl).expect("read rampart output");
        line += 1;
        if gl != rl {
            panic!(
                "{what}: the output on rampart differs from the output on glibc at line \
                 {line}\n--- glibc ---\n{}\n--- rampart ---\n{}",
                String::from_utf8_lossy(&gl),
                String::from_utf8_lossy(&rl)
            );
        }
        if gn == 0 && rn == 0 {
            return;
        }
    }
}

/// Fails unless `file` holds at least `lines` lines (so an empty output cannot pass as equal).
fn assert_lines_at_least(what: &str, file: &Path, lines: usize) {
    let n = BufReader::new(File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .split(b'\n')
        .count();
    assert!(
        n >= lines,
        "{what}: {n} lines of output, expected at least {lines}"
    );
}

// ---------------------------------------------------------------------------------------------
// python3
// ---------------------------------------------------------------------------------------------

const PYTHON: &str = "/usr/bin/python3";

/// Eight threads build dicts, lists, strings, sets and bytes that depend only on (thread,
/// round), hand each one to the next thread through a `queue.Queue` (so memory malloc'd on one
/// thread is checked and freed on another), and keep some for a while. Each receiver rebuilds
/// what it should have got and compares. The output is a digest per thread and overall,
/// independent of scheduling. A barrier holds every thread alive at once, so the process has
/// at least nine threads that allocate at the same time.
const PY_THREADS: &str = r#"
import hashlib, queue, sys, threading

THREADS = 8
ROUNDS = 400

def make(i, k):
    n = 20 + (i * 7 + k) % 60
    d = {f"k{i}.{k}.{j}": [j * k, str(j) * (1 + j % 9), (i, j, k)] for j in range(n)}
    s = ",".join(f"{j:x}" for j in range(k % 500))
    b = bytes((i + j) % 256 for j in range(1 + (k * 37) % 5000))
    l = [x * x for x in range(k % 700)]
    return {"d": d, "s": s, "b": b, "l": l, "set": set(s.split(",")), "t": (i, k)}

def digest(obj):
    h = hashlib.sha256()
    for key in sorted(obj["d"]):
        h.update(key.encode())
        h.update(repr(obj["d"][key]).encode())
    h.update(obj["s"].encode())
    h.update(obj["b"])
    h.update(repr(obj["l"]).encode())
    h.update(repr(sorted(obj["set"])).encode())
    return h.digest()

queues = [queue.Queue(maxsize=32) for _ in range(THREADS)]
barrier = threading.Barrier(THREADS)
results = [None] * THREADS
errors = []

def worker(i):
    try:
        barrier.wait(timeout=120)
        total = hashlib.sha256()
        kept = {}
        text = []
        for k in range(ROUNDS):
            queues[(i + 1) % THREADS].put((i, k, make(i, k)), timeout=120)
            src, kk, obj = queues[i].get(timeout=120)
            want = ((i - 1) % THREADS, k)
            if (src, kk) != want:
                raise AssertionError(f"round {k}: got ({src}, {kk}), expected {want}")
            if obj != make(src, kk):
                raise AssertionError(f"round {k}: the object from thread {src} changed")
            total.update(digest(obj))
            kept[k % 17] = obj
            text.append(obj["s"][: k % 97])
            if len(text) == 64:
                joined = "|".join(text)
                if joined.split("|") != text:
                    raise AssertionError(f"round {k}: join/split mismatch")
                total.update(joined.upper().encode())
                text = text[32:]
        for key in sorted(kept):
            total.update(digest(kept[key]))
        results[i] = total.hexdigest()
    except BaseException as e:
        errors.append(f"thread {i}: {e!r}")

threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors or None in results:
    print("\n".join(errors) or "a thread gave no result", file=sys.stderr)
    sys.exit(1)
for i, r in enumerate(results):
    print(f"thread {i} {r}")
print("all", hashlib.sha256("".join(results).encode()).hexdigest())
"#;

/// Runs regrtest in this process (not in worker processes, so that this process's
/// statistics cover every test) after taking `RAMPART_STATS` out of the environment: rampart
/// has read it already, and the tests' own child processes must keep a clean stderr (many
/// tests require it to be empty).
const PY_REGRTEST: &str = r#"
import os, sys
os.environ.pop("RAMPART_STATS", None)
sys.argv = ["python3 -m test"] + sys.argv[1:]
from test.libregrtest.main import main
main()
"#;

/// Prints one line per test case of a regrtest JUnit file: name and outcome.
const PY_JUNIT_SUMMARY: &str = r#"
import sys, xml.etree.ElementTree as ET
cases = []
for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    kinds = [c.tag for c in tc if c.tag in ("skipped", "failure", "error")]
    cases.append(f"{tc.get('name')} {tc.get('status')}/{tc.get('result')} {'+'.join(kinds) or 'passed'}")
print("\n".join(sorted(cases)))
"#;

/// The regression-suite modules run: the containers, parsers and threading the issue names,
/// and more that allocate heavily (strings, bytes, pickles, collections, weak references,
/// buffers, the garbage collector, ctypes, compression, tracemalloc's allocator hooks).
const PY_SUITE: &[&str] = &[
    "test_dict",
    "test_list",
    "test_set",
    "test_json",
    "test_re",
    "test_threading",
    "test_unicode",
    "test_bytes",
    "test_collections",
    "test_ordered_dict",
    "test_deque",
    "test_queue",
    "test_pickle",
    "test_sort",
    "test_itertools",
    "test_weakref",
    "test_array",
    "test_struct",
    "test_memoryview",
    "test_marshal",
    "test_functools",
    "test_heapq",
    "test_gc",
    "test_mmap",
    "test_zlib",
    "test_hashlib",
    "test_ctypes",
    "test_tracemalloc",
    "test_os",
];

/// A python3 command with the interpreter's own allocator switched to plain malloc
/// (`PYTHONMALLOC=malloc`), so every object, not just those above 512 bytes, is a malloc.
fn python(malloc: Malloc, scratch: &Scratch) -> Command {
    let mut cmd = command(&program(PYTHON, "python3"), malloc, scratch);
    cmd.env("PYTHONMALLOC", "malloc")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

#[test]
fn python3_threads() {
    let scratch = Scratch::new("python-threads");
    let script = scratch.join("threads.py");
    fs::write(&script, PY_THREADS).expect("write threads.py");

    let glibc = run(
        python(Malloc::Glibc, &scratch).arg(&script),
        &scratch,
        "python3 threads on glibc",
    );
    let rampart = run(
        python(Malloc::Rampart, &scratch).arg(&script),
        &scratch,
        "python3 threads on rampart",
    );
    let stats = served(&rampart);

    let out = rampart.stdout();
    assert_eq!(
        out.lines().count(),
        9,
        "python3 threads: expected 9 lines\n{out}"
    );
    assert_same_text("python3 threads", &glibc.stdout(), &out);
    // Nine threads allocated while all alive, so none could reuse another's heap.
    assert!(
        stats.heaps_created >= 9,
        "python3 threads: 9 threads allocated at the same time but rampart made only {} \
         thread heaps: {stats:?}",
        stats.heaps_created
    );
}

/// What [`children_start_with_signals_at_their_default_action`] runs in a test runner that
/// ignores SIGINT (so as a test of its own it checks nothing): python3, started as every
/// program here is, prints SIGINT's handler.
#[test]
fn sigint_child_reports_its_handler() {
    let scratch = Scratch::new("sigint-child");
    let mut cmd = python(Malloc::Glibc, &scratch);
    cmd.args([
        "-c",
        "import signal; print(signal.getsignal(signal.SIGINT))",
    ]);
    print!(
        "handler: {}",
        run(&mut cmd, &scratch, "python3 getsignal").stdout()
    );
}

/// A test runner started with SIGINT ignored (`nohup`, a background job) starts its programs
/// with SIGINT at its default action: this test binary is re-run under `sh` with
/// `trap '' INT`, and the python3 it starts must see Python's own SIGINT handler, not
/// `SIG_IGN`.
#[test]
fn children_start_with_signals_at_their_default_action() {
    let scratch = Scratch::new("sigint");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("trap '' INT; exec \"$0\" --exact sigint_child_reports_its_handler --nocapture --test-threads=1")
        .arg(std::env::current_exe().expect("the test binary"));
    let out = run(&mut cmd, &scratch, "the test binary with SIGINT ignored").stdout();
    assert!(
        out.contains("handler: <built-in function default_int_handler>"),
        "python3 did not get SIGINT's default action:\n{out}"
    );
}

#[test]
fn python3_regression_suite() {
    let python3 = program(PYTHON, "python3");
    let scratch = Scratch::new("python-suite");
    let mut version = command(&python3, Malloc::Glibc, &scratch);
    version.args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]);
    let version = run(&mut version, &scratch, "python3 version")
        .stdout()
        .trim()
        .to_string();
    let testsuite = format!("/usr/lib/python{version}/test/test_dict.py");
    program(&testsuite, &format!("libpython{version}-testsuite"));

    let driver = scratch.join("regrtest.py");
    fs::write(&driver, PY_REGRTEST).expect("write regrtest.py");
    let summarize = scratch.join("junit_summary.py");
    fs::write(&summarize, PY_JUNIT_SUMMARY).expect("write junit_summary.py");

    // (run, per-test-case outcomes) on glibc, then on rampart.
    let mut runs = Vec::new();
    for malloc in [Malloc::Glibc, Malloc::Rampart] {
        let junit = scratch.join(&format!("junit-{}.xml", malloc.name()));
        let mut cmd = python(malloc, &scratch);
        cmd.arg(&driver)
            .arg("--junit-xml")
            .arg(&junit)
            .args(PY_SUITE);
        let label = format!("python3 -m test on {}", malloc.name());
        let finished = run_with_input(&mut cmd, &scratch, &label, None);
        if malloc == Malloc::Rampart {
            served(&finished);
        }
        assert!(
            junit.is_file(),
            "{label} wrote no JUnit results ({})\n{}",
            finished.status,
            finished.output_tails()
        );
        let mut summary = command(&python3, Malloc::Glibc, &scratch);
        summary.arg(&summarize).arg(&junit);
        let summary = run(&mut summary, &scratch, &format!("summary of {label}")).stdout();
        runs.push((finished, summary));
    }
    let passed =
        |run: &Finished| run.status.success() && run.stdout().contains("Tests result: SUCCESS");
    let (glibc, glibc_cases) = &runs[0];
    assert!(
        passed(glibc),
        "python3 -m test fails on glibc too, so this environment cannot judge rampart (the \
         tests in PY_SUITE are chosen to pass)\n{}",
        glibc.output_tails()
    );
    let cases = glibc_cases.lines().count();
    assert!(
        cases > 1000,
        "python3 -m test: only {cases} test cases were reported"
    );
    let (rampart, rampart_cases) = &runs[1];
    if glibc_cases != rampart_cases {
        let g: BTreeSet<&str> = glibc_cases.lines().collect();
        let r: BTreeSet<&str> = rampart_cases.lines().collect();
        let mut msg = String::new();
        for line in g.difference(&r) {
            let _ = writeln!(msg, "  glibc only:   {line}");
        }
        for line in r.difference(&g) {
            let _ = writeln!(msg, "  rampart only: {line}");
        }
        panic!(
            "python3 -m test: per-test outcomes differ between glibc and rampart:\n{msg}{}",
            rampart.output_tails()
        );
    }
    assert!(
        passed(rampart),
        "python3 -m test on rampart: the same outcomes as on glibc, but the run failed ({})\n{}",
        rampart.status,
        rampart.output_tails()
    );
}

// ---------------------------------------------------------------------------------------------
// sqlite3
// ---------------------------------------------------------------------------------------------

const SQLITE_ORDERS: u64 = 100_000;
const SQLITE_CUSTOMERS: u64 = 1_000;
const SQLITE_REGIONS: [&str; 5] = ["central", "east", "north", "south", "west"];

/// The SQL script (schema, 100,000 orders inserted in one transaction, indexes, queries) and
/// the output lines its first queries must print, computed here.
fn sqlite_script() -> (String, Vec<String>) {
    let mut sql = String::new();
    sql.push_str(
        "PRAGMA cache_size = -65536;\n\
         CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL);\n\
         CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER NOT NULL REFERENCES \
         customers(id), amount INTEGER NOT NULL, note TEXT NOT NULL);\n\
         BEGIN;\n",
    );
    let region_of = |c: u64| SQLITE_REGIONS[(c % 5) as usize];
    for c in 1..=SQLITE_CUSTOMERS {
        let _ = writeln!(
            sql,
            "INSERT INTO customers VALUES({c}, 'customer{c:04}', '{}');",
            region_of(c)
        );
    }
    let mut rng = XorShift64::new(0x5_1173);
    let (mut sum, mut min, mut max) = (0u64, u64::MAX, 0u64);
    let mut per_region: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut per_customer: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut in_range = 0u64;
    let mut notes_len = 0u64;
    for id in 1..=SQLITE_ORDERS {
        let customer = 1 + rng.below(SQLITE_CUSTOMERS);
        let amount = rng.below(100_000);
        let note = format!("note-{}-{}", rng.below(500), "x".repeat(rng.range(0, 40)));
        let _ = writeln!(
            sql,
            "INSERT INTO orders VALUES({id}, {customer}, {amount}, '{note}');"
        );
        sum += amount;
        min = min.min(amount);
        max = max.max(amount);
        let r = per_region.entry(region_of(customer)).or_default();
        r.0 += 1;
        r.1 += amount;
        let c = per_customer.entry(customer).or_default();
        c.0 += 1;
        c.1 += amount;
        if (1000..=1999).contains(&amount) {
            in_range += 1;
        }
        notes_len += note.len() as u64;
    }
    sql.push_str(
        "COMMIT;\n\
         CREATE INDEX orders_customer ON orders(customer);\n\
         CREATE INDEX orders_amount ON orders(amount);\n\
         SELECT count(*), sum(amount), min(amount), max(amount) FROM orders;\n\
         SELECT c.region, count(*), sum(o.amount) FROM orders o JOIN customers c ON c.id = \
         o.customer GROUP BY c.region ORDER BY c.region;\n\
         SELECT customer, count(*), sum(amount) FROM orders WHERE customer IN (1, 500, 1000) \
         GROUP BY customer ORDER BY customer;\n\
         SELECT count(*) FROM orders WHERE amount BETWEEN 1000 AND 1999;\n\
         SELECT length(group_concat(note, '')) FROM orders;\n\
         SELECT c.name, count(*), sum(o.amount) AS total FROM customers c JOIN orders o ON \
         o.customer = c.id GROUP BY c.id ORDER BY total DESC, c.id LIMIT 10;\n\
         SELECT substr(note, 1, 9) AS n, count(*), avg(amount) FROM orders GROUP BY n ORDER \
         BY count(*) DESC, n LIMIT 10;\n\
         SELECT id, customer, amount FROM orders ORDER BY note DESC, amount, id LIMIT 10;\n\
         SELECT region, count(DISTINCT customer) FROM orders JOIN customers ON customers.id = \
         orders.customer GROUP BY region ORDER BY region;\n\
         DELETE FROM orders WHERE amount % 3 = 0;\n\
         SELECT count(*) FROM orders;\n\
         PRAGMA integrity_check;\n",
    );
    let mut expected = vec![format!("{SQLITE_ORDERS}|{sum}|{min}|{max}")];
    for (region, (n, s)) in &per_region {
        expected.push(format!("{region}|{n}|{s}"));
    }
    for c in [1, 500, 1000] {
        if let Some((n, s)) = per_customer.get(&c) {
            expected.push(format!("{c}|{n}|{s}"));
        }
    }
    expected.push(in_range.to_string());
    expected.push(notes_len.to_string());
    (sql, expected)
}

#[test]
fn sqlite3_100k_rows() {
    let sqlite3 = program("/usr/bin/sqlite3", "sqlite3");
    let scratch = Scratch::new("sqlite");
    let (sql, expected) = sqlite_script();
    let script = scratch.join("orders.sql");
    fs::write(&script, sql).expect("write orders.sql");

    let mut outputs = Vec::new();
    for malloc in [
        Malloc::Glibc,
        Malloc::Rampart,
        Malloc::Hardened,
        Malloc::Sampled,
    ] {
        let db = scratch.join(&format!("orders-{}.db", malloc.name()));
        let mut cmd = command(&sqlite3, malloc, &scratch);
        cmd.args(["-batch", "-bail"]).arg(&db);
        let label = format!("sqlite3 on {}", malloc.name());
        let finished = run_with_input(&mut cmd, &scratch, &label, Some(&script)).expect_success();
        if malloc != Malloc::Glibc {
            served(&finished);
        }
        outputs.push(finished.stdout());
    }
    let rampart = &outputs[1];
    let got: Vec<&str> = rampart.lines().take(expected.len()).collect();
    assert_eq!(
        got, expected,
        "sqlite3 on rampart: the aggregates differ from the values computed from the inserted rows"
    );
    assert_eq!(
        rampart.lines().last(),
        Some("ok"),
        "sqlite3: PRAGMA integrity_check\n{rampart}"
    );
    assert_same_text("sqlite3 queries", &outputs[0], rampart);
    assert_same_text("sqlite3 queries (hardened)", &outputs[0], &outputs[2]);
    assert_same_text(
        "sqlite3 queries (sample, every block)",
        &outputs[0],
        &outputs[3],
    );
}

// ---------------------------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------------------------

const GIT: &str = "/usr/bin/git";

/// Writes file `(a, b, c)` of the generated tree at `generation` (content depends on all).
fn git_file_content(a: usize, b: usize, c: usize, generation: usize) -> String {
    let mut rng = XorShift64::new((a * 10_000 + b * 100 + c) as u64);
    let mut s = String::new();
    for line in 0..rng.range(5, 120) {
        let _ = writeln!(
            s,
            "m{a} p{b} f{c} line {line}: {:016x} {}",
            rng.next_u64(),
            "word ".repeat(rng.range(0, 12))
        );
        if line % 17 == generation % 17 && generation > 0 {
            let _ = writeln!(s, "changed in generation {generation}");
        }
    }
    s
}

/// The 2,000-file tree (10 × 10 directories of 20 files), at `generation`: generation 0 is
/// the whole tree; later ones change every `7 + generation`-th file, delete some and add a
/// directory of new files.
fn git_write_tree(root: &Path, generation: usize) {
    let mut n = 0usize;
    for a in 0..10 {
        for b in 0..10 {
            let dir = root.join(format!("src/m{a}/p{b}"));
            fs::create_dir_all(&dir).expect("mkdir");
            for c in 0..20 {
                n += 1;
                let path = dir.join(format!("file{c}.txt"));
                if generation == 0 {
                    fs::write(&path, git_file_content(a, b, c, 0)).expect("write");
                } else if n.is_multiple_of(7 + generation) {
                    fs::write(&path, git_file_content(a, b, c, generation)).expect("write");
                } else if n.is_multiple_of(41 + generation) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    if generation > 0 {
        let dir = root.join(format!("added/gen{generation}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for c in 0..50 {
            fs::write(
                dir.join(format!("new{c}.txt")),
                git_file_content(100 + generation, 0, c, generation),
            )
            .expect("write");
        }
    }
}

/// Runs the scripted git session on `malloc` and returns its transcript (each step's label
/// and stdout). On rampart, every step's own process must have been served, and `git gc` must
/// show served child processes as well.
fn git_session(git: &Path, malloc: Malloc, scratch: &Scratch) -> String {
    let repo = scratch.join(&format!("repo-{}", malloc.name()));
    fs::create_dir_all(&repo).expect("mkdir repo");
    let mut transcript = String::new();
    let mut time = 1_700_000_000u64;
    let mut step = |args: &[&str]| -> Finished {
        time += 3600;
        let date = format!("@{time} +0000");
        let mut cmd = command(git, malloc, scratch);
        cmd.current_dir(&repo)
            .args(args)
            .env("GIT_AUTHOR_NAME", "Rampart Test")
            .env("GIT_AUTHOR_EMAIL", "test@rampart.invalid")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "Rampart Test")
            .env("GIT_COMMITTER_EMAIL", "test@rampart.invalid")
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_PAGER", "cat")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "gc.auto")
            .env("GIT_CONFIG_VALUE_0", "0");
        let label = format!("git {} on {}", args.join(" "), malloc.name());
        let finished = run_with_input(&mut cmd, scratch, &label, None);
        if malloc != Malloc::Glibc {
            served(&finished);
        }
        finished.expect_success()
    };

    step(&["init", "-q", "-b", "main"]);
    for generation in 0..4 {
        if generation == 2 {
            step(&["mv", "src/m3", "src/moved3"]);
        }
        git_write_tree(&repo, generation);
        step(&["add", "-A"]);
        let message = format!("generation {generation}");
        step(&["commit", "-q", "-m", &message]);
    }
    // Steps whose output goes into the transcript: before gc (loose objects) ...
    let recorded: [&[&str]; 2] = [&["rev-parse", "HEAD"], &["log", "--stat"]];
    for args in recorded {
        let _ = write!(
            transcript,
            "$ git {}\n{}",
            args.join(" "),
            step(args).stdout()
        );
    }
    let gc = step(&["gc", "-q", "--prune=now"]);
    if malloc != Malloc::Glibc {
        let pids: BTreeSet<u32> = parse_stats(&gc.stderr).iter().map(|b| b.pid).collect();
        assert!(
            pids.len() >= 2,
            "git gc on rampart: statistics from {} process(es) only, but gc runs repack and \
             pack-objects as child processes, which inherit the preload\n{}",
            pids.len(),
            gc.output_tails()
        );
    }
    let fsck = step(&["fsck", "--full", "--strict", "--no-progress"]);
    let _ = write!(transcript, "$ git fsck\n{}", fsck.stdout());
    let count = step(&["count-objects", "-v"]).stdout();
    // Object counts are fixed by the content; pack sizes depend on delta search order.
    for line in count.lines() {
        if ["count:", "in-pack:", "packs:", "garbage:"]
            .iter()
            .any(|k| line.starts_with(k))
        {
            let _ = writeln!(transcript, "{line}");
        }
    }
    // ... and after it (everything read from the pack).
    let recorded: [&[&str]; 4] = [
        &["cat-file", "--batch-all-objects", "--batch-check"],
        &["log", "--stat", "--format=%H %s"],
        &["diff", "--stat", "HEAD~3", "HEAD"],
        &["status", "--porcelain"],
    ];
    for args in recorded {
        let _ = write!(
            transcript,
            "$ git {}\n{}",
            args.join(" "),
            step(args).stdout()
        );
    }
    transcript
}

#[test]
fn git_repository() {
    let git = program(GIT, "git");
    let scratch = Scratch::new("git");
    let glibc = git_session(&git, Malloc::Glibc, &scratch);
    let rampart = git_session(&git, Malloc::Rampart, &scratch);
    // A sanity check on the session itself: 4 commits, every object packed.
    assert_eq!(
        rampart.lines().filter(|l| l.starts_with("commit ")).count(),
        4,
        "git log --stat on rampart: expected 4 commits\n{}",
        tail(&rampart)
    );
    assert!(
        rampart.contains("count: 0\n") && rampart.contains("packs: 1\n"),
        "git gc on rampart did not pack every object\n{rampart}"
    );
    assert_same_text("git session", &glibc, &rampart);
    let hardened = git_session(&git, Malloc::Hardened, &scratch);
    assert_same_text("git session (hardened)", &glibc, &hardened);
    let sampled = git_session(&git, Malloc::Sampled, &scratch);
    assert_same_text("git session (sample, every block)", &glibc, &sampled);
}

// ---------------------------------------------------------------------------------------------
// perl
// ---------------------------------------------------------------------------------------------

/// Size of the generated text.
const PERL_INPUT_BYTES: usize = 50 << 20;

/// Writes about [`PERL_INPUT_BYTES`] of lines of words drawn (skewed towards the first ones)
/// from a vocabulary of 20,000 made-up words, some with "ing" endings and doubled vowels for
/// the substitutions to find.
fn perl_input(path: &Path) {
    const SYLLABLES: [&str; 16] = [
        "ka", "ro", "ing", "mi", "te", "su", "an", "lo", "ve", "ri", "da", "ne", "po", "ul", "ee",
        "oo",
    ];
    let vocabulary: Vec<String> = (0..20_000usize)
        .map(|mut n| {
            let mut w = String::new();
            for _ in 0..2 + n % 3 {
                w.push_str(SYLLABLES[n % 16]);
                n /= 16;
            }
            w.push_str(SYLLABLES[(n + w.len()) % 16]);
            w
        })
        .collect();
    let mut out = BufWriter::new(File::create(path).expect("create perl input"));
    let mut rng = XorShift64::new(0x9e41);
    let mut written = 0usize;
    while written < PERL_INPUT_BYTES {
        let mut line = String::new();
        for i in 0..rng.range(4, 16) {
            if i > 0 {
                line.push(' ');
            }
            let bound = 1 + rng.below(vocabulary.len() as u64);
            line.push_str(&vocabulary[rng.below(bound) as usize]);
        }
        line.push('\n');
        written += line.len();
        out.write_all(line.as_bytes()).expect("write perl input");
    }
    out.flush().expect("flush perl input");
}

/// The perl jobs: name, program, minimum lines of output.
const PERL_JOBS: &[(&str, &str, usize)] = &[
    (
        // A hash of word counts, printed by falling count.
        "word-counts",
        r#"$c{$_}++ for split; END { print "$_ $c{$_}\n" for sort { $c{$b} <=> $c{$a} or $a cmp $b } keys %c }"#,
        10_000,
    ),
    (
        // Regex substitutions (captures, case changes, /e) and string reversal, line by line.
        "substitutions",
        r#"chomp; s/(\w+)ing\b/\U$1\EED/g; s/([aeiou])\1+/"<" . length($&) . ">"/ge; $_ = reverse $_ if $. % 5 == 0; $_ .= "\n"; print"#,
        100_000,
    ),
    (
        // Every line held in memory and sorted by length, then text.
        "sort",
        r#"push @l, $_; END { print sort { length($a) <=> length($b) or $a cmp $b } @l }"#,
        100_000,
    ),
    (
        // A hash keyed by whole lines (most distinct), with first line numbers.
        "line-index",
        r#"$seen{$_} //= $.; END { print scalar(keys %seen), "\n"; print "$seen{$_} $_" for sort { $seen{$a} <=> $seen{$b} } keys %seen }"#,
        100_000,
    ),
];

#[test]
fn perl_large_text() {
    let perl = program("/usr/bin/perl", "perl");
    let launcher = launcher();
    let scratch = Scratch::new("perl");
    let input = scratch.join("input.txt");
    perl_input(&input);

    for &(name, code, min_lines) in PERL_JOBS {
        let mut outputs = Vec::new();
        for malloc in [Malloc::Glibc, Malloc::Rampart, Malloc::Hardened] {
            // On rampart through the launcher (`rampart --stats -- perl ...`), which execs perl
            // with the preload: the pid stays the same.
            let mut cmd = match malloc {
                Malloc::Glibc | Malloc::Hardened | Malloc::Sampled => {
                    command(&perl, malloc, &scratch)
                }
                Malloc::Rampart => {
                    let mut cmd = Command::new(&launcher);
                    base_env(&mut cmd, &scratch);
                    cmd.args(["--stats", "--"]).arg(&perl);
                    cmd
                }
            };
            cmd.args(["-n", "-e", code]).arg(&input);
            let label = format!("perl {name} on {}", malloc.name());
            let finished = run(&mut cmd, &scratch, &label);
            if malloc != Malloc::Glibc {
                served(&finished);
            }
            outputs.push(finished.stdout_path.clone());
        }
        assert_lines_at_least(&format!("perl {name} on rampart"), &outputs[1], min_lines);
        assert_same_files(&format!("perl {name}"), &outputs[0], &outputs[1]);
        assert_same_files(&format!("perl {name} (hardened)"), &outputs[0], &outputs[2]);
        for path in outputs {
            let _ = fs::remove_file(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------

/// A redis-server child that is killed when dropped, so a failing test never leaves it behind.
struct Server {
    running: Option<Running>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.running.as_ref().expect("server running").pid()
    }

    /// Fails with the server's log if it has exited.
    fn check_alive(&mut self, what: &str) {
        let running = self.running.as_mut().expect("server running");
        if let Ok(Some(status)) = running.child.try_wait() {
            let log = fs::read_to_string(&running.stdout_path).unwrap_or_default();
            panic!(
                "redis-server exited ({status}) {what}\n--- log ---\n{}\n--- stderr ---\n{}",
                tail(&log),
                tail(&running.stderr_so_far())
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.as_mut() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

#[test]
fn redis_server_benchmark() {
    let server_bin = program("/usr/bin/redis-server", "redis-server");
    let cli = program("/usr/bin/redis-cli", "redis-tools");
    let bench = program("/usr/bin/redis-benchmark", "redis-tools");
    let scratch = Scratch::new("redis");
    let port = free_port().to_string();

    let mut cmd = command(&server_bin, Malloc::Rampart, &scratch);
    cmd.args([
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--daemonize", "no", "--logfile", "", "--dir"])
    .arg(scratch.path());
    let mut server = Server {
        running: Some(Running::start(&mut cmd, &scratch, "redis-server", None)),
    };

    let redis = |args: &[&str]| -> String {
        let mut cmd = command(&cli, Malloc::Glibc, &scratch);
        cmd.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        let label = format!("redis-cli {}", args.join(" "));
        run(&mut cmd, &scratch, &label).stdout().trim().to_string()
    };

    // Wait (bounded) until the server answers.
    let start = Instant::now();
    loop {
        server.check_alive("before it answered PING");
        let mut cmd = command(&cli, Malloc::Glibc, &scratch);
        cmd.args(["-h", "127.0.0.1", "-p", &port, "PING"]);
        let ping = run_with_input(&mut cmd, &scratch, "redis-cli PING (start-up)", None);
        if ping.status.success() && ping.stdout().trim() == "PONG" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "redis-server did not answer PING on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let maps_path = format!("/proc/{}/maps", server.pid());
    let maps = fs::read_to_string(&maps_path).unwrap_or_else(|e| panic!("{maps_path}: {e}"));
    assert!(
        maps.contains("librampart.so"),
        "redis-server (pid {}) does not map librampart.so: the preload did not take",
        server.pid()
    );

    let mut cmd = command(&bench, Malloc::Glibc, &scratch);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-n",
        "100000",
        "-r",
        "100000",
        "-q",
    ])
    .args(["-t", "set,get,lpush,lrange_100,incr"]);
    let bench_run = run(&mut cmd, &scratch, "redis-benchmark");
    let bench_out = bench_run.stdout().replace('\r', "\n");
    for name in [
        "SET",
        "GET",
        "LPUSH",
        "LRANGE_100 (first 100 elements)",
        "INCR",
    ] {
        let done = bench_out
            .lines()
            .any(|l| l.starts_with(&format!("{name}: ")) && l.contains(" requests per second"));
        assert!(
            done,
            "redis-benchmark: no result for {name}\n{}",
            tail(&bench_out)
        );
    }
    server.check_alive("during redis-benchmark");

    // The data the benchmark left must be there and readable.
    let keys: u64 = redis(&["DBSIZE"]).parse().expect("DBSIZE is a number");
    assert!(keys > 1000, "redis: only {keys} keys after the benchmark");
    let list: u64 = redis(&["LLEN", "mylist"])
        .parse()
        .expect("LLEN is a number");
    assert!(
        list >= 100_000,
        "redis: mylist has {list} elements after LPUSH x 100000"
    );
    assert_eq!(redis(&["SET", "rampart:check", "served"]), "OK");
    assert_eq!(redis(&["GET", "rampart:check"]), "served");
    // Free the whole data set on the server's lazy-free thread: memory the main thread
    // allocated, freed on another thread.
    assert_eq!(redis(&["FLUSHALL", "ASYNC"]), "OK");
    assert_eq!(redis(&["DBSIZE"]), "0");
    assert_eq!(redis(&["SET", "rampart:check", "again"]), "OK");
    assert_eq!(redis(&["GET", "rampart:check"]), "again");
    server.check_alive("after the benchmark");

    // SHUTDOWN closes the connection; redis-cli's exit status is not the point, the server's is.
    let mut cmd = command(&cli, Malloc::Glibc, &scratch);
    cmd.args(["-h", "127.0.0.1", "-p", &port, "SHUTDOWN", "NOSAVE"]);
    run_with_input(&mut cmd, &scratch, "redis-cli SHUTDOWN NOSAVE", None);
    let finished = server
        .running
        .take()
        .expect("server running")
        .wait(Duration::from_secs(60))
        .expect_success();
    let log = finished.stdout();
    assert!(
        log.contains("ready to exit"),
        "redis-server did not log an orderly shutdown\n{}",
        tail(&log)
    );
    served(&finished);
}

// ---------------------------------------------------------------------------------------------
// gcc
// ---------------------------------------------------------------------------------------------

const GCC_FUNCTIONS: u32 = 5_000;

/// The constants of generated function `i`: (xor, multiplier, shift, addend, iterations).
fn gcc_constants(i: u32) -> (u32, u32, u32, u32, u32) {
    let h = i.wrapping_mul(0x9E37_79B9) ^ (i >> 3);
    (
        h,
        (h | 1).wrapping_mul(2_654_435_761),
        h % 29,
        h >> 7,
        3 + i % 11,
    )
}

/// The C program: [`GCC_FUNCTIONS`] functions of loops and switches, called in a chain from a
/// table by `main`, which prints a checkpoint every 1,000 and the final value.
fn gcc_source() -> String {
    let mut src = String::from("#include <stdio.h>\n\n");
    for i in 0..GCC_FUNCTIONS {
        let (x, m, shift, add, iters) = gcc_constants(i);
        let _ = write!(
            src,
            "unsigned f{i}(unsigned x)\n{{\n    unsigned a = x ^ {x}u;\n    for (unsigned n = \
             0; n < {iters}u; n++) {{\n        a = a * {m}u + n;\n        switch ((a >> \
             {shift}) & 3u) {{\n        case 0: a ^= a >> 7; break;\n        case 1: a += \
             {add}u; break;\n        case 2: a = (a << 3) | (a >> 29); break;\n        \
             default: a -= x; break;\n        }}\n    }}\n    return a;\n}}\n\n"
        );
    }
    src.push_str("typedef unsigned (*fn)(unsigned);\nstatic const fn table[] = {\n");
    for i in 0..GCC_FUNCTIONS {
        let _ = writeln!(src, "    f{i},");
    }
    let _ = write!(
        src,
        "}};\n\nint main(void)\n{{\n    unsigned acc = 1;\n    for (unsigned i = 0; i < \
         {GCC_FUNCTIONS}u; i++) {{\n        acc = table[i](acc) + i;\n        if (i % 1000 == \
         999)\n            printf(\"%u %08x\\n\", i, acc);\n    }}\n    printf(\"final \
         %08x\\n\", acc);\n    return 0;\n}}\n"
    );
    src
}

/// What the generated program prints, computed here with the same arithmetic.
fn gcc_expected_output() -> String {
    let mut out = String::new();
    let mut acc: u32 = 1;
    for i in 0..GCC_FUNCTIONS {
        let (k, m, shift, add, iters) = gcc_constants(i);
        let x = acc;
        let mut a = x ^ k;
        for n in 0..iters {
            a = a.wrapping_mul(m).wrapping_add(n);
            match (a >> shift) & 3 {
                0 => a ^= a >> 7,
                1 => a = a.wrapping_add(add),
                2 => a = a.rotate_left(3),
                _ => a = a.wrapping_sub(x),
            }
        }
        acc = a.wrapping_add(i);
        if i % 1000 == 999 {
            let _ = writeln!(out, "{i} {acc:08x}");
        }
    }
    let _ = writeln!(out, "final {acc:08x}");
    out
}

#[test]
fn gcc_compiles_large_file() {
    let gcc = program("/usr/bin/gcc", "gcc");
    let scratch = Scratch::new("gcc");
    let source = scratch.join("gen.c");
    fs::write(&source, gcc_source()).expect("write gen.c");
    let expected = gcc_expected_output();

    let mut assembly = Vec::new();
    for malloc in [Malloc::Glibc, Malloc::Rampart, Malloc::Hardened] {
        let name = malloc.name();
        let asm = scratch.join(&format!("gen-{name}.s"));
        let exe = scratch.join(&format!("gen-{name}"));
        // Compile (the driver and cc1), then assemble and link (the driver, as, collect2, ld).
        let mut cc = command(&gcc, malloc, &scratch);
        cc.args(["-O2", "-S", "-o"]).arg(&asm).arg(&source);
        let compile = run(&mut cc, &scratch, &format!("gcc -O2 -S on {name}"));
        let mut ld = command(&gcc, malloc, &scratch);
        ld.arg("-o").arg(&exe).arg(&asm);
        let link = run(
            &mut ld,
            &scratch,
            &format!("gcc (assemble, link) on {name}"),
        );
        if malloc != Malloc::Glibc {
            for step in [&compile, &link] {
                served(step);
                let pids: BTreeSet<u32> = parse_stats(&step.stderr).iter().map(|b| b.pid).collect();
                assert!(
                    pids.len() >= 2,
                    "{}: statistics from {} process(es), but the driver runs cc1 or as/ld as \
                     child processes, which inherit the preload\n{}",
                    step.label,
                    pids.len(),
                    step.output_tails()
                );
            }
        }
        // The compiled program runs on glibc in both cases; only the compiler's malloc differs.
        let mut prog = Command::new(&exe);
        base_env(&mut prog, &scratch);
        let out = run(&mut prog, &scratch, &format!("program built on {name}")).stdout();
        assert_eq!(
            out, expected,
            "the program gcc built on {name} printed the wrong values"
        );
        assembly.push(asm);
    }
    assert_lines_at_least(
        "gcc -S on rampart",
        &assembly[1],
        GCC_FUNCTIONS as usize * 10,
    );
    assert_same_files("gcc -O2 -S", &assembly[0], &assembly[1]);
    assert_same_files("gcc -O2 -S (hardened)", &assembly[0], &assembly[2]);
}
