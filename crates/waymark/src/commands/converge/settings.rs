//! What each host is kept on and its drift policy: the configuration file
//! (docs/converge.md, "Configuration") and the options on top of it.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use waymark_converge::{Desired, Policy};

use super::ConvergeArgs;

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The default drift policy.
    #[serde(default)]
    drift: Option<Policy>,
    /// Per host.
    #[serde(default)]
    hosts: BTreeMap<String, HostConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostConfig {
    #[serde(default)]
    drift: Option<Policy>,
    #[serde(default)]
    desired: Option<DesiredConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", untagged)]
enum DesiredConfig {
    /// `"release"` or `"hold"`.
    Word(String),
    /// `{ "mark": "…" }`.
    Mark { mark: String },
}

/// What each host should be kept on, and its policy, from the file and the options.
pub fn host_settings(
    args: &ConvergeArgs,
    names: &[String],
) -> anyhow::Result<BTreeMap<String, (Policy, Option<Desired>)>> {
    let config: Config = match &args.config {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("--config {}: cannot read it", path.display()))?;
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "--config {}: not a converge configuration (docs/converge.md)",
                    path.display()
                )
            })?
        }
        None => Config::default(),
    };
    let known = |h: &str, what: &str| -> anyhow::Result<()> {
        if names.iter().any(|n| n == h) {
            Ok(())
        } else {
            bail!(
                "{what} {h:?}: not a host this run converges (hosts: {})",
                names.join(", ")
            )
        }
    };
    let default = config.drift.unwrap_or_else(|| args.drift.into());
    let mut out: BTreeMap<String, (Policy, Option<Desired>)> =
        names.iter().map(|n| (n.clone(), (default, None))).collect();
    for (h, c) in &config.hosts {
        known(h, "--config: host")?;
        let entry = out.get_mut(h).expect("checked");
        if let Some(p) = c.drift {
            entry.0 = p;
        }
        entry.1 = match &c.desired {
            None => None,
            Some(DesiredConfig::Word(w)) if w == "release" => None,
            Some(DesiredConfig::Word(w)) if w == "hold" => Some(Desired::Hold),
            Some(DesiredConfig::Word(w)) => {
                bail!(
                    "--config: host {h}: desired {w:?} is not \"release\", \"hold\" or {{\"mark\": …}}"
                )
            }
            Some(DesiredConfig::Mark { mark }) => Some(Desired::Mark {
                mark: mark.clone(),
                closure: None,
            }),
        };
    }
    for h in &args.restore {
        known(h, "--restore")?;
        out.get_mut(h).expect("checked").0 = Policy::Restore;
    }
    for h in &args.hold {
        known(h, "--hold")?;
        out.get_mut(h).expect("checked").1 = Some(Desired::Hold);
    }
    for p in &args.pin {
        let Some((h, mark)) = p.split_once('=') else {
            bail!("--pin {p:?}: expected HOST=MARK (a mark from `waymark known-good list HOST`)");
        };
        known(h, "--pin")?;
        if !waymark_known_good::valid_mark(mark) {
            bail!("--pin {p:?}: {mark:?} is not a mark name (see `waymark known-good list {h}`)");
        }
        out.get_mut(h).expect("checked").1 = Some(Desired::Mark {
            mark: mark.to_owned(),
            closure: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConvergeArgs,
    }

    fn args(line: &[&str]) -> ConvergeArgs {
        Cli::parse_from(std::iter::once("converge").chain(line.iter().copied())).args
    }

    #[test]
    fn settings_come_from_the_file_then_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(
            &file,
            r#"{"drift": "restore", "hosts": {"db": {"drift": "report", "desired": "hold"},
                "web1": {"desired": {"mark": "20261123T172900Z-1a2b3c4"}}}}"#,
        )
        .unwrap();
        let names: Vec<String> = ["db", "web1", "web2"].map(String::from).to_vec();
        let config = file.display().to_string();
        let s = host_settings(&args(&["--config", &config]), &names).unwrap();
        assert_eq!(s["db"], (Policy::Report, Some(Desired::Hold)));
        assert!(matches!(
            &s["web1"],
            (Policy::Restore, Some(Desired::Mark { .. }))
        ));
        assert_eq!(s["web2"], (Policy::Restore, None));
        let s = host_settings(&args(&["--restore", "web2", "--hold", "web1"]), &names).unwrap();
        assert_eq!(s["web2"].0, Policy::Restore);
        assert_eq!(s["web1"], (Policy::Report, Some(Desired::Hold)));
        // Names that are not converged, bad pins, bad files: one clear error each.
        let e = host_settings(&args(&["--restore", "mail"]), &names).unwrap_err();
        assert!(e.to_string().contains("\"mail\""), "{e}");
        let e = host_settings(&args(&["--pin", "web1"]), &names).unwrap_err();
        assert!(e.to_string().contains("HOST=MARK"), "{e}");
        std::fs::write(&file, r#"{"hosts": {"db": {"policy": "x"}}}"#).unwrap();
        assert!(host_settings(&args(&["--config", &config]), &names).is_err());
    }
}
