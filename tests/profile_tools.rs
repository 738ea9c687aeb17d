//! The launcher's heap-profile tools: `rampart profile FILE` (the top-stacks table, folded
//! stacks, the flame graph SVG, the pprof protobuf) and `rampart --profile heap|leaks`.
//!
//! The tests make their own raw profiles, so they do not depend on the allocator's profiler:
//! a C program (`-g -O0 -fno-omit-frame-pointer`) takes real return addresses with
//! `__builtin_return_address` in named functions: its own (PIE and non-PIE builds), one
//! always-inlined function (DWARF inlined frames), a shared library with debug information,
//! a stripped C++ shared library (symbol-table fallback and demangling, and a static
//! function there that must not be named after its exported neighbour), a made-up mapping
//! of a file that does not exist and an address in no mapping (the last-resort names), and
//! two functions named as the allocator's own (`rampart_*`, `__rust_alloc`), which must be
//! dropped from the innermost end. It reads `/proc/self/maps` and writes the profile in the
//! allocator's format, with byte and object counts the test knows. The expected source lines
//! are those of `/* @name */` markers in the C sources: a return address is symbolized as
//! the line of its call only if the tool looks up `pc - 1` (each call is followed by code on
//! a line of its own).
//!
//! For `--profile`, the same program stands in for the allocator: run by the launcher (with
//! a preloaded do-nothing library), it checks the `RAMPART_PROFILE*` variables and writes its
//! profile (and a forked child's) where `RAMPART_PROFILE_OUT` says, then exits with a given
//! status or signal. One test then runs the launcher with the real `librampart.so` on the
//! program leaking three blocks from a known line and making a 1 MiB peak, in exact mode.
//!
//! The launcher is `<target>/<profile>/rampart`, beside the test binary's profile directory:
//! `cargo build -p rampart-ffi` (or `--release`, for `cargo test --release`) first. The pprof
//! file is decoded here by a protobuf wire-format reader with profile.proto's field numbers;
//! where `protoc` and pprof's own profile.proto (Debian: `protobuf-compiler`,
//! `golang-github-google-pprof-dev`) are installed, it is also decoded by `protoc` against
//! that schema, and the check says so when they are not. Nothing here asserts a time; every
//! child runs under a watchdog (a hang fails the test, it does not hang CI).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a child may run before it is called hung (generous: not a speed check).
const WATCHDOG: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------
// The C sources

/// The program. `write OUT [RATE]` writes its profile to OUT; `launched MODE STATUS
/// [fork] [sigint] [sigterm]` is the `--profile` stand-in described in the module doc; `real`
/// leaks three blocks and makes a peak, for the real allocator to profile.
const PROG_C: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct stack { int n; uintptr_t pcs[8]; };
typedef void (*grab_fn)(struct stack *);
void toolkit_fill(grab_fn grab, struct stack *s);
void stripped_run(grab_fn grab, struct stack *s);

static struct stack stacks[11];
static volatile int sink;

/* The stack of capture's caller: pcs[0] is in it, then its callers'. */
__attribute__((noinline)) void capture(struct stack *s, int depth) {
    s->n = depth;
    s->pcs[0] = (uintptr_t)__builtin_return_address(0);
    if (depth > 1) s->pcs[1] = (uintptr_t)__builtin_return_address(1);
    if (depth > 2) s->pcs[2] = (uintptr_t)__builtin_return_address(2);
    if (depth > 3) s->pcs[3] = (uintptr_t)__builtin_return_address(3);
}

/* The same for a caller in a library, s->n deep. */
__attribute__((noinline)) void grab(struct stack *s) {
    s->pcs[0] = (uintptr_t)__builtin_return_address(0);
    if (s->n > 1) s->pcs[1] = (uintptr_t)__builtin_return_address(1);
    if (s->n > 2) s->pcs[2] = (uintptr_t)__builtin_return_address(2);
    if (s->n > 3) s->pcs[3] = (uintptr_t)__builtin_return_address(3);
}

__attribute__((noinline)) void make_widgets(void) {
    capture(&stacks[1], 3); /* @make_widgets */
    sink++;
}

__attribute__((noinline)) void parse_names(void) {
    capture(&stacks[3], 3); /* @parse_names */
    sink++;
}

__attribute__((noinline)) void build_cache(void) {
    make_widgets(); /* @build_cache_widgets */
    sink++;
    parse_names(); /* @build_cache_names */
    sink++;
}

__attribute__((noinline)) void load_config(void) {
    capture(&stacks[2], 2); /* @load_config */
    sink++;
}

/* Named as the allocator's own frames: dropped from the innermost end. */
__attribute__((noinline)) void rampart_fake_inner(void) {
    capture(&stacks[7], 4);
    sink++;
}

__attribute__((noinline)) void __rust_alloc(void) {
    rampart_fake_inner();
    sink++;
}

__attribute__((noinline)) void make_strings(void) {
    __rust_alloc(); /* @make_strings */
    sink++;
}

static inline __attribute__((always_inline)) void inlined_helper(void) {
    capture(&stacks[8], 2); /* @inlined_helper */
    sink++;
}

__attribute__((noinline)) void uses_inline(void) {
    inlined_helper(); /* @uses_inline */
    sink++;
}

__attribute__((noinline)) void churn(void) {
    capture(&stacks[9], 2); /* @churn */
    sink++;
}

/* For the real allocator (`prog real`): three blocks never freed, and a large one freed
   after the peak it makes. */
static void *leaked[3];

__attribute__((noinline)) void leak_buffers(void) {
    for (int i = 0; i < 3; i++) {
        leaked[i] = malloc(1000); /* @leak_buffers */
        sink++;
    }
}

__attribute__((noinline)) void peak_then_free(void) {
    char *p = malloc(1 << 20); /* @peak_then_free */
    sink++;
    memset(p, 1, 1 << 20);
    free(p);
}

/* id, live bytes, objects, peak bytes, objects, total bytes, objects */
static const unsigned long recs[][7] = {
    {1, 1048576, 12, 2097152, 20, 4194304, 40},
    {2, 4096, 1, 0, 0, 8192, 2},
    {3, 65536, 3, 65536, 3, 131072, 6},
    {4, 262144, 4, 262144, 4, 262144, 4},
    {5, 131072, 2, 131072, 2, 131072, 2},
    {6, 512, 1, 512, 1, 512, 1},
    {7, 32768, 8, 49152, 12, 65536, 16},
    {8, 16384, 1, 16384, 1, 16384, 1},
    {9, 0, 0, 0, 0, 999, 3},
    {10, 128, 1, 128, 1, 128, 1},
};

