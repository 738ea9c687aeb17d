//! `rampart --profile heap|leaks ... PROGRAM`: runs the program as a child (rather than
//! replacing the launcher with it, as the plain launcher does), with rampart's sampled heap
//! profiling on, and when it has exited renders the raw profile each of its processes wrote:
//! the top stacks on stderr, and folded stacks, a flame graph and a pprof profile beside each
//! raw file. The launcher then exits as the program did.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::SystemTime;

use crate::profile::{self, DEFAULT_TOP};
use crate::raw::{self, What};
use crate::report::{self, bytes_both, Report};
use crate::symbolize::Symbolizer;
use crate::{pprof, CommandError};

/// What the profile is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Where the memory goes: live at exit, at the peak, and allocated in all.
    Heap,
    /// What is never freed: the live records of the profile written at exit.
    Leaks,
}

impl Mode {
    /// The `--profile` value naming it.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "heap" => Some(Mode::Heap),
            "leaks" => Some(Mode::Leaks),
            _ => None,
        }
    }

    /// The `RAMPART_PROFILE` value: `heap` for both, since the launcher prints the leaks
    /// itself, symbolized (`leaks` would have the library print its own report too).
    fn env(self) -> &'static str {
        "heap"
    }

    /// The view the folded stacks and the flame graph show: the peak for a heap profile
    /// (what the memory at its high-water mark was made of, which is what sizing a process
    /// needs; live-at-exit is often near empty), the blocks live at exit for leaks.
    pub fn graph_view(self) -> What {
        match self {
            Mode::Heap => What::Peak,
            Mode::Leaks => What::Live,
        }
    }
}

/// The profiling flags.
pub struct Options {
    /// Heap or leaks.
    pub mode: Mode,
    /// Where the raw profiles and their renderings go (absolute).
    pub dir: PathBuf,
    /// `RAMPART_PROFILE_RATE`, checked by the library.
    pub rate: Option<String>,
}

/// Runs `command` (the program, its arguments and environment set up by the caller) with
/// profiling on, renders its profiles, and returns the status the launcher exits with.
pub fn run(mut command: Command, program: &OsString, opts: &Options) -> i32 {
    if let Err(e) = std::fs::create_dir_all(&opts.dir) {
        say(&format!(
            "rampart: cannot create {}: {e}\n",
            opts.dir.display()
        ));
        return 2;
    }
    let before = profiles_in(&opts.dir);
    command
        .env("RAMPART_PROFILE", opts.mode.env())
        .env("RAMPART_PROFILE_OUT", opts.dir.join("rampart-%p.prof"));
    if let Some(rate) = &opts.rate {
        command.env("RAMPART_PROFILE_RATE", rate);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            say(&format!(
                "rampart: cannot run {}: {e}\n",
                program.to_string_lossy()
            ));
            return 127;
        }
    };
    // Ctrl-C and Ctrl-\ at a terminal go to the whole foreground process group: the program
    // gets them and decides; the launcher must outlive it to render its profile. Set only
    // now that the child has been started, so the child keeps the default actions (an
    // ignored signal would stay ignored across its exec).
    ignore_terminal_signals();
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            say(&format!(
                "rampart: cannot wait for {}: {e}\n",
                program.to_string_lossy()
            ));
            return 2;
        }
    };
    render_all(&opts.dir, &before, child.id(), opts.mode);
    exit_code(status, program)
}

/// The launcher's exit status for the program's: its exit code, or 128 + the signal that
/// killed it (as a shell reports it), said on stderr.
fn exit_code(status: ExitStatus, program: &OsString) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    let sig = status.signal().unwrap_or(0);
    say(&format!(
        "rampart: {} was killed by signal {sig} ({}){}\n",
        program.to_string_lossy(),
        signal_name(sig),
        if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        }
    ));
    128 + sig
}

/// Writes to stderr, ignoring a failure: the launcher's reports are not worth dying for
/// (stderr piped to `head`, which has exited) while other profiles remain to be written and
/// the program's status to be passed on.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// The name of Linux signal `sig` on x86-64 (`SIGSEGV`).
fn signal_name(sig: i32) -> &'static str {
    const NAMES: [&str; 32] = [
        "?",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("a real-time signal")
}

/// Sets SIGINT and SIGQUIT to be ignored (see [`run`] for why).
fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: `signal` with SIG_IGN installs no handler (no code of ours runs on the
        // signal), and this process has no other thread that could be changing dispositions
        // at the same time.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

/// The name of a raw profile without its `.prof`, to which the renderings' extensions are
/// added: `rampart-PID.prof` (written at exit) -> `rampart-PID`, and `rampart-PID.prof.N`
/// (the Nth written on `RAMPART_PROFILE_SIGNAL`) -> `rampart-PID.N`. `None` for any other
/// file.
fn output_base(name: &str) -> Option<String> {
    let rest = name.strip_prefix("rampart-")?;
    if let Some(stem) = rest.strip_suffix(".prof") {
        return Some(format!("rampart-{stem}"));
    }
    let (stem, n) = rest.rsplit_once(".prof.")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| format!("rampart-{stem}.{n}"))
}

/// The raw profiles in `dir` (`rampart-*.prof`, and `rampart-*.prof.N` written on a signal)
/// with their modification time and size.
fn profiles_in(dir: &Path) -> HashMap<PathBuf, (Option<SystemTime>, u64)> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if output_base(name).is_none() {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                found.insert(entry.path(), (meta.modified().ok(), meta.len()));
            }
        }
    }
    found
}

