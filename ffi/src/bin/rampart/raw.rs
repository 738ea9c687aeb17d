//! Reading the raw heap profile the allocator writes (`rampart-profile 1`, a line-based text
//! format: header lines, the process's file mappings, the sampled stacks as return
//! addresses, then the live, peak and total estimates per stack, a summary and `end`).
//!
//! The reader is strict about what it understands (a malformed number or a record for a stack
//! no `stack` line defined is an error naming the line, since the writer is a program, not a
//! person, and a silent guess would misattribute memory) and lenient about what it does not:
//! unknown record kinds are skipped, as the format asks, so that a newer allocator's profile
//! still reads. A file without its `end` line (the process died while writing it) is read as
//! far as it goes and marked incomplete.

use std::collections::HashMap;

/// One `map` line: a file-backed mapping of the process (a line of `/proc/<pid>/maps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: String,
    /// The file offset mapped at `start`.
    pub offset: u64,
    /// The file, as the kernel names it (absolute; may end in ` (deleted)`).
    pub path: String,
}

impl Map {
    /// Whether `pc` lies in this mapping.
    pub fn contains(&self, pc: u64) -> bool {
        self.start <= pc && pc < self.end
    }

    /// Whether the mapping is executable (where return addresses point).
    pub fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// Estimated bytes and objects of one stack in one of the three views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Estimated bytes.
    pub bytes: u64,
    /// Estimated objects.
    pub objects: u64,
}

impl Counts {
    /// Whether both are zero (the writer may omit such a record).
    pub fn is_zero(&self) -> bool {
        self.bytes == 0 && self.objects == 0
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.objects = self.objects.saturating_add(other.objects);
    }
}

/// Which of the profile's three views a report shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// Live now (at exit: never freed, the leaks).
    Live,
    /// Live at the high-water mark of sampled live bytes.
    Peak,
    /// Allocated over the whole run.
    Total,
}

impl What {
    /// The `--what` value naming it.
    pub fn parse(s: &str) -> Option<What> {
        match s {
            "live" => Some(What::Live),
            "peak" => Some(What::Peak),
            "total" => Some(What::Total),
            _ => None,
        }
    }

    /// How a report describes it ("live bytes", ...).
    pub fn describe(self) -> &'static str {
        match self {
            What::Live => "live bytes",
            What::Peak => "bytes live at the peak",
            What::Total => "bytes allocated in all",
        }
    }
}

/// One sampled stack and its three estimates (zero where the file has no record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stack {
    /// The id the file gives it.
    pub id: u64,
    /// Return addresses, innermost first.
    pub pcs: Vec<u64>,
    /// Live now.
    pub live: Counts,
    /// Live at the peak.
    pub peak: Counts,
    /// Allocated over the run.
    pub total: Counts,
}

/// A whole raw profile.
#[derive(Clone, Debug, Default)]
pub struct RawProfile {
    /// The profiled process.
    pub pid: Option<u64>,
    /// Mean bytes between samples (1: every allocation, exact counts).
    pub rate: Option<u64>,
    /// Why it was written: `exit`, `request`, `signal`.
    pub reason: Option<String>,
    /// The program (`/proc/self/exe`).
    pub exe: Option<String>,
    /// The file mappings, in the file's order.
    pub maps: Vec<Map>,
    /// The stacks, in the file's order.
    pub stacks: Vec<Stack>,
    /// The `summary` line's key-value pairs.
    pub summary: Vec<(String, u64)>,
    /// Whether the `end` line was read.
    pub complete: bool,
}

impl RawProfile {
    /// A value of the summary line.
    pub fn summary_value(&self, key: &str) -> Option<u64> {
        self.summary.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
    }

    /// The program's file name (for titles), or `?`.
    pub fn exe_name(&self) -> &str {
        match &self.exe {
            Some(exe) => exe.rsplit('/').next().unwrap_or(exe),
            None => "?",
        }
    }
}

/// The version this reader understands.
const VERSION: &str = "1";

