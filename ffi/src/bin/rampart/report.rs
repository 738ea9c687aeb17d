//! A symbolized profile and its text renderings: the top-stacks table, folded stacks (the
//! input of flamegraph.pl and inferno) and the flame graph SVG.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, Write};

use crate::raw::{Counts, RawProfile, What};
use crate::symbolize::{is_allocator_function, Frame, Symbolized, Symbolizer};

/// How many frames of each stack the table shows.
const TABLE_DEPTH: usize = 6;

/// One return address of a stack, symbolized.
#[derive(Clone, Debug)]
pub struct Location {
    /// The return address.
    pub pc: u64,
    /// The `map` line holding it.
    pub map: Option<usize>,
    /// Its frames, innermost (inlined) first; the allocator's frames at the innermost end of
    /// the stack are left out. Never empty.
    pub frames: Vec<Frame>,
}

/// One stack of the profile, symbolized.
#[derive(Clone, Debug)]
pub struct Stack {
    /// Its return addresses, innermost first (none for a stack the allocator could not take).
    pub locations: Vec<Location>,
    /// Live now.
    pub live: Counts,
    /// Live at the peak.
    pub peak: Counts,
    /// Allocated over the run.
    pub total: Counts,
}

impl Stack {
    /// The estimate of one view.
    pub fn counts(&self, what: What) -> Counts {
        match what {
            What::Live => self.live,
            What::Peak => self.peak,
            What::Total => self.total,
        }
    }

    /// Every frame, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.locations.iter().flat_map(|l| l.frames.iter())
    }
}

/// A raw profile with its stacks symbolized.
pub struct Report {
    /// The profile as read.
    pub raw: RawProfile,
    /// Its stacks, in the file's order.
    pub stacks: Vec<Stack>,
}

impl Report {
    /// Symbolizes every stack of `raw`.
    pub fn build(raw: RawProfile, symbolizer: &mut Symbolizer) -> Report {
        // Stacks share most of their addresses (main, the event loop...): each is looked up
        // once.
        let mut seen: HashMap<u64, Symbolized> = HashMap::new();
        let stacks = raw
            .stacks
            .iter()
            .map(|s| {
                let symbolized: Vec<(u64, Symbolized)> = s
                    .pcs
                    .iter()
                    .map(|&pc| {
                        let sym = seen
                            .entry(pc)
                            .or_insert_with(|| symbolizer.symbolize(&raw.maps, pc));
                        (pc, sym.clone())
                    })
                    .collect();
                Stack {
                    locations: trim_allocator(symbolized),
                    live: s.live,
                    peak: s.peak,
                    total: s.total,
                }
            })
            .collect();
        Report { raw, stacks }
    }

    /// The sum of every stack's estimate in one view.
    pub fn sum(&self, what: What) -> Counts {
        let mut sum = Counts::default();
        for s in &self.stacks {
            sum += s.counts(what);
        }
        sum
    }
}

/// The locations of a stack without the allocator's frames at its innermost end (frames in
/// `librampart.so`, or of a function [`is_allocator_function`] names): the stack then starts
/// at the code that asked for memory. A stack made only of such frames is kept whole, as
/// the only thing known about where its memory went.
fn trim_allocator(stack: Vec<(u64, Symbolized)>) -> Vec<Location> {
    let all: usize = stack.iter().map(|(_, s)| s.frames.len()).sum();
    let mut drop = 0;
    'outer: for (_, s) in &stack {
        for f in &s.frames {
            if s.in_allocator || is_allocator_function(&f.function) {
                drop += 1;
            } else {
                break 'outer;
            }
        }
    }
    if drop == all {
        drop = 0;
    }
    let mut out = Vec::with_capacity(stack.len());
    for (pc, s) in stack {
        let n = s.frames.len();
        if drop >= n {
            drop -= n;
            continue;
        }
        out.push(Location {
            pc,
            map: s.map,
            frames: s.frames[drop..].to_vec(),
        });
        drop = 0;
    }
    out
}

/// `1.5 MiB`: bytes in B, KiB, MiB or GiB with one decimal.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `1.5 MiB (1572864 bytes)`.
pub fn bytes_both(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", human(bytes))
}

