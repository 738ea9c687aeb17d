//! The pprof output: a gzipped `perftools.profiles.Profile` protobuf (profile.proto of
//! github.com/google/pprof), laid out as Go's heap profiles are, so `go tool pprof` and the
//! tools that read those show it as a heap profile: sample types `alloc_objects/count`,
//! `alloc_space/bytes`, `inuse_objects/count`, `inuse_space/bytes` (the profile's total and
//! live views; pprof shows the last, `inuse_space`, by default), period type `space/bytes`
//! with the sampling rate as the period, one sample per stack (leaf first), and locations
//! that carry their symbolized lines (inlined functions first), so that pprof need not find
//! the binaries again.
//!
//! The protobuf is encoded by hand. The message types are few and flat, and the writer needs
//! only varints and length-delimited fields (about sixty lines below), where `prost` would
//! bring a derive macro and its build-time dependencies (`prost-derive`, `syn`, `itertools`,
//! `anyhow`) into every build of the launcher, for encoding alone. The field numbers are
//! those of profile.proto and are named once, in [`field`].

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::raw::RawProfile;
use crate::report::{Location, Report};
use crate::symbolize::{Frame, Symbolizer};

/// Field numbers of profile.proto's messages.
mod field {
    /// `Profile`.
    pub mod profile {
        pub const SAMPLE_TYPE: u32 = 1;
        pub const SAMPLE: u32 = 2;
        pub const MAPPING: u32 = 3;
        pub const LOCATION: u32 = 4;
        pub const FUNCTION: u32 = 5;
        pub const STRING_TABLE: u32 = 6;
        pub const PERIOD_TYPE: u32 = 11;
        pub const PERIOD: u32 = 12;
        pub const COMMENT: u32 = 13;
    }
    /// `ValueType`.
    pub mod value_type {
        pub const TYPE: u32 = 1;
        pub const UNIT: u32 = 2;
    }
    /// `Sample`.
    pub mod sample {
        pub const LOCATION_ID: u32 = 1;
        pub const VALUE: u32 = 2;
    }
    /// `Mapping`.
    pub mod mapping {
        pub const ID: u32 = 1;
        pub const MEMORY_START: u32 = 2;
        pub const MEMORY_LIMIT: u32 = 3;
        pub const FILE_OFFSET: u32 = 4;
        pub const FILENAME: u32 = 5;
        pub const BUILD_ID: u32 = 6;
        pub const HAS_FUNCTIONS: u32 = 7;
        pub const HAS_FILENAMES: u32 = 8;
        pub const HAS_LINE_NUMBERS: u32 = 9;
        pub const HAS_INLINE_FRAMES: u32 = 10;
    }
    /// `Location`.
    pub mod location {
        pub const ID: u32 = 1;
        pub const MAPPING_ID: u32 = 2;
        pub const ADDRESS: u32 = 3;
        pub const LINE: u32 = 4;
    }
    /// `Line`.
    pub mod line {
        pub const FUNCTION_ID: u32 = 1;
        pub const LINE: u32 = 2;
    }
    /// `Function`.
    pub mod function {
        pub const ID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const SYSTEM_NAME: u32 = 3;
        pub const FILENAME: u32 = 4;
    }
}

/// A protobuf message being written (proto3: fields at their default are left out).
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    /// A base-128 varint, low group first.
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A field's key: its number and wire type (0 varint, 2 length-delimited).
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    /// A `uint64`, or an `int64` that is never negative here (indices, counts, lines).
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v);
        }
    }

    /// A `bool` (left out when false).
    fn bool(&mut self, field: u32, v: bool) {
        self.uint(field, u64::from(v));
    }

    /// A length-delimited field: bytes, a string, a message or a packed array. Always
    /// written, even empty: the string table's first entry is the empty string.
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// An embedded message.
    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let mut inner = Msg::default();
        for &v in values {
            inner.varint(v);
        }
        self.bytes(field, &inner.0);
    }
}

/// The string table: each string once, `""` at index 0 as profile.proto requires.
struct Strings {
    /// Index of each string.
    index: HashMap<String, u64>,
    /// The strings by index.
    table: Vec<String>,
}

impl Strings {
    /// A table holding only `""`.
    fn new() -> Self {
        Strings {
            index: HashMap::from([(String::new(), 0)]),
            table: vec![String::new()],
        }
    }

