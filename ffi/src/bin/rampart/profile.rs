//! `rampart profile FILE ...`: reads a raw heap profile, symbolizes it, and renders it as a
//! table, folded stacks, a flame graph or a pprof profile. The launcher's `--profile` mode
//! uses the same pieces ([`load`], [`write_output`]) on the profiles its program writes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::raw::{self, What};
use crate::report::{self, Report};
use crate::symbolize::Symbolizer;
use crate::{pprof, CommandError};

/// The subcommand's help.
pub const USAGE: &str = "usage: rampart profile FILE [--what live|peak|total] [--top [N]]
                       [--folded OUT] [--svg OUT] [--pprof OUT]

Reads the raw heap profile FILE that rampart wrote (RAMPART_PROFILE, or `rampart --profile`),
symbolizes its stacks from the program's and libraries' debug information (or their symbol
tables), and renders the chosen view:

  --what live   bytes live when the profile was written (at exit: never freed, the leaks);
                the default
  --what peak   bytes live at the high-water mark
  --what total  bytes allocated over the whole run
  --top [N]     print the N heaviest stacks (default 10) with their bytes, objects and share;
                the default when no output is asked for
  --folded OUT  write folded stacks (`outer;...;inner bytes`, for flamegraph.pl or inferno)
  --svg OUT     write a flame graph
  --pprof OUT   write a gzipped pprof profile (`go tool pprof OUT`): alloc_* from the total
                view, inuse_* from the live view, whatever --what says

OUT may be - for standard output.";

/// The default number of stacks in a table.
pub const DEFAULT_TOP: usize = 10;

/// Runs `rampart profile` with the arguments after the word `profile`.
pub fn main(args: Vec<OsString>) -> Result<(), CommandError> {
    let mut file: Option<PathBuf> = None;
    let mut what = What::Live;
    let mut top: Option<usize> = None;
    let mut folded: Option<PathBuf> = None;
    let mut svg: Option<PathBuf> = None;
    let mut pprof_out: Option<PathBuf> = None;
    let usage = |msg: String| CommandError::Usage(msg, USAGE);
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        // The value of a flag: the next argument.
        let value = |i: &mut usize, name: &str| match args.get(*i) {
            Some(v) => {
                *i += 1;
                Ok(PathBuf::from(v))
            }
            None => Err(usage(format!("{name} needs a value"))),
        };
        match arg.to_str() {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            Some("--what") => {
                let v = value(&mut i, "--what")?;
                what = v.to_str().and_then(What::parse).ok_or_else(|| {
                    usage(format!(
                        "--what must be live, peak or total, not {}",
                        v.display()
                    ))
                })?;
            }
            Some("--top") => {
                // The count is optional: `--top` alone is the default ten.
                let n = args
                    .get(i)
                    .and_then(|a| a.to_str())
                    .and_then(|a| a.parse::<usize>().ok());
                if n.is_some() {
                    i += 1;
                }
                top = Some(n.unwrap_or(DEFAULT_TOP));
            }
            Some("--folded") => folded = Some(value(&mut i, "--folded")?),
            Some("--svg") => svg = Some(value(&mut i, "--svg")?),
            Some("--pprof") => pprof_out = Some(value(&mut i, "--pprof")?),
            Some(f) if f.starts_with("--") => return Err(usage(format!("unknown flag {f}"))),
            _ => set_file(&mut file, PathBuf::from(arg), usage)?,
        }
    }
    let Some(file) = file else {
        return Err(usage("no profile file given".into()));
    };
    if top.is_none() && folded.is_none() && svg.is_none() && pprof_out.is_none() {
        top = Some(DEFAULT_TOP);
    }
    let mut symbolizer = Symbolizer::new();
    let report = load(&file, &mut symbolizer)?;
    if let Some(n) = top {
        let mut text = report::header(&report);
        text.push_str(&report::top(
            &report,
            what,
            n,
            &format!("by {}", what.describe()),
        ));
        write_output(Path::new("-"), text.as_bytes())?;
    }
    if let Some(out) = folded {
        let text = report::folded_text(&report::folded(&report, what));
        write_output(&out, text.as_bytes())?;
    }
    if let Some(out) = svg {
        write_output(&out, &svg_bytes(&report, what)?)?;
    }
    if let Some(out) = pprof_out {
        let bytes = pprof::gzipped(&report, &mut symbolizer)
            .map_err(|e| CommandError::Failed(format!("cannot compress the pprof profile: {e}")))?;
        write_output(&out, &bytes)?;
    }
    Ok(())
}

/// Takes `path` as the profile to read; a second one is a usage error.
fn set_file(
    file: &mut Option<PathBuf>,
    path: PathBuf,
    usage: impl Fn(String) -> CommandError,
) -> Result<(), CommandError> {
    if let Some(first) = file {
        return Err(usage(format!(
            "one profile at a time ({} and {})",
            first.display(),
            path.display()
        )));
    }
    *file = Some(path);
    Ok(())
}

/// Reads, parses and symbolizes a raw profile; warns (and goes on) about one cut short.
pub fn load(path: &Path, symbolizer: &mut Symbolizer) -> Result<Report, CommandError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CommandError::Failed(format!("cannot read {}: {e}", path.display())))?;
    // The format is ASCII; paths in it are the kernel's bytes, which are shown lossily.
    let text = String::from_utf8_lossy(&bytes);
    let raw =
        raw::parse(&text).map_err(|e| CommandError::Failed(format!("{}: {e}", path.display())))?;
    if !raw.complete {
        use std::io::Write;
        // Ignoring a failure to say it (stderr closed): the report itself matters more.
        let _ = writeln!(
            std::io::stderr(),
            "rampart: warning: {} has no end line (its process stopped while writing it?); \
             reading what is there",
            path.display()
        );
    }
    Ok(Report::build(raw, symbolizer))
}

/// The flame graph of one view.
pub fn svg_bytes(report: &Report, what: What) -> Result<Vec<u8>, CommandError> {
    let mut out = Vec::new();
    report::svg(report, what, &mut out)
        .map_err(|e| CommandError::Failed(format!("cannot draw the flame graph: {e}")))?;
    Ok(out)
}

/// Writes an output file, or standard output for `-`.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CommandError> {
    use std::io::Write;
    let result = if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        match out.write_all(bytes).and_then(|()| out.flush()) {
            // A reader that has seen enough (`| head`) is no error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    } else {
        std::fs::write(path, bytes)
    };
    result.map_err(|e| CommandError::Failed(format!("cannot write {}: {e}", path.display())))
}