static void write_profile(const char *path, const char *rate) {
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(97); }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) { perror("readlink"); exit(97); }
    exe[n] = 0;
    fprintf(f, "rampart-profile 1\npid %d\nrate %s\nreason exit\nexe %s\n", (int)getpid(), rate, exe);
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) { perror("maps"); exit(97); }
    char line[8192];
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end, off, inode;
        char perms[8], dev[16];
        int pos = 0;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &start, &end, perms, &off, dev, &inode, &pos) >= 6
            && pos > 0 && line[pos] == '/')
            fprintf(f, "map %lx %lx %s %lx %s\n", start, end, perms, off, line + pos);
    }
    fclose(maps);
    /* A mapping of a file that is not there, and (in stack 6) an address in no mapping. */
    fprintf(f, "map 100000 110000 r-xp 1000 /nonexistent/libgone.so\n");
    stacks[6].n = 2;
    stacks[6].pcs[0] = 0x100010;
    stacks[6].pcs[1] = 0x1238;
    stacks[10].n = 0;
    for (int i = 1; i <= 10; i++) {
        fprintf(f, "stack %d", i);
        for (int j = 0; j < stacks[i].n; j++) fprintf(f, " %lx", (unsigned long)stacks[i].pcs[j]);
        fprintf(f, "\n");
    }
    unsigned long sum[6] = {0};
    static const char *kinds[] = {"live", "peak", "total"};
    for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++) {
        for (int k = 0; k < 3; k++) {
            unsigned long b = recs[i][1 + 2 * k], o = recs[i][2 + 2 * k];
            sum[2 * k] += b;
            sum[2 * k + 1] += o;
            if (b || o) fprintf(f, "%s %lu %lu %lu\n", kinds[k], recs[i][0], b, o);
        }
    }
    fprintf(f, "summary live_bytes %lu live_objects %lu peak_bytes %lu total_bytes %lu samples 42\nend\n",
            sum[0], sum[1], sum[2], sum[4]);
    if (fclose(f)) { perror("fclose"); exit(97); }
}

static int has(int argc, char **argv, const char *word) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], word)) return 1;
    return 0;
}

/* RAMPART_PROFILE_OUT with %p replaced by this process's pid, as the allocator does. */
static void write_own(void) {
    const char *out = getenv("RAMPART_PROFILE_OUT");
    const char *p = out ? strstr(out, "%p") : NULL;
    if (!p) { fprintf(stderr, "RAMPART_PROFILE_OUT without %%p: %s\n", out ? out : "(unset)"); exit(98); }
    char path[4096];
    snprintf(path, sizeof path, "%.*s%d%s", (int)(p - out), out, (int)getpid(), p + 2);
    const char *rate = getenv("RAMPART_PROFILE_RATE");
    write_profile(path, rate ? rate : "524288");
}

int main(int argc, char **argv) {
    build_cache(); /* @main_build */
    sink++;
    load_config(); /* @main_config */
    sink++;
    stacks[4].n = 2;
    toolkit_fill(grab, &stacks[4]); /* @main_toolkit */
    sink++;
    stacks[5].n = 4;
    stripped_run(grab, &stacks[5]); /* @main_stripped */
    sink++;
    make_strings(); /* @main_strings */
    sink++;
    uses_inline(); /* @main_inline */
    sink++;
    churn(); /* @main_churn */
    sink++;

    if (argc >= 3 && !strcmp(argv[1], "write")) {
        write_profile(argv[2], argc >= 4 ? argv[3] : "1");
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "real")) {
        leak_buffers(); /* @main_leak */
        sink++;
        peak_then_free(); /* @main_peak */
        sink++;
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "launched")) {
        const char *mode = getenv("RAMPART_PROFILE");
        if (!mode || strcmp(mode, argv[2])) {
            fprintf(stderr, "RAMPART_PROFILE is %s, not %s\n", mode ? mode : "(unset)", argv[2]);
            return 99;
        }
        const char *preload = getenv("LD_PRELOAD");
        if (!preload || !strstr(preload, "libfakerampart.so")) {
            fprintf(stderr, "LD_PRELOAD is %s\n", preload ? preload : "(unset)");
            return 99;
        }
        if (has(argc, argv, "fork")) {
            pid_t child = fork();
            if (child == 0) {
                write_own();
                _exit(0);
            }
            int status;
            if (child < 0 || waitpid(child, &status, 0) != child || status != 0) return 96;
        }
        if (has(argc, argv, "sigint")) kill(getppid(), SIGINT);
        write_own();
        if (has(argc, argv, "sigterm")) {
            signal(SIGTERM, SIG_DFL);
            raise(SIGTERM);
        }
        return atoi(argv[3]);
    }
    fprintf(stderr, "usage: prog write OUT [RATE] | prog launched MODE STATUS [fork] [sigint] [sigterm] | prog real\n");
    return 2;
}
"#;

/// The shared library with debug information.
const TOOLKIT_C: &str = r#"
struct stack;
typedef void (*grab_fn)(struct stack *);
static volatile int toolkit_sink;

__attribute__((noinline)) void toolkit_fill(grab_fn grab, struct stack *s) {
    grab(s); /* @toolkit_fill */
    toolkit_sink++;
}
"#;

/// The C++ library, stripped of everything but its dynamic symbols after linking.
const STRIPPED_CC: &str = r#"
struct stack;
typedef void (*grab_fn)(stack *);

namespace toolkit {
struct Stripped {
    static void entry(grab_fn grab, stack *s);
};
volatile int sink;
__attribute__((noinline)) void Stripped::entry(grab_fn grab, stack *s) {
    grab(s);
    sink++;
}
}

/* Not exported: a stripped file says nothing of it, and the exported function below it in
   memory must not be named in its place. */
static __attribute__((noinline)) void hidden_step(grab_fn grab, stack *s) {
    toolkit::Stripped::entry(grab, s);
    toolkit::sink++;
}

extern "C" __attribute__((noinline)) void stripped_run(grab_fn grab, stack *s) {
    hidden_step(grab, s);
    toolkit::sink++;
}
"#;

/// The do-nothing library the launcher preloads in the `--profile` tests.
const FAKE_LIB_C: &str = "void fake_rampart_marker(void) {}\n";

/// The records `PROG_C` writes: stack id, then (bytes, objects) live, peak and total.
const RECORDS: [(u64, [(u64, u64); 3]); 10] = [
    (1, [(1048576, 12), (2097152, 20), (4194304, 40)]),
    (2, [(4096, 1), (0, 0), (8192, 2)]),
    (3, [(65536, 3), (65536, 3), (131072, 6)]),
    (4, [(262144, 4), (262144, 4), (262144, 4)]),
    (5, [(131072, 2), (131072, 2), (131072, 2)]),
    (6, [(512, 1), (512, 1), (512, 1)]),
    (7, [(32768, 8), (49152, 12), (65536, 16)]),
    (8, [(16384, 1), (16384, 1), (16384, 1)]),
    (9, [(0, 0), (0, 0), (999, 3)]),
    (10, [(128, 1), (128, 1), (128, 1)]),
];

/// Views, as indices into a record's counts.
const LIVE: usize = 0;
const PEAK: usize = 1;
const TOTAL: usize = 2;

/// The sum of one view over all records: (bytes, objects).
fn sum(view: usize) -> (u64, u64) {
    RECORDS
        .iter()
        .fold((0, 0), |(b, o), (_, r)| (b + r[view].0, o + r[view].1))
}

