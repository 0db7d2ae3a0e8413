//! A model of a NixOS-like system: packages with outputs and dependencies, rendered to a
//! Nix expression whose builder is a static busybox.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

/// A reference to one output of a package: (package key, output name).
pub type OutputRef = (String, String);

/// One package of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pkg {
    /// Unique key in its generation (the attribute name); usually the package name.
    pub key: String,
    /// Package name (`python3.11-requests`).
    pub pname: String,
    /// Version, possibly empty.
    pub version: String,
    /// Outputs, `out` first.
    pub outputs: Vec<String>,
    /// Run-time dependencies: written into the outputs, so they are in the closure.
    pub deps: Vec<OutputRef>,
    /// Build-time-only dependencies (keys): inputs of the derivation, not of the closure.
    pub build_deps: Vec<String>,
    /// Extra environment variables of the derivation.
    pub env: BTreeMap<String, String>,
    /// Extra arguments given to the builder.
    pub extra_args: Vec<String>,
    /// Contents of a source file (an input source of the derivation), if any.
    pub src: Option<String>,
    /// Bytes of data written to each output (drives NAR sizes).
    pub size: u64,
}

impl Pkg {
    /// A package with one `out` output, no dependencies and 1 KiB of data.
    pub fn new(pname: &str, version: &str) -> Self {
        Self {
            key: pname.to_owned(),
            pname: pname.to_owned(),
            version: version.to_owned(),
            outputs: vec!["out".to_owned()],
            deps: Vec::new(),
            build_deps: Vec::new(),
            env: BTreeMap::new(),
            extra_args: Vec::new(),
            src: None,
            size: 1024,
        }
    }

    /// Sets the attribute key (for a second version of one package name).
    #[must_use]
    pub fn key(mut self, key: &str) -> Self {
        key.clone_into(&mut self.key);
        self
    }

    /// Sets the outputs.
    #[must_use]
    pub fn outputs(mut self, outputs: &[&str]) -> Self {
        self.outputs = outputs.iter().map(|&o| o.to_owned()).collect();
        self
    }

    /// Adds run-time dependencies, given as `key` (its `out`) or `key.output`.
    #[must_use]
    pub fn deps(mut self, deps: &[&str]) -> Self {
        self.deps.extend(deps.iter().map(|d| output_ref(d)));
        self
    }

    /// Adds build-time-only dependencies.
    #[must_use]
    pub fn build_deps(mut self, keys: &[&str]) -> Self {
        self.build_deps.extend(keys.iter().map(|&k| k.to_owned()));
        self
    }

    /// Sets an environment variable of the derivation.
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Sets the builder's extra arguments.
    #[must_use]
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|&a| a.to_owned()).collect();
        self
    }

    /// Sets the source file's contents.
    #[must_use]
    pub fn src(mut self, contents: &str) -> Self {
        self.src = Some(contents.to_owned());
        self
    }

    /// Sets the data size of each output.
    #[must_use]
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = bytes;
        self
    }

    /// The derivation name.
    pub fn name(&self) -> String {
        if self.version.is_empty() {
            self.pname.clone()
        } else {
            format!("{}-{}", self.pname, self.version)
        }
    }

    /// What each output refers to: `out` → deps and own `lib`; `lib` → deps; `bin`, `dev`
    /// → own `out` (and `lib`); documentation outputs → nothing. Acyclic by construction.
    pub fn output_refs(&self, output: &str) -> Vec<OutputRef> {
        let own = |o: &str| {
            self.outputs
                .iter()
                .any(|x| x == o)
                .then(|| (self.key.clone(), o.to_owned()))
        };
        match output {
            "out" => self.deps.iter().cloned().chain(own("lib")).collect(),
            "lib" => self.deps.clone(),
            "bin" => own("out").into_iter().collect(),
            "dev" => own("out").into_iter().chain(own("lib")).collect(),
            _ => Vec::new(),
        }
    }
}

/// Parses `key` or `key.output`.
fn output_ref(s: &str) -> OutputRef {
    match s.rsplit_once('.') {
        Some((k, o)) if ["out", "lib", "dev", "bin", "man", "modules", "info"].contains(&o) => {
            (k.to_owned(), o.to_owned())
        }
        _ => (s.to_owned(), "out".to_owned()),
    }
}

/// One generation of a host: its packages and the top-level selection.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Host name (in `nixos-system-<host>-<version>`).
    pub host: String,
    /// System version.
    pub version: String,
    /// Every package, in dependency order or not.
    pub packages: Vec<Pkg>,
    /// The system's package selection (`environment.systemPackages`).
    pub selected: Vec<OutputRef>,
    /// Activation actions (`dry-activate`, `test`, `switch`, `boot`) that fail on purpose;
    /// on a host whose PID 1 is systemd also `unit-crash` (the system's service exits
    /// with an error once started) and `unit-start` (it fails to start).
    pub fail: Vec<String>,
}

/// Key of the package-set pseudo-package made from the selection.
pub const SYSTEM_PATH: &str = "system-path";

