//! The remote protocol: the shell scripts the targets and build hosts run (files under
//! `scripts/`, sent as they are), how their parameters reach them, and one typed reader
//! per script for its reply.
//!
//! A script's parameters are shell variables assigned before its text, each value
//! quoted once, here ([`script`]): no value is ever spliced into shell text. A reply is
//! lines of three kinds: markers (`@@name [arg]`), printed only by the scripts
//! themselves; fields (`key=value`); and nothing else that counts. Every line of
//! another program's output that a script relays goes through the one shell function
//! `relay KEY` (`scripts/lib.sh`), which prints it as `KEY=line`: no output can be read
//! as a marker or as another key's field. Blank lines separate nothing and are skipped.

use waymark_known_good::Record;
use waymark_store::shell_quote;

use crate::activation::AgentState;
use crate::unfinished::{AgentSeen, parse_agents};

mod replies;
#[cfg(test)]
mod tests;

pub(crate) use replies::*;

/// What every script starts with: the exit statuses, `real`, `relay`, `waymark_run`.
pub(crate) const LIB: &str = include_str!("scripts/lib.sh");
/// The target's probe (ends in [`RUN_NEXT`]).
pub(crate) const PROBE: &str = include_str!("scripts/probe.sh");
/// The end of a script that runs the script it is sent next.
pub(crate) const RUN_NEXT: &str = include_str!("scripts/run_next.sh");
/// The end of a script that runs the scripts it is sent, one after another.
pub(crate) const SERVE: &str = include_str!("scripts/serve.sh");
/// The build host's session (ends in [`SERVE`]).
pub(crate) const BUILD_SESSION: &str = include_str!("scripts/build_session.sh");
/// The build, sent to the build session.
pub(crate) const BUILD: &str = include_str!("scripts/build.sh");
/// The wait for the agent's state.
pub(crate) const WAIT: &str = include_str!("scripts/wait.sh");
/// Gate 3's dry-activate.
pub(crate) const DRY: &str = include_str!("scripts/dry.sh");
/// The agent's start (followed by [`WAIT`]).
pub(crate) const LAUNCH: &str = include_str!("scripts/launch.sh");
/// Whether the agent started, after the launch's connection was lost.
pub(crate) const LOOK: &str = include_str!("scripts/look.sh");
/// Tells the agent to restore now.
pub(crate) const ABORT: &str = include_str!("scripts/abort.sh");
/// One health check.
pub(crate) const HEALTH: &str = include_str!("scripts/health.sh");
/// A script under `timeout`.
pub(crate) const BOUNDED: &str = include_str!("scripts/bounded.sh");
/// The failed units.
pub(crate) const FAILED_UNITS: &str = include_str!("scripts/failed_units.sh");
/// The boot default instead of an inhibited switch.
pub(crate) const BOOT: &str = include_str!("scripts/boot.sh");
/// Gate 5's confirmation (followed by [`WAIT`] and [`CONFIRM_MARK`]).
pub(crate) const CONFIRM: &str = include_str!("scripts/confirm.sh");
/// The target's mark made over the confirmation's connection.
pub(crate) const CONFIRM_MARK: &str = include_str!("scripts/confirm_mark.sh");
/// The target's mark, made (or found) on its own connection.
pub(crate) const MARK_TARGET: &str = include_str!("scripts/mark_target.sh");
/// The build host's mark.
pub(crate) const MARK_BUILDER: &str = include_str!("scripts/mark_builder.sh");
/// Scripts for one host side by side.
pub(crate) const BATCH: &str = include_str!("scripts/batch.sh");
/// Whether a closure is in the store.
pub(crate) const VALID: &str = include_str!("scripts/valid.sh");
/// The closure of a path, as Nix's JSON.
pub(crate) const PATH_INFO: &str = include_str!("scripts/path_info.sh");
/// The build on the target itself.
pub(crate) const REALISE: &str = include_str!("scripts/realise.sh");

/// The marker that ends the probe's answer.
pub(crate) const PROBED: &str = "@@probed";
/// The marker of the build session after the paths it lacks.
pub(crate) const MISSING: &str = "@@missing";
/// The marker of the build session once the import is done.
pub(crate) const IMPORTED: &str = "@@imported";
/// The key of the build's Nix log lines, relayed as they come.
pub(crate) const LOG: &str = "log";

