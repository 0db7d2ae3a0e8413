//! Build progress from Nix's structured log (`--log-format internal-json`, in Nix 2.8
//! and every later Nix and Lix): what the build host's `nix-store --realise` reports as
//! it goes, read line by line ([`NixLog::feed`]) into counters people can watch
//! ([`BuildProgress`]) and, for a build that fails, its last log lines. No I/O here.
//!
//! The format: each line is `@nix ` and a JSON object whose `action` is `start` (an
//! activity, with its `id`, `type` and `text`), `stop`, `result` (of an activity: its
//! `type` and `fields`) or `msg` (a message at a `level`, 0 for errors). The counters
//! are the `Progress` results (`[done, expected, running, failed]`) of the `Builds` and
//! `CopyPaths` activities, the same Nix's own progress bar shows.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Activity types (Nix's `ActivityType`).
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const ACT_COPY_PATHS: u64 = 103;
/// Result types (Nix's `ResultType`).
const RES_BUILD_LOG_LINE: u64 = 101;
const RES_PROGRESS: u64 = 105;

/// How many of a build's last log lines are kept, for a failure's report.
const TAIL: usize = 20;

/// A build on a build host, as Nix counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildProgress {
    /// Derivations to build.
    pub total: u64,
    /// Built so far.
    pub built: u64,
    /// Store paths fetched from a binary cache instead of built.
    pub substituted: u64,
    /// Building now.
    pub running: u64,
    /// Failed.
    pub failed: u64,
    /// Neither built, running nor failed yet.
    pub waiting: u64,
    /// The derivation of a build under way (its name, without the store hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    /// The last line a build logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_line: Option<String>,
}

/// A build that failed: its derivation and its last log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedBuild {
    pub drv: String,
    pub log_tail: Vec<String>,
}

/// One build's activity: its derivation and its last lines.
#[derive(Debug, Default)]
struct Build {
    drv: String,
    tail: VecDeque<String>,
}

/// Reads a realisation's structured log.
#[derive(Debug, Default)]
pub struct NixLog {
    progress: BuildProgress,
    /// Builds under way and ended, by activity id.
    builds: BTreeMap<u64, Build>,
    /// The ids of the `Builds` and `CopyPaths` activities.
    counters: BTreeMap<u64, u64>,
    /// Error messages (level 0), without terminal colours.
    errors: Vec<String>,
    /// The last lines that were not Nix's JSON (a shell's own error, a Nix too old for
    /// the format): what there is to say when Nix said nothing.
    other: VecDeque<String>,
}

impl NixLog {
    /// Takes one line of the log; true when the progress changed. Lines that are not
    /// Nix's JSON (a plain message) are ignored.
    pub fn feed(&mut self, line: &str) -> bool {
        let Some(json) = line.trim_end().strip_prefix("@nix ") else {
            let text = plain(line.trim_end());
            if !text.trim().is_empty() {
                if self.other.len() == TAIL {
                    self.other.pop_front();
                }
                self.other.push_back(text);
            }
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return false;
        };
        let id = v["id"].as_u64().unwrap_or(0);
        let before = self.progress.clone();
        match v["action"].as_str() {
            Some("start") => match v["type"].as_u64() {
                Some(t @ (ACT_BUILDS | ACT_COPY_PATHS)) => {
                    self.counters.insert(id, t);
                }
                Some(ACT_BUILD) => {
                    let drv = v["fields"][0].as_str().unwrap_or_default().to_owned();
                    self.progress.building = Some(drv_name(&drv));
                    self.builds.insert(
                        id,
                        Build {
                            drv,
                            tail: VecDeque::new(),
                        },
                    );
                }
                _ => {}
            },
            Some("result") => {
                let fields = &v["fields"];
                match v["type"].as_u64() {
                    Some(RES_PROGRESS) => {
                        let n = |i: usize| fields[i].as_u64().unwrap_or(0);
                        match self.counters.get(&id) {
                            Some(&ACT_BUILDS) => {
                                let p = &mut self.progress;
                                (p.built, p.running, p.failed) = (n(0), n(2), n(3));
                                p.total = n(1).max(p.built + p.running + p.failed);
                                p.waiting = p.total - p.built - p.running - p.failed;
                            }
                            Some(&ACT_COPY_PATHS) => self.progress.substituted = n(0),
                            _ => {}
                        }
                    }
                    Some(RES_BUILD_LOG_LINE) => {
                        if let (Some(build), Some(text)) =
                            (self.builds.get_mut(&id), fields[0].as_str())
                        {
                            let text = plain(text);
                            if build.tail.len() == TAIL {
                                build.tail.pop_front();
                            }
                            build.tail.push_back(text.clone());
                            self.progress.building = Some(drv_name(&build.drv));
                            self.progress.last_line = Some(text);
                        }
                    }
                    _ => {}
                }
            }
            Some("msg") if v["level"].as_u64() == Some(0) => {
                if let Some(m) = v["msg"].as_str() {
                    self.errors.push(plain(m));
                }
            }
            _ => {}
        }
        self.progress != before
    }

    /// The counters so far.
    pub fn progress(&self) -> &BuildProgress {
        &self.progress
    }

    /// Why the build failed, in one line: Nix's first error (it names the builder that
    /// failed; the ones after, what depended on it), else the last line that was not
    /// Nix's JSON.
    pub fn failure(&self) -> Option<String> {
        self.errors
            .first()
            .map(|e| e.strip_prefix("error: ").unwrap_or(e).to_owned())
            .or_else(|| self.other.back().cloned())
    }

