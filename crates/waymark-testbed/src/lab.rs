//! A deploy lab: a [`SimFleet`] with a build host and targets that run an installed
//! system, a [`FleetFlake`] declaring them, and the deploying machine's namespace. What
//! the deploy tests, the fleet demo and the deploy benchmark all stand on.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Result;
use crate::fixtures;
use crate::{FlakeHost, FleetFlake, Generation, SimFleet};

/// The lab.
#[derive(Debug)]
pub struct Lab {
    dir: PathBuf,
    waymark: PathBuf,
    /// The simulated machines (`builder` and the targets).
    pub fleet: SimFleet,
    /// The fleet's flake.
    pub flake: FleetFlake,
    /// Toplevels of the flake's generations, built on the builder: `g0` (what the
    /// targets run at the start), `g1` (its update) and `g2` (an update whose switch
    /// test fails).
    pub generations: Vec<String>,
}

/// The lab's generations, `g0`, `g1`, `g2` (see [`Lab::generations`]).
pub fn generations() -> Vec<Generation> {
    let mut failing = fixtures::web_gen2();
    failing.version.push_str("-failing");
    failing.fail = vec!["test".into()];
    vec![fixtures::web_gen1(), fixtures::web_gen2(), failing]
}

/// The `waymark.deploy` attributes of a target built on `builder`, plus `extra`.
pub fn target_decl(extra: &str) -> String {
    format!(r#"{{ buildHost = "builder"; confirmTimeout = 3; }} // {{ {extra} }}"#)
}

impl Lab {
    /// Starts `builder` and `targets` in `dir`, builds the generations on the builder
    /// and installs `g0` on every target. `waymark` is the binary the deployer runs
    /// (and the hosts run for their known-good marks).
    pub fn new(dir: &Path, targets: &[&str], waymark: &Path) -> Result<Self> {
        Self::with_targets(dir, targets, waymark, |fleet, t| fleet.start(t).map(drop))
    }

    /// [`Lab::new`] with targets started by `start` (given the fleet and the target's
    /// name; it must make the host reachable as that name in the fleet's ssh
    /// configuration), as [`crate::SystemdLab`] boots a real systemd.
    pub fn with_targets(
        dir: &Path,
        targets: &[&str],
        waymark: &Path,
        mut start: impl FnMut(&mut SimFleet, &str) -> Result<()>,
    ) -> Result<Self> {
        let mut fleet = SimFleet::new(dir)?;
        fleet.start("builder")?;
        for t in targets {
            start(&mut fleet, t)?;
        }
        let mut hosts = vec![FlakeHost {
            name: "builder".into(),
            deploy: format!(
                "{{ signingKeyFile = {:?}; }}",
                fleet.signing_key().display().to_string()
            ),
            generation: None,
            salt: None,
        }];
        hosts.extend(targets.iter().map(|t| FlakeHost {
            name: (*t).to_owned(),
            deploy: target_decl(""),
            generation: Some("g0".into()),
            salt: None,
        }));
        let flake = FleetFlake::create(
            &dir.join("flake"),
            &generations().iter().collect::<Vec<_>>(),
            hosts,
        )?;
        let generations = fleet.build(
            "builder",
            &flake.dir().join("generations.nix"),
            &["g0", "g1", "g2"],
        )?;
        for t in targets {
            fleet.install("builder", t, &generations[0])?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            waymark: waymark.to_owned(),
            fleet,
            flake,
            generations,
        })
    }

    /// The deploying machine's state directory (its deploy records).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("deployer-state")
    }

    /// The command the hosts run for `waymark known-good` (state under their own /nix).
    pub fn remote_waymark(&self) -> String {
        format!(
            "WAYMARK_STATE_DIR=/nix/var/waymark {}",
            self.waymark.display()
        )
    }

    /// `waymark deploy ARGS --flake <the lab's flake>` as the deploying machine runs it.
    pub fn deploy_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = self.fleet.deployer_command(&self.waymark)?;
        cmd.arg("deploy")
            .args(args)
            .arg("--flake")
            .arg(self.flake.dir())
            .env("WAYMARK_REMOTE_COMMAND", self.remote_waymark())
            .env("WAYMARK_STATE_DIR", self.state_dir())
            .env_remove("WAYMARK_FAULT");
        Ok(cmd)
    }

    /// Runs a command line on a host; its trimmed stdout.
    pub fn exec(&self, host: &str, line: &str) -> Result<String> {
        Ok(self.fleet.exec(host, line)?.trim().to_owned())
    }

    /// What `host` runs, its system profile, and its boot default (`none` if unset).
    pub fn system(&self, host: &str) -> Result<(String, String, String)> {
        let out = self.exec(
            host,
            "readlink -e /run/current-system; readlink -e /nix/var/nix/profiles/system; \
             readlink -e /run/waymark-testbed/boot-system || echo none",
        )?;
        let mut l = out.lines().map(str::to_owned);
        Ok((
            l.next().unwrap_or_default(),
            l.next().unwrap_or_default(),
            l.next().unwrap_or_default(),
        ))
    }

    /// The known-good closures of target `host` kept on host `on`, oldest first.
    pub fn marks(&self, host: &str, on: &str) -> Result<Vec<String>> {
        let out = self.exec(
            on,
            &format!("{} known-good list --json", self.remote_waymark()),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| crate::Error::Nix {
            program: "waymark known-good list".into(),
            stderr: e.to_string(),
        })?;
        Ok(v["marks"]
            .as_array()
            .map(|marks| {
                marks
                    .iter()
                    .filter(|m| m["target"] == host)
                    .filter_map(|m| m["closure"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
