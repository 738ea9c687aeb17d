//! The heap map: an SVG picture of every chunk, page by page, so that fragmentation and
//! waste can be seen at a glance (`RAMPART_HEAPMAP=out.svg` at exit, `rampart_heapmap_write`
//! on demand).
//!
//! # What it shows
//! - Each chunk is a panel of 16 rows of 64 squares (one per 4 KiB page, 1024 in all), in
//!   address order, labelled with its address and its shares of pages; the dark square after
//!   the last page is the PROT_NONE guard page that follows every chunk.
//! - Every run (a slab span, a large block, or a free buddy block) has a thin outline, so the
//!   page layer's blocks and their sizes show; hovering one shows a tooltip (its `<title>`).
//! - Slab spans are coloured by size class (a hue from green for 16 B to violet for 1 MiB);
//!   the dark part of a span is its share of blocks handed out, the pale part the blocks that
//!   are free or never carved (a snapshot: other threads free blocks without the page lock).
//! - Large blocks amber; free pages that still hold memory (committed, "dirty") salmon; free
//!   pages returned to the OS (decommitted, "clean") pale grey-blue.
//! - Huge blocks (each its own mapping) are listed below the chunks as bars proportional to
//!   the largest, labelled with address and size.
//! - At the top: totals (chunks, bytes in each state) and a legend.
//!
//! # How it is written
//! Nothing here allocates: the map would otherwise change the heap it draws, and with the
//! page lock held any allocation that needs pages would deadlock. The page layer is walked
//! under its lock through its read-only accessors ([`Pages::chunk_views`],
//! [`Pages::for_each_run`], [`Pages::for_each_huge`]); the text is composed in a fixed stack
//! buffer ([`Out`]) and flushed with `write(2)` to a file opened with `open(2)` before the
//! lock is taken. Chunks are put in address order by repeated selection (quadratic in the
//! number of chunks, which is small: 1,000 chunks are 4 GiB).
//!
//! The file calls are made here through libc rather than through `os`: they are the only
//! file system calls in the allocator, and only this debugging output makes them.
//!
//! The elements carry `data-*` attributes (`class="chunk"` groups with `data-base`,
//! `class="run"` groups with `data-state`, `data-pages`, `data-dirty`, `data-class`), so tests
//! and scripts can read the picture back.

use core::ffi::{c_int, CStr};

use crate::config::{self, HEAPMAP_PATH_MAX};
use crate::os::{self, PAGE_SIZE};
use crate::pages::{
    ChunkView, PageSource, Pages, RunView, State, CHUNK_SIZE, GUARD_SIZE, PAGES, PAGES_PER_CHUNK,
};
use crate::size_class::{blocks_per_span, class_size, NUM_CLASSES};
use crate::util::Line;

/// Squares per row of a chunk panel.
const COLS: usize = 64;
/// Rows of a chunk panel.
const ROWS: usize = PAGES_PER_CHUNK / COLS;
/// Side of a page's square, in pixels.
const CELL: usize = 6;
/// Width of a row of pages.
const ROW_W: usize = COLS * CELL;
/// Width of a chunk panel: the pages, a gap, the guard page.
const PANEL_W: usize = ROW_W + 2 + CELL;
/// Height of a panel's label line.
const LABEL_H: usize = 15;
/// Height of a panel: label and pages.
const PANEL_H: usize = LABEL_H + ROWS * CELL;
/// Space between panels.
const GAP_X: usize = 36;
const GAP_Y: usize = 14;
/// Chunk panels side by side at most.
const PANEL_COLS: usize = 3;
const MARGIN: usize = 16;
/// Height of the title, the totals and the legend.
const HEADER_H: usize = 150;
/// Height of one huge block's bar line.
const HUGE_H: usize = 16;
/// Huge blocks drawn at most (the rest are counted in one line).
const HUGE_MAX: usize = 200;

const LARGE: [u8; 3] = [0xe3, 0x9b, 0x2d];
const HUGE: [u8; 3] = [0xc7, 0x7c, 0x1e];
const FREE_DIRTY: [u8; 3] = [0xf1, 0x9a, 0x93];
const FREE_CLEAN: [u8; 3] = [0xe4, 0xe9, 0xef];
const GUARD: [u8; 3] = [0x22, 0x22, 0x22];

