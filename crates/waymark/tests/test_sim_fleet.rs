//! Simulated machines (own `/nix` and `/run` in a mount namespace, real sshd): a builder
//! builds and signs, the closure goes straight to a target, the target activates it, and
//! `waymark diff` compares the target's `/run/current-system` with the builder's new
//! closure. The ground the deploy pipeline stands on. Needs root, as CI has.

use serde_json::Value;
use waymark_testbed::{SimFleet, fixtures, write_generations};

use crate::common::run;

fn machine_store_entries() -> usize {
    std::fs::read_dir("/nix/store").map_or(0, Iterator::count)
}

#[test]
fn build_sign_copy_activate_and_diff_across_hosts() {
    let before = machine_store_entries();
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = SimFleet::new(dir.path()).unwrap();
    fleet
        .start("builder")
        .expect("starting a simulated host (needs root and openssh-server)");
    fleet.start("target").unwrap();
    let (file, _) =
        write_generations(dir.path(), &[&fixtures::web_gen1(), &fixtures::web_gen2()]).unwrap();
    let paths = fleet.build("builder", &file, &["g0", "g1"]).unwrap();
    let (old, new) = (&paths[0], &paths[1]);
    assert!(old.starts_with("/nix/store/"), "a real store path: {old}");

    fleet.copy("builder", "target", old).unwrap();
    fleet
        .exec("target", &format!("{old}/bin/switch-to-configuration test"))
        .unwrap();
    assert_eq!(
        fleet
            .exec("target", "readlink /run/current-system")
            .unwrap()
            .trim(),
        old
    );
    assert!(
        fleet
            .exec("builder", "readlink /run/current-system")
            .is_err(),
        "each host has its own /run"
    );

    // A planted failure of the test activation leaves the running system alone.
    fleet.copy("builder", "target", new).unwrap();
    fleet
        .exec("target", "touch /run/waymark-testbed/fail-test")
        .unwrap();
    assert!(
        fleet
            .exec("target", &format!("{new}/bin/switch-to-configuration test"))
            .is_err()
    );
    assert_eq!(
        fleet
            .exec("target", "readlink /run/current-system")
            .unwrap()
            .trim(),
        old
    );

    // Gate 2 across machines: what the target runs against what the builder built.
    let mut diff = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"));
    diff.env("NIX_SSHOPTS", fleet.nix_sshopts())
        .env(
            "NIX_CONFIG",
            "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =",
        )
        .args([
            "diff",
            "--json",
            "--old-store",
            "ssh-ng://target",
            "/run/current-system",
            "--new-store",
            "ssh-ng://builder",
            new,
        ]);
    let r = run(diff);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["old"]["path"], old.as_str());
    let openssl = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "openssl")
        .unwrap();
    assert_eq!(openssl["direction"], "upgrade");
    assert!(
        !report["missing_derivations"].as_array().unwrap().is_empty(),
        "the derivations are on the builder, not here: reported, not guessed"
    );

    drop(fleet);
    assert_eq!(
        machine_store_entries(),
        before,
        "the machine's own /nix/store is untouched"
    );
}