/// The header lines: which process, how it was sampled, why written, and its totals.
pub fn header(report: &Report) -> String {
    let raw = &report.raw;
    let mut s = String::new();
    let pid = raw.pid.map_or("?".to_owned(), |p| p.to_string());
    let exe = raw.exe.as_deref().unwrap_or("?");
    let rate = match raw.rate {
        Some(1) => "rate 1 (every allocation: exact counts)".to_owned(),
        Some(r) => format!(
            "rate {r} (one sample per {} on average: estimates)",
            human(r)
        ),
        None => "rate ?".to_owned(),
    };
    let reason = raw.reason.as_deref().unwrap_or("?");
    let _ = writeln!(
        s,
        "rampart heap profile of pid {pid}, {exe}\n  {rate}, written at {reason}{}",
        if raw.complete {
            ""
        } else {
            " (INCOMPLETE: the file has no end line)"
        }
    );
    // The summary's totals are the allocator's own; the sums of the records stand in for a
    // profile cut short before its summary.
    let get = |key: &str, what: What, objects: bool| {
        raw.summary_value(key).unwrap_or_else(|| {
            let c = report.sum(what);
            if objects {
                c.objects
            } else {
                c.bytes
            }
        })
    };
    let _ = write!(
        s,
        "  live {} in {} objects, peak {}, total {} in {} objects",
        bytes_both(get("live_bytes", What::Live, false)),
        get("live_objects", What::Live, true),
        bytes_both(get("peak_bytes", What::Peak, false)),
        bytes_both(get("total_bytes", What::Total, false)),
        get("total_objects", What::Total, true),
    );
    if let Some(n) = raw.summary_value("samples") {
        let _ = write!(s, ", {n} samples");
    }
    s.push('\n');
    s
}

/// Stacks merged by their symbolized frames (two return-address stacks may symbolize the
/// same, e.g. once the allocator's frames are dropped), heaviest first.
fn merged(report: &Report, what: What) -> Vec<(Vec<&Frame>, Counts)> {
    let mut by_frames: HashMap<Vec<&Frame>, Counts> = HashMap::new();
    for s in &report.stacks {
        let c = s.counts(what);
        if !c.is_zero() {
            *by_frames.entry(s.frames().collect()).or_default() += c;
        }
    }
    let mut v: Vec<_> = by_frames.into_iter().collect();
    v.sort_by(|a, b| {
        (b.1.bytes, b.1.objects)
            .cmp(&(a.1.bytes, a.1.objects))
            .then_with(|| a.0.cmp(&b.0))
    });
    v
}

/// The table of the `n` heaviest stacks of one view, under a heading (`by live bytes`...).
pub fn top(report: &Report, what: What, n: usize, heading: &str) -> String {
    let stacks = merged(report, what);
    let sum = report.sum(what);
    let mut s = String::new();
    let shown = n.min(stacks.len());
    let _ = writeln!(
        s,
        "top {shown} of {} stacks {heading} (in all {} in {} objects):",
        stacks.len(),
        bytes_both(sum.bytes),
        sum.objects
    );
    if stacks.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for (rank, (frames, c)) in stacks.iter().take(n).enumerate() {
        let pct = if sum.bytes == 0 {
            0.0
        } else {
            100.0 * c.bytes as f64 / sum.bytes as f64
        };
        let _ = writeln!(
            s,
            "  #{:<3} {:>9} ({} bytes) {:>8} objects {:>6.1}%",
            rank + 1,
            human(c.bytes),
            c.bytes,
            c.objects,
            pct
        );
        if frames.is_empty() {
            let _ = writeln!(s, "        (no stack)");
        }
        for line in table_lines(frames) {
            let _ = writeln!(s, "        {line}");
        }
    }
    s
}

/// The lines a table shows for a stack: up to [`TABLE_DEPTH`], innermost first, then how
/// many frames are left. A run of frames in the Rust standard library's sources (`Vec`
/// growth, `HashMap` resizing) after the first frame is one line, so that the program's own
/// frames that follow fit.
fn table_lines(frames: &[&Frame]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < frames.len() && out.len() < TABLE_DEPTH {
        let run = frames[i..].iter().take_while(|f| in_rust_std(f)).count();
        if i > 0 && run >= 2 {
            out.push(format!("({run} frames in the Rust standard library)"));
            i += run;
        } else {
            out.push(frames[i].display());
            i += 1;
        }
    }
    if i < frames.len() {
        out.push(format!("... {} more frames", frames.len() - i));
    }
    out
}

/// Whether a frame is in the Rust standard library: its sources are under `/rustc/<commit>/`
/// and its own dependencies' (hashbrown...) under `/rust/deps/`, as rustc's distribution
/// remaps them.
fn in_rust_std(frame: &Frame) -> bool {
    frame
        .file
        .as_deref()
        .is_some_and(|f| f.starts_with("/rustc/") || f.starts_with("/rust/deps/"))
}

/// The folded stacks of one view: `outermost;...;innermost` (function names) and its bytes,
/// merged and sorted by stack.
pub fn folded(report: &Report, what: What) -> Vec<(String, u64)> {
    let mut by_stack: BTreeMap<String, u64> = BTreeMap::new();
    for s in &report.stacks {
        let bytes = s.counts(what).bytes;
        if bytes == 0 {
            continue;
        }
        let mut names: Vec<String> = s.frames().map(|f| folded_name(&f.function)).collect();
        if names.is_empty() {
            names.push("[no stack]".to_owned());
        }
        names.reverse();
        let e = by_stack.entry(names.join(";")).or_default();
        *e = e.saturating_add(bytes);
    }
    by_stack.into_iter().collect()
}

/// A function name as a folded-stack frame: `;` separates frames and the count follows the
/// last space, so a `;` (`[u8; 8]` in a Rust name) becomes `,` and line breaks become spaces.
fn folded_name(name: &str) -> String {
    name.replace(';', ",").replace(['\n', '\r'], " ")
}

