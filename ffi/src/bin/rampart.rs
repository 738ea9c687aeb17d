//! The launcher: runs a program with librampart.so as its malloc, and reads the heap
//! profiles rampart writes.
//!
//! ```text
//! rampart [--stats] [--verbose] [--heapmap PATH] [--harden] [--guard all|sample] [--sample N]
//!         [--redzone N] [--quarantine BYTES] [--lib PATH]
//!         [--profile heap|leaks [--profile-out DIR] [--profile-rate N]] [--] PROGRAM [ARGS...]
//! rampart profile FILE [--what live|peak|total] [--top [N]] [--folded OUT] [--svg OUT]
//!         [--pprof OUT]
//! ```
//!
//! It finds `librampart.so` next to its own executable (where cargo builds both), or at
//! `--lib PATH` or `$RAMPART_LIB`, puts it first in `LD_PRELOAD`, sets the `RAMPART_*`
//! variables its flags ask for, and replaces itself with the program (`exec`), so the exit
//! status and signals are the program's own.
//!
//! With `--profile` it runs the program as a child instead, with rampart's heap profiling on
//! (`RAMPART_PROFILE`, `RAMPART_PROFILE_OUT`, `RAMPART_PROFILE_RATE`), and when the program
//! has exited renders the profile of each of its processes ([`run`]); it then exits with the
//! program's status (128 + the signal for a program killed by one). `rampart profile`
//! renders a raw profile written earlier ([`profile`]). The pieces: [`raw`] reads the
//! allocator's text format, [`symbolize`] turns return addresses into functions and lines,
//! [`report`] makes the table, folded stacks and flame graph, [`pprof`] the pprof protobuf.

// A crate root's modules are looked for beside it (src/bin/), where each file would be
// taken for a binary of its own: they live in src/bin/rampart/ instead.
#[path = "rampart/pprof.rs"]
mod pprof;
#[path = "rampart/profile.rs"]
mod profile;
#[path = "rampart/raw.rs"]
mod raw;
#[path = "rampart/report.rs"]
mod report;
#[path = "rampart/run.rs"]
mod run;
#[path = "rampart/symbolize.rs"]
mod symbolize;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{exit, Command};

/// The launcher's help (`--help`, and after a command-line error).
const USAGE: &str =
    "usage: rampart [--stats] [--verbose] [--heapmap PATH] [--harden] [--guard all|sample]
               [--sample N] [--redzone N] [--quarantine BYTES] [--lib PATH]
               [--profile heap|leaks [--profile-out DIR] [--profile-rate N]]
               [--] PROGRAM [ARGS...]
       rampart profile FILE [--what live|peak|total] [--top [N]] [--folded OUT]
               [--svg OUT] [--pprof OUT]

