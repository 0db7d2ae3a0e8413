//! The diff report: what `waymark diff --json` prints and the text printer renders.
//!
//! The JSON form is versioned by [`SCHEMA`]; fields are only ever added within a version.
//! `docs/diff-schema.json` in the repository is the JSON Schema of this structure.

use serde::Serialize;

/// Identifier of the JSON document format. Bumped on any incompatible change.
pub const SCHEMA: &str = "waymark.diff/v1";

/// The whole difference between two closures.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffReport {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The closure diffed from.
    pub old: ClosureSummary,
    /// The closure diffed to.
    pub new: ClosureSummary,
    /// Packages whose set of versions changed (upgrades, downgrades, several versions).
    pub changed: Vec<VersionChange>,
    /// Packages only in the new closure.
    pub added: Vec<PackageVersions>,
    /// Packages only in the old closure.
    pub removed: Vec<PackageVersions>,
    /// Packages whose version stayed but whose set of outputs in the closure changed.
    pub outputs_changed: Vec<OutputsChange>,
    /// Packages whose version stayed but whose store paths changed.
    pub rebuilt: Vec<Rebuild>,
    /// The few derivation changes that explain the rebuilds, most consequential first.
    pub root_causes: Vec<RootCause>,
    /// Derivations that could not be read, so the rebuilds through them are unexplained.
    pub missing_derivations: Vec<MissingDerivation>,
}

impl DiffReport {
    /// Returns true when the closures differ in any way (`--exit-code`).
    pub fn has_differences(&self) -> bool {
        self.old.path != self.new.path
            || !(self.changed.is_empty()
                && self.added.is_empty()
                && self.removed.is_empty()
                && self.outputs_changed.is_empty()
                && self.rebuilt.is_empty())
    }
}

/// One side of the diff.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClosureSummary {
    /// The closure's root store path.
    pub path: String,
    /// Number of store paths in the closure.
    pub paths: usize,
    /// Sum of the NAR sizes of the closure's paths, in bytes.
    pub nar_size: u64,
}

/// Whether a version change goes up or down in Nix's version order.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Every new version is newer than every version it replaces.
    Upgrade,
    /// Every new version is older than every version it replaces.
    Downgrade,
    /// Anything else (versions dropped or added beside kept ones, mixed moves).
    Changed,
}

/// A package whose set of versions differs between the closures.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionChange {
    /// Package name without version.
    pub name: String,
    /// Versions in the old closure, oldest first.
    pub before: Vec<String>,
    /// Versions in the new closure, oldest first.
    pub after: Vec<String>,
    /// Direction of the move.
    pub direction: Direction,
    /// Whether the package is in the system's top-level package selection.
    pub selected: bool,
    /// NAR size of the package's paths after minus before, in bytes.
    pub nar_size_delta: i64,
}

/// A package present on one side only.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PackageVersions {
    /// Package name without version.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<String>,
    /// Whether the package is in the system's top-level package selection.
    pub selected: bool,
    /// NAR size of its paths, in bytes.
    pub nar_size: u64,
}

/// A package whose outputs in the closure changed while its version did not.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutputsChange {
    /// Package name without version.
    pub name: String,
    /// The version, unchanged.
    pub version: String,
    /// Outputs in the old closure.
    pub before: Vec<String>,
    /// Outputs in the new closure.
    pub after: Vec<String>,
    /// Whether the package is in the system's top-level package selection.
    pub selected: bool,
}

/// A package rebuilt without a version change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rebuild {
    /// Package name without version.
    pub name: String,
    /// The version, unchanged (may be empty).
    pub version: String,
    /// Outputs whose store paths changed.
    pub outputs: Vec<String>,
    /// Whether the package is in the system's top-level package selection.
    pub selected: bool,
    /// NAR size after minus before, in bytes.
    pub nar_size_delta: i64,
    /// Indices into [`DiffReport::root_causes`] of what made it rebuild; empty when its
    /// derivations were unavailable (see [`DiffReport::missing_derivations`]).
    pub causes: Vec<usize>,
}

/// A derivation that changed by itself, not only because its inputs changed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RootCause {
    /// Package name without version.
    pub name: String,
    /// Derivation name before (`openssl-3.0.13`).
    pub before: String,
    /// Derivation name after.
    pub after: String,
    /// Derivation path before.
    pub before_drv: String,
    /// Derivation path after.
    pub after_drv: String,
    /// What changed in the derivation itself.
    pub changes: Vec<Change>,
    /// How many rebuilt packages of the closure it explains, directly or through others.
    pub caused: usize,
}

/// How an input or a source appears in the new derivation compared to the old.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Only in the new derivation.
    Added,
    /// Only in the old derivation.
    Removed,
    /// In both, with different contents.
    Changed,
}

/// One local change of a derivation. Store path hashes in values are replaced by
/// `<hash>`, so a value that only differs by its inputs' hashes is not a change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    /// The version in the derivation name moved.
    Version {
        /// Old version.
        before: String,
        /// New version.
        after: String,
    },
    /// An environment variable was added, removed or changed.
    Env {
        /// Variable name.
        name: String,
        /// Old value (absent when added).
        before: Option<String>,
        /// New value (absent when removed).
        after: Option<String>,
    },
    /// The builder program changed.
    Builder {
        /// Old builder.
        before: String,
        /// New builder.
        after: String,
    },
    /// The builder's arguments changed.
    Args {
        /// Old arguments.
        before: Vec<String>,
        /// New arguments.
        after: Vec<String>,
    },
    /// A source (a plain store path input such as a patch or a tarball) changed.
    Source {
        /// Source name.
        name: String,
        /// Added, removed or changed contents.
        change: Presence,
    },
    /// An input derivation was added or removed (not just rebuilt).
    Input {
        /// Input derivation name.
        name: String,
        /// Added or removed.
        change: Presence,
    },
    /// The derivation's outputs changed.
    Outputs {
        /// Old output names.
        before: Vec<String>,
        /// New output names.
        after: Vec<String>,
    },
    /// The platform changed.
    System {
        /// Old system.
        before: String,
        /// New system.
        after: String,
    },
}

/// Which side of the diff something belongs to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The old closure.
    Old,
    /// The new closure.
    New,
}

/// A derivation the structural diff needed but could not read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MissingDerivation {
    /// Package name without version.
    pub name: String,
    /// Which side it was needed for.
    pub side: Side,
    /// The derivation path, when the store recorded one.
    pub drv: Option<String>,
    /// Why it is missing.
    pub reason: String,
}
