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

mod name;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use name::{TARGET_MAX, TARGET_RULE, quoted, valid_target};

/// Why a fleet description is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not the shape `lib.fleet` prints.
    #[error("the fleet description is not what lib.fleet prints: {0}")]
    Shape(String),
    /// A selection item that names no host.
    #[error("--on {item}: {why}")]
    Selection { item: String, why: String },
    /// No host to deploy: nothing named, or a selection that names nothing.
    #[error("no hosts selected: {why}")]
    NothingSelected { why: String },
    /// Dependencies that go round.
    #[error("the hosts depend on each other in a cycle: {cycle}")]
    Cycle { cycle: String },
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
    /// Whether a switch refused by switch inhibitors falls back to the boot default.
    #[serde(default)]
    pub boot_on_inhibited_switch: bool,
}

/// Fleet-wide settings (`lib.fleetWith`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Whether `waymark deploy` with no selection deploys every host.
    #[serde(default)]
    pub deploy_all: bool,
}

/// The fleet: hosts and the order to deploy them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Hosts by name.
    pub hosts: BTreeMap<String, Host>,
    /// Deploy order: each wave's hosts depend only on hosts of earlier waves.
    pub waves: Vec<Vec<String>>,
    /// Fleet-wide settings.
    #[serde(default)]
    pub settings: Settings,
}

/// What a host of a run waits for: the selected hosts it depends on, its build host
/// when that is selected too.
pub type Plan = Vec<(String, Vec<String>)>;

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
            if !valid_target(name) {
                return Err(invalid(
                    &quoted(name),
                    format!("not a valid host name ({TARGET_RULE})"),
                ));
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
            // Both end up on ssh's command line: nothing that could read as an option.
            for (what, value) in [("targetHost", &h.target_host), ("sshUser", &h.ssh_user)] {
                if value.starts_with('-') || value.contains(|c: char| c.is_whitespace() || c == '@')
                {
                    return Err(invalid(
                        name,
                        format!("waymark.deploy.{what} {value:?} is not a host or user name"),
                    ));
                }
            }
            for c in &h.health_checks {
                if let Some(url) = &c.url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err(invalid(
                        name,
                        format!("health check {}: {url:?} is not an http(s) URL", c.name),
                    ));
                }
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

/// Depth-first, keeping the path to name a cycle.
fn visit<'a>(
    n: &'a str,
    deps: &dyn Fn(&str) -> Vec<String>,
    path: &mut Vec<String>,
    done: &mut std::collections::BTreeSet<String>,
    out: &mut Plan,
) -> Result<(), Error> {
    if done.contains(n) {
        return Ok(());
    }
    if let Some(i) = path.iter().position(|p| p == n) {
        let mut cycle = path[i..].to_vec();
        cycle.push(n.to_owned());
        return Err(Error::Cycle {
            cycle: cycle.join(" → "),
        });
    }
    path.push(n.to_owned());
    let d = deps(n);
    for dep in &d {
        visit(dep, deps, path, done, out)?;
    }
    path.pop();
    done.insert(n.to_owned());
    out.push((n.to_owned(), d));
    Ok(())
}

