//! The gated deploy pipeline: build on the builder, diff against what the target runs,
//! dry-activate, switch test with health checks under a watchdog that lives on the
//! target, then commit, confirm over a new connection, and mark known-good.
//!
//! The target-side half is [`AGENT`], a POSIX shell script started detached on the
//! target for gates 4 and 5: it activates, waits for the confirmation, and restores the
//! previous closure by itself when the confirmation does not come, whatever happens to
//! the deployer or its SSH connection. The deployer reports success only after reading,
//! over a new connection, that the agent committed and the target runs the new closure.

mod activation;
mod batch;
mod decide;
mod engine;
mod error;
mod events;
mod fleet;
mod pipeline;
mod processes;
mod progress;
mod protocol;
mod ssh;
mod state;
mod unfinished;

pub use activation::{AgentState, DryRun};
pub use engine::{
    Cancel, Engine, EngineError, Outcome, Request, Selection, Unattended, evaluate_fleet,
    local_flake_dir,
};
pub use error::{
    BuildError, CommandError, MarkError, Refusal, SendError, StateError, StopCause, Verdict,
};
pub use events::{
    BuildProgress, Discard, Event, HostReport, HostResult, SCHEMA, Sink, ms, now, own_cpu_ms,
};
pub use fleet::FleetOptions;
pub use pipeline::{Deployer, Goal, Interaction, Mode, Settings};
pub use processes::Processes;
pub use ssh::{Endpoint, Held, Reply, Ssh, relay};
pub use state::write_atomic;

/// The target-side activation agent (see its header).
pub const AGENT: &str = concat!(include_str!("scripts/lib.sh"), include_str!("agent.sh"));

/// What went wrong with ssh or the run's processes (the transport), outside a gate's
/// own verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A program could not be started.
    #[error("running {program}: {message}")]
    Spawn { program: String, message: String },
    /// The run is ending (interrupted): no connection and no command starts.
    #[error("the run is ending: nothing new starts")]
    Closing,
}