    /// The index of `s`, adding it the first time.
    fn id(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as u64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// What a mapping's locations turned out to have (pprof's `has_*` flags: whether it should
/// symbolize them again).
#[derive(Default, Clone, Copy)]
struct Found {
    /// A function name (not an address).
    functions: bool,
    /// A source file.
    filenames: bool,
    /// A line number.
    lines: bool,
    /// A location with inlined functions.
    inline: bool,
}

/// The profile, gzipped.
pub fn gzipped(report: &Report, symbolizer: &mut Symbolizer) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&encode(report, symbolizer))?;
    gz.finish()
}

/// The profile as protobuf bytes.
pub fn encode(report: &Report, symbolizer: &mut Symbolizer) -> Vec<u8> {
    let raw = &report.raw;
    let mut strings = Strings::new();
    let mut out = Msg::default();

    for (ty, unit) in [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ] {
        out.message(
            field::profile::SAMPLE_TYPE,
            value_type(&mut strings, ty, unit),
        );
    }

    // Functions by (name, file); locations by (address, the frames kept for it: the same
    // address with the allocator's frames trimmed is another location).
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_msgs: Vec<Msg> = Vec::new();
    let mut locations: HashMap<(u64, Vec<Frame>), u64> = HashMap::new();
    let mut location_msgs: Vec<Msg> = Vec::new();
    let mut found: HashMap<usize, Found> = HashMap::new();
    let mappings = mapping_order(raw, report);
    let mapping_id: HashMap<usize, u64> = mappings
        .iter()
        .enumerate()
        .map(|(i, &m)| (m, i as u64 + 1))
        .collect();

    for stack in &report.stacks {
        let v = [
            stack.total.objects,
            stack.total.bytes,
            stack.live.objects,
            stack.live.bytes,
        ];
        if v.iter().all(|&x| x == 0) {
            continue;
        }
        let mut ids = Vec::with_capacity(stack.locations.len());
        for loc in &stack.locations {
            let key = (loc.pc, loc.frames.clone());
            let next = location_msgs.len() as u64 + 1;
            let id = *locations.entry(key).or_insert(next);
            if id == next {
                let m = location(
                    loc,
                    id,
                    &mapping_id,
                    &mut strings,
                    &mut functions,
                    &mut function_msgs,
                    raw,
                );
                location_msgs.push(m);
                if let Some(map) = loc.map {
                    let f = found.entry(map).or_default();
                    for frame in &loc.frames {
                        f.functions |= frame.is_named();
                        f.filenames |= frame.file.is_some();
                        f.lines |= frame.line.is_some();
                    }
                    f.inline |= loc.frames.len() > 1;
                }
            }
            ids.push(id);
        }
        let mut sample = Msg::default();
        sample.packed(field::sample::LOCATION_ID, &ids);
        // int64 values; estimates are never negative.
        sample.packed(field::sample::VALUE, &v);
        out.message(field::profile::SAMPLE, sample);
    }

    for &m in &mappings {
        let map = &raw.maps[m];
        let f = found.get(&m).copied().unwrap_or_default();
        let mut msg = Msg::default();
        msg.uint(field::mapping::ID, mapping_id[&m]);
        msg.uint(field::mapping::MEMORY_START, map.start);
        msg.uint(field::mapping::MEMORY_LIMIT, map.end);
        msg.uint(field::mapping::FILE_OFFSET, map.offset);
        msg.uint(field::mapping::FILENAME, strings.id(&map.path));
        if let Some(id) = symbolizer.build_id(&map.path) {
            msg.uint(field::mapping::BUILD_ID, strings.id(&id));
        }
        msg.bool(field::mapping::HAS_FUNCTIONS, f.functions);
        msg.bool(field::mapping::HAS_FILENAMES, f.filenames);
        msg.bool(field::mapping::HAS_LINE_NUMBERS, f.lines);
        msg.bool(field::mapping::HAS_INLINE_FRAMES, f.inline);
        out.message(field::profile::MAPPING, msg);
    }
    for m in location_msgs {
        out.message(field::profile::LOCATION, m);
    }
    for m in function_msgs {
        out.message(field::profile::FUNCTION, m);
    }

    let period_type = value_type(&mut strings, "space", "bytes");
    let comments = [
        format!(
            "rampart heap profile of pid {}, {}",
            raw.pid.map_or("?".to_owned(), |p| p.to_string()),
            raw.exe.as_deref().unwrap_or("?")
        ),
        format!(
            "written at {}{}",
            raw.reason.as_deref().unwrap_or("?"),
            if raw.complete { "" } else { " (incomplete)" }
        ),
    ];
    let comment_ids: Vec<u64> = comments.iter().map(|c| strings.id(c)).collect();

    for s in &strings.table {
        out.bytes(field::profile::STRING_TABLE, s.as_bytes());
    }
    out.message(field::profile::PERIOD_TYPE, period_type);
    out.uint(field::profile::PERIOD, raw.rate.unwrap_or(1));
    out.packed(field::profile::COMMENT, &comment_ids);
    out.0
}

