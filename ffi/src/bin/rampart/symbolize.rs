//! Turning the profile's return addresses into functions, files and lines.
//!
//! A return address `pc` of the profiled process lies in one of its `map` lines. `pc -
//! start + offset` is the position in the mapped file; the file's `PT_LOAD` program headers
//! say which virtual address of the file's own address space that position is loaded at,
//! which is what its DWARF and symbol tables speak of. Going through the program headers
//! rather than assuming a load bias handles PIE and non-PIE executables and shared libraries
//! the same way. The address looked up is `vaddr - 1`: a return address is the instruction
//! after the call, which may already belong to the next source line (or, after a call to a
//! function that does not return, to the next function).
//!
//! The lookup itself is `addr2line`'s: the DWARF line tables with inlined functions expanded
//! (innermost first) and Rust and C++ names demangled; a file without DWARF falls back to its
//! symbol table (or dynamic symbols), and a separate debug file under `/usr/lib/debug` (by
//! build id or `.gnu_debuglink`, as Debian's `-dbgsym` packages install them) is used when one
//! exists. Each file is opened and parsed once ([`Symbolizer`] keeps it), however many
//! addresses and profiles point into it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use addr2line::Loader;
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::raw::Map;

/// One source-level frame: a function, with its file and line where known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame {
    /// The function (demangled), or `module+0xoffset` / `0xaddress` when nothing is known.
    pub function: String,
    /// The source file.
    pub file: Option<String>,
    /// The line in it.
    pub line: Option<u32>,
    /// Where no source location is known but the module is: its file name and the address
    /// in it (`libc.so.6`, `0x2a1ca`).
    pub module: Option<(String, u64)>,
}

impl Frame {
    /// Whether the function has a name, rather than one made of its address
    /// (`module+0xoffset`, `0xaddress`).
    pub fn is_named(&self) -> bool {
        match &self.module {
            Some((module, _)) => !self.function.starts_with(&format!("{module}+0x")),
            None => !self.function.starts_with("0x"),
        }
    }

    /// `function (file:line)`, `function (module+0xoffset)` or `function`.
    pub fn display(&self) -> String {
        match (&self.file, self.line, &self.module) {
            (Some(file), Some(line), _) => format!("{} ({file}:{line})", self.function),
            (Some(file), None, _) => format!("{} ({file})", self.function),
            (None, _, Some((module, addr))) if self.is_named() => {
                format!("{} ({module}+0x{addr:x})", self.function)
            }
            _ => self.function.clone(),
        }
    }
}

/// What one return address is.
#[derive(Clone, Debug)]
pub struct Symbolized {
    /// Source-level frames, innermost first: the functions inlined at the address, then the
    /// function they were inlined into. Never empty.
    pub frames: Vec<Frame>,
    /// The index of the `map` line holding the address, if one does.
    pub map: Option<usize>,
    /// Whether that mapping is rampart's own library (`librampart.so`).
    pub in_allocator: bool,
}

/// A parsed file, kept for all the addresses that point into it.
struct Module {
    /// `(file offset, file size, virtual address)` of each `PT_LOAD` segment.
    segments: Vec<(u64, u64, u64)>,
    /// DWARF readers: a separate debug file's first, then the file's own.
    dwarf: Vec<Loader>,
    /// Functions by address: the debug file's full symbol table if there is one, else the
    /// file's own, else its dynamic symbols.
    symbols: Symbols,
    /// The GNU build id, hex (pprof's `Mapping.build_id`).
    build_id: Option<String>,
}

/// Symbolizes addresses, parsing each file once.
#[derive(Default)]
pub struct Symbolizer {
    /// By path as the map line names it; `None` for a file that cannot be read as ELF.
    modules: HashMap<String, Option<Module>>,
}

impl Symbolizer {
    /// A symbolizer with nothing loaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the return address `pc` of a process with these mappings is.
    pub fn symbolize(&mut self, maps: &[Map], pc: u64) -> Symbolized {
        let Some(index) = maps.iter().position(|m| m.contains(pc)) else {
            return Symbolized {
                frames: vec![unknown(format!("0x{pc:x}"), None)],
                map: None,
                in_allocator: false,
            };
        };
        let map = &maps[index];
        let name = module_name(&map.path).to_owned();
        let in_allocator = name.starts_with("librampart.");
        let file_offset = pc - map.start + map.offset;
        let module = self.module(&map.path);
        let frames = match module {
            None => vec![unknown(
                format!("{name}+0x{file_offset:x}"),
                Some((name, file_offset)),
            )],
            Some(module) => {
                let vaddr = module.vaddr(file_offset);
                module.frames(vaddr, &name)
            }
        };
        Symbolized {
            frames,
            map: Some(index),
            in_allocator,
        }
    }