/// The counts of one stack.
fn record(id: u64) -> [(u64, u64); 3] {
    RECORDS
        .iter()
        .find(|r| r.0 == id)
        .expect("known stack id")
        .1
}

/// The 1-based line of the `/* @name */` marker in a source.
fn line_of(src: &str, name: &str) -> u32 {
    let marker = format!("/* @{name} */");
    let found: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(found.len(), 1, "marker {marker} must appear once");
    found[0] as u32
}

// ---------------------------------------------------------------------------------------
// Building and running

/// `<target>/<profile>`: the directory holding this test binary's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no profile directory above {}", exe.display()))
        .to_path_buf()
}

/// The launcher, or a failure that says how to build it.
fn launcher() -> PathBuf {
    let dir = profile_dir();
    let path = dir.join("rampart");
    let release = if dir.file_name().is_some_and(|n| n == "release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build{release} -p rampart-ffi` before these tests",
        path.display()
    );
    path
}

/// What the C sources build into.
struct Built {
    dir: PathBuf,
    prog_pie: PathBuf,
    prog_nopie: PathBuf,
    fake_lib: PathBuf,
}

/// The programs, built once per test process into a directory under the target directory.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_finished_runs(tmp);
        let dir = tmp.join(format!("profile_tools-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the build directory");
        for (name, src) in [
            ("prog.c", PROG_C),
            ("toolkit.c", TOOLKIT_C),
            ("stripped.cc", STRIPPED_CC),
            ("fake.c", FAKE_LIB_C),
        ] {
            fs::write(dir.join(name), src).expect("write a source");
        }
        let p = |n: &str| dir.join(n).display().to_string();
        let debug = ["-g", "-O0", "-fno-omit-frame-pointer"];
        compile(
            "cc",
            &[
                &debug[..],
                &[
                    "-shared",
                    "-fPIC",
                    &p("toolkit.c"),
                    "-o",
                    &p("libtoolkit.so"),
                ],
            ]
            .concat(),
        );
        compile(
            "c++",
            &[
                &debug[..],
                &[
                    "-shared",
                    "-fPIC",
                    &p("stripped.cc"),
                    "-o",
                    &p("libstripped.so"),
                ],
            ]
            .concat(),
        );
        compile("strip", &["--strip-all", &p("libstripped.so")]);
        compile(
            "cc",
            &[
                "-shared",
                "-fPIC",
                &p("fake.c"),
                "-o",
                &p("libfakerampart.so"),
            ],
        );
        let libs = [
            "-L",
            &p(""),
            "-ltoolkit",
            "-lstripped",
            &format!("-Wl,-rpath,{}", dir.display()),
        ];
        for (pie, out) in [
            (["-fPIE", "-pie"], "prog-pie"),
            (["-fno-pie", "-no-pie"], "prog-nopie"),
        ] {
            compile(
                "cc",
                &[
                    &debug[..],
                    &pie[..],
                    &[&p("prog.c"), "-o", &p(out)],
                    &libs[..],
                ]
                .concat(),
            );
        }
        Built {
            prog_pie: dir.join("prog-pie"),
            prog_nopie: dir.join("prog-nopie"),
            fake_lib: dir.join("libfakerampart.so"),
            dir,
        }
    })
}