/// The colour of slab spans of `class`: a hue from green (16 B) to violet (1 MiB), neighbours
/// told apart by lightness; `pale` for the part of a span not handed out.
fn slab_colour(class: usize, pale: bool) -> [u8; 3] {
    let hue = 95.0 + class as f32 * 195.0 / (NUM_CLASSES - 1) as f32;
    let light = if pale {
        0.83
    } else if class.is_multiple_of(2) {
        0.40
    } else {
        0.50
    };
    hsl(hue, 0.62, light)
}

/// HSL (hue in degrees, saturation and lightness in 0..=1) to RGB.
fn hsl(h: f32, s: f32, l: f32) -> [u8; 3] {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h / 60.0;
    let x = c * (1.0 - ((hp % 2.0) - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let byte = |v: f32| ((v + m) * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
    [byte(r), byte(g), byte(b)]
}

/// A buffered writer to a file descriptor that never allocates: text is composed in a fixed
/// buffer and flushed with `write(2)`. The first error is kept (as an errno value) and the
/// output after it dropped.
pub struct Out {
    fd: c_int,
    buf: [u8; 16 * 1024],
    len: usize,
    error: c_int,
    /// Bytes handed to the kernel so far.
    pub written: usize,
}

impl Out {
    /// A writer to `fd` (which it does not close).
    pub const fn new(fd: c_int) -> Self {
        Self {
            fd,
            buf: [0; 16 * 1024],
            len: 0,
            error: 0,
            written: 0,
        }
    }

    /// Appends bytes.
    pub fn bytes(&mut self, mut b: &[u8]) -> &mut Self {
        while !b.is_empty() {
            if self.len == self.buf.len() {
                self.flush();
            }
            let n = b.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
            self.len += n;
            b = &b[n..];
        }
        self
    }

    /// Appends text.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends a decimal number.
    pub fn dec(&mut self, v: usize) -> &mut Self {
        let mut l = Line::new();
        l.dec(v as u64);
        self.bytes(l.as_bytes())
    }

    /// Appends a hexadecimal number with a `0x` prefix.
    pub fn hex(&mut self, v: usize) -> &mut Self {
        let mut l = Line::new();
        l.hex(v as u64);
        self.bytes(l.as_bytes())
    }

    /// Appends `num / den` as a percentage with one decimal (`0.0%` when `den` is 0).
    pub fn pct(&mut self, num: usize, den: usize) -> &mut Self {
        let tenths = (num as u128 * 1000 + den as u128 / 2)
            .checked_div(den as u128)
            .unwrap_or(0) as usize;
        self.dec(tenths / 10).str(".").dec(tenths % 10).str("%")
    }

    /// Appends `num / den` as a whole percentage (`0%` when `den` is 0; above 0 shows as at
    /// least `1%`, below 100 as at most `99%`).
    pub fn pct_int(&mut self, num: usize, den: usize) -> &mut Self {
        let mut p = (num as u128 * 100 + den as u128 / 2)
            .checked_div(den as u128)
            .unwrap_or(0) as usize;
        if num > 0 && p == 0 {
            p = 1;
        }
        if num < den && p == 100 {
            p = 99;
        }
        self.dec(p).str("%")
    }

    /// Appends a byte count in B, KiB, MiB or GiB (one decimal above B).
    pub fn size(&mut self, bytes: usize) -> &mut Self {
        const UNITS: [&str; 4] = [" B", " KiB", " MiB", " GiB"];
        let mut unit = 0;
        let mut scale = 1usize;
        while unit + 1 < UNITS.len() && bytes >= scale * 1024 {
            scale *= 1024;
            unit += 1;
        }
        if unit == 0 {
            return self.dec(bytes).str(UNITS[0]);
        }
        let tenths = (bytes as u128 * 10 + scale as u128 / 2) / scale as u128;
        self.dec((tenths / 10) as usize)
            .str(".")
            .dec((tenths % 10) as usize)
            .str(UNITS[unit])
    }

    /// Appends a colour as `#rrggbb`.
    pub fn colour(&mut self, rgb: [u8; 3]) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = [b'#'; 7];
        for (i, c) in rgb.iter().enumerate() {
            s[1 + 2 * i] = HEX[(c >> 4) as usize];
            s[2 + 2 * i] = HEX[(c & 15) as usize];
        }
        self.bytes(&s)
    }

    /// Writes the buffer out (retrying partial writes and `EINTR`).
    pub fn flush(&mut self) {
        if self.error == 0 && self.len > 0 {
            match os::write_all(self.fd, &self.buf[..self.len]) {
                Ok(()) => self.written += self.len,
                Err(e) => self.error = e,
            }
        }
        self.len = 0;
    }

    /// Flushes and returns the first error (an errno value), if any.
    pub fn finish(&mut self) -> Result<usize, c_int> {
        self.flush();
        if self.error == 0 {
            Ok(self.written)
        } else {
            Err(self.error)
        }
    }

    /// `<rect x y width height fill/>` without its closing `/>` (so attributes can follow).
    fn rect_open(&mut self, x: usize, y: usize, w: usize, h: usize, fill: [u8; 3]) -> &mut Self {
        self.str("<rect x=\"")
            .dec(x)
            .str("\" y=\"")
            .dec(y)
            .str("\" width=\"")
            .dec(w)
            .str("\" height=\"")
            .dec(h)
            .str("\" fill=\"")
            .colour(fill)
            .str("\"")
    }

    /// A filled rectangle.
    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, fill: [u8; 3]) -> &mut Self {
        self.rect_open(x, y, w, h, fill).str("/>")
    }

    /// `<text x y>` … (the caller closes it with `</text>`).
    fn text(&mut self, x: usize, y: usize) -> &mut Self {
        self.str("<text x=\"")
            .dec(x)
            .str("\" y=\"")
            .dec(y)
            .str("\">")
    }
}

/// Page counts of the mapped chunks by state, from one walk.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Chunks mapped (the kept ones included).
    pub chunks: usize,
    /// Pages of slab spans.
    pub slab: usize,
    /// Bytes of slab blocks counted as handed out (a snapshot).
    pub slab_used_bytes: usize,
    /// Pages of large blocks.
    pub large: usize,
    /// Free pages that may hold data (committed).
    pub free_dirty: usize,
    /// Free pages returned to the OS or never used (decommitted).
    pub free_clean: usize,
    /// Huge blocks.
    pub huge: usize,
    /// Bytes of huge blocks.
    pub huge_bytes: usize,
}

