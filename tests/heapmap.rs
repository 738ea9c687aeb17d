//! The heap map (`rampart::heapmap`, `RAMPART_HEAPMAP`, `rampart_heapmap_write`, the
//! launcher's `--heapmap`): maps of real workloads are parsed as XML (a small
//! well-formedness checker below, so the suite needs no XML crate) and checked against the
//! page layer's own count: one chunk panel per mapped chunk, each chunk's runs adding up to
//! its 1024 pages, page counts per state equal to `Pages::usage`, one bar per huge block.
//!
//! In this process rampart is the global allocator, so the map is written while the test
//! holds the page lock and nothing in between may allocate (it would deadlock). The C-side
//! cases run a program with `librampart.so` preloaded (see `c_support`).

mod c_support;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use c_support::{build_dir, clear_rampart_env, gcc, include_dir, preloaded, profile_dir, run};
use rampart::internals::PAGES_PER_CHUNK;

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

/// The in-process cases change the heap they measure; they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// A small XML well-formedness checker and tree.

#[derive(Debug)]
struct Node {
    name: String,
    attrs: HashMap<String, String>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    fn class(&self) -> Option<&str> {
        self.attr("class")
    }

    /// All descendants (self included), depth first.
    fn walk<'a>(&'a self, out: &mut Vec<&'a Node>) {
        out.push(self);
        for c in &self.children {
            c.walk(out);
        }
    }

    fn find_all(&self, class: &str) -> Vec<&Node> {
        let mut all = Vec::new();
        self.walk(&mut all);
        all.into_iter()
            .filter(|n| n.class() == Some(class))
            .collect()
    }

    fn num(&self, name: &str) -> usize {
        let v = self
            .attr(name)
            .unwrap_or_else(|| panic!("<{}> has no {name}", self.name));
        v.parse()
            .unwrap_or_else(|_| panic!("<{}> {name}={v:?} is not a number", self.name))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        let from = self.i.saturating_sub(60);
        let to = (self.i + 60).min(self.s.len());
        format!(
            "not well-formed XML at byte {}: {what}\n...{}...",
            self.i,
            String::from_utf8_lossy(&self.s[from..to])
        )
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn starts(&self, lit: &str) -> bool {
        self.s[self.i..].starts_with(lit.as_bytes())
    }

    fn expect(&mut self, lit: &str) -> Result<(), String> {
        if !self.starts(lit) {
            return Err(self.err(&format!("expected {lit:?}")));
        }
        self.i += lit.len();
        Ok(())
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.i;
        while self.peek().is_some_and(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.') || b >= 0x80
        }) {
            self.i += 1;
        }
        if start == self.i || self.s[start].is_ascii_digit() || self.s[start] == b'-' {
            return Err(self.err("expected a name"));
        }
        String::from_utf8(self.s[start..self.i].to_vec()).map_err(|_| self.err("UTF-8"))
    }

    /// Character data up to `stop`, with entities decoded; `<` is refused in it.
    fn chars(&mut self, stop: u8) -> Result<String, String> {
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            if b == stop {
                break;
            }
            match b {
                b'<' => return Err(self.err("'<' in character data")),
                b'&' => {
                    let end = self.s[self.i..]
                        .iter()
                        .position(|&c| c == b';')
                        .ok_or_else(|| self.err("unterminated entity"))?;
                    let ent = &self.s[self.i + 1..self.i + end];
                    let decoded = match ent {
                        b"amp" => '&',
                        b"lt" => '<',
                        b"gt" => '>',
                        b"quot" => '"',
                        b"apos" => '\'',
                        _ if ent.starts_with(b"#x") => {
                            u32::from_str_radix(std::str::from_utf8(&ent[2..]).unwrap_or("?"), 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err("bad character reference"))?
                        }
                        _ if ent.starts_with(b"#") => std::str::from_utf8(&ent[1..])
                            .ok()
                            .and_then(|d| d.parse().ok())
                            .and_then(char::from_u32)
                            .ok_or_else(|| self.err("bad character reference"))?,
                        _ => return Err(self.err("unknown entity")),
                    };
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(decoded.encode_utf8(&mut tmp).as_bytes());
                    self.i += end + 1;
                }
                _ => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("text is not UTF-8"))
    }

    fn element(&mut self) -> Result<Node, String> {
        self.expect("<")?;
        let name = self.name()?;
        let mut attrs = HashMap::new();
        loop {
            let had_ws = self.peek().is_some_and(|b| b.is_ascii_whitespace());
            self.skip_ws();
            match self.peek() {
                Some(b'/') => {
                    self.expect("/>")?;
                    return Ok(Node {
                        name,
                        attrs,
                        children: Vec::new(),
                        text: String::new(),
                    });
                }
                Some(b'>') => {
                    self.i += 1;
                    break;
                }
                Some(_) if had_ws => {
                    let key = self.name()?;
                    self.skip_ws();
                    self.expect("=")?;
                    self.skip_ws();
                    let quote = self.peek().filter(|&q| q == b'"' || q == b'\'');
                    let quote = quote.ok_or_else(|| self.err("unquoted attribute"))?;
                    self.i += 1;
                    let value = self.chars(quote)?;
                    self.expect(if quote == b'"' { "\"" } else { "'" })?;
                    if attrs.insert(key.clone(), value).is_some() {
                        return Err(self.err(&format!("attribute {key} twice")));
                    }
                }
                _ => return Err(self.err("bad start tag")),
            }
        }
        let mut children = Vec::new();
        let mut text = String::new();
        loop {
            if self.starts("</") {
                self.i += 2;
                let end = self.name()?;
                if end != name {
                    return Err(self.err(&format!("</{end}> closes <{name}>")));
                }
                self.skip_ws();
                self.expect(">")?;
                return Ok(Node {
                    name,
                    attrs,
                    children,
                    text,
                });
            } else if self.starts("<!--") {
                let end = self.s[self.i..]
                    .windows(3)
                    .position(|w| w == b"-->")
                    .ok_or_else(|| self.err("unterminated comment"))?;
                self.i += end + 3;
            } else if self.starts("<") {
                children.push(self.element()?);
            } else if self.peek().is_none() {
                return Err(self.err(&format!("end of input inside <{name}>")));
            } else {
                text.push_str(&self.chars(b'<')?);
            }
        }
    }
}