/// The mappings the profile lists, as indices into the map lines: the executable ones
/// (where return addresses can point) and any other a location is in, the program's own
/// first (pprof takes the first mapping for the main binary).
fn mapping_order(raw: &RawProfile, report: &Report) -> Vec<usize> {
    let used: std::collections::HashSet<usize> = report
        .stacks
        .iter()
        .flat_map(|s| s.locations.iter().filter_map(|l| l.map))
        .collect();
    let mut order: Vec<usize> = (0..raw.maps.len())
        .filter(|i| raw.maps[*i].executable() || used.contains(i))
        .collect();
    let exe = raw.exe.as_deref();
    // Stable: the program's mappings first, the rest in address order as the file has them.
    order.sort_by_key(|&i| Some(raw.maps[i].path.as_str()) != exe);
    order
}

/// A `ValueType` message (`inuse_space`/`bytes`...).
fn value_type(strings: &mut Strings, ty: &str, unit: &str) -> Msg {
    let mut m = Msg::default();
    m.uint(field::value_type::TYPE, strings.id(ty));
    m.uint(field::value_type::UNIT, strings.id(unit));
    m
}

/// A `Location` message, adding the functions it names.
fn location(
    loc: &Location,
    id: u64,
    mapping_id: &HashMap<usize, u64>,
    strings: &mut Strings,
    functions: &mut HashMap<(String, String), u64>,
    function_msgs: &mut Vec<Msg>,
    raw: &RawProfile,
) -> Msg {
    let mut m = Msg::default();
    m.uint(field::location::ID, id);
    if let Some(mid) = loc.map.and_then(|i| mapping_id.get(&i)) {
        m.uint(field::location::MAPPING_ID, *mid);
    }
    // The return address less one: inside the call instruction, the address symbolized
    // (profile.proto allows a non-leaf address in the middle of a call instruction).
    m.uint(field::location::ADDRESS, loc.pc.saturating_sub(1));
    for frame in &loc.frames {
        let file = match (&frame.file, loc.map) {
            (Some(f), _) => f.clone(),
            (None, Some(i)) => raw.maps[i].path.clone(),
            (None, None) => String::new(),
        };
        let key = (frame.function.clone(), file);
        let next = function_msgs.len() as u64 + 1;
        let fid = *functions.entry(key.clone()).or_insert(next);
        if fid == next {
            let mut f = Msg::default();
            f.uint(field::function::ID, fid);
            let name = strings.id(&key.0);
            f.uint(field::function::NAME, name);
            f.uint(field::function::SYSTEM_NAME, name);
            f.uint(field::function::FILENAME, strings.id(&key.1));
            function_msgs.push(f);
        }
        let mut line = Msg::default();
        line.uint(field::line::FUNCTION_ID, fid);
        line.uint(field::line::LINE, u64::from(frame.line.unwrap_or(0)));
        m.message(field::location::LINE, line);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut m = Msg::default();
        m.varint(0);
        m.varint(1);
        m.varint(127);
        m.varint(128);
        m.varint(300);
        m.varint(u64::MAX);
        assert_eq!(
            m.0,
            [
                0x00, 0x01, 0x7f, 0x80, 0x01, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0x01
            ]
        );
    }

    #[test]
    fn fields() {
        let mut m = Msg::default();
        m.uint(1, 150);
        m.uint(2, 0); // default: left out
        m.bytes(6, b"ab");
        m.packed(1, &[3, 270]);
        assert_eq!(
            m.0,
            [0x08, 0x96, 0x01, 0x32, 2, b'a', b'b', 0x0a, 3, 3, 0x8e, 0x02]
        );
    }
}