impl Totals {
    fn add(&mut self, r: &RunView) {
        match r.state {
            State::Slab => {
                self.slab += r.npages;
                self.slab_used_bytes += r.used_blocks * r.block_size;
            }
            State::Large => self.large += r.npages,
            State::Free | State::Purging => {
                self.free_dirty += r.dirty_pages;
                self.free_clean += r.npages - r.dirty_pages;
            }
        }
    }
}

/// The chunk with the lowest base above `after` (all of them from `None`).
fn next_chunk<S: PageSource>(pages: &Pages<S>, after: Option<usize>) -> Option<ChunkView> {
    let mut best: Option<ChunkView> = None;
    for c in pages.chunk_views() {
        if after.is_some_and(|a| c.base <= a) {
            continue;
        }
        match best {
            Some(b) if b.base <= c.base => {}
            _ => best = Some(c),
        }
    }
    best
}

/// Writes the heap map of `pages` to `fd`. The caller holds the page layer (its lock, for
/// the process's one); nothing here allocates. Returns the totals drawn, or the errno of the
/// first failed write.
pub fn write_map<S: PageSource>(pages: &Pages<S>, fd: c_int) -> Result<Totals, c_int> {
    let mut out = Out::new(fd);
    // First pass: totals, and the picture's size.
    let mut t = Totals::default();
    for c in pages.chunk_views() {
        t.chunks += 1;
        pages.for_each_run(c.base, |r| t.add(&r));
    }
    pages.for_each_huge(|_, len| {
        t.huge += 1;
        t.huge_bytes += len;
    });
    let cols = t.chunks.clamp(1, PANEL_COLS);
    let width = (2 * MARGIN + cols * PANEL_W + (cols - 1) * GAP_X).max(1080);
    let chunk_rows = t.chunks.div_ceil(PANEL_COLS);
    let chunks_h = chunk_rows * (PANEL_H + GAP_Y);
    let huge_lines = t.huge.min(HUGE_MAX) + (t.huge > HUGE_MAX) as usize;
    let huge_h = if t.huge == 0 {
        0
    } else {
        24 + huge_lines * HUGE_H
    };
    let height = MARGIN + HEADER_H + chunks_h + huge_h + MARGIN;

    out.str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .str("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"")
        .dec(width)
        .str("\" height=\"")
        .dec(height)
        .str("\" viewBox=\"0 0 ")
        .dec(width)
        .str(" ")
        .dec(height)
        .str("\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"11\"")
        .str(" data-chunks=\"")
        .dec(t.chunks)
        .str("\" data-huge=\"")
        .dec(t.huge)
        .str("\">\n<title>rampart heap map</title>\n")
        .str("<style>.run:hover path{stroke:#000;stroke-width:2}</style>\n");
    // A page grid laid over each panel: thin light lines between the squares.
    out.str("<defs><pattern id=\"grid\" width=\"")
        .dec(CELL)
        .str("\" height=\"")
        .dec(CELL)
        .str("\" patternUnits=\"userSpaceOnUse\"><path d=\"M")
        .dec(CELL)
        .str(" 0H0V")
        .dec(CELL)
        .str("\" fill=\"none\" stroke=\"#fff\" stroke-opacity=\"0.55\" stroke-width=\"0.6\"/>")
        .str("</pattern></defs>\n")
        .str("<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n");
    header(&mut out, pages, &t);

    // The chunks, in address order.
    let mut after = None;
    let mut i = 0;
    while let Some(c) = next_chunk(pages, after) {
        after = Some(c.base);
        let x = MARGIN + (i % PANEL_COLS) * (PANEL_W + GAP_X);
        let y = MARGIN + HEADER_H + (i / PANEL_COLS) * (PANEL_H + GAP_Y);
        chunk(&mut out, pages, &c, x, y);
        i += 1;
    }

    if t.huge > 0 {
        huge(&mut out, pages, &t, MARGIN + HEADER_H + chunks_h, width);
    }
    out.str("</svg>\n");
    out.finish().map(|_| t)
}

/// The title, the totals and the legend.
fn header<S: PageSource>(out: &mut Out, pages: &Pages<S>, t: &Totals) {
    let x = MARGIN;
    let mut y = MARGIN + 14;
    let pid = os::pid();
    out.str("<g class=\"header\">")
        .str("<text x=\"")
        .dec(x)
        .str("\" y=\"")
        .dec(y)
        .str("\" font-size=\"16\" font-weight=\"bold\">rampart heap map</text>");
    out.text(x + 172, y)
        .str("pid ")
        .dec(pid as usize)
        .str(" · each square is a 4 KiB page, each panel a 4 MiB chunk (16 rows of 64 pages), ")
        .str("outlines are runs; hover for details</text>\n");
    let pages_total = t.chunks * PAGES_PER_CHUNK;
    y += 22;
    out.text(x, y)
        .dec(t.chunks)
        .str(" chunks: ")
        .size(t.chunks * CHUNK_SIZE)
        .str(" of address space (+ ")
        .dec(t.chunks)
        .str(" guard pages) · huge blocks: ")
        .dec(t.huge)
        .str(", ")
        .size(t.huge_bytes)
        .str(" · committed in chunks: ")
        .size((t.slab + t.large + t.free_dirty) * PAGE_SIZE)
        .str(" · returned to the OS so far: ")
        .size(pages.purged_bytes)
        .str("</text>\n");
    y += 16;
    out.text(x, y)
        .str("slab ")
        .size(t.slab * PAGE_SIZE)
        .str(" (")
        .pct(t.slab, pages_total)
        .str(", ~")
        .size(t.slab_used_bytes)
        .str(" handed out) · large ")
        .size(t.large * PAGE_SIZE)
        .str(" (")
        .pct(t.large, pages_total)
        .str(") · free, committed ")
        .size(t.free_dirty * PAGE_SIZE)
        .str(" (")
        .pct(t.free_dirty, pages_total)
        .str(") · free, decommitted ")
        .size(t.free_clean * PAGE_SIZE)
        .str(" (")
        .pct(t.free_clean, pages_total)
        .str(")</text>\n");

    // Legend: one swatch per state, then the size classes.
    y += 14;
    let items: [(&str, [u8; 3]); 5] = [
        ("large block", LARGE),
        ("free, committed (costs memory)", FREE_DIRTY),
        ("free, returned to the OS", FREE_CLEAN),
        ("guard page (PROT_NONE)", GUARD),
        ("huge block (own mapping)", HUGE),
    ];
    let mut lx = x;
    for (name, colour) in items {
        out.rect_open(lx, y, 12, 12, colour)
            .str(" stroke=\"#333\" stroke-width=\"0.6\"/>");
        out.text(lx + 16, y + 10).str(name).str("</text>");
        lx += 16 + 7 * name.len() + 18;
    }
    out.str("\n");
    y += 24;
    out.text(x, y + 10).str("slab spans by size class:</text>");
    let sx = x + 150;
    // 10 px a class: the 60 classes and the note after them fit the map's least width.
    const CELL: usize = 10;
    for class in 0..NUM_CLASSES {
        let cx = sx + class * CELL;
        out.str("<g>");
        out.rect(cx, y, CELL, 7, slab_colour(class, false)).rect(
            cx,
            y + 7,
            CELL,
            6,
            slab_colour(class, true),
        );
        out.str("<title>class ")
            .dec(class)
            .str(": ")
            .size(class_size(class))
            .str(" blocks</title></g>");
    }
    out.str("\n");
    // 16 B, 128 B, 1 KiB, 4 KiB, 16 KiB, 32 KiB (the last small class), 128 KiB, 1 MiB.
    for class in [0, 7, 19, 27, 35, 39, 47, 59] {
        out.str("<text x=\"")
            .dec(sx + class * CELL + CELL / 2)
            .str("\" y=\"")
            .dec(y + 26)
            .str("\" text-anchor=\"middle\" font-size=\"9\">")
            .size(class_size(class))
            .str("</text>");
    }
    out.text(sx + NUM_CLASSES * CELL + 10, y + 10)
        .str("dark: blocks handed out</text>");
    out.text(sx + NUM_CLASSES * CELL + 10, y + 24)
        .str("pale: free or never carved</text>\n");
    y += 34;
    let _ = y;
    out.str("</g>\n");
}

/// Fills the pixels `[start, start + len)` of a panel's pages read as one line of rows
/// (`ROW_W` pixels each), one rectangle per row touched.
fn fill_linear(out: &mut Out, mut start: usize, len: usize, fill: [u8; 3]) {
    let end = start + len;
    while start < end {
        let row = start / ROW_W;
        let col = start % ROW_W;
        let w = (end - start).min(ROW_W - col);
        out.rect(col, LABEL_H + row * CELL, w, CELL, fill);
        start += w;
    }
}

/// The outline of pages `[first, first + n)` of a panel: a rectangle, or the shape of a
/// text selection when the run spans rows.
fn outline(out: &mut Out, first: usize, n: usize) {
    let (r0, c0) = (first / COLS, first % COLS);
    let last = first + n - 1;
    let (r1, c1) = (last / COLS, last % COLS + 1);
    let px = |c: usize| c * CELL;
    let py = |r: usize| LABEL_H + r * CELL;
    out.str("<path d=\"M");
    if r0 == r1 {
        out.dec(px(c0))
            .str(" ")
            .dec(py(r0))
            .str("H")
            .dec(px(c1))
            .str("V")
            .dec(py(r0 + 1))
            .str("H")
            .dec(px(c0));
    } else {
        out.dec(px(c0))
            .str(" ")
            .dec(py(r0))
            .str("H")
            .dec(px(COLS))
            .str("V")
            .dec(py(r1))
            .str("H")
            .dec(px(c1))
            .str("V")
            .dec(py(r1 + 1))
            .str("H0V")
            .dec(py(r0 + 1))
            .str("H")
            .dec(px(c0));
    }
    out.str("Z\" fill=\"none\" stroke=\"#333\" stroke-width=\"0.6\"/>");
}

/// One chunk's panel at `(x, y)`.
fn chunk<S: PageSource>(out: &mut Out, pages: &Pages<S>, c: &ChunkView, x: usize, y: usize) {
    let mut t = Totals::default();
    pages.for_each_run(c.base, |r| t.add(&r));
    out.str("<g class=\"chunk\" transform=\"translate(")
        .dec(x)
        .str(",")
        .dec(y)
        .str(")\" data-base=\"")
        .hex(c.base)
        .str("\"");
    if c.kept {
        out.str(" data-kept=\"1\"");
    }
    out.str(">\n");
    out.text(0, LABEL_H - 4)
        .str("<tspan font-weight=\"bold\">")
        .hex(c.base)
        .str("</tspan>");
    if c.kept {
        out.str("<tspan dx=\"8\">(kept mapped, wholly free)</tspan>");
    } else {
        out.str("<tspan dx=\"8\" font-size=\"10\">slab ")
            .pct_int(t.slab, PAGES_PER_CHUNK)
            .str(" · large ")
            .pct_int(t.large, PAGES_PER_CHUNK)
            .str(" · free ")
            .pct_int(t.free_dirty + t.free_clean, PAGES_PER_CHUNK)
            .str(" (")
            .pct_int(t.free_dirty, PAGES_PER_CHUNK)
            .str(" committed)</tspan>");
    }
    out.str("</text>\n");

    pages.for_each_run(c.base, |r| {
        out.str("<g class=\"run\" data-state=\"")
            .str(match r.state {
                State::Free | State::Purging => "free",
                State::Slab => "slab",
                State::Large => "large",
            })
            .str("\" data-pages=\"")
            .dec(r.npages)
            .str("\" data-dirty=\"")
            .dec(r.dirty_pages);
        if r.state == State::Slab {
            out.str("\" data-class=\"").dec(r.class as usize);
        }
        out.str("\"><title>");
        let addr = c.base + r.index * PAGE_SIZE;
        out.hex(addr).str(", pages ").dec(r.index);
        if r.npages > 1 {
            out.str("–").dec(r.index + r.npages - 1);
        }
        out.str(" (").size(r.npages * PAGE_SIZE).str("): ");
        let start = r.index * CELL;
        let len = r.npages * CELL;
        match r.state {
            State::Slab => {
                let class = r.class as usize;
                let capacity = if class < NUM_CLASSES {
                    blocks_per_span(class)
                } else {
                    1
                };
                let used = r.used_blocks.min(capacity);
                out.str("slab span of ")
                    .size(r.block_size)
                    .str(" blocks (class ")
                    .dec(class)
                    .str("), ~")
                    .dec(used)
                    .str(" of ")
                    .dec(capacity)
                    .str(" handed out</title>");
                let class = class.min(NUM_CLASSES - 1);
                fill_linear(out, start, len, slab_colour(class, true));
                let dark = (len * used).div_ceil(capacity);
                fill_linear(out, start, dark, slab_colour(class, false));
            }
            State::Large => {
                out.str("large block</title>");
                fill_linear(out, start, len, LARGE);
            }
            State::Free | State::Purging => {
                out.str("free block, ")
                    .dec(r.dirty_pages)
                    .str(" of ")
                    .dec(r.npages)
                    .str(" pages committed</title>");
                // Maximal stretches of committed / decommitted pages.
                let mut p = r.index;
                let end = r.index + r.npages;
                while p < end {
                    let dirty = c.page_dirty(p);
                    let s = p;
                    while p < end && c.page_dirty(p) == dirty {
                        p += 1;
                    }
                    let fill = if dirty { FREE_DIRTY } else { FREE_CLEAN };
                    fill_linear(out, s * CELL, (p - s) * CELL, fill);
                }
            }
        }
        outline(out, r.index, r.npages);
        out.str("</g>\n");
    });
    // The page grid over the squares, then the guard page after the last one.
    out.str("<rect y=\"")
        .dec(LABEL_H)
        .str("\" width=\"")
        .dec(ROW_W)
        .str("\" height=\"")
        .dec(ROWS * CELL)
        .str("\" fill=\"url(#grid)\" pointer-events=\"none\"/>\n");
    out.str("<g class=\"guard\">")
        .rect(ROW_W + 2, LABEL_H + (ROWS - 1) * CELL, CELL, CELL, GUARD)
        .str("<title>guard page after the chunk (PROT_NONE), ")
        .hex(c.base + CHUNK_SIZE)
        .str(", ")
        .size(GUARD_SIZE)
        .str("</title></g>\n</g>\n");
}

/// The huge blocks, as bars proportional to the largest, from `y` down.
fn huge<S: PageSource>(out: &mut Out, pages: &Pages<S>, t: &Totals, y: usize, width: usize) {
    let mut largest = 0;
    pages.for_each_huge(|_, len| largest = largest.max(len));
    out.text(MARGIN, y + 14)
        .str("<tspan font-weight=\"bold\">huge blocks</tspan>: ")
        .dec(t.huge)
        .str(", ")
        .size(t.huge_bytes)
        .str(" (each its own mapping with a guard page after it; bars to scale, the longest ")
        .size(largest)
        .str(")</text>\n");
    let label_w = 250;
    let bar_max = width - 2 * MARGIN - label_w - CELL - 4;
    let mut i = 0;
    pages.for_each_huge(|base, len| {
        let yy = y + 24 + i * HUGE_H;
        i += 1;
        if i > HUGE_MAX {
            return;
        }
        let w = ((len as u128 * bar_max as u128) / largest.max(1) as u128).max(1) as usize;
        out.str("<g class=\"huge\" data-base=\"")
            .hex(base)
            .str("\" data-bytes=\"")
            .dec(len)
            .str("\"><title>huge block ")
            .hex(base)
            .str(", ")
            .size(len)
            .str("</title>");
        out.text(MARGIN, yy + 10)
            .hex(base)
            .str(" · ")
            .size(len)
            .str("</text>");
        out.rect_open(MARGIN + label_w, yy, w, HUGE_H - 4, HUGE)
            .str(" stroke=\"#333\" stroke-width=\"0.6\"/>");
        out.rect(
            MARGIN + label_w + w + 2,
            yy + HUGE_H - 4 - CELL,
            CELL,
            CELL,
            GUARD,
        );
        out.str("</g>\n");
    });
    if t.huge > HUGE_MAX {
        out.text(MARGIN, y + 24 + HUGE_MAX * HUGE_H + 10)
            .str("… and ")
            .dec(t.huge - HUGE_MAX)
            .str(" more</text>\n");
    }
}

/// Writes the heap map to the open file `fd`, and returns the page layer's walk taken under
/// the same lock (so both describe one heap), with the map's totals or the `errno` of a
/// failed write. Allocates nothing.
pub fn write_fd_with_usage(fd: c_int) -> (crate::pages::PageUsage, Result<Totals, c_int>) {
    let pages = PAGES.lock();
    (pages.usage(), write_map(&*pages, fd))
}

/// Writes the heap map of the process's page layer to `path` (created or truncated, mode
/// 0644): the file is opened first, then the page lock is held while the map is written.
/// Returns the errno of the first failure.
pub fn write_file(path: &CStr) -> Result<Totals, c_int> {
    let fd = os::create_file(path)?;
    let result = {
        let pages = PAGES.lock();
        write_map(&pages, fd)
    };
    let closed = os::close(fd);
    match result {
        Ok(_) => closed.and(result),
        r => r,
    }
}

/// `path` with each `%p` replaced by `pid` (and `%%` by `%`), NUL-terminated in `out`;
/// `None` if it does not fit.
pub fn expand_pid<'a>(
    path: &[u8],
    pid: u32,
    out: &'a mut [u8; HEAPMAP_PATH_MAX],
) -> Option<&'a CStr> {
    let mut n = 0;
    let mut push = |out: &mut [u8; HEAPMAP_PATH_MAX], b: u8| -> Option<()> {
        if n + 1 >= out.len() {
            return None;
        }
        out[n] = b;
        n += 1;
        Some(())
    };
    let mut i = 0;
    while i < path.len() {
        match (path[i], path.get(i + 1)) {
            (b'%', Some(b'p')) => {
                let mut l = Line::new();
                l.dec(pid as u64);
                for &b in l.as_bytes() {
                    push(out, b)?;
                }
                i += 2;
            }
            (b'%', Some(b'%')) => {
                push(out, b'%')?;
                i += 2;
            }
            (b, _) => {
                push(out, b)?;
                i += 1;
            }
        }
    }
    out[n] = 0;
    CStr::from_bytes_with_nul(&out[..=n]).ok()
}