/// The text to send for `parts` (script files, run in order in one shell) with
/// `params`: each parameter as a shell variable, its value quoted once, then `LIB` and
/// the parts without their comment and blank lines (a held session's shell reads what
/// it is sent a byte at a time: only what runs is sent; the scripts have no
/// here-document or quoted string with such a line). The only place a value meets
/// shell text.
///
/// # Panics
/// A parameter's name is not a shell name (a bug here, not input).
pub(crate) fn script(parts: &[&str], params: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (name, value) in params {
        assert!(
            !name.is_empty()
                && name.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
                && !name.as_bytes()[0].is_ascii_digit(),
            "not a shell variable name: {name}"
        );
        text.push_str(name);
        text.push('=');
        text.push_str(&shell_quote(value));
        text.push('\n');
    }
    for part in std::iter::once(&LIB).chain(parts) {
        for line in part.lines() {
            let code = line.trim_start();
            if !code.is_empty() && !code.starts_with('#') {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// One line of a reply that counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// `@@name` or `@@name arg`.
    Marker(&'a str, &'a str),
    /// `key=value`.
    Field(&'a str, &'a str),
}

/// A reply read into its lines (markers and fields), in order.
#[derive(Debug, Default)]
pub(crate) struct Transcript<'a> {
    lines: Vec<Line<'a>>,
}

impl<'a> Transcript<'a> {
    /// Reads `text`: lines that are neither a marker nor a field (`key` of lowercase
    /// letters, digits and `-`) are skipped.
    pub(crate) fn parse(text: &'a str) -> Self {
        let lines = text
            .lines()
            .filter_map(|line| {
                if let Some(marker) = line.strip_prefix("@@") {
                    let (name, arg) = marker.split_once(' ').unwrap_or((marker, ""));
                    return Some(Line::Marker(name, arg));
                }
                let (key, value) = line.split_once('=')?;
                let is_key = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit());
                is_key.then_some(Line::Field(key, value))
            })
            .collect();
        Self { lines }
    }

    /// Whether the marker `name` (without `@@`) came.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.marker(name).is_some()
    }

    /// The argument of the first marker `name`.
    pub(crate) fn marker(&self, name: &str) -> Option<&'a str> {
        self.lines.iter().find_map(|l| match l {
            Line::Marker(n, arg) if *n == name => Some(*arg),
            _ => None,
        })
    }

    /// Every value of `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<&'a str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Field(k, v) if *k == key => Some(*v),
                _ => None,
            })
            .collect()
    }

    /// The first value of `key`, when it is not empty.
    pub(crate) fn first(&self, key: &str) -> Option<&'a str> {
        self.all(key).into_iter().next().filter(|v| !v.is_empty())
    }

    /// The lines relayed as `key`, joined again (a command's output).
    pub(crate) fn text(&self, key: &str) -> String {
        self.all(key).join("\n")
    }

    /// The lines relayed as `key` after the marker `after` (and before the next marker).
    pub(crate) fn text_after(&self, after: &str, key: &str) -> String {
        let mut seen = false;
        let mut out = Vec::new();
        for line in &self.lines {
            match line {
                Line::Marker(n, _) => seen = *n == after,
                Line::Field(k, v) if seen && *k == key => out.push(*v),
                Line::Field(..) => {}
            }
        }
        out.join("\n")
    }
}

/// What the agent's wait said ([`WAIT`]): its state, what the target runs and boots,
/// and the tail of its logs when it did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentReport {
    pub(crate) state: AgentState,
    pub(crate) running: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) log: Vec<String>,
}

impl AgentReport {
    pub(crate) fn read(t: &Transcript) -> Self {
        Self {
            state: AgentState::parse(t.first("state").unwrap_or("")),
            running: t.first("running").map(str::to_owned),
            profile: t.first("profile").map(str::to_owned),
            log: t.all("log").into_iter().map(str::to_owned).collect(),
        }
    }

    /// Reads a wait's reply.
    pub(crate) fn parse(text: &str) -> Self {
        Self::read(&Transcript::parse(text))
    }
}

/// The record of a mark, from a reply's `record=` lines.
fn record(t: &Transcript, after: Option<&str>) -> Result<Record, serde_json::Error> {
    let json = match after {
        Some(marker) => t.text_after(marker, "record"),
        None => t.text("record"),
    };
    serde_json::from_str(&json)
}

/// The agents of earlier deploys a probe saw.
fn agents(text: &str) -> Vec<AgentSeen> {
    parse_agents(text)
}
