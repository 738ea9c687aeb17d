//! The launcher: runs a program with librampart.so as its malloc.
//!
//! ```text
//! rampart [--stats] [--verbose] [--heapmap PATH] [--guard all|sample] [--sample N]
//!         [--redzone N] [--quarantine BYTES] [--lib PATH] [--] PROGRAM [ARGS...]
//! ```
//!
//! It finds `librampart.so` next to its own executable (where cargo builds both), or at
//! `--lib PATH` or `$RAMPART_LIB`, puts it first in `LD_PRELOAD`, sets the `RAMPART_*`
//! variables its flags ask for, and replaces itself with the program (`exec`), so the exit
//! status and signals are the program's own.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{exit, Command};

const USAGE: &str =
    "usage: rampart [--stats] [--verbose] [--heapmap PATH] [--guard all|sample] [--sample N]
               [--redzone N] [--quarantine BYTES] [--lib PATH] [--] PROGRAM [ARGS...]

Runs PROGRAM with librampart.so as its malloc (LD_PRELOAD).

  --stats      print rampart's statistics to stderr when the program exits (RAMPART_STATS=1)
  --verbose    report rampart's options at start-up (RAMPART_VERBOSE=1)
  --heapmap PATH
               write an SVG picture of the heap to PATH when the program exits
               (RAMPART_HEAPMAP=PATH; %p in PATH becomes the process id, so that child
               processes, which inherit it, write maps of their own)
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
               launcher)";

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    let mut env: Vec<(&str, &str)> = Vec::new();
    let mut lib: Option<PathBuf> = std::env::var_os("RAMPART_LIB").map(PathBuf::from);
    let mut heapmap: Option<PathBuf> = None;
    let mut values: Vec<(&str, String)> = Vec::new();
    while let Some(arg) = args.peek() {
        match arg.to_str() {
            Some("--stats") => env.push(("RAMPART_STATS", "1")),
            Some("--verbose") => env.push(("RAMPART_VERBOSE", "1")),
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
    let err = Command::new(&program)
        .args(args)
        .env("LD_PRELOAD", preload)
        .envs(env)
        .envs(values)
        .envs(heapmap.map(|p| ("RAMPART_HEAPMAP", p)))
        .exec();
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

fn fail(msg: &str) -> ! {
    eprintln!("rampart: {msg}\n\n{USAGE}");
    exit(2);
}