    /// The hex GNU build id of a mapped file, if it has one.
    pub fn build_id(&mut self, path: &str) -> Option<String> {
        self.module(path).and_then(|m| m.build_id.clone())
    }

    /// The parsed file, parsing it the first time.
    fn module(&mut self, path: &str) -> Option<&Module> {
        self.modules
            .entry(path.to_owned())
            .or_insert_with(|| Module::load(Path::new(file_path(path))))
            .as_ref()
    }
}

impl Module {
    /// Reads a file's program headers and opens its debug information; `None` if it is not
    /// an object file this can read.
    fn load(path: &Path) -> Option<Module> {
        let headers = Headers::read(path)?;
        let debug = headers
            .debug_file_candidates(path)
            .into_iter()
            .filter(|c| c.is_file())
            .find_map(|c| {
                let theirs = Headers::read(&c)?;
                // A debug file found by name only must be the same build when both say.
                if headers.build_id.is_some()
                    && theirs.build_id.is_some()
                    && theirs.build_id != headers.build_id
                {
                    return None;
                }
                Some((Loader::new(&c).ok()?, theirs.symbols))
            });
        let mut dwarf = Vec::new();
        let mut symbols = headers.symbols;
        if let Some((loader, debug_symbols)) = debug {
            dwarf.push(loader);
            if !debug_symbols.0.is_empty() {
                symbols = debug_symbols;
            }
        }
        dwarf.extend(Loader::new(path).ok());
        Some(Module {
            segments: headers.segments,
            dwarf,
            symbols,
            build_id: headers.build_id.map(|id| hex_string(&id)),
        })
    }

    /// The virtual address (in the file's address space) at which file offset `offset` is
    /// loaded. An offset outside every segment (a mapping past the file's loaded part, which
    /// code addresses never are) is taken as its own address, as in a file loaded at 0.
    fn vaddr(&self, offset: u64) -> u64 {
        self.segments
            .iter()
            .find(|&&(off, size, _)| off <= offset && offset - off < size)
            .map(|&(off, _, vaddr)| vaddr + (offset - off))
            .unwrap_or(offset)
    }

    /// The frames of return address `vaddr` (the lookup is of `vaddr - 1`).
    fn frames(&self, vaddr: u64, name: &str) -> Vec<Frame> {
        let probe = vaddr.saturating_sub(1);
        let symbol = || self.symbols.find(probe).map(demangle);
        for loader in &self.dwarf {
            let frames = dwarf_frames(loader, probe);
            if frames.is_empty() {
                continue;
            }
            // Frames DWARF gives without a name (rare: a unit without DW_AT_name) take the
            // symbol's, or the module's address.
            return frames
                .into_iter()
                .map(|(function, file, line)| Frame {
                    function: function
                        .or_else(symbol)
                        .unwrap_or_else(|| format!("{name}+0x{vaddr:x}")),
                    file,
                    line,
                    module: Some((name.to_owned(), vaddr)),
                })
                .collect();
        }
        let function = symbol().unwrap_or_else(|| format!("{name}+0x{vaddr:x}"));
        vec![unknown(function, Some((name.to_owned(), vaddr)))]
    }
}

/// A file's function symbols, `(address, size, name)` sorted by address.
#[derive(Default)]
struct Symbols(Vec<(u64, u64, String)>);

impl Symbols {
    /// The symbols of an object file: its symbol table, or where it has none (a stripped
    /// file) its dynamic symbols.
    fn read<'data>(obj: &impl Object<'data>) -> Symbols {
        let mut v = collect_functions(obj.symbols());
        if v.is_empty() {
            v = collect_functions(obj.dynamic_symbols());
        }
        // By address, and at one address the global name before a local or weak alias.
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.3.cmp(&b.3)));
        v.dedup_by_key(|s| s.0);
        Symbols(
            v.into_iter()
                .map(|(a, size, name, _)| (a, size, name))
                .collect(),
        )
    }

    /// The function whose symbol covers `addr`. Only a symbol whose size reaches `addr`
    /// counts: the nearest symbol below an address in a stripped file's static function is
    /// some other function, and naming it would send the reader to the wrong code.
    fn find(&self, addr: u64) -> Option<&str> {
        let i = self.0.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.0[i];
        (addr - start < *size).then_some(name.as_str())
    }
}

