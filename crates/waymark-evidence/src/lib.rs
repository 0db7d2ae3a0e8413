//! The evidence document: what a closure went through before it was called good. The
//! deploy pipeline writes it, known-good marks embed it and release tags summarise it
//! (the deployment queue, still to come, is to exchange it too);
//! `docs/evidence-schema.json` specifies it.
//!
//! # Example
//! ```
//! let json = r#"{
//!   "schema": "waymark.evidence/v1", "target": "web1",
//!   "closure": "/nix/store/00000000000000000000000000000000-nixos-system-web1-26.05",
//!   "gates": [{"gate": "test", "result": "passed", "started_at": "2026-11-23T17:00:00Z", "duration_ms": 1200}]
//! }"#;
//! let evidence = waymark_evidence::Evidence::parse(json.as_bytes())?;
//! evidence.check_for_mark("web1", "/nix/store/00000000000000000000000000000000-nixos-system-web1-26.05")?;
//! assert_eq!(evidence.summary(), "test passed (1.2 s)");
//! # Ok::<(), waymark_evidence::Error>(())
//! ```

use serde::{Deserialize, Serialize};

/// Identifier of the format.
pub const SCHEMA: &str = "waymark.evidence/v1";

/// Why an evidence document is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not this format.
    #[error("the evidence is not a valid {SCHEMA} document: {0}")]
    Invalid(String),
    /// It is about another target or closure: marking with it would record a lie.
    #[error("the evidence is about {what} {found}, not {expected}")]
    Mismatch {
        what: &'static str,
        found: String,
        expected: String,
    },
    /// A gate failed: such a closure is not known-good.
    #[error(
        "the evidence records that the {gate} gate failed: a closure that failed a gate is not known-good"
    )]
    FailedGate { gate: String },
    /// No gate passed: nothing was proven.
    #[error("the evidence records no passed gate")]
    NothingPassed,
}

/// A gate of the deploy pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// Evaluate and build on the builder.
    Build,
    /// Closure diff against what the target runs.
    Diff,
    /// `switch-to-configuration dry-activate`.
    DryActivate,
    /// `switch-to-configuration test` and health checks.
    Test,
    /// Profile set, `switch`, confirmed over a new connection.
    Switch,
    /// Profile set, `boot`.
    Boot,
    /// Marked known-good.
    Mark,
}

impl Gate {
    /// The gate's name as written in the document.
    pub fn name(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Diff => "diff",
            Self::DryActivate => "dry-activate",
            Self::Test => "test",
            Self::Switch => "switch",
            Self::Boot => "boot",
            Self::Mark => "mark",
        }
    }
}

/// How a gate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed.
    Failed,
    /// It was not run (a `--goal` stopped before it, or the host does not use it).
    Skipped,
}

/// One gate's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateResult {
    /// Which gate.
    pub gate: Gate,
    /// How it ended.
    pub result: Outcome,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
    /// How long it took.
    pub duration_ms: u64,
    /// One line for people (what dry-activate would restart, which check failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// The closure diff in a few numbers (`waymark diff --json` has the whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffSummary {
    /// The closure diffed against (what the target ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
    /// Packages whose versions moved.
    pub changed: usize,
    /// Packages added.
    pub added: usize,
    /// Packages removed.
    pub removed: usize,
    /// Packages rebuilt at the same version.
    pub rebuilt: usize,
    /// The root causes, one line each (`openssl 3.0.13 → 3.0.14`).
    #[serde(default)]
    pub root_causes: Vec<String>,
}

/// The evidence document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The target (host) it is about.
    pub target: String,
    /// The closure it is about.
    pub closure: String,
    /// The closure's derivation, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drv: Option<String>,
    /// The commit the closure was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    /// The gates, in the order they ran.
    pub gates: Vec<GateResult>,
    /// The closure diff against what the target ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffSummary>,
}

