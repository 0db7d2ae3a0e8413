//! `waymark fleet`: the fleet as the deploy reads it.

use clap::Args;
use waymark_deploy::Processes;
use waymark_fleet::{Fleet, Host};

use super::Global;
use crate::ExitStatus;
use crate::printer::{write_json, write_stdout};

/// Show the fleet: deployable hosts, how each is deployed, and the deploy order
///
/// Reads the flake output `waymark` (`waymark = waymark.lib.fleet
/// self.nixosConfigurations;`) with `nix eval --json`: evaluation only, nothing is
/// built. Bad declarations (an unknown build host or dependency, a cycle, a missing
/// target address) are reported before any deploy starts.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Show this host's declaration only
    pub host: Option<String>,
    /// The fleet's flake (an output other than `waymark` with FLAKE#ATTR)
    #[arg(long, default_value = ".")]
    pub flake: String,
    /// Print JSON (the fleet description, or the host's declaration)
    #[arg(long)]
    pub json: bool,
}

/// Evaluates the fleet description of a flake, `nix eval` among `processes`.
pub fn read_fleet(flake: &str, processes: &Processes) -> anyhow::Result<Fleet> {
    Ok(waymark_deploy::evaluate_fleet(flake, &[], processes)?)
}

fn line(name: &str, h: &Host) -> String {
    let build = h
        .build_host
        .as_deref()
        .map_or_else(|| "built here".to_owned(), |b| format!("built on {b}"));
    let mut s = format!(
        "{name:<16} {:<28} {build:<20}",
        format!("{}@{}", h.ssh_user, h.target_host)
    );
    if !h.depends_on.is_empty() {
        s.push_str(&format!(" after: {}", h.depends_on.join(",")));
    }
    if !h.tags.is_empty() {
        s.push_str(&format!(" tags: {}", h.tags.join(",")));
    }
    s.trim_end().to_owned()
}

pub fn cmd_fleet(_global: Global, args: &FleetArgs) -> anyhow::Result<ExitStatus> {
    let fleet = read_fleet(&args.flake, &Processes::default())?;
    match &args.host {
        Some(name) => {
            let h = fleet.host(name)?;
            if args.json {
                write_json(h)?;
            } else {
                write_stdout(&format!(
                    "{}\ntoplevel: {}\n",
                    line(name, h),
                    h.toplevel.as_deref().unwrap_or("(none)")
                ))?;
            }
        }
        None if args.json => write_json(&fleet)?,
        None => {
            let mut out = String::new();
            for (i, wave) in fleet.waves.iter().enumerate() {
                for name in wave {
                    out.push_str(&format!(
                        "wave {}  {}\n",
                        i + 1,
                        line(name, &fleet.hosts[name])
                    ));
                }
            }
            write_stdout(&out)?;
        }
    }
    Ok(ExitStatus::Success)
}
