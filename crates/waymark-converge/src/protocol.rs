//! The host-side watcher's line protocol, spoken by `waymark host-watch` and by the poll
//! script alike over the host's ssh connection: one line per report, fields separated
//! by tabs (store paths hold none), a value empty when absent.
//!
//! ```text
//! hello→1→watch                      (the first line: version, how it watches)
//! facts→current=/nix/store/…→profile=/nix/store/…→booted=→known-good=/nix/store/…
//! error→watching /run: …             (what it could not do; it goes on)
//! ```
//!
//! (`→` stands for a tab.)
//!
//! A `facts` line comes at the start and after every change of one of the four. An
//! empty line says nothing (the watcher's check that its reader is still there).

use crate::model::Facts;

/// The protocol's version in the `hello` line.
pub const VERSION: &str = "1";

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The first line: the protocol version and how the host watches (`watch`: inotify;
    /// `poll`: the shell fallback).
    Hello {
        /// The protocol version.
        version: String,
        /// How it watches.
        how: String,
    },
    /// What the host runs now.
    Facts(Facts),
    /// Something the watcher could not do.
    Error(String),
    /// An empty line: nothing new.
    Nothing,
}

/// Errors reading a line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not a line of this protocol (a login banner, another program's output).
    #[error("not a watcher line: {0:?}")]
    Unknown(String),
    /// A `facts` line without one of its fields, or with a value that is not a path.
    #[error("malformed facts line: {0:?}")]
    Facts(String),
}

fn value(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

/// Reads one line (without its newline).
pub fn parse(line: &str) -> Result<Line, Error> {
    let mut fields = line.split('\t');
    match fields.next() {
        Some("") => Ok(Line::Nothing),
        Some("hello") => {
            let version = fields.next().unwrap_or_default().to_owned();
            let how = fields.next().unwrap_or_default().to_owned();
            Ok(Line::Hello { version, how })
        }
        Some("error") => Ok(Line::Error(fields.collect::<Vec<_>>().join(" "))),
        Some("facts") => {
            let mut facts = Facts::default();
            let mut seen = 0;
            for field in fields {
                let (k, v) = field
                    .split_once('=')
                    .ok_or_else(|| Error::Facts(line.to_owned()))?;
                let slot = match k {
                    "current" => &mut facts.current,
                    "profile" => &mut facts.profile,
                    "booted" => &mut facts.booted,
                    "known-good" => &mut facts.known_good,
                    // A later version's field: ignored.
                    _ => continue,
                };
                if !(v.is_empty() || v.starts_with('/')) {
                    return Err(Error::Facts(line.to_owned()));
                }
                *slot = value(v);
                seen += 1;
            }
            if seen < 4 {
                return Err(Error::Facts(line.to_owned()));
            }
            Ok(Line::Facts(facts))
        }
        _ => Err(Error::Unknown(line.to_owned())),
    }
}

/// Writes a `facts` line (without its newline).
pub fn facts_line(f: &Facts) -> String {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    format!(
        "facts\tcurrent={}\tprofile={}\tbooted={}\tknown-good={}",
        v(&f.current),
        v(&f.profile),
        v(&f.booted),
        v(&f.known_good)
    )
}

/// Writes the `hello` line.
pub fn hello_line(how: &str) -> String {
    format!("hello\t{VERSION}\t{how}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_and_bad_lines_are_refused() {
        let f = Facts {
            current: Some("/nix/store/a-s".into()),
            profile: Some("/nix/store/b-s".into()),
            booted: None,
            known_good: Some("/nix/store/a-s".into()),
        };
        assert_eq!(parse(&facts_line(&f)), Ok(Line::Facts(f)));
        assert_eq!(
            parse(&hello_line("poll")),
            Ok(Line::Hello {
                version: "1".into(),
                how: "poll".into()
            })
        );
        assert_eq!(
            parse("error\tno inotify"),
            Ok(Line::Error("no inotify".into()))
        );
        assert!(matches!(parse("Welcome to web1"), Err(Error::Unknown(_))));
        assert!(matches!(
            parse("facts\tcurrent=/nix/store/a"),
            Err(Error::Facts(_))
        ));
        assert!(matches!(
            parse("facts\tcurrent=x\tprofile=\tbooted=\tknown-good="),
            Err(Error::Facts(_))
        ));
        // A later version's extra field is ignored.
        let line = "facts\tcurrent=\tprofile=\tbooted=\tknown-good=\tnew=1";
        assert_eq!(parse(line), Ok(Line::Facts(Facts::default())));
    }

    #[test]
    fn the_poll_script_speaks_the_protocol() {
        // The script's own facts line, by its format string.
        let script = crate::POLL_SCRIPT;
        assert!(script.contains(r"facts\tcurrent=%s\tprofile=%s\tbooted=%s\tknown-good=%s\n"));
        assert!(script.contains(r"hello\t1\tpoll\n"));
    }
}