/// One item of an `--on` selection.
#[derive(Debug)]
pub enum Selector<'i> {
    /// `@tag`: the hosts with the tag.
    Tag(&'i str),
    /// `web-*`, `db?`, `[ab]*`: the hosts whose names match.
    Glob(glob::Pattern),
    /// A host's name.
    Name(&'i str),
}

impl<'i> Selector<'i> {
    /// Reads one item (trimmed by the caller).
    ///
    /// # Errors
    /// A bad glob.
    pub fn parse(item: &'i str) -> Result<Self, Error> {
        if let Some(tag) = item.strip_prefix('@') {
            Ok(Self::Tag(tag))
        } else if item.contains(['*', '?', '[']) {
            glob::Pattern::new(item)
                .map(Self::Glob)
                .map_err(|e| Error::Selection {
                    item: item.to_owned(),
                    why: e.to_string(),
                })
        } else {
            Ok(Self::Name(item))
        }
    }

    /// Whether it selects the host `name` with `tags`.
    pub fn matches(&self, name: &str, tags: &[String]) -> bool {
        match self {
            Self::Tag(tag) => tags.iter().any(|t| t == tag),
            Self::Glob(pattern) => pattern.matches(name),
            Self::Name(n) => *n == name,
        }
    }
}

impl Fleet {
    /// The hosts an `--on` selection names, in deploy order: host names, `@tag`, and
    /// globs (`web-*`, `db?`). Each item must name at least one host.
    ///
    /// # Errors
    /// An unknown name, a tag or glob that matches nothing, a bad glob.
    pub fn select(&self, items: &[String]) -> Result<Vec<String>, Error> {
        let mut chosen = std::collections::BTreeSet::new();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            let found: Vec<&String> = match Selector::parse(item)? {
                Selector::Name(name) => vec![
                    self.host(name)
                        .map(|_| self.hosts.get_key_value(name).expect("found").0)?,
                ],
                selector => self
                    .hosts
                    .iter()
                    .filter(|(n, h)| selector.matches(n, &h.tags))
                    .map(|(n, _)| n)
                    .collect(),
            };
            if found.is_empty() {
                return Err(Error::Selection {
                    item: item.to_owned(),
                    why: "matches no host of the fleet".into(),
                });
            }
            chosen.extend(found.into_iter().cloned());
        }
        Ok(self
            .waves
            .iter()
            .flatten()
            .filter(|n| chosen.contains(*n))
            .cloned()
            .collect())
    }

    /// The hosts a deploy goes to, in deploy order: those `selection` names
    /// ([`Fleet::select`]), or, given no selection at all, every host where the fleet
    /// allows it (`deployAll`). A selection that names nothing (`--on ''`, no names on
    /// stdin) is refused: it never means every host.
    ///
    /// # Errors
    /// No selection where the fleet does not allow deploying everything, an empty
    /// selection, or what [`Fleet::select`] refuses.
    pub fn to_deploy(&self, selection: Option<&[String]>) -> Result<Vec<String>, Error> {
        let Some(items) = selection else {
            if self.settings.deploy_all {
                return Ok(self.waves.iter().flatten().cloned().collect());
            }
            return Err(Error::NothingSelected {
                why: "name them, or use --on @tag / --on 'glob*' / --on - (deploying every host at once needs `lib.fleetWith { deployAll = true; }`)".into(),
            });
        };
        let hosts = self.select(items)?;
        if hosts.is_empty() {
            return Err(Error::NothingSelected {
                why: "the selection names none (an empty --on, or no names on stdin); nothing was deployed".into(),
            });
        }
        Ok(hosts)
    }

    /// What each selected host waits for in this run: its `dependsOn` and its build
    /// host, where they are selected too. Hosts come in an order where each follows
    /// what it waits for.
    ///
    /// # Errors
    /// A cycle, named host by host.
    pub fn plan(&self, selected: &[String]) -> Result<Plan, Error> {
        let chosen: std::collections::BTreeSet<&str> =
            selected.iter().map(String::as_str).collect();
        let deps = |n: &str| -> Vec<String> {
            let h = &self.hosts[n];
            let mut d: Vec<String> = h
                .depends_on
                .iter()
                .chain(h.build_host.iter())
                .filter(|d| chosen.contains(d.as_str()))
                .cloned()
                .collect();
            d.sort();
            d.dedup();
            d
        };
        let mut out = Plan::new();
        let mut done = std::collections::BTreeSet::new();
        for n in selected {
            self.host(n)?;
            visit(n, &deps, &mut Vec::new(), &mut done, &mut out)?;
        }
        Ok(out)
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
        let err = fleet(
            r#"[["db", "web"]]"#,
            r#", "targetHost": "-oProxyCommand=x""#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("is not a host or user name"),
            "{err}"
        );
        let err = fleet(
            r#"[["db", "web"]]"#,
            r#", "healthChecks": [{"name": "x", "kind": "http", "command": null, "url": "-K/etc/passwd", "timeout": 5}]"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an http(s) URL"), "{err}");
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

    fn four(builder_deps: &str) -> Fleet {
        let host = |extra: serde_json::Value| {
            let mut h = serde_json::json!({"toplevel": null, "targetHost": "h", "sshUser": "root",
                "buildHost": null, "allowBuildOnTarget": false, "tags": [], "healthChecks": [],
                "activationTimeout": 60, "confirmTimeout": 30, "tagReleases": false, "dependsOn": []});
            for (k, v) in extra.as_object().unwrap() {
                h[k] = v.clone();
            }
            h
        };
        let deps: serde_json::Value = serde_json::from_str(builder_deps).unwrap();
        let doc = serde_json::json!({
            "hosts": {
                "builder": host(serde_json::json!({"dependsOn": deps})),
                "db": host(serde_json::json!({"tags": ["data"], "buildHost": "builder"})),
                "web1": host(serde_json::json!({"tags": ["edge"], "buildHost": "builder", "dependsOn": ["db"]})),
                "web2": host(serde_json::json!({"tags": ["edge"], "buildHost": "builder", "dependsOn": ["db"]})),
            },
            "waves": [["builder", "db"], ["web1", "web2"]],
        });
        // A cycle through build-host edges passes the description's own check.
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn selects_by_name_tag_and_glob_in_deploy_order() {
        let f = four("[]");
        let sel =
            |items: &[&str]| f.select(&items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(sel(&["@edge", "db"]).unwrap(), ["db", "web1", "web2"]);
        assert_eq!(sel(&["web*"]).unwrap(), ["web1", "web2"]);
        assert_eq!(sel(&["web?", "web1"]).unwrap(), ["web1", "web2"]);
        let err = sel(&["@nope"]).unwrap_err().to_string();
        assert!(err.contains("--on @nope: matches no host"), "{err}");
        let err = sel(&["mail"]).unwrap_err().to_string();
        assert!(err.contains("unknown host mail"), "{err}");
        assert!(sel(&["db*x"]).is_err());
        assert!(f.settings == Settings::default() && !f.settings.deploy_all);
    }

    #[test]
    fn only_no_selection_at_all_can_mean_every_host() {
        let mut f = four("[]");
        let items = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let err = f.to_deploy(None).unwrap_err().to_string();
        assert!(err.contains("no hosts selected: name them"), "{err}");
        f.settings.deploy_all = true;
        assert_eq!(
            f.to_deploy(None).unwrap(),
            ["builder", "db", "web1", "web2"]
        );
        // `--on ''`, `--on ,`, or `--on -` reading nothing: refused, even where
        // deploying everything is allowed.
        for empty in [items(&[]), items(&[""]), items(&["", " "])] {
            let err = f.to_deploy(Some(&empty)).unwrap_err().to_string();
            assert!(err.contains("the selection names none"), "{err}");
        }
        assert_eq!(f.to_deploy(Some(&items(&["", "db"]))).unwrap(), ["db"]);
    }

    #[test]
    fn plans_dependencies_and_build_hosts_and_names_cycles() {
        let f = four("[]");
        let all: Vec<String> = ["builder", "db", "web1", "web2"].map(String::from).to_vec();
        let plan = f.plan(&all).unwrap();
        let waits = |n: &str| plan.iter().find(|(h, _)| h == n).unwrap().1.clone();
        assert_eq!(
            waits("web1"),
            ["builder", "db"],
            "its build host and its dependency"
        );
        assert_eq!(waits("db"), ["builder"]);
        assert!(waits("builder").is_empty());
        let pos = |n: &str| plan.iter().position(|(h, _)| h == n).unwrap();
        assert!(pos("builder") < pos("db") && pos("db") < pos("web1"));
        // Unselected hosts impose nothing.
        let plan = f.plan(&["web1".to_owned()]).unwrap();
        assert_eq!(plan, [("web1".to_owned(), vec![])]);
        let cyclic = four(r#"["web1"]"#);
        let err = cyclic.plan(&all).unwrap_err().to_string();
        assert!(
            err.contains("builder → web1 → builder"),
            "the cycle, host by host: {err}"
        );
    }
}
