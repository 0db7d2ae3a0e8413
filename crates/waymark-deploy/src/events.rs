//! What a deploy reports as it goes: gate starts and ends, and one result per host.
//! `waymark deploy --json` prints these as JSON Lines (`docs/deploy-events-schema.json`).

use std::time::{Duration, SystemTime};

use serde::Serialize;
use waymark_evidence::{Gate, Outcome};

pub use crate::progress::BuildProgress;

/// Identifier of the event format.
pub const SCHEMA: &str = "waymark.deploy-event/v1";

/// How a host's deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostResult {
    /// Every gate up to the goal passed (and, at the goal `switch` or `boot`, the
    /// closure is marked known-good).
    Deployed,
    /// The closure is already running and known-good: nothing to do.
    Unchanged,
    /// A gate failed or refused; the target runs what it ran before (restored, or never
    /// touched).
    Failed,
    /// Not started: the hosts it depends on did not become good, or a limit was reached.
    Skipped,
    /// The run was cancelled before the host got there: untouched, or (its agent
    /// running) back on its previous system by the agent's own restore. The report's
    /// message says which.
    Cancelled,
    /// Nothing could start: bad input, evaluation, build or copy failed. The target's
    /// running system was never touched.
    Error,
    /// Restoring failed, or the target's state could not be verified: needs a human.
    NeedsHuman,
}

impl HostResult {
    /// Whether the host is good: deployed, or already running its known-good closure.
    pub fn is_good(self) -> bool {
        matches!(self, Self::Deployed | Self::Unchanged)
    }

    /// Whether the host failed (a skip is not a failure).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Error | Self::NeedsHuman)
    }

    /// The deploy's exit status when this is the worst result (README, "Exit status").
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Deployed | Self::Unchanged => 0,
            Self::Failed | Self::Skipped | Self::Cancelled => 1,
            Self::Error => 2,
            Self::NeedsHuman => 4,
        }
    }

    fn severity(self) -> u8 {
        match self {
            Self::Deployed | Self::Unchanged => 0,
            Self::Skipped => 1,
            Self::Cancelled => 2,
            Self::Failed => 3,
            Self::Error => 4,
            Self::NeedsHuman => 5,
        }
    }

    /// The worse of two results.
    #[must_use]
    pub fn worst(self, other: Self) -> Self {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// A host's end result, as the summary table and `--json` show it.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// The host.
    pub host: String,
    /// How it ended.
    pub result: HostResult,
    /// The last gate it entered.
    pub reached: Option<Gate>,
    /// The closure deployed (or attempted), when known.
    pub closure: Option<String>,
    /// What the target runs at the end, as verified on it.
    pub running: Option<String>,
    /// The known-good mark made, if any.
    pub mark: Option<String>,
    /// The release tag made, if any.
    pub release_tag: Option<String>,
    /// The closure change in one line.
    pub change: Option<String>,
    /// Why it ended so (one line), or what was done.
    pub message: String,
    /// Wall time.
    pub duration_ms: u64,
    /// New SSH connections this host's deploy opened (master plus fresh ones).
    pub ssh_connections: u32,
    /// Time spent in Nix's own work (evaluation excluded): building and copying.
    pub nix_ms: u64,
    /// Time spent waiting on the hosts: SSH round trips and what runs there
    /// (activation, health checks, marking).
    pub remote_ms: u64,
    /// The last log lines of the build that failed (the build gate on a build host).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// One line of the event stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A gate started on a host.
    Start {
        /// Always [`SCHEMA`].
        schema: &'static str,
        /// The host.
        host: String,
        /// The gate.
        gate: Gate,
        /// RFC 3339 UTC.
        at: String,
    },
    /// A gate ended on a host.
    End {
        /// Always [`SCHEMA`].
        schema: &'static str,
        /// The host.
        host: String,
        /// The gate.
        gate: Gate,
        /// How it ended.
        result: Outcome,
        /// RFC 3339 UTC.
        at: String,
        /// How long it took.
        duration_ms: u64,
        /// One line: what it found or why it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A host's closure building on its build host: Nix's counters.
    Build {
        /// Always [`SCHEMA`].
        schema: &'static str,
        /// The host the closure is for.
        host: String,
        /// The build host.
        builder: String,
        /// RFC 3339 UTC.
        at: String,
        /// The counters.
        #[serde(flatten)]
        progress: BuildProgress,
    },
    /// Something worth telling that is not a gate's end (drift allowed, a first deploy).
    Note {
        /// Always [`SCHEMA`].
        schema: &'static str,
        /// The host.
        host: String,
        /// RFC 3339 UTC.
        at: String,
        /// The note.
        message: String,
    },
    /// A host is done.
    Host {
        /// Always [`SCHEMA`].
        schema: &'static str,
        /// RFC 3339 UTC.
        at: String,
        /// The result.
        #[serde(flatten)]
        report: HostReport,
    },
    /// The run is done: every host's result and the exit status.
    Summary {
        /// Always [`SCHEMA`].
        schema: &'static str,
        /// RFC 3339 UTC.
        at: String,
        /// Per host, in deploy order.
        hosts: Vec<HostReport>,
        /// Time the fleet's evaluation took (`nix eval`), before any host started.
        eval_ms: u64,
        /// CPU time of the deploying process itself (its own work: diffing, planning,
        /// bookkeeping), children such as ssh and nix excluded; `null` where unknown.
        own_cpu_ms: Option<u64>,
        /// The process's exit status.
        exit_code: u8,
    },
}

/// Now, RFC 3339 UTC with seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// CPU time this process has used so far, from `/proc/self/stat` (Linux).
pub fn own_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in
    // USER_HZ, which is 100 on Linux.
    Some((ticks(11)? + ticks(12)?) * 10)
}

/// Milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where events go: the CLI prints them (JSON Lines, or progress for people).
pub trait Sink: Sync {
    /// Takes one event.
    fn emit(&self, event: Event);
}

/// Discards events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl Sink for Discard {
    fn emit(&self, _event: Event) {}
}
