//! The command line: one `*Args` struct and `cmd_*` function per subcommand.

mod converge;
#[cfg(feature = "demo")]
mod demo;
mod deploy;
mod diff;
mod fleet;
mod host_watch;
mod known_good;
mod release;
mod serve;

use clap::{Parser, Subcommand};

use crate::ExitStatus;
use crate::printer::{ColorChoice, Printer};

/// Gated NixOS deploys: a closure is only called good after it has proven itself
#[derive(Debug, Parser)]
#[command(name = "waymark", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// When to colour output: auto, always, never (`NO_COLOR` and CLICOLOR are honoured)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Print details (data sources, timings) on stderr
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    Diff(diff::DiffArgs),
    Deploy(deploy::DeployArgs),
    Converge(converge::ConvergeArgs),
    HostWatch(host_watch::HostWatchArgs),
    Fleet(fleet::FleetArgs),
    KnownGood(known_good::KnownGoodArgs),
    Release(release::ReleaseArgs),
    Serve(serve::ServeArgs),
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// A throw-away fleet on this machine (not in this build: see its error)
    #[cfg(not(feature = "demo"))]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Relay stdin and stdout to a Unix socket: how a deploy's `nix copy` reaches a
    /// host's nix-daemon through a socket forwarded over ssh (internal)
    #[command(hide = true)]
    NixDaemonRelay {
        /// The local end of the forwarded socket
        socket: std::path::PathBuf,
    },
}

/// Options every command shares.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub color: ColorChoice,
    pub printer: Printer,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    let global = Global {
        color: cli.color,
        printer: Printer {
            verbose: cli.verbose,
            quiet: cli.quiet,
        },
    };
    match cli.command {
        Command::Diff(args) => diff::cmd_diff(global, &args),
        Command::Deploy(args) => deploy::cmd_deploy(global, &args),
        Command::Converge(args) => converge::cmd_converge(global, &args),
        Command::HostWatch(args) => host_watch::cmd_host_watch(global, &args),
        Command::Fleet(args) => fleet::cmd_fleet(global, &args),
        Command::KnownGood(args) => known_good::cmd_known_good(global, &args),
        Command::Release(args) => release::cmd_release(global, &args),
        Command::Serve(args) => serve::cmd_serve(global, &args),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::cmd_demo(global, &args),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => anyhow::bail!(
            "this waymark is built without its demo (the installed program carries no test lab): \
             run `nix run github:waymark-nix/waymark#demo`, or `cargo run -p waymark -- demo` in a checkout"
        ),
        Command::NixDaemonRelay { socket } => {
            use anyhow::Context as _;
            waymark_deploy::relay(&socket)
                .with_context(|| format!("relaying to {}", socket.display()))?;
            Ok(ExitStatus::Success)
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from now on, and the guard that stops catching
/// them when dropped (also by a panic): a thread waiting on the signals then ends, and
/// a `std::thread::scope` holding it can too.
pub(crate) fn catch_termination()
-> anyhow::Result<(signal_hook::iterator::Signals, TerminationGuard)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| anyhow::anyhow!("handling signals: {e}"))?;
    let guard = TerminationGuard(signals.handle());
    Ok((signals, guard))
}

/// See [`catch_termination`].
pub(crate) struct TerminationGuard(signal_hook::iterator::Handle);

impl Drop for TerminationGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}