/// Removes the directories of earlier runs whose process is gone (`profile_tools-<pid>`):
/// each run keeps its files for inspection until the next one starts, and two runs at once
/// (a debug and a release one share the directory) do not remove each other's.
fn remove_finished_runs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("profile_tools-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn compile(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (is build-essential installed?): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a finished child left.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    what: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "{}\nstatus {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    fn ok(self) -> Ran {
        assert!(self.status.success(), "failed:\n{}", self.describe());
        self
    }
}

/// Runs a command to the end under the watchdog, with no input.
fn run(cmd: &mut Command) -> Ran {
    run_with_input(cmd, Stdio::null())
}

/// Runs a command to the end under the watchdog, `stdin` its input.
fn run_with_input(cmd: &mut Command, stdin: impl Into<Stdio>) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let mut stderr = Vec::new();
    let err_reader = std::thread::spawn(move || {
        let _ = err.read_to_end(&mut stderr);
        stderr
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung: killed by the watchdog");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: String::from_utf8_lossy(&reader.join().expect("stdout reader")).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned(),
        what,
    }
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = built().dir.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Runs `prog write` into `dir/NAME.prof` and returns the profile's path.
fn write_profile(prog: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.prof"));
    run(Command::new(prog).arg("write").arg(&out)).ok();
    out
}

/// `rampart profile ARGS...`.
fn rampart_profile(args: &[&std::ffi::OsStr]) -> Ran {
    run(Command::new(launcher()).arg("profile").args(args))
}

/// The programs, by name, for tests that check both builds.
fn programs() -> [(&'static str, &'static Path); 2] {
    let b = built();
    [("PIE", &b.prog_pie), ("non-PIE", &b.prog_nopie)]
}

// ---------------------------------------------------------------------------------------
// The table

/// One entry of the top table: bytes, objects, frames as printed.
#[derive(Debug)]
struct Entry {
    bytes: u64,
    objects: u64,
    frames: Vec<String>,
}

/// The entries of a `--top` table (lines `  #N  1.0 MiB (1048576 bytes)  12 objects  50.0%`
/// and the frame lines under each).
fn parse_table(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('#') && line.starts_with("  #") {
            let bytes = t
                .split_once('(')
                .and_then(|(_, r)| r.split_once(" bytes)"))
                .map(|(n, _)| n.parse::<u64>().expect("bytes"))
                .unwrap_or_else(|| panic!("no (N bytes) in {line:?}"));
            let words: Vec<&str> = t.split_whitespace().collect();
            let at = words
                .iter()
                .position(|w| *w == "objects")
                .unwrap_or_else(|| panic!("no objects in {line:?}"));
            let objects = words[at - 1].parse().expect("objects");
            entries.push(Entry {
                bytes,
                objects,
                frames: Vec::new(),
            });
        } else if line.starts_with("        ") {
            if let Some(e) = entries.last_mut() {
                e.frames.push(t.to_owned());
            }
        }
    }
    entries
}

/// The frame text `function (…/file:line)` for a marker.
fn at(function: &str, file: &str, src: &str, marker: &str) -> String {
    format!("{function} ({file}:{})", line_of(src, marker))
}

/// Asserts that `frame` is `function (<path ending in file>:line of marker)`.
fn assert_frame(frame: &str, function: &str, file: &str, src: &str, marker: &str, ctx: &str) {
    let line = line_of(src, marker);
    let ok =
        frame.starts_with(&format!("{function} (")) && frame.ends_with(&format!("/{file}:{line})"));
    assert!(
        ok,
        "expected {}, got {frame:?}\n{ctx}",
        at(function, file, src, marker)
    );
}

#[test]
fn top_table_names_functions_lines_and_bytes() {
    for (kind, prog) in programs() {
        let dir = scratch(&format!("top-{kind}"));
        let file = write_profile(prog, &dir, "p");
        let ran = rampart_profile(&[file.as_os_str(), "--top".as_ref()]).ok();
        let out = &ran.stdout;
        let ctx = format!("{kind}:\n{}", ran.describe());
        assert!(out.contains("rampart heap profile of pid"), "{ctx}");
        assert!(out.contains("prog-"), "the header names the program\n{ctx}");
        assert!(
            out.contains("rate 1 (every allocation: exact counts)"),
            "{ctx}"
        );
        let (live, objects) = sum(LIVE);
        assert!(
            out.contains(&format!("live {} in {objects} objects", human_both(live))),
            "the header has the live total\n{ctx}"
        );
        let t = parse_table(out);
        // Nine stacks have live bytes; the default table shows ten at most.
        assert_eq!(t.len(), 9, "{ctx}");
        let bytes: Vec<u64> = t.iter().map(|e| e.bytes).collect();
        assert_eq!(
            bytes,
            [1048576, 262144, 131072, 65536, 32768, 16384, 4096, 512, 128],
            "{ctx}"
        );
        assert_eq!(t.iter().map(|e| e.bytes).sum::<u64>(), live, "{ctx}");
        assert_eq!(t.iter().map(|e| e.objects).sum::<u64>(), objects, "{ctx}");
        let pct = format!("{:.1}%", 100.0 * 1048576.0 / live as f64);
        assert!(
            out.lines()
                .any(|l| l.starts_with("  #1 ") && l.ends_with(&pct)),
            "{pct}\n{ctx}"
        );

        // 1: make_widgets <- build_cache <- main, each at the line of its call.
        assert_eq!(t[0].objects, 12);
        assert_eq!(t[0].frames.len(), 3, "{ctx}");
        assert_frame(
            &t[0].frames[0],
            "make_widgets",
            "prog.c",
            PROG_C,
            "make_widgets",
            &ctx,
        );
        assert_frame(
            &t[0].frames[1],
            "build_cache",
            "prog.c",
            PROG_C,
            "build_cache_widgets",
            &ctx,
        );
        assert_frame(
            &t[0].frames[2],
            "main",
            "prog.c",
            PROG_C,
            "main_build",
            &ctx,
        );
        // 2: in the shared library with DWARF, then main.
        assert_frame(
            &t[1].frames[0],
            "toolkit_fill",
            "toolkit.c",
            TOOLKIT_C,
            "toolkit_fill",
            &ctx,
        );
        assert_frame(
            &t[1].frames[1],
            "main",
            "prog.c",
            PROG_C,
            "main_toolkit",
            &ctx,
        );
        // 3: the stripped C++ library: demangled dynamic symbols with the module's address,
        // and the static function between them only as an address (not named after the
        // exported function below it).
        assert_eq!(t[2].frames.len(), 4, "{ctx}");
        assert!(
            t[2].frames[0].starts_with("toolkit::Stripped::entry(")
                && t[2].frames[0].contains("(libstripped.so+0x"),
            "{ctx}"
        );
        assert!(
            t[2].frames[1].starts_with("libstripped.so+0x") && !t[2].frames[1].contains(' '),
            "{ctx}"
        );
        assert!(
            t[2].frames[2].starts_with("stripped_run (libstripped.so+0x"),
            "{ctx}"
        );
        assert_frame(
            &t[2].frames[3],
            "main",
            "prog.c",
            PROG_C,
            "main_stripped",
            &ctx,
        );
        // 4: parse_names.
        assert_frame(
            &t[3].frames[0],
            "parse_names",
            "prog.c",
            PROG_C,
            "parse_names",
            &ctx,
        );
        assert_frame(
            &t[3].frames[1],
            "build_cache",
            "prog.c",
            PROG_C,
            "build_cache_names",
            &ctx,
        );
        // 5: the allocator's frames (rampart_fake_inner, __rust_alloc) are dropped.
        assert_eq!(t[4].frames.len(), 2, "{ctx}");
        assert_frame(
            &t[4].frames[0],
            "make_strings",
            "prog.c",
            PROG_C,
            "make_strings",
            &ctx,
        );
        assert_frame(
            &t[4].frames[1],
            "main",
            "prog.c",
            PROG_C,
            "main_strings",
            &ctx,
        );
        // 6: an inlined function, expanded: the inlined body's line, then the call site's.
        assert_eq!(t[5].frames.len(), 3, "{ctx}");
        assert_frame(
            &t[5].frames[0],
            "inlined_helper",
            "prog.c",
            PROG_C,
            "inlined_helper",
            &ctx,
        );
        assert_frame(
            &t[5].frames[1],
            "uses_inline",
            "prog.c",
            PROG_C,
            "uses_inline",
            &ctx,
        );
        assert_frame(
            &t[5].frames[2],
            "main",
            "prog.c",
            PROG_C,
            "main_inline",
            &ctx,
        );
        // 7: load_config.
        assert_frame(
            &t[6].frames[0],
            "load_config",
            "prog.c",
            PROG_C,
            "load_config",
            &ctx,
        );
        // 8: a file that is not there (module+offset) and an address in no mapping.
        assert_eq!(t[7].frames, ["libgone.so+0x1010", "0x1238"], "{ctx}");
        // 9: no stack at all.
        assert_eq!(t[8].frames, ["(no stack)"], "{ctx}");
        assert!(
            !out.contains("rampart_fake_inner") && !out.contains("__rust_alloc"),
            "{ctx}"
        );
    }
}

/// `1.5 MiB (1572864 bytes)`, as the tool writes it.
fn human_both(bytes: u64) -> String {
    let h = if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    };
    format!("{h} ({bytes} bytes)")
}

#[test]
fn top_by_peak_and_total_with_a_count() {
    let b = built();
    let dir = scratch("views");
    let file = write_profile(&b.prog_pie, &dir, "p");
    let ran = rampart_profile(&[
        file.as_os_str(),
        "--what".as_ref(),
        "peak".as_ref(),
        "--top".as_ref(),
        "3".as_ref(),
    ])
    .ok();
    let t = parse_table(&ran.stdout);
    assert_eq!(t.len(), 3, "{}", ran.describe());
    assert_eq!(
        t.iter().map(|e| (e.bytes, e.objects)).collect::<Vec<_>>(),
        [(2097152, 20), (262144, 4), (131072, 2)],
        "{}",
        ran.describe()
    );
    assert!(
        ran.stdout
            .contains("top 3 of 8 stacks by bytes live at the peak"),
        "{}",
        ran.describe()
    );

    let ran = rampart_profile(&[file.as_os_str(), "--what".as_ref(), "total".as_ref()]).ok();
    let t = parse_table(&ran.stdout);
    // Ten stacks have a total, the churn one only that.
    assert_eq!(t.len(), 10, "{}", ran.describe());
    assert_eq!(t.iter().map(|e| e.bytes).sum::<u64>(), sum(TOTAL).0);
    let churn = t
        .iter()
        .find(|e| e.bytes == 999)
        .unwrap_or_else(|| panic!("no churn stack\n{}", ran.describe()));
    assert_eq!(churn.objects, 3);
    assert_frame(
        &churn.frames[0],
        "churn",
        "prog.c",
        PROG_C,
        "churn",
        &ran.describe(),
    );
}