/// Parses a whole document: an optional XML declaration, one root element, whitespace.
fn parse_xml(text: &str) -> Result<Node, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    if p.starts("<?xml") {
        let end = text
            .find("?>")
            .ok_or_else(|| p.err("unterminated declaration"))?;
        p.i = end + 2;
    }
    p.skip_ws();
    let root = p.element()?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(p.err("content after the root element"));
    }
    Ok(root)
}

#[test]
fn the_checker_rejects_what_is_not_well_formed() {
    assert!(parse_xml("<a x=\"1\"><b/>t &amp; u<c></c></a>").is_ok());
    for bad in [
        "<a><b></a>",
        "<a x=1/>",
        "<a x=\"1\" x=\"2\"/>",
        "<a>1 < 2</a>",
        "<a>&nbsp;</a>",
        "<a/><b/>",
        "<a>",
        "<a x=\"1\"y=\"2\"/>",
    ] {
        assert!(parse_xml(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// What a map says.

/// Page counts read back from a map.
#[derive(Debug, Default, PartialEq, Eq)]
struct Read {
    chunks: usize,
    slab: usize,
    large: usize,
    free: usize,
    free_dirty: usize,
    huge: usize,
    huge_bytes: usize,
}

/// Parses `svg` and checks its structure: a chunk panel per `data-chunks`, each with one
/// guard page and runs whose pages add up to a chunk; returns the counts by state.
fn read_map(svg: &str) -> Read {
    let root = parse_xml(svg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(root.name, "svg");
    assert_eq!(
        root.attr("xmlns"),
        Some("http://www.w3.org/2000/svg"),
        "not an SVG document"
    );
    let mut r = Read::default();
    let chunks = root.find_all("chunk");
    r.chunks = chunks.len();
    assert_eq!(r.chunks, root.num("data-chunks"), "a panel per chunk");
    let mut bases = Vec::new();
    for c in &chunks {
        let base = c.attr("data-base").expect("chunk base");
        bases.push(usize::from_str_radix(base.trim_start_matches("0x"), 16).unwrap());
        assert_eq!(
            c.find_all("guard").len(),
            1,
            "one guard page after chunk {base}"
        );
        let mut pages = 0;
        for run in c.find_all("run") {
            let n = run.num("data-pages");
            let dirty = run.num("data-dirty");
            assert!(n >= 1 && dirty <= n, "run {:?}", run.attrs);
            assert!(
                run.children
                    .iter()
                    .any(|k| k.name == "title" && !k.text.is_empty()),
                "every run has a tooltip"
            );
            pages += n;
            match run.attr("data-state") {
                Some("slab") => {
                    r.slab += n;
                    assert!(run.num("data-class") < 60);
                }
                Some("large") => r.large += n,
                Some("free") => {
                    r.free += n;
                    r.free_dirty += dirty;
                }
                other => panic!("unknown state {other:?}"),
            }
        }
        assert_eq!(pages, PAGES_PER_CHUNK, "the runs of chunk {base} cover it");
    }
    assert!(
        bases.windows(2).all(|w| w[0] < w[1]),
        "chunks in address order"
    );
    let huge = root.find_all("huge");
    r.huge = huge.len();
    assert_eq!(r.huge, root.num("data-huge"));
    r.huge_bytes = huge.iter().map(|h| h.num("data-bytes")).sum();
    r
}

// ---------------------------------------------------------------------------------------
// In this process (rampart as the global allocator).

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rampart-heapmap-{}-{name}", std::process::id()))
}

/// A workload with every state in it: slabs of many classes, large blocks, huge blocks,
/// freed holes, blocks freed by another thread.
fn workload() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut small = Vec::new();
    for i in 0..60_000 {
        let size = match next() % 10 {
            0..=5 => 1 + (next() % 256) as usize,
            6..=8 => 256 + (next() % 4000) as usize,
            _ => 4096 + (next() % 28_000) as usize,
        };
        small.push(vec![i as u8; size]);
    }
    let mut large: Vec<Vec<u8>> = (0..40)
        .map(|i| vec![1u8; 40_000 + (next() % 2_000_000) as usize + i])
        .collect();
    large.push(vec![2u8; 6 << 20]);
    large.push(vec![3u8; 13 << 20]);
    // Holes: free two thirds of the small blocks and every other large one.
    let mut kept = Vec::new();
    for (i, b) in small.into_iter().enumerate() {
        if i % 3 == 0 {
            kept.push(b);
        }
    }
    let mut i = 0;
    large.retain(|_| {
        i += 1;
        i % 2 == 0 || i > 40
    });
    // Some blocks freed by another thread.
    let theirs: Vec<Vec<u8>> = kept.split_off(kept.len() - 2000);
    std::thread::spawn(move || drop(theirs)).join().unwrap();
    (kept, large)
}

#[test]
fn map_of_this_process_matches_the_page_layer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let live = workload();
    let path = tmp("inproc.svg");
    let file = std::fs::File::create(&path).unwrap();
    let fd = file.as_raw_fd();

    // Under the page lock: the usage walk and the map see the same heap. Nothing between
    // lock and unlock allocates.
    let start = Instant::now();
    let (usage, written) = rampart::internals::write_fd_with_usage(fd);
    let took = start.elapsed();
    drop(file);
    let totals = written.expect("the map is written");
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    eprintln!(
        "heap map of {} chunks and {} huge blocks: {} KiB of SVG in {took:.2?} under the lock",
        usage.chunks,
        totals.huge,
        svg.len() / 1024
    );

    let r = read_map(&svg);
    assert!(usage.chunks >= 2, "the workload maps chunks: {usage:?}");
    assert_eq!(r.chunks, usage.chunks, "a chunk row per chunk mapped");
    assert_eq!(r.slab, usage.slab);
    assert_eq!(r.large, usage.large);
    assert_eq!(r.free, usage.free);
    assert_eq!(r.slab + r.large + r.free, usage.chunks * PAGES_PER_CHUNK);
    assert_eq!(r.free_dirty, totals.free_dirty);
    assert_eq!(r.huge_bytes, usage.huge_bytes);
    assert!(
        r.huge >= 2,
        "the two huge blocks of the workload are listed"
    );
    assert!(r.slab > 0 && r.large > 0 && r.free > 0, "{r:?}");
    drop(live);
}

#[test]
fn write_reports_errors_as_errno() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bad = "/nonexistent-rampart-dir/map.svg";
    assert_eq!(
        rampart::heapmap::write(bad)
            .map_err(|e| e.raw_os_error())
            .err(),
        Some(Some(libc::ENOENT))
    );
    let full = "/dev/full";
    if Path::new("/dev/full").exists() {
        assert_eq!(
            rampart::heapmap::write(full)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(Some(libc::ENOSPC))
        );
    }
    // A good path: the whole map, and the heap is still usable afterwards (the lock was
    // released).
    let live = workload();
    let path = tmp("file.svg");
    let t = rampart::heapmap::write(&path).expect("written");
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = read_map(&svg);
    assert_eq!(r.chunks, t.chunks);
    drop(live);
    let again: Vec<Box<[u8; 100]>> = (0..1000).map(|_| Box::new([0; 100])).collect();
    assert_eq!(again.len(), 1000);
}

// ---------------------------------------------------------------------------------------
// Through the C library: RAMPART_HEAPMAP at exit, rampart_heapmap_write, the launcher.

const PROGRAM: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "rampart.h"

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    static void *p[200000];
    unsigned x = 12345;
    for (int i = 0; i < 200000; i++) {
        x = x * 1103515245u + 12345u;
        size_t n = (x >> 8) % 10 < 8 ? 8 + (x >> 12) % 600 : 4096 + (x >> 12) % 100000;
        p[i] = malloc(n);
        memset(p[i], 1, n < 64 ? n : 64);
    }
    for (int i = 0; i < 200000; i += 2) free(p[i]);
    void *large = malloc(3 << 20); /* a page run: above the size classes' 1 MiB */
    memset(large, 1, 4096);
    void *huge = malloc(12 << 20);
    memset(huge, 1, 4096);
    if (rampart_heapmap_write(argv[1]) != 0) { perror("rampart_heapmap_write"); return 1; }
    errno = 0;
    if (rampart_heapmap_write("/nonexistent-rampart-dir/x.svg") != -1 || errno != ENOENT) {
        printf("bad path: errno %d\n", errno);
        return 1;
    }
    errno = 0;
    if (rampart_heapmap_write(NULL) != -1 || errno != EINVAL) {
        printf("NULL path: errno %d\n", errno);
        return 1;
    }
    printf("pid %d\n", (int)getpid());
    return 0;
}
"#;