impl Generation {
    /// Packages including the `system-path` made from the selection.
    pub fn all_packages(&self) -> Vec<Pkg> {
        let mut all = self.packages.clone();
        let mut sp = Pkg::new(SYSTEM_PATH, "");
        sp.deps.clone_from(&self.selected);
        all.push(sp);
        all
    }

    /// The toplevel's derivation name.
    pub fn toplevel_name(&self) -> String {
        format!("nixos-system-{}-{}", self.host, self.version)
    }

    /// Every (key, output) in the run-time closure of the toplevel.
    pub fn closure(&self) -> BTreeSet<OutputRef> {
        let all = self.all_packages();
        let by_key: BTreeMap<&str, &Pkg> = all.iter().map(|p| (p.key.as_str(), p)).collect();
        let mut seen = BTreeSet::new();
        let mut todo = vec![(SYSTEM_PATH.to_owned(), "out".to_owned())];
        while let Some(r) = todo.pop() {
            if !seen.insert(r.clone()) {
                continue;
            }
            if let Some(p) = by_key.get(r.0.as_str()) {
                todo.extend(p.output_refs(&r.1));
            }
        }
        seen
    }

    /// Renders the Nix expression for this generation (an attribute set's body).
    fn render(&self, out: &mut String) {
        out.push_str("let p = {\n");
        for pkg in self.all_packages() {
            render_pkg(&pkg, out);
        }
        let fail: Vec<String> = self.fail.iter().map(|f| nix_str(f)).collect();
        let _ = writeln!(
            out,
            "}}; in toplevel {{ name = {}; version = {}; sw = p.{}.out; fail = [ {} ]; }}",
            nix_str(&self.toplevel_name()),
            nix_str(&self.version),
            nix_str(SYSTEM_PATH),
            fail.join(" ")
        );
    }
}

fn nix_str(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "\\${")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

fn render_pkg(pkg: &Pkg, out: &mut String) {
    let list = |items: Vec<String>| format!("[ {} ]", items.join(" "));
    let oref = |(k, o): &OutputRef| {
        if *k == pkg.key {
            format!("(builtins.placeholder {})", nix_str(o))
        } else {
            format!("p.{}.{}", nix_str(k), nix_str(o))
        }
    };
    let _ = write!(
        out,
        "  {} = mk {{ pname = {}; version = {}; outputs = {}; size = {}; args = {}; buildDeps = {}; src = {}; env = {{",
        nix_str(&pkg.key),
        nix_str(&pkg.pname),
        nix_str(&pkg.version),
        list(pkg.outputs.iter().map(|o| nix_str(o)).collect()),
        pkg.size,
        list(pkg.extra_args.iter().map(|a| nix_str(a)).collect()),
        list(
            pkg.build_deps
                .iter()
                .map(|k| format!("p.{}.out", nix_str(k)))
                .collect()
        ),
        pkg.src.as_ref().map_or("null".to_owned(), |s| format!(
            "builtins.toFile {} {}",
            nix_str(&format!("{}-source", pkg.pname)),
            nix_str(s)
        )),
    );
    for (k, v) in &pkg.env {
        let _ = write!(out, " {} = {};", nix_str(k), nix_str(v));
    }
    for o in &pkg.outputs {
        let refs = pkg.output_refs(o);
        let _ = write!(
            out,
            " {} = {};",
            nix_str(&format!("refs_{o}")),
            list(refs.iter().map(oref).collect())
        );
    }
    out.push_str(" }; };\n");
}

/// The builder of every package: one directory per output, holding its references (so
/// Nix records them) and `size` bytes of data.
const BUILD_SCRIPT: &str = r#"
for o in $outputs; do
  eval "d=\$$o"; eval "r=\${refs_$o:-}"
  mkdir -p "$d/nix-support"
  echo "$r" > "$d/nix-support/references"
  head -c "$size" /dev/zero > "$d/data"
done
[ -z "${src:-}" ] || cp "$src" "$out/source"
"#;

/// `bin/switch-to-configuration` of the toplevel: records each action in a state
/// directory, refuses `test` and `switch` as NixOS 26.05's switch inhibitors do when the
/// state directory has an `inhibited` file, and fails when told to (a planted failure in
/// the closure, or a `fail-<action>`
/// file in the state directory). The state directory is `$WAYMARK_TESTBED_STATE`, default
/// `/run/waymark-testbed`; with the default (a simulated host, whose `/run` is its own),
/// `test` and `switch` also point `/run/current-system` at the closure, as NixOS does.
const SWITCH_SCRIPT: &str = r#"set -eu
action="${1:-}"
self="$(cd "$(dirname "$0")/.." && pwd -P)"
state="${WAYMARK_TESTBED_STATE:-/run/waymark-testbed}"
case "$action" in
  dry-activate|test|switch|boot) ;;
  *) echo "usage: switch-to-configuration dry-activate|test|switch|boot" >&2; exit 1 ;;
