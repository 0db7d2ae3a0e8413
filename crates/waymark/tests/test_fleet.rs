//! `waymark fleet` on a flake whose hosts are busybox-built systems (no nixpkgs): the
//! flake's `lib.fleet` (nix/lib/fleet.nix, builtins only) evaluated for real.

use serde_json::Value;

use crate::common::run;

const DECL: &str = r#"{ enable = true; sshUser = "root"; buildHost = null; allowBuildOnTarget = false;
  tags = [ ]; healthChecks = [ ]; activationTimeout = 60; confirmTimeout = 30; tagReleases = false;
  dependsOn = [ ]; signingKeyFile = null; bootOnInhibitedSwitch = false; }"#;

/// A fleet flake: `builder`, `db`, and `web` (built on builder, after db), plus `extra`
/// Nix text merged into web's declaration.
fn flake(store: &waymark_testbed::PrivateStore, web_extra: &str) -> std::path::PathBuf {
    let dir = store.root().join(format!("fleet-{}", web_extra.len()));
    std::fs::create_dir_all(&dir).unwrap();
    waymark_testbed::write_generations(&dir, &[&waymark_testbed::fixtures::web_gen1()]).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../nix/lib/fleet.nix"),
        dir.join("fleet.nix"),
    )
    .unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: let
    system = (import ./generations.nix).g0;
    decl = {DECL};
    host = name: extra: {{ config = {{ system.build.toplevel = system;
      waymark.deploy = decl // {{ inherit name; targetHost = "${{name}}.example"; }} // extra; }}; }};
  in {{
    nixosConfigurations = {{
      builder = host "builder" {{ }};
      db = host "db" {{ tags = [ "data" ]; }};
      web = host "web" ({{ buildHost = "builder"; dependsOn = [ "db" ]; tags = [ "edge" ]; }} // {web_extra});
      laptop = {{ config.waymark.deploy.enable = false; }};
    }};
    waymark = import ./fleet.nix {{ }} self.nixosConfigurations;
  }}; }}
"#
        ),
    )
    .unwrap();
    dir
}

fn fleet_cmd(
    store: &waymark_testbed::PrivateStore,
    dir: &std::path::Path,
    args: &[&str],
) -> crate::common::Run {
    let mut cmd = crate::common::waymark(store);
    cmd.arg("fleet")
        .arg("--flake")
        .arg(format!("path:{}", dir.display()))
        .args(args);
    run(cmd)
}

#[test]
fn the_fleet_its_order_and_its_errors() {
    let store = waymark_testbed::PrivateStore::temp().unwrap();
    let ok = flake(&store, "{ }");
    let r = fleet_cmd(&store, &ok, &["--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fleet: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        fleet["waves"],
        serde_json::json!([["builder", "db"], ["web"]])
    );
    assert!(
        fleet["hosts"].get("laptop").is_none(),
        "hosts without waymark.deploy are not deployed"
    );
    let toplevel = fleet["hosts"]["web"]["toplevel"].as_str().unwrap();
    assert!(
        toplevel.ends_with("-nixos-system-web-24.05.1.drv"),
        "{toplevel}"
    );
    let r = fleet_cmd(&store, &ok, &[]);
    assert!(r.stdout.contains("wave 2  web              root@web.example             built on builder     after: db tags: edge"), "{}", r.stdout);
    let r = fleet_cmd(&store, &ok, &["mail"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("unknown host mail (the fleet's deployable hosts: builder, db, web)"),
        "{}",
        r.stderr
    );

    for (extra, want) in [
        (
            r#"{ buildHost = "nope"; }"#,
            r#"web: waymark.deploy.buildHost "nope" is not a deployable host of the fleet"#,
        ),
        (
            r#"{ dependsOn = [ "web" ]; }"#,
            "dependsOn has a cycle among: web",
        ),
        (
            r#"{ targetHost = ""; }"#,
            "host web: no target address (waymark.deploy.targetHost)",
        ),
    ] {
        let bad = flake(&store, extra);
        let r = fleet_cmd(&store, &bad, &[]);
        assert_eq!(r.code, 2, "{extra}: {}", r.stderr);
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "{extra}: one line: {}",
            r.stderr
        );
        assert!(r.stderr.contains(want), "{extra}: {}", r.stderr);
    }
}