/// The defined function symbols of an iterator: `(address, size, name, rank)`, rank 0 for
/// a global symbol, 1 for a weak one, 2 for a local one.
fn collect_functions<'data, S: ObjectSymbol<'data>>(
    symbols: impl Iterator<Item = S>,
) -> Vec<(u64, u64, String, u8)> {
    symbols
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok().filter(|n| !n.is_empty())?;
            let rank = if s.is_weak() {
                1
            } else if s.is_global() {
                0
            } else {
                2
            };
            Some((s.address(), s.size(), name.to_owned(), rank))
        })
        .collect()
}

/// `(function, file, line)` of each frame DWARF gives for `probe`, innermost first.
fn dwarf_frames(loader: &Loader, probe: u64) -> Vec<(Option<String>, Option<String>, Option<u32>)> {
    let mut out = Vec::new();
    let Ok(mut iter) = loader.find_frames(probe) else {
        return out;
    };
    while let Ok(Some(frame)) = iter.next() {
        let function = frame
            .function
            .as_ref()
            .and_then(|f| f.demangle().ok())
            .map(Cow::into_owned);
        let (file, line) = match frame.location {
            Some(loc) => (loc.file.map(str::to_owned), loc.line),
            None => (None, None),
        };
        if function.is_none() && file.is_none() {
            continue;
        }
        out.push((function, file, line));
    }
    out
}

/// A frame with no source location.
fn unknown(function: String, module: Option<(String, u64)>) -> Frame {
    Frame {
        function,
        file: None,
        line: None,
        module,
    }
}

/// A symbol table name, demangled if it is a Rust or C++ one, without the symbol version
/// a full symbol table may append (`_IO_fopen@@GLIBC_2.2.5`).
fn demangle(name: &str) -> String {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned()
}

/// The file name of a mapped path (`/usr/lib/libc.so.6` -> `libc.so.6`).
pub fn module_name(path: &str) -> &str {
    let path = file_path(path);
    path.rsplit('/').next().unwrap_or(path)
}

/// The path to open for a map line's path: the kernel appends ` (deleted)` to a file
/// replaced or removed since it was mapped (the one at the path now may be another build, but
/// it is the best there is).
fn file_path(path: &str) -> &str {
    path.strip_suffix(" (deleted)").unwrap_or(path)
}

/// Bytes as lowercase hex (a build id as `readelf -n` and `/usr/lib/debug/.build-id` spell it).
fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`Module::load`] needs from a file's headers and symbol tables, read without
/// mapping or reading the whole file.
struct Headers {
    /// `(file offset, file size, virtual address)` of each `PT_LOAD` segment.
    segments: Vec<(u64, u64, u64)>,
    /// The GNU build id note.
    build_id: Option<Vec<u8>>,
    /// The `.gnu_debuglink` file name.
    debuglink: Option<String>,
    /// The function symbols.
    symbols: Symbols,
}

impl Headers {
    /// Reads them; `None` for a file that cannot be opened or is not an object file.
    fn read(path: &Path) -> Option<Headers> {
        let file = File::open(path).ok()?;
        // Reads only the parts asked for (headers, notes, symbol tables), not the whole file.
        let cache = object::ReadCache::new(file);
        let obj = object::File::parse(&cache).ok()?;
        let segments = obj
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect();
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debuglink = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .and_then(|(name, _crc)| std::str::from_utf8(name).ok().map(str::to_owned));
        Some(Headers {
            segments,
            build_id,
            debuglink,
            symbols: Symbols::read(&obj),
        })
    }

