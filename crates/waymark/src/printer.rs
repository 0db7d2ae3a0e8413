//! Where output goes: data on stdout, everything else on stderr, colour only when wanted.

use std::io::{IsTerminal as _, Write as _};

use clap::ValueEnum;

/// When to colour output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and neither `NO_COLOR` nor CLICOLOR=0 is set
    #[default]
    Auto,
    /// Always colour
    Always,
    /// Never colour
    Never,
}

impl ColorChoice {
    /// Decides for stdout, honouring `NO_COLOR`, `CLICOLOR` and `CLICOLOR_FORCE`.
    pub fn should_style(self) -> bool {
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => {
                if set("NO_COLOR") {
                    false
                } else if set("CLICOLOR_FORCE")
                    && std::env::var_os("CLICOLOR_FORCE") != Some("0".into())
                {
                    true
                } else if std::env::var_os("CLICOLOR") == Some("0".into()) {
                    false
                } else {
                    std::io::stdout().is_terminal()
                }
            }
        }
    }
}

/// Messages for people, on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Print progress and details (`-v`).
    pub verbose: bool,
    /// Print nothing but errors (`-q`).
    pub quiet: bool,
}

impl Printer {
    /// A status line.
    pub fn info(self, msg: impl std::fmt::Display) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{msg}");
        }
    }

    /// A detail shown with `-v`.
    pub fn detail(self, msg: impl std::fmt::Display) {
        if self.verbose {
            let _ = writeln!(std::io::stderr(), "{msg}");
        }
    }

    /// A warning, shown unless `-q`.
    pub fn warn(self, msg: impl std::fmt::Display) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "warning: {msg}");
        }
    }
}

/// Writes data to stdout; a closed pipe (`| head`) is not an error.
pub fn write_stdout(data: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(data.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Writes a value as pretty JSON and a newline to stdout.
pub fn write_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut s = serde_json::to_string_pretty(value).context("encoding JSON")?;
    s.push('\n');
    write_stdout(&s).context("writing to stdout")
}