/// The folded stacks as text, one `stack bytes` per line.
pub fn folded_text(lines: &[(String, u64)]) -> String {
    let mut s = String::new();
    for (stack, bytes) in lines {
        let _ = writeln!(s, "{stack} {bytes}");
    }
    s
}

/// The flame graph of one view, as SVG, titled with the program, the view and its total.
pub fn svg(report: &Report, what: What, out: impl Write) -> io::Result<()> {
    let lines = folded(report, what);
    let total = report.sum(what);
    let title = format!(
        "{}: {}, {} in {} objects",
        report.raw.exe_name(),
        what.describe(),
        bytes_both(total.bytes),
        total.objects
    );
    if lines.is_empty() {
        // inferno draws an error picture (and fails) for no input; "nothing" is an answer.
        return empty_svg(&title, out);
    }
    let text: Vec<String> = lines.iter().map(|(s, b)| format!("{s} {b}")).collect();
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = title;
    opt.subtitle = Some(format!(
        "pid {}, rate {}, written at {}",
        report.raw.pid.map_or("?".to_owned(), |p| p.to_string()),
        report.raw.rate.map_or("?".to_owned(), |r| r.to_string()),
        report.raw.reason.as_deref().unwrap_or("?")
    ));
    opt.count_name = "bytes".to_owned();
    opt.name_type = "Function:".to_owned();
    opt.colors = inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Mem);
    // Colors by function name, the same in every run, so two graphs compare by eye.
    opt.hash = true;
    opt.deterministic = true;
    inferno::flamegraph::from_lines(&mut opt, text.iter().map(String::as_str), out)
}

/// A small SVG saying there is nothing to draw.
fn empty_svg(title: &str, mut out: impl Write) -> io::Result<()> {
    let title = xml_escape(title);
    write!(
        out,
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"80\" xmlns=\"http://www.w3.org/2000/svg\">\n\
         <text x=\"600\" y=\"30\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"17\">{title}</text>\n\
         <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"12\">no allocations in this view</text>\n</svg>\n"
    )
}

/// `s` as XML text or attribute value.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> Frame {
        Frame {
            function: name.to_owned(),
            file: None,
            line: None,
            module: None,
        }
    }

    fn sym(names: &[&str], in_allocator: bool) -> Symbolized {
        Symbolized {
            frames: names.iter().map(|n| frame(n)).collect(),
            map: None,
            in_allocator,
        }
    }

    fn names(locs: &[Location]) -> Vec<String> {
        locs.iter()
            .flat_map(|l| l.frames.iter().map(|f| f.function.clone()))
            .collect()
    }

    #[test]
    fn allocator_frames_are_trimmed_innermost_only() {
        let stack = vec![
            (1, sym(&["anything"], true)),
            (2, sym(&["alloc::alloc::alloc", "user_fn"], false)),
            (3, sym(&["malloc_caller", "main"], false)),
        ];
        let locs = trim_allocator(stack);
        assert_eq!(names(&locs), ["user_fn", "malloc_caller", "main"]);
        assert_eq!(locs[0].pc, 2);
        // All allocator: kept whole.
        let locs = trim_allocator(vec![(1, sym(&["malloc"], false))]);
        assert_eq!(names(&locs), ["malloc"]);
        // Only at the innermost end.
        let locs = trim_allocator(vec![(1, sym(&["f"], false)), (2, sym(&["malloc"], false))]);
        assert_eq!(names(&locs), ["f", "malloc"]);
    }

    #[test]
    fn table_lines_fold_the_standard_library() {
        let std = |name: &str| Frame {
            file: Some("/rustc/abc/library/alloc/src/vec/mod.rs".into()),
            line: Some(1),
            ..frame(name)
        };
        let frames = [
            std("alloc::raw_vec::finish_grow"),
            std("alloc::raw_vec::grow_amortized"),
            std("alloc::vec::Vec<T>::push"),
            frame("app::load"),
            std("core::ops::function::FnOnce::call_once"),
            frame("main"),
        ];
        let refs: Vec<&Frame> = frames.iter().collect();
        assert_eq!(
            table_lines(&refs),
            [
                "alloc::raw_vec::finish_grow (/rustc/abc/library/alloc/src/vec/mod.rs:1)",
                "(2 frames in the Rust standard library)",
                "app::load",
                "core::ops::function::FnOnce::call_once (/rustc/abc/library/alloc/src/vec/mod.rs:1)",
                "main",
            ]
        );
        let many: Vec<Frame> = (0..9).map(|i| frame(&format!("f{i}"))).collect();
        let refs: Vec<&Frame> = many.iter().collect();
        let lines = table_lines(&refs);
        assert_eq!(lines.len(), TABLE_DEPTH + 1);
        assert_eq!(lines[TABLE_DEPTH], "... 3 more frames");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(1048576), "1.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn folded_names_keep_the_format() {
        assert_eq!(folded_name("f<[u8; 8]>"), "f<[u8, 8]>");
    }
}