/// Renders every profile written during the run (new or changed since `before`): the
/// program's own first (`rampart-<pid>.prof`), then the others by name (its children's, and
/// those written on a signal).
fn render_all(
    dir: &Path,
    before: &HashMap<PathBuf, (Option<SystemTime>, u64)>,
    pid: u32,
    mode: Mode,
) {
    let mut written: Vec<PathBuf> = profiles_in(dir)
        .into_iter()
        .filter(|(path, stamp)| before.get(path) != Some(stamp))
        .map(|(path, _)| path)
        .collect();
    let own = dir.join(format!("rampart-{pid}.prof"));
    written.sort_by_key(|p| (*p != own, p.clone()));
    if written.is_empty() {
        say(&format!(
            "rampart: no profile (rampart-*.prof) was written to {} (is this librampart.so \
             one with heap profiling?)\n",
            dir.display()
        ));
        return;
    }
    let mut symbolizer = Symbolizer::new();
    // Processes that took no sample (a shell wrapper, a `readlink` it ran) are only counted:
    // a program started through a script would otherwise bury its own profile in them.
    let mut empty = 0;
    for path in written {
        if path != own && has_no_samples(&path) {
            empty += 1;
            continue;
        }
        if let Err(e) = render_one(&path, mode, &mut symbolizer) {
            say(&format!("rampart: {}\n", e.message()));
        }
    }
    if empty > 0 {
        say(&format!(
            "\nrampart: {empty} more profile{} in {} took no sample (processes that allocated \
             less than the sampling rate)\n",
            if empty == 1 { "" } else { "s" },
            dir.display()
        ));
    }
}

/// Whether the raw profile at `path` is complete and took no sample.
fn has_no_samples(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| raw::parse(&text).ok())
        .is_some_and(|raw| raw.summary_value("samples") == Some(0))
}

/// Prints one profile's summary and top stacks to stderr and writes its renderings beside
/// it: `<name>.folded`, `<name>.svg` (the view of [`Mode::graph_view`]) and `<name>.pb.gz`.
fn render_one(path: &Path, mode: Mode, symbolizer: &mut Symbolizer) -> Result<(), CommandError> {
    let report = profile::load(path, symbolizer)?;
    let mut text = format!("\nrampart: {}\n", path.display());
    text.push_str(&report::header(&report));
    match mode {
        Mode::Heap => {
            text.push_str(&report::top(
                &report,
                What::Live,
                DEFAULT_TOP,
                "by bytes live at exit",
            ));
            text.push_str(&report::top(
                &report,
                What::Peak,
                DEFAULT_TOP,
                "by bytes live at the peak",
            ));
        }
        Mode::Leaks => text.push_str(&leaks(&report)),
    }
    let view = mode.graph_view();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let base = output_base(name).unwrap_or_else(|| name.to_owned());
    let out = |ext: &str| path.with_file_name(format!("{base}{ext}"));
    let (folded, svg, pb) = (out(".folded"), out(".svg"), out(".pb.gz"));
    let lines = report::folded(&report, view);
    profile::write_output(&folded, report::folded_text(&lines).as_bytes())?;
    profile::write_output(&svg, &profile::svg_bytes(&report, view)?)?;
    let bytes = pprof::gzipped(&report, symbolizer)
        .map_err(|e| CommandError::Failed(format!("cannot compress the pprof profile: {e}")))?;
    profile::write_output(&pb, &bytes)?;
    text.push_str(&format!(
        "rampart: wrote {} and {} ({}), {} (pprof)\n",
        folded.display(),
        svg.display(),
        view.describe(),
        pb.display()
    ));
    say(&text);
    Ok(())
}

/// The leaks section: what was never freed, in all and by stack. The blocks the dynamic
/// loader allocated (thread-local storage of the threads whose stacks glibc keeps, the
/// records of loaded objects) live as long as the process by design: they are counted apart,
/// as the library's own leak report does.
fn leaks(report: &Report) -> String {
    let in_loader = |stack: &report::Stack| {
        stack
            .locations
            .first()
            .and_then(|l| l.map)
            .and_then(|m| report.raw.maps.get(m))
            .is_some_and(|m| m.path.contains("/ld-linux"))
    };
    let (loader, program): (Vec<report::Stack>, Vec<report::Stack>) =
        report.stacks.iter().cloned().partition(|s| in_loader(s));
    let report = &Report {
        raw: report.raw.clone(),
        stacks: program,
    };
    let held = loader
        .iter()
        .fold((0, 0), |(b, o), s| (b + s.live.bytes, o + s.live.objects));
    let loader_note = if held.1 > 0 {
        format!(
            "; not counted: {} in {} objects held by the dynamic loader",
            bytes_both(held.0),
            held.1
        )
    } else {
        String::new()
    };
    let sum = report.sum(What::Live);
    let exact = report.raw.rate == Some(1);
    let note = if exact {
        ""
    } else {
        " (estimated from samples; --profile-rate 1 counts every allocation)"
    };
    if sum.bytes == 0 && sum.objects == 0 {
        let when = if report.raw.reason.as_deref() == Some("exit") {
            "at exit"
        } else {
            "when written"
        };
        return format!("leaks: none: no sampled block was live {when}{note}{loader_note}\n");
    }
    let mut s = format!(
        "leaks: {} in {} objects never freed{note}{loader_note}\n",
        bytes_both(sum.bytes),
        sum.objects
    );
    s.push_str(&report::top(
        report,
        What::Live,
        DEFAULT_TOP,
        "of leaked bytes",
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!(
            output_base("rampart-123.prof").as_deref(),
            Some("rampart-123")
        );
        assert_eq!(
            output_base("rampart-123.prof.2").as_deref(),
            Some("rampart-123.2")
        );
        assert_eq!(output_base("rampart-123.folded"), None);
        assert_eq!(output_base("rampart-123.prof.x"), None);
        assert_eq!(output_base("other-123.prof"), None);
    }
}