// ---------------------------------------------------------------------------------------
// Folded stacks

/// Parses folded stacks: `a;b;c 123` lines.
fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (stack, n) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("folded count is not a number: {line:?}"));
        assert!(!stack.is_empty(), "empty folded stack: {line:?}");
        assert!(
            out.insert(stack.to_owned(), n).is_none(),
            "folded stack twice: {line:?}"
        );
    }
    out
}

#[test]
fn folded_stacks_add_up_to_the_records() {
    for (kind, prog) in programs() {
        let dir = scratch(&format!("folded-{kind}"));
        let file = write_profile(prog, &dir, "p");
        for (what, view) in [("live", LIVE), ("peak", PEAK), ("total", TOTAL)] {
            let out = dir.join(format!("{what}.folded"));
            rampart_profile(&[
                file.as_os_str(),
                "--what".as_ref(),
                what.as_ref(),
                "--folded".as_ref(),
                out.as_os_str(),
            ])
            .ok();
            let text = fs::read_to_string(&out).expect("read the folded stacks");
            let folded = parse_folded(&text);
            assert_eq!(
                folded.values().sum::<u64>(),
                sum(view).0,
                "{kind} {what}: folded total\n{text}"
            );
            let expect = |stack: &str, id: u64| {
                assert_eq!(
                    folded.get(stack).copied(),
                    Some(record(id)[view].0).filter(|&b| b != 0),
                    "{kind} {what}: {stack}\n{text}"
                );
            };
            expect("main;build_cache;make_widgets", 1);
            expect("main;build_cache;parse_names", 3);
            expect("main;toolkit_fill", 4);
            expect("main;make_strings", 7);
            expect("main;uses_inline;inlined_helper", 8);
            expect("main;load_config", 2);
            expect("0x1238;libgone.so+0x1010", 6);
            expect("[no stack]", 10);
            expect("main;churn", 9);
            let stripped = folded.iter().find(|(k, _)| {
                k.starts_with("main;stripped_run;libstripped.so+0x")
                    && k.contains(";toolkit::Stripped::entry(")
            });
            assert_eq!(
                stripped.map(|(_, &v)| v),
                Some(record(5)[view].0),
                "{kind} {what}\n{text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The flame graph

#[test]
fn svg_is_well_formed_and_names_the_functions() {
    let b = built();
    let dir = scratch("svg");
    let file = write_profile(&b.prog_pie, &dir, "p");
    let out = dir.join("p.svg");
    rampart_profile(&[file.as_os_str(), "--svg".as_ref(), out.as_os_str()]).ok();
    let text = fs::read_to_string(&out).expect("read the SVG");
    // inferno's SVG declares the SVG DTD.
    let opts = || roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts())
        .unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.is_element())
        .filter(|n| matches!(n.tag_name().name(), "title" | "text"))
        .map(|n| n.descendants().filter_map(|d| d.text()).collect())
        .collect();
    let title = texts
        .iter()
        .find(|t| t.contains("prog-pie"))
        .unwrap_or_else(|| panic!("no title naming the program: {texts:?}"));
    assert!(
        title.contains("live bytes") && title.contains(&format!("({} bytes)", sum(LIVE).0)),
        "the title names the view and its total: {title:?}"
    );
    for f in [
        "main",
        "build_cache",
        "make_widgets",
        "parse_names",
        "toolkit_fill",
        "toolkit::Stripped::entry(",
        "make_strings",
    ] {
        assert!(
            texts.iter().any(|t| t.starts_with(f)),
            "no frame for {f} in the SVG: {texts:?}"
        );
    }
    // A view with nothing in it is still a picture, not an error.
    let empty = dir.join("empty.prof");
    fs::write(
        &empty,
        "rampart-profile 1\npid 1\nrate 1\nreason exit\nexe /bin/true\nend\n",
    )
    .expect("write");
    let out = dir.join("empty.svg");
    rampart_profile(&[empty.as_os_str(), "--svg".as_ref(), out.as_os_str()]).ok();
    let text = fs::read_to_string(&out).expect("read the SVG");
    roxmltree::Document::parse_with_options(&text, opts()).expect("the empty SVG is XML");
}

// ---------------------------------------------------------------------------------------
// pprof

/// A protobuf field's value: a varint, or length-delimited bytes (the only wire types
/// profile.proto's messages use; fixed-width ones fail the decode).
#[derive(Clone, Debug)]
enum Val {
    Int(u64),
    Bytes(Vec<u8>),
}

fn varint(buf: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*i).expect("truncated varint");
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint longer than 10 bytes");
}

/// A message's fields in order.
fn fields(buf: &[u8]) -> Vec<(u32, Val)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let key = varint(buf, &mut i);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => out.push((field, Val::Int(varint(buf, &mut i)))),
            2 => {
                let n = varint(buf, &mut i) as usize;
                let b = buf.get(i..i + n).expect("truncated field").to_vec();
                i += n;
                out.push((field, Val::Bytes(b)));
            }
            w => panic!("field {field} has wire type {w}, which profile.proto does not use"),
        }
    }
    out
}

fn int(fs: &[(u32, Val)], field: u32) -> u64 {
    fs.iter()
        .rev()
        .find_map(|(f, v)| match v {
            Val::Int(x) if *f == field => Some(*x),
            _ => None,
        })
        .unwrap_or(0)
}

fn subs(fs: &[(u32, Val)], field: u32) -> Vec<Vec<(u32, Val)>> {
    fs.iter()
        .filter(|(f, _)| *f == field)
        .map(|(_, v)| match v {
            Val::Bytes(b) => fields(b),
            Val::Int(_) => panic!("field {field} should be a message"),
        })
        .collect()
}

/// A repeated varint field, packed or not.
fn ints(fs: &[(u32, Val)], field: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for (f, v) in fs {
        if *f != field {
            continue;
        }
        match v {
            Val::Int(x) => out.push(*x),
            Val::Bytes(b) => {
                let mut i = 0;
                while i < b.len() {
                    out.push(varint(b, &mut i));
                }
            }
        }
    }
    out
}

/// A decoded `Location`.
struct PLocation {
    mapping: u64,
    address: u64,
    /// (function id, line), the inlined functions first.
    lines: Vec<(u64, u64)>,
}

/// The decoded parts of a Profile message the checks use.
struct Pprof {
    strings: Vec<String>,
    sample_types: Vec<(String, String)>,
    /// location ids (leaf first) and values.
    samples: Vec<(Vec<u64>, Vec<u64>)>,
    /// By id.
    locations: BTreeMap<u64, PLocation>,
    /// id -> (name, filename)
    functions: BTreeMap<u64, (String, String)>,
    /// id -> (start, limit, filename)
    mappings: BTreeMap<u64, (u64, u64, String)>,
    period_type: (String, String),
    period: u64,
}

