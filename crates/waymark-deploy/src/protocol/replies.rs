//! One typed reply per script, read from its markers and fields.

use super::{AgentReport, Transcript, agents, record};
use crate::unfinished::AgentSeen;
use waymark_known_good::Record;

/// The probe's answer ([`super::PROBE`]).
#[derive(Debug, Default)]
pub(crate) struct ProbeReply {
    /// It got as far as listing the marks (the host was reached and the shell ran).
    pub(crate) reached_marks: bool,
    pub(crate) running: Option<String>,
    /// What the system profile (the boot default) points at.
    pub(crate) profile: Option<String>,
    /// The host runs a nix-daemon.
    pub(crate) daemon: bool,
    /// The failed units, where the host runs systemd.
    pub(crate) failed_units: Option<Vec<String>>,
    /// Agents whose deploy left its evidence and did not say it marked.
    pub(crate) agents: Vec<AgentSeen>,
    /// The agent directory of another deploy at work on the target, if any.
    pub(crate) active: Option<String>,
    /// `waymark known-good list --json`, empty when it did not run.
    pub(crate) marks: String,
    /// `nix path-info --json --recursive` of what runs, when it was read.
    pub(crate) old_closure: Option<String>,
}

impl ProbeReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        Self {
            reached_marks: t.has("marks"),
            running: t.first("running").map(str::to_owned),
            profile: t.first("profile").map(str::to_owned),
            daemon: t.first("daemon").is_some(),
            failed_units: t.first("units").map(|_| {
                t.all("failed")
                    .into_iter()
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            agents: agents(text),
            active: t.first("active").map(str::to_owned),
            marks: t.text("marks").trim().to_owned(),
            old_closure: Some(t.text("old"))
                .filter(|j| !j.trim().is_empty())
                .map(|j| j.trim().to_owned()),
        }
    }
}

/// The build session's answer to the paths it was sent ([`super::BUILD_SESSION`]), up to
/// `@@missing`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MissingReply {
    pub(crate) daemon: bool,
    /// The paths its store lacks.
    pub(crate) missing: Vec<String>,
}

impl MissingReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        Self {
            daemon: t.first("daemon").is_some(),
            missing: t
                .all("missing")
                .into_iter()
                .filter(|p| p.starts_with('/'))
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// Whether a build session's (last) reply says its Nix refused the import.
pub(crate) fn import_refused(text: &str) -> bool {
    Transcript::parse(text).has("import-refused")
}

/// The build's answer ([`super::BUILD`]); its log (`log=`) is read as it comes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BuildReply {
    /// The outputs that were built.
    pub(crate) built: Vec<String>,
    /// Why signing failed, if it did.
    pub(crate) unsigned: Option<String>,
    /// The build's exit status, when not 0.
    pub(crate) rc: Option<String>,
    /// `nix path-info --json --recursive` of what was built.
    pub(crate) closures: String,
    /// The log lines, when they were not taken as they came.
    pub(crate) log: Vec<String>,
}

impl BuildReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        Self {
            built: t.all("built").into_iter().map(str::to_owned).collect(),
            unsigned: t
                .all("unsigned")
                .into_iter()
                .find(|v| !v.is_empty())
                .map(str::to_owned),
            rc: t.first("rc").map(str::to_owned),
            closures: t.text("closures").trim().to_owned(),
            log: t.all(super::LOG).into_iter().map(str::to_owned).collect(),
        }
    }
}

/// Gate 3's answer ([`super::DRY`], then [`super::LAUNCH`] and [`super::WAIT`]).
#[derive(Debug)]
pub(crate) struct LaunchReply {
    /// dry-activate's exit status; `None` when it did not run (the connection).
    pub(crate) dry_rc: Option<String>,
    /// What dry-activate said.
    pub(crate) dry: String,
    /// Milliseconds dry-activate took on the target.
    pub(crate) dry_ms: u64,
    /// Who holds the activation lock, when another deploy does.
    pub(crate) busy: Option<String>,
    /// The agent's activation.
    pub(crate) report: AgentReport,
}

