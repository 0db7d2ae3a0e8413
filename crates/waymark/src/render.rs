//! The diff for people: aligned columns that fit 80 columns, colour as an aid only (every
//! meaning is also in the text: `[U]`, `[D]`, `[A]`, `[R]`, `[O]`, `[B]`, `*`).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use waymark_diff::{Change, DiffReport, Direction, Presence, RootCause};

/// Rendering options.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Use ANSI colour.
    pub color: bool,
    /// List every rebuild and root cause instead of the first ones.
    pub all: bool,
}

/// Lines listed per section before "… and N more" (`--all` lists all).
const LIMIT: usize = 25;
const NAME_WIDTH: usize = 22;

fn paint(color: bool, style: Style, text: &str) -> String {
    if color {
        format!("{style}{text}{style:#}")
    } else {
        text.to_owned()
    }
}

/// Formats a byte count with a binary unit (`1.5 KiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn signed_size(delta: i64) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    format!("{sign}{}", human_size(delta.unsigned_abs()))
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(width.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

fn row(
    out: &mut String,
    opts: Options,
    tag: (char, Style),
    selected: bool,
    name: &str,
    rest: &str,
) {
    let mark = if selected { '*' } else { ' ' };
    let tag_text = format!("[{}{mark}]", tag.0);
    let _ = writeln!(
        out,
        "{} {:<NAME_WIDTH$} {}",
        paint(opts.color, tag.1, &tag_text),
        clip(name, NAME_WIDTH),
        rest
    );
}

/// A section heading after a blank line.
fn heading(out: &mut String, opts: Options, style: Style, text: &str) {
    let _ = writeln!(out, "\n{}", paint(opts.color, style, text));
}

fn green() -> Style {
    Style::new().fg_color(Some(AnsiColor::Green.into()))
}
fn red() -> Style {
    Style::new().fg_color(Some(AnsiColor::Red.into()))
}
fn yellow() -> Style {
    Style::new().fg_color(Some(AnsiColor::Yellow.into()))
}
fn cyan() -> Style {
    Style::new().fg_color(Some(AnsiColor::Cyan.into()))
}
fn bold() -> Style {
    Style::new().bold()
}

/// One change in words, at most `width` characters.
pub fn describe_change(change: &Change, width: usize) -> String {
    let quote = |v: &Option<String>| {
        v.as_ref()
            .map_or("(unset)".to_owned(), |v| format!("{v:?}"))
    };
    let text = match change {
        Change::Version { before, after } => format!("version {before} → {after}"),
        Change::Env {
            name,
            before,
            after,
        } => {
            format!("env {name}: {} → {}", quote(before), quote(after))
        }
        Change::Builder { after, .. } => format!("builder → {after}"),
        Change::Args { before, after } => {
            let added: Vec<&String> = after.iter().filter(|a| !before.contains(a)).collect();
            let removed: Vec<&String> = before.iter().filter(|b| !after.contains(b)).collect();
            let mut s = "builder arguments".to_owned();
            if !added.is_empty() {
                let _ = write!(s, " +{added:?}");
            }
            if !removed.is_empty() {
                let _ = write!(s, " -{removed:?}");
            }
            s
        }
        Change::Source { name, change } => format!("source {name} {}", presence(*change)),
        Change::Input { name, change } => format!("input {name} {}", presence(*change)),
        Change::Outputs { before, after } => {
            format!("outputs {} → {}", before.join(","), after.join(","))
        }
        Change::System { before, after } => format!("system {before} → {after}"),
    };
    clip(&text, width)
}

fn presence(p: Presence) -> &'static str {
    match p {
        Presence::Added => "added",
        Presence::Removed => "removed",
        Presence::Changed => "changed",
    }
}

/// The one-line label of a root cause: name and version move.
pub fn cause_label(cause: &RootCause) -> String {
    let version = |drv: &str| waymark_diff::parse_drv_name(drv).1.to_owned();
    let (b, a) = (version(&cause.before), version(&cause.after));
    if b == a {
        if b.is_empty() {
            cause.name.clone()
        } else {
            format!("{} {b}", cause.name)
        }
    } else {
        format!("{} {b} → {a}", cause.name)
    }
}