    /// Where a separate debug file for `path` may be, best first: by build id, then by
    /// debuglink name beside the file, in its `.debug/`, and under `/usr/lib/debug` (gdb's
    /// search order).
    fn debug_file_candidates(&self, path: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some(id) = self.build_id.as_deref().filter(|id| id.len() > 1) {
            out.push(PathBuf::from(format!(
                "/usr/lib/debug/.build-id/{}/{}.debug",
                hex_string(&id[..1]),
                hex_string(&id[1..])
            )));
        }
        if let (Some(link), Some(dir)) = (&self.debuglink, path.parent()) {
            let real_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
            for d in [dir, real_dir.as_path()] {
                let candidate = d.join(link);
                // The debuglink of a file may name the file itself.
                if candidate != path {
                    out.push(candidate);
                }
                out.push(d.join(".debug").join(link));
                let rel = d.strip_prefix("/").unwrap_or(d);
                out.push(Path::new("/usr/lib/debug").join(rel).join(link));
            }
        }
        out
    }
}

/// Whether a frame's function is part of allocating rather than of the program: rampart
/// itself, the Rust allocator shim and `alloc::alloc`, and the C and C++ allocation calls.
/// The allocator drops its own frames from the stacks it records, but a stack taken through
/// an entry point it does not know (or a wrapper of it) may still start with these.
pub fn is_allocator_function(name: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "alloc::alloc::",
        "std::alloc::",
        "rampart::",
        "<rampart::",
        "rampart_",
        "operator new",
        "__libc_",
        // `<alloc::alloc::Global as core::alloc::Allocator>::grow`, and the inherent
        // methods as v0 mangling names them: `<alloc::alloc::Global>::alloc_impl`.
        "<alloc::alloc::Global",
    ];
    const C_NAMES: [&str; 9] = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
    ];
    if PREFIXES.iter().any(|p| name.starts_with(p)) || C_NAMES.contains(&name) {
        return true;
    }
    // The shim's symbols (`__rust_alloc`, `__rust_realloc`, `__rdl_alloc`, `__rg_alloc`...),
    // also as paths (`__rustc::__rust_alloc`, `std::alloc::__default_lib_allocator::
    // __rdl_alloc`); not the other `__rust_*` functions (`__rust_try`, `__rust_begin_short_
    // backtrace`), which are the program's.
    let last = name.rsplit("::").next().unwrap_or(name);
    ["__rust_alloc", "__rust_realloc", "__rdl_", "__rg_"]
        .iter()
        .any(|p| last.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_functions() {
        for name in [
            "malloc",
            "calloc",
            "realloc",
            "__rust_alloc",
            "__rustc::__rust_realloc",
            "__rdl_alloc",
            "std::alloc::__default_lib_allocator::__rdl_alloc_zeroed",
            "alloc::alloc::exchange_malloc",
            "<rampart::Rampart as core::alloc::global::GlobalAlloc>::alloc",
            "rampart::api::alloc_slow",
            "rampart_malloc",
            "operator new(unsigned long)",
            "operator new[](unsigned long, std::align_val_t)",
            "<alloc::alloc::Global>::grow_impl_runtime",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
        ] {
            assert!(is_allocator_function(name), "{name}");
        }
        for name in [
            "main",
            "make_widgets",
            "alloc::raw_vec::finish_grow",
            "mallocx_user",
            "std::vector<int>::push_back(int const&)",
            "rampartish",
            "__rust_try",
            "std::sys::backtrace::__rust_begin_short_backtrace",
        ] {
            assert!(!is_allocator_function(name), "{name}");
        }
    }

    #[test]
    fn display() {
        let f = Frame {
            function: "main".into(),
            file: Some("/src/a.c".into()),
            line: Some(12),
            module: Some(("a".into(), 0x1234)),
        };
        assert_eq!(f.display(), "main (/src/a.c:12)");
        let f = unknown("qsort".into(), Some(("libc.so.6".into(), 0x4a2b0)));
        assert_eq!(f.display(), "qsort (libc.so.6+0x4a2b0)");
        let f = unknown(
            "libgone.so+0x1010".into(),
            Some(("libgone.so".into(), 0x1010)),
        );
        assert_eq!(f.display(), "libgone.so+0x1010");
        assert!(!f.is_named());
        assert!(!unknown("0x1238".into(), None).is_named());
        assert_eq!(module_name("/usr/lib/x (deleted)"), "x");
        assert_eq!(demangle("_IO_fopen@@GLIBC_2.2.5"), "_IO_fopen");
        assert_eq!(
            demangle("_ZN7toolkit8Stripped5entryEv"),
            "toolkit::Stripped::entry()"
        );
    }
}
