//! A fleet flake for simulated hosts: a git repository whose `nixosConfigurations` are
//! busybox-built systems (no nixpkgs) with `waymark.deploy` declarations, and whose
//! `waymark` output is Waymark's own `lib.fleet` (nix/lib/fleet.nix). Which generation
//! each host gets is a file the tests rewrite and commit, as a user edits a flake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run;
use crate::error::{Error, Result};
use crate::model::Generation;

/// One host of the flake.
#[derive(Debug, Clone)]
pub struct FlakeHost {
    /// Its name (and ssh alias).
    pub name: String,
    /// Nix attributes merged into its `waymark.deploy` (e.g. `{ buildHost = "builder"; }`).
    pub deploy: String,
    /// The generation it gets (`g0`, `g1`, ...), `None` for a host with no system
    /// (a build host that is not deployed).
    pub generation: Option<String>,
    /// A salt that makes its system a new closure (see [`FleetFlake::set_salt`]).
    pub salt: Option<String>,
}

/// The flake: a committed git repository.
#[derive(Debug)]
pub struct FleetFlake {
    dir: PathBuf,
    hosts: BTreeMap<String, FlakeHost>,
}

/// Waymark's `lib.fleet`, as the flake exports it.
const FLEET_NIX: &str = include_str!("../../../nix/lib/fleet.nix");

/// The default configuration document of [`FleetFlake::add_config_input`].
const DEFAULT_CONFIG: &str = "null\n";

/// `waymark.deploy` defaults of every host, as the module would fill them in.
const DEFAULTS: &str = r#"{ enable = true; sshUser = "root"; buildHost = null;
      allowBuildOnTarget = false; tags = [ ]; healthChecks = [ ]; activationTimeout = 30;
      confirmTimeout = 10; tagReleases = false; dependsOn = [ ]; signingKeyFile = null;
      bootOnInhibitedSwitch = false; }"#;

/// A health check as the module's submodule fills it in: a command run on the target.
pub fn command_check(name: &str, command: &str, timeout: u64) -> String {
    format!(
        r#"{{ name = "{name}"; kind = "command"; command = {command:?}; url = null; timeout = {timeout}; }}"#
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Waymark Test",
            "-c",
            "user.email=test@waymark.invalid",
        ])
        .args(args))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

/// The flake's `flake.nix`; with `config_input`, it declares that input (a directory
/// holding `config.json`, as `waymark serve` gives a job's configuration document) and
/// lets the document's `hosts.<name>` attributes (`generation`, `salt`) override
/// `hosts.nix`; a `null` document (the default, and a teardown's) overrides nothing.
fn flake_nix(config_input: Option<&str>) -> String {
    let (inputs, args, hosts) = match config_input {
        None => (
            String::new(),
            String::new(),
            "import ./hosts.nix".to_owned(),
        ),
        Some(i) => (
            format!("  inputs.{i} = {{ url = \"path:./{i}-default\"; flake = false; }};\n"),
            format!(", {i}"),
            format!(
                "let\n        doc = builtins.fromJSON (builtins.readFile \"${{{i}}}/config.json\");\n        \
                 over = if doc == null then {{ }} else doc.hosts or {{ }};\n      \
                 in builtins.mapAttrs (n: h: h // (over.${{n}} or {{ }})) (import ./hosts.nix)"
            ),
        ),
    };
    format!(
        r#"{{
{inputs}  outputs = {{ self{args} }}:
    let
      bb = builtins.path {{ path = ./busybox; name = "busybox-static"; }};
      # `broken`: a system whose build fails.
      generations = import ./generations.nix // {{
        broken = derivation {{
          name = "nixos-system-broken";
          system = builtins.currentSystem or "{system}";
          builder = "${{bb}}/busybox";
          args = [ "sh" "-c" "echo planted build failure >&2; exit 1" ];
        }};
      }};
      hosts = {hosts};
      defaults = {DEFAULTS};
      # A copy of a system with a salt file: a new closure on every change of salt, as
      # a real system gets one on every commit.
      salted = salt: system:
        if salt == null then system
        else derivation {{
          inherit (system) name;
          system = builtins.currentSystem or "{system}";
          builder = "${{bb}}/busybox";
          args = [ "sh" "-c" "$0 cp -RP ${{system}} $out && $0 chmod u+w $out && echo ${{salt}} > $out/salt" "${{bb}}/busybox" ];
        }};
      host = name: h: {{
        config = {{
          system.build = if h.generation == null then {{ }} else {{ toplevel = salted (h.salt or null) generations.${{h.generation}}; }};
          waymark.deploy = defaults // {{ inherit name; targetHost = name; }} // h.deploy;
        }};
      }};
    in
    {{
      nixosConfigurations = builtins.mapAttrs host hosts;
      waymark = import ./fleet.nix {{ }} self.nixosConfigurations;
    }};
}}
"#,
        system = crate::model::this_system()
    )
}

