//! What a deploy shows: its events as JSON Lines, or a line per gate and a live build
//! line per host for people; and the questions it asks at the terminal.

// A part of the deploy command: it shares its imports.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Prints events: JSON Lines on stdout, or one line per gate on stderr, with a live
/// line per host while its closure builds when stderr is a terminal.
pub(super) struct Printer {
    json: bool,
    quiet: bool,
    lock: Mutex<()>,
    /// The live lines (drawn on stderr only when it is a terminal).
    live: indicatif::MultiProgress,
    building: Mutex<BTreeMap<String, indicatif::ProgressBar>>,
}

impl Printer {
    pub(super) fn new(json: bool, quiet: bool) -> Self {
        let target = if std::io::stderr().is_terminal() && !json && !quiet {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        Self {
            json,
            quiet,
            lock: Mutex::new(()),
            live: indicatif::MultiProgress::with_draw_target(target),
            building: Mutex::new(BTreeMap::new()),
        }
    }

    /// A host's live build line: its counters as Nix reports them, and what builds.
    fn show_build(&self, host: &str, builder: &str, p: &waymark_deploy::BuildProgress) {
        let mut bars = self.building.lock().expect("not poisoned");
        let bar = bars.entry(host.to_owned()).or_insert_with(|| {
            let bar = self.live.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:<12} build         {spinner} {elapsed:>4} {wide_msg}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(host.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        let mut msg = format!(
            "on {builder}: {}/{} built, {} running, {} failed",
            p.built, p.total, p.running, p.failed
        );
        if p.substituted > 0 {
            msg.push_str(&format!(", {} fetched", p.substituted));
        }
        if let Some(what) = &p.building {
            msg.push_str(&format!(" · {what}"));
            if let Some(line) = &p.last_line {
                msg.push_str(&format!(": {line}"));
            }
        }
        bar.set_message(msg);
    }

    /// Prints `line` on stderr above the live lines.
    fn print(&self, line: &str) {
        self.live.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{line}");
        });
    }
}

impl Sink for Printer {
    fn emit(&self, event: Event) {
        let _guard = self.lock.lock().expect("not poisoned");
        if self.json {
            let line = serde_json::to_string(&event).expect("serializable") + "\n";
            let _ = write_stdout(&line);
            return;
        }
        if self.quiet {
            return;
        }
        if let Event::Build {
            host,
            builder,
            progress,
            ..
        } = &event
        {
            self.show_build(host, builder, progress);
            return;
        }
        if let Event::End { host, .. }
        | Event::Host {
            report: waymark_deploy::HostReport { host, .. },
            ..
        } = &event
            && let Some(bar) = self.building.lock().expect("not poisoned").remove(host)
        {
            bar.finish_and_clear();
            self.live.remove(&bar);
        }
        let line = match event {
            Event::Start { host, gate, .. } => {
                if !std::io::stderr().is_terminal() {
                    return;
                }
                format!("{host:<12} {:<13} …", gate.name())
            }
            Event::End {
                host,
                gate,
                result,
                duration_ms,
                message,
                ..
            } => format!(
                "{host:<12} {:<13} {:<7} {:>6.1} s  {}",
                gate.name(),
                format!("{result:?}").to_lowercase(),
                duration_ms as f64 / 1000.0,
                message.unwrap_or_default()
            ),
            Event::Note { host, message, .. } => format!("{host:<12} note: {message}"),
            Event::Host { .. } | Event::Summary { .. } | Event::Build { .. } => return,
        };
        self.print(&line);
    }
}

pub(super) struct Terminal {
    /// Colour the diff.
    pub(super) color: bool,
    /// Show the diff (not with `--json`).
    pub(super) show: bool,
}

impl Interaction for Terminal {
    fn show_diff(&self, host: &str, report: &DiffReport) {
        if self.show {
            let text = render::render(
                report,
                render::Options {
                    color: self.color,
                    all: false,
                },
            );
            let _ = write_stdout(&format!("{host}:\n{text}"));
        }
    }

    fn confirm(&self, host: &str, report: &DiffReport) -> bool {
        let text = render::render(
            report,
            render::Options {
                color: self.color,
                all: false,
            },
        );
        let mut err = std::io::stderr();
        let _ = write!(err, "{text}\nActivate this on {host}? [y/N] ");
        let _ = err.flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok()
            && matches!(answer.trim(), "y" | "Y" | "yes")
    }
}