/// Renders the report as text.
pub fn render(report: &DiffReport, opts: Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        paint(opts.color, bold(), "old"),
        report.old.path
    );
    let _ = writeln!(
        out,
        "{} {}",
        paint(opts.color, bold(), "new"),
        report.new.path
    );
    let versions = report.changed.len()
        + report.added.len()
        + report.removed.len()
        + report.outputs_changed.len();
    if versions > 0 {
        heading(
            &mut out,
            opts,
            bold(),
            "Package versions (* = in the top-level selection)",
        );
    }
    for c in &report.changed {
        let tag = match c.direction {
            Direction::Upgrade => ('U', green()),
            Direction::Downgrade => ('D', yellow()),
            Direction::Changed => ('C', yellow()),
        };
        let mut rest = format!("{} → {}", c.before.join(", "), c.after.join(", "));
        if c.direction == Direction::Downgrade {
            rest.push_str("  (downgrade)");
        }
        let rest = format!(
            "{:<38} {:>12}",
            clip(&rest, 38),
            signed_size(c.nar_size_delta)
        );
        row(&mut out, opts, tag, c.selected, &c.name, &rest);
    }
    for (list, tag, sign) in [
        (&report.added, ('A', green()), 1),
        (&report.removed, ('R', red()), -1),
    ] {
        for p in list {
            let delta = sign * p.nar_size as i64;
            let rest = format!(
                "{:<38} {:>12}",
                clip(&p.versions.join(", "), 38),
                signed_size(delta)
            );
            row(&mut out, opts, tag, p.selected, &p.name, &rest);
        }
    }
    for o in &report.outputs_changed {
        let rest = format!(
            "{}  outputs {} → {}",
            o.version,
            o.before.join(", "),
            o.after.join(", ")
        );
        row(
            &mut out,
            opts,
            ('O', cyan()),
            o.selected,
            &o.name,
            &clip(&rest, 51),
        );
    }
    if !report.rebuilt.is_empty() {
        heading(
            &mut out,
            opts,
            bold(),
            &format!(
                "Rebuilt without a version change ({})",
                report.rebuilt.len()
            ),
        );
        let shown = if opts.all {
            report.rebuilt.len()
        } else {
            LIMIT
        };
        for r in report.rebuilt.iter().take(shown) {
            let why: Vec<String> = r
                .causes
                .iter()
                .map(|&c| report.root_causes[c].name.clone())
                .collect();
            let why = if why.is_empty() && report.missing_derivations.is_empty() {
                String::new() // --no-causes: nothing was looked for
            } else if why.is_empty() {
                "cause unknown (derivation missing)".to_owned()
            } else {
                format!("← {}", why.join(", "))
            };
            let rest = format!("{:<14} {}", clip(&r.version, 14), clip(&why, 36));
            row(&mut out, opts, ('B', cyan()), r.selected, &r.name, &rest);
        }
        if report.rebuilt.len() > shown {
            let _ = writeln!(
                out,
                "      … and {} more (--all lists them)",
                report.rebuilt.len() - shown
            );
        }
    }
    if !report.root_causes.is_empty() {
        heading(
            &mut out,
            opts,
            bold(),
            &format!(
                "Root causes: {} change{} explain{} the {} rebuild{}",
                report.root_causes.len(),
                if report.root_causes.len() == 1 {
                    ""
                } else {
                    "s"
                },
                if report.root_causes.len() == 1 {
                    "s"
                } else {
                    ""
                },
                report.rebuilt.len(),
                if report.rebuilt.len() == 1 { "" } else { "s" },
            ),
        );
        let shown = if opts.all {
            report.root_causes.len()
        } else {
            LIMIT
        };
        for cause in report.root_causes.iter().take(shown) {
            let caused = format!("caused {}", cause.caused);
            let _ = writeln!(
                out,
                "  {:<44} {:>12}",
                clip(&cause_label(cause), 44),
                paint(opts.color, bold(), &caused)
            );
            let changes: Vec<&Change> = cause
                .changes
                .iter()
                .filter(|c| !matches!(c, Change::Version { .. }))
                .collect();
            let listed = if opts.all { changes.len() } else { 3 };
            for c in changes.iter().take(listed) {
                let _ = writeln!(out, "      {}", describe_change(c, 72));
            }
            if changes.len() > listed {
                let _ = writeln!(out, "      … and {} more changes", changes.len() - listed);
            }
        }
        if report.root_causes.len() > shown {
            let _ = writeln!(
                out,
                "  … and {} more (--all lists them)",
                report.root_causes.len() - shown
            );
        }
    }
    if !report.missing_derivations.is_empty() {
        heading(
            &mut out,
            opts,
            yellow(),
            &format!(
                "Derivations unavailable ({}): their rebuilds are shown by version only",
                report.missing_derivations.len()
            ),
        );
        for m in report
            .missing_derivations
            .iter()
            .take(if opts.all { usize::MAX } else { 10 })
        {
            let side = match m.side {
                waymark_diff::Side::Old => "old",
                waymark_diff::Side::New => "new",
            };
            let _ = writeln!(
                out,
                "  {:<NAME_WIDTH$} {side}: {}",
                clip(&m.name, NAME_WIDTH),
                clip(&m.reason, 48)
            );
        }
    }
    let size_delta = report.new.nar_size as i64 - report.old.nar_size as i64;
    let _ = writeln!(
        out,
        "\nClosure: {} → {} paths ({:+}), {} → {} ({})",
        report.old.paths,
        report.new.paths,
        report.new.paths as i64 - report.old.paths as i64,
        human_size(report.old.nar_size),
        human_size(report.new.nar_size),
        signed_size(size_delta)
    );
    if !report.has_differences() {
        let _ = writeln!(out, "No differences.");
    }
    out
}
