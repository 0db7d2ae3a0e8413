//! The fleet description: what the flake's `lib.fleet` (nix/lib/fleet.nix) prints with
//! `nix eval --json <flake>#waymark`, parsed and checked again before anything is built.
//! Pure: no I/O.
//!
//! # Example
//! ```
//! let json = r#"{"hosts": {"web": {"toplevel": null, "targetHost": "web.example", "sshUser": "root",
//!   "buildHost": null, "allowBuildOnTarget": false, "tags": ["edge"], "healthChecks": [],
//!   "activationTimeout": 60, "confirmTimeout": 30, "tagReleases": true, "dependsOn": []}},
//!   "waves": [["web"]]}"#;
//! let fleet = waymark_fleet::Fleet::parse(json.as_bytes())?;
//! assert_eq!(fleet.host("web")?.target_host, "web.example");
//! # Ok::<(), waymark_fleet::Error>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a fleet description is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not the shape `lib.fleet` prints.
    #[error("the fleet description is not what lib.fleet prints: {0}")]
    Shape(String),
    /// A host the fleet does not declare.
    #[error("unknown host {name} (the fleet's deployable hosts: {known})")]
    UnknownHost { name: String, known: String },
    /// A declaration that cannot be deployed.
    #[error("host {host}: {problem}")]
    Invalid { host: String, problem: String },
}

/// A health check run after activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Its name in reports.
    pub name: String,
    /// `command` or `http`.
    pub kind: String,
    /// The command run on the target.
    pub command: Option<String>,
    /// The URL fetched from the target.
    pub url: Option<String>,
    /// Seconds it may take.
    pub timeout: u64,
}

/// How one host is deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// The system's derivation path, when the configuration has one.
    pub toplevel: Option<String>,
    /// The system's output path (what the derivation builds), when known.
    #[serde(default)]
    pub closure: Option<String>,
    /// Address the deploy connects to.
    pub target_host: String,
    /// SSH user on the target.
    pub ssh_user: String,
    /// The fleet host that builds this one (`None`: the deploying machine).
    pub build_host: Option<String>,
    /// Whether building on the target itself is allowed.
    pub allow_build_on_target: bool,
    /// Tags for selection.
    pub tags: Vec<String>,
    /// Checks that gate the switch.
    pub health_checks: Vec<HealthCheck>,
    /// Seconds an activation may take.
    pub activation_timeout: u64,
    /// Seconds the confirmation may take before the target rolls back by itself.
    pub confirm_timeout: u64,
    /// Whether a deploy tags a release.
    pub tag_releases: bool,
    /// Hosts that must be good first.
    pub depends_on: Vec<String>,
    /// On a build host: the secret key that signs what it builds (a path there).
    #[serde(default)]
    pub signing_key_file: Option<String>,
}

/// The fleet: hosts and the order to deploy them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Hosts by name.
    pub hosts: BTreeMap<String, Host>,
    /// Deploy order: each wave's hosts depend only on hosts of earlier waves.
    pub waves: Vec<Vec<String>>,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '.' | '_' | '-'))
}

impl Fleet {
    /// Parses and checks a description.
    ///
    /// # Errors
    /// Not the expected shape, or declarations that cannot be deployed.
    pub fn parse(json: &[u8]) -> Result<Self, Error> {
        let fleet: Self = serde_json::from_slice(json).map_err(|e| Error::Shape(e.to_string()))?;
        fleet.check()?;
        Ok(fleet)
    }

    /// Checks what the deploy relies on, whoever produced the description.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(&self) -> Result<(), Error> {
        let invalid = |host: &str, problem: String| Error::Invalid {
            host: host.to_owned(),
            problem,
        };
        for (name, h) in &self.hosts {
            if !valid_name(name) {
                return Err(invalid(name, "not a valid host name".into()));
            }
            if h.target_host.trim().is_empty() {
                return Err(invalid(
                    name,
                    "no target address (waymark.deploy.targetHost)".into(),
                ));
            }
            if h.ssh_user.trim().is_empty() {
                return Err(invalid(name, "no SSH user (waymark.deploy.sshUser)".into()));
            }
            if let Some(b) = &h.build_host
                && !self.hosts.contains_key(b)
            {
                return Err(invalid(
                    name,
                    format!("build host {b} is not a host of the fleet"),
                ));
            }
            if h.activation_timeout == 0 || h.confirm_timeout == 0 {
                return Err(invalid(name, "timeouts must be positive".into()));
            }
        }
        let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, wave) in self.waves.iter().enumerate() {
            for n in wave {
                if !self.hosts.contains_key(n) {
                    return Err(Error::Shape(format!(
                        "wave {i} names {n}, which is not a host"
                    )));
                }
                if placed.insert(n, i).is_some() {
                    return Err(Error::Shape(format!("{n} is in more than one wave")));
                }
            }
        }
        for (name, h) in &self.hosts {
            let Some(&wave) = placed.get(name.as_str()) else {
                return Err(Error::Shape(format!("{name} is in no wave")));
            };
            for dep in &h.depends_on {
                match placed.get(dep.as_str()) {
                    Some(&d) if d < wave => {}
                    Some(_) => {
                        return Err(invalid(
                            name,
                            format!("depends on {dep}, which is not deployed before it"),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            name,
                            format!("depends on {dep}, which is not a host of the fleet"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// One host's declaration.
    ///
    /// # Errors
    /// The fleet does not declare it.
    pub fn host(&self, name: &str) -> Result<&Host, Error> {
        self.hosts.get(name).ok_or_else(|| Error::UnknownHost {
            name: name.to_owned(),
            known: if self.hosts.is_empty() {
                "none".to_owned()
            } else {
                self.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(waves: &str, web: &str) -> Result<Fleet, Error> {
        let host = |extra: &str| {
            let mut h = serde_json::json!({"toplevel": null, "targetHost": "h", "sshUser": "root",
                "buildHost": null, "allowBuildOnTarget": false, "tags": [], "healthChecks": [],
                "activationTimeout": 60, "confirmTimeout": 30, "tagReleases": false, "dependsOn": []});
            let extra: serde_json::Value =
                serde_json::from_str(&format!("{{{}}}", extra.trim_start_matches(','))).unwrap();
            for (k, v) in extra.as_object().unwrap() {
                h[k] = v.clone();
            }
            h
        };
        let doc = serde_json::json!({"hosts": {"db": host(""), "web": host(web)}, "waves": serde_json::from_str::<serde_json::Value>(waves).unwrap()});
        Fleet::parse(doc.to_string().as_bytes())
    }

    #[test]
    fn checks_order_and_declarations() {
        assert!(fleet(r#"[["db"], ["web"]]"#, r#", "dependsOn": ["db"]"#).is_ok());
        let err = fleet(r#"[["db", "web"]]"#, r#", "dependsOn": ["db"]"#).unwrap_err();
        assert!(err.to_string().contains("not deployed before it"), "{err}");
        assert!(
            fleet(r#"[["db"]]"#, "")
                .unwrap_err()
                .to_string()
                .contains("web is in no wave")
        );
        let err = fleet(r#"[["db", "web"]]"#, r#", "targetHost": " ""#).unwrap_err();
        assert!(err.to_string().contains("no target address"), "{err}");
        let err = fleet(r#"[["db", "web"]]"#, r#", "buildHost": "nope""#).unwrap_err();
        assert!(err.to_string().contains("build host nope"), "{err}");
        let f = fleet(r#"[["db", "web"]]"#, "").unwrap();
        assert!(
            f.host("mail")
                .unwrap_err()
                .to_string()
                .contains("deployable hosts: db, web")
        );
    }
}