fn decode_pprof(gz: &[u8]) -> Pprof {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .expect("the pprof file is gzip");
    let p = fields(&bytes);
    let strings: Vec<String> = p
        .iter()
        .filter(|(f, _)| *f == 6)
        .map(|(_, v)| match v {
            Val::Bytes(b) => String::from_utf8(b.clone()).expect("UTF-8 string"),
            Val::Int(_) => panic!("string_table entry is not bytes"),
        })
        .collect();
    let s = |i: u64| -> String {
        strings
            .get(i as usize)
            .unwrap_or_else(|| panic!("string index {i} past the table"))
            .clone()
    };
    let vt = |m: &[(u32, Val)]| (s(int(m, 1)), s(int(m, 2)));
    Pprof {
        sample_types: subs(&p, 1).iter().map(|m| vt(m)).collect(),
        samples: subs(&p, 2)
            .iter()
            .map(|m| (ints(m, 1), ints(m, 2)))
            .collect(),
        mappings: subs(&p, 3)
            .iter()
            .map(|m| (int(m, 1), (int(m, 2), int(m, 3), s(int(m, 5)))))
            .collect(),
        locations: subs(&p, 4)
            .iter()
            .map(|m| {
                let lines = subs(m, 4).iter().map(|l| (int(l, 1), int(l, 2))).collect();
                let loc = PLocation {
                    mapping: int(m, 2),
                    address: int(m, 3),
                    lines,
                };
                (int(m, 1), loc)
            })
            .collect(),
        functions: subs(&p, 5)
            .iter()
            .map(|m| (int(m, 1), (s(int(m, 2)), s(int(m, 4)))))
            .collect(),
        period_type: subs(&p, 11).first().map(|m| vt(m)).expect("period_type"),
        period: int(&p, 12),
        strings,
    }
}

#[test]
fn pprof_decodes_with_the_profile_totals() {
    for (kind, prog) in programs() {
        let dir = scratch(&format!("pprof-{kind}"));
        // A sampled profile this time, so the period is the rate.
        let file = dir.join("p.prof");
        run(Command::new(prog).arg("write").arg(&file).arg("524288")).ok();
        let out = dir.join("p.pb.gz");
        let folded = dir.join("p.folded");
        rampart_profile(&[
            file.as_os_str(),
            "--pprof".as_ref(),
            out.as_os_str(),
            "--folded".as_ref(),
            folded.as_os_str(),
        ])
        .ok();
        let raw = fs::read(&out).expect("read the pprof file");
        let p = decode_pprof(&raw);
        assert_eq!(p.strings[0], "", "{kind}: string_table[0] must be empty");
        let st: Vec<(&str, &str)> = p
            .sample_types
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            st,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ],
            "{kind}"
        );
        assert_eq!(p.period_type, ("space".into(), "bytes".into()), "{kind}");
        assert_eq!(p.period, 524288, "{kind}");

        // The totals: the live view's equal the folded live stacks' and the records'.
        let folded_total: u64 = parse_folded(&fs::read_to_string(&folded).expect("read"))
            .values()
            .sum();
        let column = |i: usize| p.samples.iter().map(|(_, v)| v[i]).sum::<u64>();
        for (_, v) in &p.samples {
            assert_eq!(v.len(), 4, "{kind}: four values per sample");
        }
        assert_eq!(column(3), folded_total, "{kind}: inuse_space vs folded");
        assert_eq!((column(3), column(2)), sum(LIVE), "{kind}: inuse");
        assert_eq!((column(1), column(0)), sum(TOTAL), "{kind}: alloc");

        // References hold together.
        for (ids, _) in &p.samples {
            for id in ids {
                let PLocation {
                    mapping,
                    address,
                    lines,
                } = p
                    .locations
                    .get(id)
                    .unwrap_or_else(|| panic!("{kind}: sample names location {id}, not defined"));
                if *mapping != 0 {
                    let (start, limit, _) = p
                        .mappings
                        .get(mapping)
                        .unwrap_or_else(|| panic!("{kind}: no mapping {mapping}"));
                    assert!(
                        (start..limit).contains(&address),
                        "{kind}: location {id} at {address:x} outside its mapping"
                    );
                }
                for (f, _) in lines {
                    assert!(p.functions.contains_key(f), "{kind}: no function {f}");
                }
            }
        }
        // The heaviest stack, leaf first, with its lines.
        let names = |ids: &[u64]| -> Vec<(String, u64)> {
            ids.iter()
                .flat_map(|id| p.locations[id].lines.iter())
                .map(|(f, line)| (p.functions[f].0.clone(), *line))
                .collect()
        };
        let widgets = p
            .samples
            .iter()
            .find(|(_, v)| v[3] == 1048576)
            .unwrap_or_else(|| panic!("{kind}: no make_widgets sample"));
        assert_eq!(widgets.1, [40, 4194304, 12, 1048576], "{kind}");
        assert_eq!(
            names(&widgets.0),
            [
                (
                    "make_widgets".to_owned(),
                    u64::from(line_of(PROG_C, "make_widgets"))
                ),
                (
                    "build_cache".to_owned(),
                    u64::from(line_of(PROG_C, "build_cache_widgets"))
                ),
                ("main".to_owned(), u64::from(line_of(PROG_C, "main_build"))),
            ],
            "{kind}"
        );
        let inline = p
            .samples
            .iter()
            .find(|(_, v)| v[3] == 16384)
            .unwrap_or_else(|| panic!("{kind}: no inline sample"));
        // Inlined frames are lines of one location, the inlined function first.
        let leaf = &p.locations[&inline.0[0]].lines;
        assert_eq!(
            leaf.len(),
            2,
            "{kind}: inlined_helper and uses_inline in one location"
        );
        let fname = |f: &u64| p.functions[f].0.as_str();
        assert_eq!(fname(&leaf[0].0), "inlined_helper", "{kind}");
        assert_eq!(fname(&leaf[1].0), "uses_inline", "{kind}");
        let exe_map = p.mappings.values().next().expect("a mapping");
        assert!(
            exe_map.2.ends_with(&format!(
                "/prog-{}",
                if kind == "PIE" { "pie" } else { "nopie" }
            )),
            "{kind}: the first mapping is the program's: {exe_map:?}"
        );
        for f in [
            "toolkit_fill",
            "stripped_run",
            "make_strings",
            "load_config",
            "churn",
        ] {
            assert!(
                p.functions.values().any(|(n, _)| n == f),
                "{kind}: no function {f}"
            );
        }
        assert!(
            p.functions
                .values()
                .any(|(_, file)| file.ends_with("/prog.c")),
            "{kind}"
        );

        protoc_check(&raw, kind);
    }
}