esac
# As NixOS compares the new system's inhibitors with the running one's: re-activating
# what runs is never inhibited.
if [ -e "$state/inhibited" ] && { [ "$action" = test ] || [ "$action" = switch ]; } &&
  [ "$(readlink -f /run/current-system 2>/dev/null)" != "$self" ]; then
  echo "There are changes to critical components of the system: dbus-implementation." >&2
  echo "Refusing to switch (switch inhibitors); please run 'nixos-rebuild boot' and reboot." >&2
  exit 1
fi
# A `fail-<action>` file in the state directory fails every closure, or only the one
# whose store path it holds.
if [ -e "$self/fail-$action" ] || { [ -e "$state/fail-$action" ] &&
  { [ ! -s "$state/fail-$action" ] || [ "$(cat "$state/fail-$action")" = "$self" ]; }; }; then
  echo "switch-to-configuration: $action failed (planted failure)" >&2
  exit 1
fi
mkdir -p "$state"
case "$action" in
  dry-activate) echo "would activate the configuration..."; echo "would restart the following units: sshd.service" ;;
  test|switch)
    ln -sfn "$self" "$state/current-system"
    # On a simulated host (its own /run, no WAYMARK_TESTBED_STATE) this is NixOS's link.
    [ -n "${WAYMARK_TESTBED_STATE:-}" ] || ln -sfn "$self" /run/current-system
    ;;
esac
status=0
# Where systemd is PID 1 (a lab host booted with systemd-nspawn), the system has one
# service, written as a runtime unit and restarted by `test` and `switch` as NixOS
# starts a system's units. Planted `unit-crash`: it starts, then exits with an error
# (the start succeeds: only a failed-units check sees it); `unit-start`: it fails to
# start, and this
# script ends with status 4 naming it, as NixOS's does.
if [ -d /run/systemd/system ] && [ -z "${WAYMARK_TESTBED_STATE:-}" ] &&
  { [ "$action" = test ] || [ "$action" = switch ]; }; then
  unit=waymark-testbed-app.service
  type=simple; run="/bin/sleep infinity"
  if [ -e "$self/fail-unit-crash" ]; then run="/bin/sh -c 'echo crashed >&2; exit 3'"; fi
  if [ -e "$self/fail-unit-start" ]; then type=oneshot; run="/bin/sh -c 'echo cannot start >&2; exit 3'"; fi
  printf '[Unit]\nDescription=app of %s\n[Service]\nType=%s\nExecStart=%s\n' "$self" "$type" "$run" \
    > /run/systemd/system/$unit
  systemctl daemon-reload
  if ! systemctl restart $unit; then
    echo "warning: the following units failed: $unit" >&2
    status=4
  fi
fi
[ "$action" = dry-activate ] || [ "$action" = test ] || ln -sfn "$self" "$state/boot-system"
echo "$(date +%s) $action $self" >> "$state/log"
exit $status
"#;

/// The Nix system of this machine (`x86_64-linux`).
pub fn this_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Renders a Nix file with one attribute per generation name. The file expects the
/// static busybox at `./busybox/busybox` beside it, and evaluates in pure mode too (a
/// flake can import it), where `builtins.currentSystem` does not exist.
pub fn render_file(generations: &[(&str, &Generation)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "let\n  bb = builtins.path {{ path = ./busybox; name = \"busybox-static\"; }};\n  system = builtins.currentSystem or {};",
        nix_str(&this_system())
    );
    let _ = writeln!(
        out,
        r##"  mk = {{ pname, version, outputs, size, args, buildDeps, src, env }}:
    derivation (env // {{
      name = if version == "" then pname else "${{pname}}-${{version}}";
      inherit pname version outputs size buildDeps system;
      builder = "${{bb}}/busybox";
      args = [ "sh" "-eu" "-c" {} "builder" ] ++ args;
      PATH = "${{bb}}";
    }} // (if src == null then {{ }} else {{ inherit src; }}));
  toplevel = {{ name, version, sw, fail }}: derivation {{
    inherit name sw fail system;
    builder = "${{bb}}/busybox";
    PATH = "${{bb}}";
    switch = "#!${{bb}}/busybox sh\n" + {};
    args = [ "sh" "-eu" "-c" ''
      mkdir -p $out/bin $out/etc
      echo "$switch" > $out/bin/switch-to-configuration
      chmod +x $out/bin/switch-to-configuration
      ln -s $sw $out/sw
      echo "{{}}" > $out/etc/waymark-testbed.json
      printf '%s\n' "${{version}}" > $out/nixos-version
      for f in $fail; do touch $out/fail-$f; done
    '' ];
  }};
in {{"##,
        nix_str(BUILD_SCRIPT),
        nix_str(SWITCH_SCRIPT)
    );
    for (attr, generation) in generations {
        let _ = write!(out, "  {} = ", nix_str(attr));
        generation.render(&mut out);
        out.push_str("  ;\n");
    }
    out.push_str("}\n");
    out
}