/// At exit: writes the map to the `RAMPART_HEAPMAP` path (`%p` becomes the process id, so
/// that child processes that inherit the variable do not overwrite each other's maps), and
/// reports a failure on stderr. Does nothing when the option is off.
pub fn write_configured() {
    let mut raw = [0u8; HEAPMAP_PATH_MAX];
    let Some(path) = config::heapmap_path(&mut raw) else {
        return;
    };
    let pid = os::pid();
    let mut buf = [0u8; HEAPMAP_PATH_MAX];
    let result = match expand_pid(path.to_bytes(), pid, &mut buf) {
        Some(p) => write_file(p),
        None => Err(os::ENAMETOOLONG),
    };
    if let Err(errno) = result {
        let mut l = Line::new();
        l.str("rampart: warning: RAMPART_HEAPMAP: cannot write ")
            .str(core::str::from_utf8(path.to_bytes()).unwrap_or("(path not UTF-8)"))
            .str(" (errno ")
            .dec(errno as u64)
            .str(")");
        l.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::tests::{fake_map, FakeSource};
    use std::os::fd::AsRawFd;

    #[test]
    fn numbers_and_sizes() {
        let path = std::env::temp_dir().join(format!("rampart-out-{}.txt", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let mut o = Out::new(f.as_raw_fd());
        o.size(0)
            .str(" ")
            .size(1023)
            .str(" ")
            .size(1536)
            .str(" ")
            .size(4 << 20)
            .str(" ")
            .size(3 << 30)
            .str(" ")
            .pct(1, 3)
            .str(" ")
            .pct(0, 0)
            .str(" ")
            .colour([0, 0x80, 0xff])
            .str(" ");
        // Longer than the buffer: flushed in pieces.
        for _ in 0..5000 {
            o.str("abcdefgh");
        }
        assert_eq!(o.finish(), Ok(o.written));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let head = "0 B 1023 B 1.5 KiB 4.0 MiB 3.0 GiB 33.3% 0.0% #0080ff ";
        assert!(text.starts_with(head), "{}", &text[..80]);
        assert_eq!(text.len(), head.len() + 5000 * 8);
    }

    #[test]
    fn pid_expansion() {
        let mut buf = [0u8; HEAPMAP_PATH_MAX];
        assert_eq!(
            expand_pid(b"/tmp/heap-%p.svg", 42, &mut buf)
                .unwrap()
                .to_bytes(),
            b"/tmp/heap-42.svg"
        );
        assert_eq!(
            expand_pid(b"100%%-%q%", 7, &mut buf).unwrap().to_bytes(),
            b"100%-%q%"
        );
        let long = [b'a'; HEAPMAP_PATH_MAX - 2];
        assert!(expand_pid(&long, 7, &mut buf).is_some());
        let mut longer = long.to_vec();
        longer.extend_from_slice(b"%p");
        assert!(expand_pid(&longer, 7, &mut buf).is_some(), "4095 bytes fit");
        assert!(expand_pid(&longer, 42, &mut buf).is_none());
    }

    /// Counts `needle` in `hay`.
    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    #[test]
    fn map_of_a_fake_page_layer() {
        let mut p = Pages::new(FakeSource::new(4), fake_map());
        // Chunk 1: slabs of two classes, a large run, free blocks (a freed run is dirty).
        let large = p.alloc_run(100, 0, State::Large).unwrap();
        let gone = p.alloc_run(40, 0, State::Large).unwrap();
        let mut slabs = Vec::new();
        for class in [3usize, 20] {
            let order = crate::size_class::span_order(class);
            let s = p.alloc_run(1 << order, order, State::Slab).unwrap();
            // SAFETY: a fresh run of the slab's size.
            unsafe { crate::slab::init(s.as_ptr(), class, 1) };
            // SAFETY: live span; half its blocks handed out.
            unsafe { (*s.as_ptr()).used = (blocks_per_span(class) / 2) as i32 };
            slabs.push(s);
        }
        // SAFETY: live run.
        unsafe { p.free_run(gone) };
        // Chunk 2: a whole-chunk large run.
        let whole = p.alloc_run(PAGES_PER_CHUNK, 0, State::Large).unwrap();
        let usage = p.usage();
        assert_eq!(usage.chunks, 2);

        let path = std::env::temp_dir().join(format!("rampart-map-{}.svg", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let t = write_map(&p, f.as_raw_fd()).unwrap();
        drop(f);
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        assert_eq!(t.chunks, 2);
        assert_eq!(t.slab, usage.slab);
        assert_eq!(t.large, usage.large);
        assert_eq!(t.free_dirty + t.free_clean, usage.free);
        assert_eq!(t.free_dirty, 40, "the freed run's pages are committed");
        assert!(svg.starts_with("<?xml") && svg.ends_with("</svg>\n"));
        assert_eq!(count(&svg, "<g class=\"chunk\""), 2);
        assert_eq!(count(&svg, "<g class=\"guard\""), 2);
        assert!(svg.contains("data-chunks=\"2\""));
        // Per chunk, the runs' pages add up to a chunk.
        for part in svg.split("<g class=\"chunk\"").skip(1) {
            let pages: usize = part
                .split("data-pages=\"")
                .skip(1)
                .map(|s| s[..s.find('"').unwrap()].parse::<usize>().unwrap())
                .sum();
            assert_eq!(pages, PAGES_PER_CHUNK);
        }
        assert_eq!(count(&svg, "data-state=\"slab\""), 2);
        assert!(svg.contains("data-class=\"3\"") && svg.contains("data-class=\"20\""));
        assert!(svg.contains("slab span of 64 B blocks (class 3)"));
        assert!(svg.contains("data-state=\"large\" data-pages=\"1024\""));
        // Every element opened is closed (the full check parses it: tests/heapmap.rs).
        assert_eq!(count(&svg, "<g"), count(&svg, "</g>"));
        assert_eq!(count(&svg, "<text"), count(&svg, "</text>"));
        assert_eq!(count(&svg, "<title>"), count(&svg, "</title>"));

        // SAFETY: live runs.
        unsafe {
            for s in slabs {
                (*s.as_ptr()).used = 0;
                p.free_run(s);
            }
            p.free_run(large);
            p.free_run(whole);
        }
        p.validate();
    }
}