impl LaunchReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        Self {
            dry_rc: t.first("dry-rc").map(str::to_owned),
            dry: t.text("dry"),
            dry_ms: t.first("dry-ms").and_then(|v| v.parse().ok()).unwrap_or(0),
            busy: t
                .all("busy")
                .into_iter()
                .find(|v| !v.is_empty())
                .map(str::to_owned),
            report: AgentReport::read(&t),
        }
    }
}

/// Whether the agent started, as looked at after a lost launch ([`super::LOOK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Looked {
    /// The look ran: the agent started or not.
    Started(bool),
    /// The look did not run to its end.
    Unknown,
}

impl Looked {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        match (t.first("looked"), t.first("started")) {
            (Some(_), started) => Self::Started(started.is_some()),
            (None, _) => Self::Unknown,
        }
    }
}

/// The health check's reason for failing ([`super::HEALTH`]).
pub(crate) fn health_failure(text: &str) -> Option<String> {
    Transcript::parse(text)
        .all("why")
        .last()
        .map(|w| (*w).to_owned())
}

/// The failed units ([`super::FAILED_UNITS`]).
pub(crate) fn failed_units(text: &str) -> Vec<String> {
    Transcript::parse(text)
        .all("failed")
        .into_iter()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The boot default set instead of a switch ([`super::BOOT`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BootReply {
    pub(crate) boot: bool,
    pub(crate) running: Option<String>,
    pub(crate) profile: Option<String>,
}

impl BootReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        Self {
            boot: t.first("boot").is_some(),
            running: t.first("running").map(str::to_owned),
            profile: t.first("profile").map(str::to_owned),
        }
    }
}

/// The confirmation's answer ([`super::CONFIRM`], [`super::WAIT`],
/// [`super::CONFIRM_MARK`]).
#[derive(Debug)]
pub(crate) struct ConfirmReply {
    /// The agent's end.
    pub(crate) report: AgentReport,
    /// The target's mark made over the same connection, when it was made.
    pub(crate) marked: Option<Record>,
}

impl ConfirmReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        let marked = (t.marker("mark-exit").map(str::trim) == Some("0"))
            .then(|| record(&t, Some("mark")).ok())
            .flatten();
        Self {
            report: AgentReport::read(&t),
            marked,
        }
    }
}

/// The target's mark, made or found ([`super::MARK_TARGET`]).
#[derive(Debug)]
pub(crate) enum MarkReply {
    /// The deploy that committed marked it: its latest mark.
    Found(Result<Record, serde_json::Error>),
    /// Another marker holds the lock.
    Busy,
    /// Marked now (or, asked for none, the latest mark).
    Made(Result<Record, serde_json::Error>),
}

impl MarkReply {
    pub(crate) fn parse(text: &str) -> Self {
        let t = Transcript::parse(text);
        let read = || record(&t, None);
        if t.has("found") {
            Self::Found(read())
        } else if t.has("busy") {
            Self::Busy
        } else {
            Self::Made(read())
        }
    }
}

/// What the build host's mark said ([`super::MARK_BUILDER`]): its last line.
pub(crate) fn mark_builder_said(text: &str) -> Option<String> {
    Transcript::parse(text)
        .all("out")
        .into_iter()
        .rfind(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

/// One script's part of a batch's answer ([`super::BATCH`]): its exit status and output.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BatchItem {
    pub(crate) code: i32,
    pub(crate) output: String,
}

/// The batch's answer, by item index.
pub(crate) fn batch_items(text: &str, count: usize) -> Vec<Option<BatchItem>> {
    let mut items: Vec<Option<BatchItem>> = (0..count).map(|_| None).collect();
    let mut current: Option<(usize, String)> = None;
    for line in Transcript::parse(text).lines {
        match line {
            super::Line::Marker("item", i) => {
                current = i.parse().ok().map(|i| (i, String::new()));
            }
            super::Line::Field("item", l) => {
                if let Some((_, out)) = current.as_mut() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            super::Line::Marker("item-exit", code) => {
                if let Some((i, output)) = current.take()
                    && let Some(slot) = items.get_mut(i)
                {
                    *slot = Some(BatchItem {
                        code: code.trim().parse().unwrap_or(-1),
                        output,
                    });
                }
            }
            _ => {}
        }
    }
    items
}