/// Parses a raw profile; an error names the 1-based line and what is wrong with it.
pub fn parse(text: &str) -> Result<RawProfile, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        None => return Err("empty file (not a rampart heap profile)".into()),
        Some((_, first)) => {
            let mut w = first.split(' ');
            if w.next() != Some("rampart-profile") {
                return Err(
                    "line 1: not a rampart heap profile (no `rampart-profile` line)".into(),
                );
            }
            match w.next() {
                Some(VERSION) => {}
                v => {
                    return Err(format!(
                        "line 1: profile format version {} (this rampart reads version {VERSION})",
                        v.unwrap_or("?")
                    ))
                }
            }
        }
    }
    let mut p = RawProfile::default();
    // Stack id -> index in p.stacks.
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (i, line) in lines {
        let n = i + 1;
        let err = |what: &str| format!("line {n}: {what}: {line:?}");
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "pid" => p.pid = Some(dec(rest).ok_or_else(|| err("bad pid"))?),
            "rate" => p.rate = Some(dec(rest).ok_or_else(|| err("bad rate"))?),
            "reason" => p.reason = Some(rest.to_owned()),
            // The rest of the line: a path may hold spaces.
            "exe" => p.exe = Some(rest.to_owned()),
            "map" => {
                // Exactly one space between fields, so the path (the rest) keeps its spaces.
                let f: Vec<&str> = rest.splitn(5, ' ').collect();
                let [start, end, perms, offset, path] = f[..] else {
                    return Err(err(
                        "a map line needs start, end, permissions, offset and path",
                    ));
                };
                let start = hex(start).ok_or_else(|| err("bad map start"))?;
                let end = hex(end).ok_or_else(|| err("bad map end"))?;
                let offset = hex(offset).ok_or_else(|| err("bad map offset"))?;
                if end <= start {
                    return Err(err("map ends before it starts"));
                }
                p.maps.push(Map {
                    start,
                    end,
                    perms: perms.to_owned(),
                    offset,
                    path: path.to_owned(),
                });
            }
            "stack" => {
                let mut f = rest.split(' ');
                let id = f.next().and_then(dec).ok_or_else(|| err("bad stack id"))?;
                let pcs = f
                    .filter(|w| !w.is_empty())
                    .map(|w| hex(w).ok_or_else(|| err("bad return address")))
                    .collect::<Result<Vec<u64>, String>>()?;
                if index.insert(id, p.stacks.len()).is_some() {
                    return Err(err(&format!("stack {id} defined twice")));
                }
                p.stacks.push(Stack {
                    id,
                    pcs,
                    ..Stack::default()
                });
            }
            "live" | "peak" | "total" => {
                let mut f = rest.split(' ');
                let mut next = |what: &str| f.next().and_then(dec).ok_or_else(|| err(what));
                let id = next("bad stack id")?;
                let counts = Counts {
                    bytes: next("bad byte count")?,
                    objects: next("bad object count")?,
                };
                let &at = index.get(&id).ok_or_else(|| {
                    err(&format!(
                        "a {kind} record for stack {id}, which no stack line defines"
                    ))
                })?;
                let stack = &mut p.stacks[at];
                // A second record for the same stack adds to the first (the format has one;
                // adding is the reading that loses nothing).
                match kind {
                    "live" => stack.live += counts,
                    "peak" => stack.peak += counts,
                    _ => stack.total += counts,
                }
            }
            "summary" => {
                let words: Vec<&str> = rest.split(' ').collect();
                if !words.len().is_multiple_of(2) {
                    return Err(err("summary is not key-value pairs"));
                }
                for kv in words.chunks(2) {
                    let v = dec(kv[1]).ok_or_else(|| err("bad summary value"))?;
                    p.summary.push((kv[0].to_owned(), v));
                }
            }
            "end" => {
                p.complete = true;
                break;
            }
            // Forward compatibility: records of a later version are skipped.
            _ => {}
        }
    }
    Ok(p)
}

/// A decimal number.
fn dec(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A hex number (no `0x`).
fn hex(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "rampart-profile 1
pid 12345
rate 524288
reason exit
exe /usr/bin/my prog
map 55d0c0000000 55d0c0100000 r-xp 1000 /usr/bin/my prog
stack 1 55d0c0001234 7f00aa005678
stack 2 55d0c0001300
live 1 1048576 12
peak 1 2097152 20
total 1 99999999 12000
total 2 10 1
frobnicate 1 2 3
summary live_bytes 1048576 live_objects 12 peak_bytes 2097152 total_bytes 99999999 samples 345
end
";

    #[test]
    fn reads_every_record() {
        let p = parse(SAMPLE).expect("parses");
        assert_eq!(p.pid, Some(12345));
        assert_eq!(p.rate, Some(524288));
        assert_eq!(p.reason.as_deref(), Some("exit"));
        assert_eq!(p.exe.as_deref(), Some("/usr/bin/my prog"));
        assert_eq!(p.exe_name(), "my prog");
        assert_eq!(p.maps.len(), 1);
        assert_eq!(p.maps[0].path, "/usr/bin/my prog");
        assert_eq!(p.maps[0].offset, 0x1000);
        assert!(p.maps[0].executable());
        assert_eq!(p.stacks.len(), 2);
        assert_eq!(p.stacks[0].pcs, vec![0x55d0c0001234, 0x7f00aa005678]);
        assert_eq!(
            p.stacks[0].live,
            Counts {
                bytes: 1048576,
                objects: 12
            }
        );
        assert_eq!(p.stacks[1].live, Counts::default());
        assert_eq!(
            p.stacks[1].total,
            Counts {
                bytes: 10,
                objects: 1
            }
        );
        assert_eq!(p.summary_value("samples"), Some(345));
        assert!(p.complete);
    }

    #[test]
    fn truncated_file_is_incomplete() {
        let cut = &SAMPLE[..SAMPLE.find("summary").unwrap()];
        let p = parse(cut).expect("parses");
        assert!(!p.complete);
        assert_eq!(p.stacks.len(), 2);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = SAMPLE.replace("live 1 1048576 12", "live 9 1 1");
        let e = parse(&bad).unwrap_err();
        assert!(e.starts_with("line 9:"), "{e}");
        let bad = SAMPLE.replace("stack 2 55d0c0001300", "stack 2 55d0cz");
        assert!(parse(&bad).unwrap_err().starts_with("line 8:"));
        assert!(parse("rampart-profile 2\n")
            .unwrap_err()
            .contains("version 2"));
        assert!(parse("hello\n").is_err());
        assert!(parse("").is_err());
    }
}