impl FleetFlake {
    /// Writes the flake in `dir` (created) with `generations` (named `g0`, `g1`, ...)
    /// and `hosts`, and commits it. Its `waymark` output is Waymark's nix/lib/fleet.nix.
    pub fn create(dir: &Path, generations: &[&Generation], hosts: Vec<FlakeHost>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        crate::write_generations(dir, generations)?;
        write(&dir.join("fleet.nix"), FLEET_NIX)?;
        write(&dir.join("flake.nix"), &flake_nix(None))?;
        let flake = Self {
            dir: dir.to_owned(),
            hosts: hosts.into_iter().map(|h| (h.name.clone(), h)).collect(),
        };
        flake.write_hosts()?;
        git(dir, &["init", "-q", "-b", "main"])?;
        // Release tags name a tagger.
        git(dir, &["config", "user.name", "Waymark Lab"])?;
        git(dir, &["config", "user.email", "lab@waymark.invalid"])?;
        flake.commit("fleet")?;
        Ok(flake)
    }

    /// The flake's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Declares the flake input `input` (`path:./INPUT-default`, not a flake) holding a
    /// configuration document, `config.json`, whose `hosts.<name>` attributes override
    /// `hosts.nix`: what `waymark serve` passes with `--override-input`. The default
    /// document (`null`) is not locked: Nix 2.8 cannot fetch a relative `path:` input
    /// at a pinned revision anyway, so the service gives the override on every job.
    /// Commits; returns the commit.
    pub fn add_config_input(&self, input: &str) -> Result<String> {
        let default = self.dir.join(format!("{input}-default"));
        std::fs::create_dir_all(&default).map_err(|source| Error::Write {
            path: default.clone(),
            source,
        })?;
        write(&default.join("config.json"), DEFAULT_CONFIG)?;
        write(&self.dir.join("flake.nix"), &flake_nix(Some(input)))?;
        self.commit(&format!("configuration input {input}"))
    }

    fn write_hosts(&self) -> Result<()> {
        let mut text = String::from("{\n");
        for h in self.hosts.values() {
            let generation = h
                .generation
                .as_ref()
                .map_or_else(|| "null".to_owned(), |g| format!("{g:?}"));
            let salt = h
                .salt
                .as_ref()
                .map_or_else(|| "null".to_owned(), |s| format!("{s:?}"));
            text.push_str(&format!(
                "  {:?} = {{ generation = {generation}; salt = {salt}; deploy = {}; }};\n",
                h.name, h.deploy
            ));
        }
        text.push_str("}\n");
        write(&self.dir.join("hosts.nix"), &text)
    }

    /// Gives `host` another generation and commits; returns the new commit.
    pub fn set_generation(&mut self, host: &str, generation: &str) -> Result<String> {
        self.set_generations(&[host], generation)
    }

    /// Gives `hosts` another generation in one commit; returns it.
    pub fn set_generations(&mut self, hosts: &[&str], generation: &str) -> Result<String> {
        self.update(hosts, &format!("generation {generation}"), |h| {
            h.generation = Some(generation.to_owned());
        })
    }

    /// Changes `hosts` with `change` and commits once; returns the commit.
    fn update(
        &mut self,
        hosts: &[&str],
        what: &str,
        change: impl Fn(&mut FlakeHost),
    ) -> Result<String> {
        for host in hosts {
            if let Some(h) = self.hosts.get_mut(*host) {
                change(h);
            }
        }
        self.write_hosts()?;
        self.commit(&format!("{}: {what}", hosts.join(", ")))
    }

    /// Gives `hosts` a new salt (a new closure of the same generation) in one commit.
    pub fn set_salt(&mut self, hosts: &[&str], salt: &str) -> Result<String> {
        self.update(hosts, &format!("salt {salt}"), |h| {
            h.salt = Some(salt.to_owned());
        })
    }

    /// Replaces `host`'s deploy attributes and commits; returns the new commit.
    pub fn set_deploy(&mut self, host: &str, deploy: &str) -> Result<String> {
        self.update(&[host], "deploy settings", |h| {
            deploy.clone_into(&mut h.deploy);
        })
    }

    /// Commits everything; returns HEAD.
    pub fn commit(&self, message: &str) -> Result<String> {
        git(&self.dir, &["add", "-A"])?;
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message])?;
        Ok(git(&self.dir, &["rev-parse", "HEAD"])?.trim().to_owned())
    }
}