    /// The builds that failed (their builder's own failure, not a dependency's), with
    /// their last log lines.
    pub fn failed_builds(&self) -> Vec<FailedBuild> {
        self.builds
            .values()
            .filter(|b| {
                self.errors
                    .iter()
                    .any(|e| e.contains("builder for") && e.contains(&format!("'{}'", b.drv)))
            })
            .map(|b| FailedBuild {
                drv: b.drv.clone(),
                log_tail: b.tail.iter().cloned().collect(),
            })
            .collect()
    }
}

/// `hello-2.12` of `/nix/store/<hash>-hello-2.12.drv`.
fn drv_name(drv: &str) -> String {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    base.split_once('-')
        .map_or(base, |(_, name)| name)
        .to_owned()
}

/// `text` without terminal escape sequences (Nix colours its messages) or other
/// control characters: it is shown to people and kept in reports.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(log: &str) -> (NixLog, Vec<BuildProgress>) {
        let mut nix = NixLog::default();
        let mut seen = Vec::new();
        for line in log.lines() {
            if nix.feed(line) {
                seen.push(nix.progress().clone());
            }
        }
        (nix, seen)
    }

    #[test]
    fn counts_a_build_as_nix_2_8_logs_it() {
        // Recorded: `nix-store --realise --keep-going --log-format internal-json -v` of
        // three busybox derivations, one depending on the two others (Nix 2.8.0).
        let (nix, seen) = read(include_str!("fixtures/nix-2.8-build-ok.log"));
        let last = nix.progress();
        assert_eq!(
            (last.total, last.built, last.running, last.failed),
            (3, 3, 0, 0)
        );
        assert_eq!(last.waiting, 0);
        assert_eq!(last.building.as_deref(), Some("top"));
        assert_eq!(last.last_line.as_deref(), Some("second line"));
        // It moved through the builds one by one.
        let built: Vec<u64> = seen.iter().map(|p| p.built).collect();
        assert!(built.windows(2).all(|w| w[0] <= w[1]), "{built:?}");
        assert!(seen.iter().any(|p| p.running == 1 && p.built == 1));
        assert!(nix.failed_builds().is_empty());
        assert!(nix.errors.is_empty());
    }

    #[test]
    fn names_a_failed_build_and_keeps_its_last_lines() {
        let (nix, _) = read(include_str!("fixtures/nix-2.8-build-failed.log"));
        assert_eq!(nix.progress().failed, 1);
        let failed = nix.failed_builds();
        assert_eq!(
            failed.len(),
            1,
            "the builder that failed, not its dependents"
        );
        assert!(failed[0].drv.ends_with("-c.drv"), "{failed:?}");
        assert_eq!(failed[0].log_tail, ["building c", "second line", "oops"]);
        assert!(
            nix.errors[0].starts_with("error: builder for '/nix/store/"),
            "colours removed: {:?}",
            nix.errors
        );
        assert!(
            nix.failure()
                .unwrap()
                .starts_with("builder for '/nix/store/")
        );
    }

    #[test]
    fn counts_substitutions_and_reads_later_nix_the_same() {
        // The shape of Nix 2.18+ and Lix (not recorded here: no binary cache): `parent`
        // on activities, `raw_msg` on messages; the same types and fields.
        let log = r#"@nix {"action":"start","id":1,"level":0,"parent":0,"text":"","type":102}
@nix {"action":"start","id":2,"level":0,"parent":1,"text":"","type":104}
@nix {"action":"start","id":3,"level":0,"parent":1,"text":"","type":103}
@nix {"action":"result","fields":[0,2,0,0],"id":2,"type":105}
@nix {"action":"result","fields":[0,5,1,0],"id":3,"type":105}
@nix {"action":"result","fields":[5,5,0,0],"id":3,"type":105}
@nix {"action":"start","fields":["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.drv","",1,1],"id":4,"level":3,"parent":2,"text":"building '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.drv'","type":105}
@nix {"action":"result","fields":[0,2,1,0],"id":2,"type":105}
@nix {"action":"result","fields":["\u001b[1mchecking\u001b[0m for gcc..."],"id":4,"type":101}
not json: ignored
@nix {"action":"msg","level":1,"msg":"warning: ignored","raw_msg":"ignored"}"#;
        let (nix, _) = read(log);
        let p = nix.progress();
        assert_eq!(
            (
                p.total,
                p.built,
                p.substituted,
                p.running,
                p.failed,
                p.waiting
            ),
            (2, 0, 5, 1, 0, 1)
        );
        assert_eq!(p.building.as_deref(), Some("hello-2.12"));
        assert_eq!(p.last_line.as_deref(), Some("checking for gcc..."));
        assert!(nix.errors.is_empty(), "only level 0 is an error");
        assert_eq!(nix.failure(), Some("not json: ignored".into()));
    }

    #[test]
    fn hostile_lines_are_ignored_or_made_plain() {
        let mut nix = NixLog::default();
        for line in [
            "@nix ",
            "@nix {",
            "@nix []",
            r#"@nix {"action":"result","fields":[null,"x",-1],"id":"x","type":105}"#,
            r#"@nix {"action":"result","fields":[1],"id":99,"type":101}"#,
        ] {
            nix.feed(line);
        }
        assert_eq!(nix.progress(), &BuildProgress::default());
        assert_eq!(plain("a\u{1b}[31;1mb\u{1b}[0m\u{7}c\r"), "abc");
    }
}