fn c_program() -> PathBuf {
    let src = build_dir().join("heapmap_prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    // Linked against librampart.so (found through the rpath), and preloaded when run.
    let dir = profile_dir();
    gcc(
        "heapmap_prog",
        &[
            src.into_os_string(),
            "-I".into(),
            include_dir().into_os_string(),
            "-L".into(),
            dir.clone().into_os_string(),
            "-lrampart".into(),
            format!("-Wl,-rpath,{}", dir.display()).into(),
        ],
    )
}

#[test]
fn c_library_writes_on_demand_and_at_exit() {
    let prog = c_program();
    let dir = tmp("c");
    std::fs::create_dir_all(&dir).unwrap();
    let now = dir.join("now.svg");
    let mut cmd = preloaded(&prog);
    cmd.arg(&now)
        .env("RAMPART_HEAPMAP", dir.join("exit-%p.svg"))
        .env("RAMPART_VERBOSE", "1");
    let out = run(cmd, c_support::WATCHDOG);
    out.assert_success();
    assert!(
        out.stderr.contains("RAMPART_HEAPMAP="),
        "the option is reported as set\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("not implemented"),
        "{}",
        out.describe()
    );
    let pid: u32 = out
        .stdout
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid line\n{}", out.describe()));
    let on_demand = read_map(&std::fs::read_to_string(&now).unwrap());
    assert!(
        on_demand.chunks >= 2 && on_demand.huge >= 1,
        "{on_demand:?}"
    );
    assert!(on_demand.slab > 0 && on_demand.large > 0 && on_demand.free > 0);
    let at_exit_path = dir.join(format!("exit-{pid}.svg"));
    let at_exit = read_map(
        &std::fs::read_to_string(&at_exit_path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", at_exit_path.display(), out.describe())),
    );
    assert!(at_exit.chunks >= 1, "{at_exit:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn launcher_flag_writes_the_map_relative_to_where_it_was_started() {
    let launcher = profile_dir().join("rampart");
    assert!(
        launcher.is_file(),
        "{} missing: cargo build --release -p rampart-ffi",
        launcher.display()
    );
    let dir = tmp("launcher");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(&launcher);
    clear_rampart_env(&mut cmd);
    cmd.current_dir(&dir)
        .arg("--lib")
        .arg(c_support::lib_so())
        .args(["--heapmap", "map.svg", "/bin/sh", "-c"])
        // The program changes directory: the map still lands where the launcher started.
        .arg("cd / && exec /bin/true");
    let out = run(cmd, c_support::WATCHDOG);
    out.assert_success();
    let svg = std::fs::read_to_string(dir.join("map.svg"))
        .unwrap_or_else(|e| panic!("no map: {e}\n{}", out.describe()));
    read_map(&svg);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The child of [`rust_program_gets_the_exit_statistics_and_map`]: allocates a little and
/// returns; as a test of its own it checks nothing more.
#[test]
fn exit_child_allocates() {
    let (kept, _freed) = workload();
    assert!(!kept.is_empty());
}

/// The exit-time work is the core's, not the C library's: a Rust program on
/// `#[global_allocator]` (this test binary, re-run as a child) prints the statistics with
/// `RAMPART_STATS=1` and writes the heap map named by `RAMPART_HEAPMAP` when it exits.
#[test]
fn rust_program_gets_the_exit_statistics_and_map() {
    let dir = tmp("rust-exit");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    clear_rampart_env(&mut cmd);
    cmd.args(["--exact", "exit_child_allocates", "--test-threads=1"])
        .env("RAMPART_STATS", "1")
        .env("RAMPART_HEAPMAP", dir.join("exit-%p.svg"));
    let out = run(cmd, c_support::WATCHDOG);
    out.assert_success();
    assert!(
        out.stderr.contains("rampart: statistics (pid ")
            && out.stderr.contains("thread heaps")
            && out.stderr.contains("size class"),
        "no statistics at exit\n{}",
        out.describe()
    );
    let maps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(maps.len(), 1, "{maps:?}\n{}", out.describe());
    let map = read_map(&std::fs::read_to_string(&maps[0]).unwrap());
    assert!(map.chunks >= 1 && map.slab > 0, "{map:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