/// Decodes the pprof file with `protoc` against pprof's own profile.proto, where both are
/// installed, and checks the samples' values there too.
fn protoc_check(gz: &[u8], kind: &str) {
    const PROTO_DIR: &str = "/usr/share/gocode/src/github.com/google/pprof/proto";
    let have_protoc = Command::new("protoc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_protoc || !Path::new(PROTO_DIR).join("profile.proto").is_file() {
        eprintln!(
            "note: protoc or {PROTO_DIR}/profile.proto is missing (Debian: protobuf-compiler, \
             golang-github-google-pprof-dev): the pprof file was checked by this test's own \
             decoder only"
        );
        return;
    }
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .expect("gunzip");
    let dir = scratch(&format!("protoc-{kind}"));
    let input = dir.join("profile.pb");
    fs::write(&input, &bytes).expect("write");
    let ran = run_with_input(
        Command::new("protoc")
            .arg("--decode=perftools.profiles.Profile")
            .arg(format!("--proto_path={PROTO_DIR}"))
            .arg("profile.proto"),
        fs::File::open(&input).expect("open"),
    )
    .ok();
    // Text format: each top-level `sample {` block lists its `value: N` lines in order.
    let mut values: Vec<Vec<u64>> = Vec::new();
    let mut in_sample = false;
    for line in ran.stdout.lines() {
        if line == "sample {" {
            in_sample = true;
            values.push(Vec::new());
        } else if line == "}" {
            in_sample = false;
        } else if in_sample {
            if let Some(v) = line.trim().strip_prefix("value: ") {
                values
                    .last_mut()
                    .expect("a sample")
                    .push(v.parse().expect("a value"));
            }
        }
    }
    assert!(
        !values.is_empty(),
        "{kind}: protoc shows no samples\n{}",
        ran.stdout
    );
    let col = |i: usize| values.iter().map(|v| v[i]).sum::<u64>();
    assert_eq!(
        (col(3), col(2)),
        sum(LIVE),
        "{kind}: protoc inuse\n{}",
        ran.stdout
    );
    assert_eq!((col(1), col(0)), sum(TOTAL), "{kind}: protoc alloc");
    for s in [
        "string_table: \"inuse_space\"",
        "string_table: \"make_widgets\"",
        "period: 524288",
    ] {
        assert!(
            ran.stdout.contains(s),
            "{kind}: protoc output lacks {s}\n{}",
            ran.stdout
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bad input

#[test]
fn bad_files_and_flags_exit_2_with_a_message() {
    let b = built();
    let dir = scratch("bad");
    let good = write_profile(&b.prog_pie, &dir, "p");
    let text = fs::read_to_string(&good).expect("read");
    let cases: Vec<(&str, Vec<std::ffi::OsString>)> = vec![
        ("cannot read", vec![dir.join("missing.prof").into()]),
        (
            "unknown flag --frobnicate",
            vec![good.clone().into(), "--frobnicate".into()],
        ),
        (
            "--what must be live, peak or total",
            vec![good.clone().into(), "--what".into(), "most".into()],
        ),
        (
            "--svg needs a value",
            vec![good.clone().into(), "--svg".into()],
        ),
        ("no profile file given", vec![]),
    ];
    let mut cases = cases;
    for (name, content, expect) in [
        (
            "notprofile",
            "hello\n".to_owned(),
            "not a rampart heap profile",
        ),
        ("version", "rampart-profile 7\n".to_owned(), "version 7"),
        (
            "badnumber",
            text.replacen("live 1 1048576", "live 1 10x8576", 1),
            "bad byte count",
        ),
        (
            "nostack",
            text.replacen("live 1 ", "live 77 ", 1),
            "stack 77",
        ),
    ] {
        let path = dir.join(format!("{name}.prof"));
        fs::write(&path, content).expect("write");
        cases.push((expect, vec![path.into()]));
    }
    for (expect, args) in cases {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let ran = rampart_profile(&args);
        assert_eq!(ran.status.code(), Some(2), "{}", ran.describe());
        assert!(
            ran.stderr.starts_with("rampart: ") && ran.stderr.contains(expect),
            "expected {expect:?}\n{}",
            ran.describe()
        );
    }

    // A profile cut short (its process died while writing) reads, with a warning.
    let cut = dir.join("cut.prof");
    fs::write(&cut, &text[..text.find("summary").expect("summary")]).expect("write");
    let ran = rampart_profile(&[cut.as_os_str()]).ok();
    assert!(ran.stderr.contains("has no end line"), "{}", ran.describe());
    assert!(ran.stdout.contains("INCOMPLETE"), "{}", ran.describe());
    assert_eq!(parse_table(&ran.stdout).len(), 9, "{}", ran.describe());
}

// ---------------------------------------------------------------------------------------
// rampart --profile

/// The profiles of a `--profile` run: the `rampart-*.prof` files in `dir`.
fn raw_profiles(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read the profile directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rampart-") && n.ends_with(".prof"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn launcher_heap_profile_renders_every_process() {
    let b = built();
    let dir = scratch("launch-heap");
    let out = dir.join("profiles"); // created by the launcher
                                    // A profile from before the run: not rendered again.
    fs::create_dir_all(&out).expect("mkdir");
    fs::write(out.join("rampart-1.prof"), "stale\n").expect("write");
    let ran = run(Command::new(launcher())
        .arg("--lib")
        .arg(&b.fake_lib)
        .args(["--profile", "heap", "--profile-out"])
        .arg(&out)
        .args(["--profile-rate", "1", "--"])
        .arg(&b.prog_pie)
        .args(["launched", "heap", "3", "fork", "sigint"]));
    let ctx = ran.describe();
    assert_eq!(
        ran.status.code(),
        Some(3),
        "the program's exit status\n{ctx}"
    );
    let profiles: Vec<PathBuf> = raw_profiles(&out)
        .into_iter()
        .filter(|p| !p.ends_with("rampart-1.prof"))
        .collect();
    assert_eq!(profiles.len(), 2, "the program's and its child's\n{ctx}");
    assert!(
        !out.join("rampart-1.folded").exists(),
        "the stale profile was rendered\n{ctx}"
    );
    for p in &profiles {
        let base = p.with_extension("");
        let with = |ext: &str| PathBuf::from(format!("{}{ext}", base.display()));
        let folded = fs::read_to_string(with(".folded"))
            .unwrap_or_else(|e| panic!("no folded stacks beside {}: {e}\n{ctx}", p.display()));
        // A heap profile's folded stacks and flame graph are of the peak.
        assert_eq!(
            parse_folded(&folded).values().sum::<u64>(),
            sum(PEAK).0,
            "{ctx}"
        );
        let svg = fs::read_to_string(with(".svg")).expect("the SVG");
        assert!(svg.contains("make_widgets"), "{ctx}");
        let pprof = decode_pprof(&fs::read(with(".pb.gz")).expect("the pprof file"));
        assert_eq!(
            pprof.samples.iter().map(|(_, v)| v[3]).sum::<u64>(),
            sum(LIVE).0,
            "{ctx}"
        );
        assert!(ran.stderr.contains(&p.display().to_string()), "{ctx}");
    }
    assert!(ran.stderr.contains("by bytes live at exit"), "{ctx}");
    assert!(ran.stderr.contains("by bytes live at the peak"), "{ctx}");
    assert!(
        ran.stderr.contains("make_widgets (") && ran.stderr.contains("prog.c:"),
        "{ctx}"
    );
    assert!(
        ran.stderr.contains("rate 1 (every allocation"),
        "the rate reached the program\n{ctx}"
    );
    // The launcher survived the SIGINT its child sent it (it ignores it while waiting).
    assert!(ran.status.signal().is_none(), "{ctx}");
}

#[test]
fn launcher_leaks_profile_and_a_signal_death() {
    let b = built();
    let cwd = scratch("launch-leaks");
    // No --profile-out: the current directory. The program is run with RAMPART_PROFILE=heap
    // (the launcher prints the leaks itself, so the library's own report is not wanted).
    let ran = run(Command::new(launcher())
        .current_dir(&cwd)
        .arg("--lib")
        .arg(&b.fake_lib)
        .args(["--profile", "leaks"])
        .arg(&b.prog_nopie)
        .args(["launched", "heap", "0", "sigterm"]));
    let ctx = ran.describe();
    assert_eq!(ran.status.code(), Some(128 + 15), "128 + SIGTERM\n{ctx}");
    assert!(
        ran.stderr.contains("killed by signal 15 (SIGTERM)"),
        "{ctx}"
    );
    let profiles = raw_profiles(&cwd);
    assert_eq!(profiles.len(), 1, "{ctx}");
    let (live, objects) = sum(LIVE);
    assert!(
        ran.stderr.contains(&format!(
            "leaks: {} in {objects} objects never freed",
            human_both(live)
        )),
        "{ctx}"
    );
    // Sampled (the program's default rate): the note says the numbers are estimates.
    assert!(ran.stderr.contains("estimated from samples"), "{ctx}");
    let t = parse_table(&ran.stderr);
    assert_eq!(t.first().map(|e| e.bytes), Some(1048576), "{ctx}");
    let folded = fs::read_to_string(profiles[0].with_extension("folded")).expect("folded");
    assert_eq!(
        parse_folded(&folded).values().sum::<u64>(),
        live,
        "leaks: the live view\n{ctx}"
    );
    assert!(profiles[0].with_extension("svg").is_file(), "{ctx}");
    assert!(profiles[0].with_extension("pb.gz").is_file(), "{ctx}");
}

#[test]
fn launcher_profile_flags_are_checked() {
    let b = built();
    for (args, expect) in [
        (
            vec!["--profile", "everything"],
            "--profile needs heap or leaks",
        ),
        (vec!["--profile-rate", "1"], "go with --profile"),
    ] {
        let ran = run(Command::new(launcher())
            .arg("--lib")
            .arg(&b.fake_lib)
            .args(&args)
            .arg(&b.prog_pie)
            .arg("write")
            .arg("/dev/null"));
        assert_eq!(ran.status.code(), Some(2), "{}", ran.describe());
        assert!(ran.stderr.contains(expect), "{}", ran.describe());
    }
}

// ---------------------------------------------------------------------------------------
// With the real allocator

/// The table of `stderr` under the line that contains `heading`, up to the next table.
fn table_after<'a>(stderr: &'a str, heading: &str) -> &'a str {
    let start = stderr
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{stderr}"));
    let rest = &stderr[start..];
    let end = rest[1..].find("\ntop ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn real_allocator_profiles_end_to_end() {
    let b = built();
    let lib = profile_dir().join("librampart.so");
    assert!(
        lib.is_file(),
        "{} is missing: build it with cargo build -p rampart-ffi (with --release for a \
         release test run)",
        lib.display()
    );
    let leak_line = line_of(PROG_C, "leak_buffers");
    let peak_line = line_of(PROG_C, "peak_then_free");
    for mode in ["heap", "leaks"] {
        let dir = scratch(&format!("real-{mode}"));
        let ran = run(Command::new(launcher())
            .arg("--lib")
            .arg(&lib)
            .args(["--profile", mode, "--profile-rate", "1", "--profile-out"])
            .arg(&dir)
            .arg(&b.prog_pie)
            .arg("real"));
        let ctx = ran.describe();
        assert_eq!(ran.status.code(), Some(0), "{ctx}");
        let profiles = raw_profiles(&dir);
        assert_eq!(profiles.len(), 1, "one process, one profile\n{ctx}");
        // Every allocation counted (rate 1): the three leaked blocks exactly, from their
        // malloc call's line.
        let leaks_heading = if mode == "heap" {
            "by bytes live at exit"
        } else {
            "of leaked bytes"
        };
        let live = parse_table(table_after(&ran.stderr, leaks_heading));
        let leak = live
            .iter()
            .find(|e| {
                e.frames
                    .first()
                    .is_some_and(|f| f.starts_with("leak_buffers ("))
            })
            .unwrap_or_else(|| panic!("no leak_buffers stack\n{ctx}"));
        assert_eq!((leak.bytes, leak.objects), (3000, 3), "{ctx}");
        assert!(
            leak.frames[0].ends_with(&format!("/prog.c:{leak_line})")),
            "{ctx}"
        );
        assert_frame(&leak.frames[1], "main", "prog.c", PROG_C, "main_leak", &ctx);
        assert!(
            !live
                .iter()
                .any(|e| e.frames.iter().any(|f| f.starts_with("peak_then_free"))),
            "the freed block is not live\n{ctx}"
        );
        let folded = fs::read_to_string(profiles[0].with_extension("folded")).expect("folded");
        let folded = parse_folded(&folded);
        if mode == "heap" {
            // The peak: the 1 MiB block was live at the high-water mark.
            let peak = parse_table(table_after(&ran.stderr, "by bytes live at the peak"));
            let big = peak
                .iter()
                .find(|e| {
                    e.frames
                        .first()
                        .is_some_and(|f| f.starts_with("peak_then_free ("))
                })
                .unwrap_or_else(|| panic!("no peak_then_free stack at the peak\n{ctx}"));
            assert_eq!((big.bytes, big.objects), (1 << 20, 1), "{ctx}");
            assert!(
                big.frames[0].ends_with(&format!("/prog.c:{peak_line})")),
                "{ctx}"
            );
            let line = folded
                .iter()
                .find(|(k, _)| k.ends_with(";main;peak_then_free"))
                .unwrap_or_else(|| panic!("no peak_then_free folded stack\n{folded:?}"));
            assert_eq!(*line.1, 1 << 20, "{ctx}");
        } else {
            assert!(ran.stderr.contains("leaks: "), "{ctx}");
            let line = folded
                .iter()
                .find(|(k, _)| k.ends_with(";main;leak_buffers"))
                .unwrap_or_else(|| panic!("no leak_buffers folded stack\n{folded:?}"));
            assert_eq!(*line.1, 3000, "{ctx}");
        }
        let pprof = decode_pprof(&fs::read(profiles[0].with_extension("pb.gz")).expect("pprof"));
        assert!(
            pprof.samples.iter().any(|(_, v)| v[2..] == [3, 3000]),
            "the pprof profile has the leak as in-use\n{ctx}"
        );
    }
}