impl Evidence {
    /// Parses and checks the format.
    ///
    /// # Errors
    /// Not JSON, unknown fields, a wrong `schema`, a time that is not RFC 3339.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let e: Self = serde_json::from_slice(bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        if e.schema != SCHEMA {
            return Err(Error::Invalid(format!(
                "schema is {:?}, expected {SCHEMA:?}",
                e.schema
            )));
        }
        for g in &e.gates {
            humantime::parse_rfc3339(&g.started_at).map_err(|err| {
                Error::Invalid(format!(
                    "{} gate: started_at {:?}: {err}",
                    g.gate.name(),
                    g.started_at
                ))
            })?;
        }
        Ok(e)
    }

    /// Checks that this evidence can make `closure` known-good for `target`: it is about
    /// them, no gate failed, and at least one passed.
    ///
    /// # Errors
    /// The reason it cannot.
    pub fn check_for_mark(&self, target: &str, closure: &str) -> Result<(), Error> {
        if self.target != target {
            return Err(Error::Mismatch {
                what: "target",
                found: self.target.clone(),
                expected: target.to_owned(),
            });
        }
        if self.closure != closure {
            return Err(Error::Mismatch {
                what: "closure",
                found: self.closure.clone(),
                expected: closure.to_owned(),
            });
        }
        if let Some(failed) = self.gates.iter().find(|g| g.result == Outcome::Failed) {
            return Err(Error::FailedGate {
                gate: failed.gate.name().to_owned(),
            });
        }
        if !self.gates.iter().any(|g| g.result == Outcome::Passed) {
            return Err(Error::NothingPassed);
        }
        Ok(())
    }

    /// The gates in one line: `build passed (3.1 s), test passed (1.2 s)`.
    pub fn summary(&self) -> String {
        self.gates
            .iter()
            .map(|g| {
                let result = match g.result {
                    Outcome::Passed => "passed",
                    Outcome::Failed => "failed",
                    Outcome::Skipped => "skipped",
                };
                format!(
                    "{} {result} ({:.1} s)",
                    g.gate.name(),
                    g.duration_ms as f64 / 1000.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSURE: &str = "/nix/store/00000000000000000000000000000000-sys";

    fn doc(gates: &str) -> String {
        format!(
            r#"{{"schema":"waymark.evidence/v1","target":"web1","closure":"{CLOSURE}","gates":[{gates}]}}"#
        )
    }

    #[test]
    fn refuses_what_cannot_be_known_good() {
        let passed = r#"{"gate":"test","result":"passed","started_at":"2026-11-23T17:00:00Z","duration_ms":5}"#;
        let failed = r#"{"gate":"switch","result":"failed","started_at":"2026-11-23T17:00:00Z","duration_ms":5}"#;
        let e = Evidence::parse(doc(passed).as_bytes()).unwrap();
        assert!(e.check_for_mark("web1", CLOSURE).is_ok());
        assert!(matches!(
            e.check_for_mark("web2", CLOSURE),
            Err(Error::Mismatch { what: "target", .. })
        ));
        let e = Evidence::parse(doc(&format!("{passed},{failed}")).as_bytes()).unwrap();
        assert!(matches!(
            e.check_for_mark("web1", CLOSURE),
            Err(Error::FailedGate { .. })
        ));
        let e = Evidence::parse(doc("").as_bytes()).unwrap();
        assert!(matches!(
            e.check_for_mark("web1", CLOSURE),
            Err(Error::NothingPassed)
        ));
    }

    #[test]
    fn refuses_malformed_documents() {
        assert!(Evidence::parse(b"{not json").is_err());
        assert!(Evidence::parse(doc("").replace("v1", "v0").as_bytes()).is_err());
        let bad_time =
            r#"{"gate":"test","result":"passed","started_at":"yesterday","duration_ms":5}"#;
        assert!(Evidence::parse(doc(bad_time).as_bytes()).is_err());
        let unknown = doc("").replace(r#""gates""#, r#""gatez":1,"gates""#);
        assert!(Evidence::parse(unknown.as_bytes()).is_err());
    }
}