Runs PROGRAM with librampart.so as its malloc (LD_PRELOAD). (A program named `profile`
is run with `rampart -- profile`.)

  --stats      print rampart's statistics to stderr when the program exits (RAMPART_STATS=1)
  --verbose    report rampart's options at start-up (RAMPART_VERBOSE=1)
  --heapmap PATH
               write an SVG picture of the heap to PATH when the program exits
               (RAMPART_HEAPMAP=PATH; %p in PATH becomes the process id, so that child
               processes, which inherit it, write maps of their own)
  --harden     the hardened production mode (RAMPART_HARDEN=1): canaries after small
               blocks, freed ones filled, checked and quarantined, large blocks guarded,
               exact sized-free checks (see the README's \"Finding memory errors\")
  --guard all  place every allocation against a PROT_NONE page and quarantine freed blocks
               as PROT_NONE: overflows and uses after free fault on the offending
               instruction, with a report (debugging; RAMPART_GUARD=all)
  --guard sample
               the same for one allocation in N (production; RAMPART_GUARD=sample)
  --sample N   with --guard sample: one allocation in N (RAMPART_GUARD_SAMPLE, default 1000)
  --redzone N  N bytes of canary after every small block, checked on free, realloc and at
               exit; freed blocks filled and checked on reuse (RAMPART_REDZONE=N)
  --quarantine BYTES
               freed guarded memory held back before reuse (RAMPART_QUARANTINE)
  --lib PATH   use this librampart.so (default: $RAMPART_LIB, else the one next to this
               launcher)
  --profile heap
               sample the program's allocations (RAMPART_PROFILE=heap) and, when it has
               exited, print the stacks holding the most memory at exit and at the peak;
               beside each raw profile DIR/rampart-PID.prof (one per process: children
               write their own) write rampart-PID.folded and rampart-PID.svg (flame graph
               of the peak), and rampart-PID.pb.gz (pprof: alloc_* and inuse_* at exit).
               The program runs as a child; the launcher ignores SIGINT and SIGQUIT
               (Ctrl-C at a terminal) meanwhile and exits as the program did
  --profile leaks
               the same for what is never freed (RAMPART_PROFILE=leaks): the stacks of the
               blocks still live at exit, with the total leaked; the folded stacks and the
               flame graph are of those blocks
  --profile-out DIR
               where the profiles go (RAMPART_PROFILE_OUT=DIR/rampart-%p.prof; default the
               current directory; created if missing)
  --profile-rate N
               mean bytes between samples (RAMPART_PROFILE_RATE; 1 records every
               allocation, exact)

rampart profile FILE renders a raw profile written earlier: `rampart profile --help`.";

/// A failed command: the message for `rampart: ...` on stderr, and for a bad command line
/// the usage to print after it. Both exit with status 2.
pub enum CommandError {
    /// A bad flag or argument, with the usage text to show.
    Usage(String, &'static str),
    /// A file that cannot be read, parsed or written.
    Failed(String),
}

impl CommandError {
    /// The message, without the usage.
    pub fn message(&self) -> &str {
        match self {
            CommandError::Usage(m, _) | CommandError::Failed(m) => m,
        }
    }
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "profile") {
        match profile::main(std::env::args_os().skip(2).collect()) {
            Ok(()) => exit(0),
            Err(CommandError::Usage(msg, usage)) => {
                eprintln!("rampart: {msg}\n\n{usage}");
                exit(2)
            }
            Err(CommandError::Failed(msg)) => {
                eprintln!("rampart: {msg}");
                exit(2)
            }
        }
    }
    let mut args = std::env::args_os().skip(1).peekable();
    let mut env: Vec<(&str, &str)> = Vec::new();
    let mut lib: Option<PathBuf> = std::env::var_os("RAMPART_LIB").map(PathBuf::from);
    let mut heapmap: Option<PathBuf> = None;
    let mut values: Vec<(&str, String)> = Vec::new();
    let mut profile_mode: Option<run::Mode> = None;
    let mut profile_out: Option<PathBuf> = None;
    let mut profile_rate: Option<String> = None;
    while let Some(arg) = args.peek() {
        match arg.to_str() {
            Some("--profile") => {
                args.next();
                match args.peek().and_then(|v| v.to_str()).map(run::Mode::parse) {
                    Some(Some(mode)) => profile_mode = Some(mode),
                    _ => fail("--profile needs heap or leaks"),
                }
            }
            Some("--profile-out") => {
                args.next();
                match args.peek() {
                    // Absolute: the program may change directory, and so may its children.
                    Some(dir) => profile_out = Some(absolute(PathBuf::from(dir))),
                    None => fail("--profile-out needs a directory"),
                }
            }
            Some("--profile-rate") => {
                args.next();
                match args.peek().and_then(|v| v.to_str()) {
                    // The library checks the value, as for the other numeric flags.
                    Some(rate) => profile_rate = Some(rate.to_owned()),
                    None => fail("--profile-rate needs a value"),
                }
            }
            Some("--stats") => env.push(("RAMPART_STATS", "1")),
            Some("--verbose") => env.push(("RAMPART_VERBOSE", "1")),
            Some("--harden") => env.push(("RAMPART_HARDEN", "1")),
            Some("--lib") => {
                args.next();
                match args.peek() {
                    Some(path) => lib = Some(PathBuf::from(path)),
                    None => fail("--lib needs a path"),
                }
            }
            Some(flag @ ("--guard" | "--sample" | "--redzone" | "--quarantine")) => {
                let flag = flag.to_owned();
                let var = match flag.as_str() {
                    "--guard" => "RAMPART_GUARD",
                    "--sample" => "RAMPART_GUARD_SAMPLE",
                    "--redzone" => "RAMPART_REDZONE",
                    _ => "RAMPART_QUARANTINE",
                };
                args.next();
                match args.peek().and_then(|v| v.to_str()) {
                    // The library checks the value (and warns about a bad one).
                    Some(value) => values.push((var, value.to_owned())),
                    None => fail(&format!("{flag} needs a value")),
                }
            }
            Some("--heapmap") => {
                args.next();
                match args.peek() {
                    // Absolute, so a program that changes directory writes it here.
                    Some(path) => heapmap = Some(absolute(PathBuf::from(path))),
                    None => fail("--heapmap needs a path"),
                }
            }
            Some("-h") | Some("--help") => {
                println!("{USAGE}");
                return;
            }
            Some("--") => {
                args.next();
                break;
            }
            Some(flag) if flag.starts_with("--") => fail(&format!("unknown flag {flag}")),
            _ => break,
        }
        args.next();
    }
    let Some(program) = args.next() else {
        fail("no program given");
    };
    if profile_mode.is_none() && (profile_out.is_some() || profile_rate.is_some()) {
        fail("--profile-out and --profile-rate go with --profile heap|leaks");
    }
    let lib = lib.unwrap_or_else(default_lib);
    if !lib.is_file() {
        eprintln!(
            "rampart: {} not found.\nBuild it with:  cargo build --release -p rampart-ffi\n\
             (or point --lib / RAMPART_LIB at a librampart.so)",
            lib.display()
        );
        exit(127);
    }
    let lib = lib.canonicalize().unwrap_or(lib);
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut command = Command::new(&program);
    command
        .args(args)
        .env("LD_PRELOAD", preload)
        .envs(env)
        .envs(values)
        .envs(heapmap.map(|p| ("RAMPART_HEAPMAP", p)));
    if let Some(mode) = profile_mode {
        let dir = match profile_out {
            Some(dir) => dir,
            None => std::env::current_dir()
                .unwrap_or_else(|e| fail(&format!("cannot find the current directory: {e}"))),
        };
        let opts = run::Options {
            mode,
            dir,
            rate: profile_rate,
        };
        exit(run::run(command, &program, &opts));
    }
    let err = command.exec();
    eprintln!("rampart: cannot run {}: {err}", program.to_string_lossy());
    exit(127);
}

/// `librampart.so` beside this executable (target/release/ for `cargo build --release`).
fn default_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("cannot find myself: {e}")));
    exe.with_file_name("librampart.so")
}

/// `path` made absolute against the current directory (left as it is if that is unknown).
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// Says what is wrong with the command line, with the usage, and exits with status 2.
fn fail(msg: &str) -> ! {
    eprintln!("rampart: {msg}\n\n{USAGE}");
    exit(2);
}
