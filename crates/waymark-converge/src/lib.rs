//! The convergence loop of `waymark converge`, without I/O: what a host should run
//! ([`Desired`]) against what it runs ([`Facts`]), the named kinds of [`Drift`], the
//! [`decide`] rule, the per-host state machine ([`HostMachine`]: a dirty flag, backoff,
//! `noncompliant`, closures that failed their gates), the line protocol of the
//! host-side watcher ([`protocol`]) and the exit status of a run ([`Summary`]).
//!
//! The command line (`crates/waymark/src/commands/converge.rs`) feeds it events read
//! from the hosts and the repository, and carries out the deploys it asks for.
//!
//! # Example
//!
//! ```
//! use waymark_converge::{Decision, Desired, Drift, Facts, Policy, decide};
//!
//! let facts = Facts {
//!     current: Some("/nix/store/bbb-hand".into()),
//!     profile: Some("/nix/store/bbb-hand".into()),
//!     booted: None,
//!     known_good: Some("/nix/store/aaa-good".into()),
//! };
//! let desired = Desired::Release { rev: "1a2b3c4".into(), closure: "/nix/store/aaa-good".into() };
//! assert_eq!(facts.drift(), Some(Drift::HandSwitch));
//! assert_eq!(decide(&desired, &facts, Policy::Report), Decision::Report(Drift::HandSwitch));
//! assert_eq!(
//!     decide(&desired, &facts, Policy::Restore),
//!     Decision::Deploy { allow_drift: true }
//! );
//! ```

mod machine;
mod model;
pub mod protocol;
mod summary;

pub use machine::{Attempt, HostMachine, Phase, Timing, blocked_by};
pub use model::{Decision, Desired, Drift, Facts, Policy, decide};
pub use summary::{ExitCode, Summary};

/// The shell a host runs where `waymark host-watch` cannot: polls the links and prints
/// the same lines ([`protocol`]). Arguments: the poll interval in seconds, the
/// known-good command (`waymark known-good latest <host>` as the host runs it).
pub const POLL_SCRIPT: &str = include_str!("host-poll.sh");
