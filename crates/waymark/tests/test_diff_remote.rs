//! `waymark diff` with a side in another store: over `ssh-ng://` to a real sshd on
//! loopback (through the nix CLI, and `readlink` over ssh for a link like
//! `/run/current-system`), and a flake output.

use serde_json::Value;
use waymark_testbed::SshHost;

use crate::common::{fresh_web, run, waymark};

#[test]
fn old_side_on_a_remote_host() {
    let (store, pair) = fresh_web();
    let host = SshHost::start(&store, "target").expect("starting sshd (needs openssh-server)");
    // The target's /run/current-system: a link on the remote machine.
    let current = store.root().join("current-system");
    std::os::unix::fs::symlink(&pair.old, &current).unwrap();

    let mut local = waymark(&store);
    local.args(["diff", "--json", &pair.old, &pair.new]);
    let local = run(local);
    assert_eq!(local.code, 0, "{}", local.stderr);

    let mut remote = waymark(&store);
    remote.env("NIX_SSHOPTS", host.nix_sshopts());
    remote
        .args(["diff", "--json", "-v", "--old-store", &host.store_url()])
        .arg(&current)
        .arg(&pair.new);
    let remote = run(remote);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    assert!(
        remote.stderr.contains("Cli"),
        "read through the nix CLI: {}",
        remote.stderr
    );
    let (a, b): (Value, Value) = (
        serde_json::from_str(&local.stdout).unwrap(),
        serde_json::from_str(&remote.stdout).unwrap(),
    );
    assert_eq!(a, b, "the same diff whichever way the old closure is read");

    // An unknown link on the remote is one clear error.
    let mut bad = waymark(&store);
    bad.env("NIX_SSHOPTS", host.nix_sshopts());
    bad.args([
        "diff",
        "--old-store",
        &host.store_url(),
        "/nonexistent/current-system",
        &pair.new,
    ]);
    let bad = run(bad);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.starts_with("error: old side")
            && bad.stderr.contains("readlink")
            && bad.stderr.contains("no such file on the host")
            && !bad.stderr.contains("no error message"),
        "{}",
        bad.stderr
    );
}

#[test]
fn flake_outputs() {
    let (store, pair) = fresh_web();
    // A flake whose packages are the two generations (busybox-built, no nixpkgs).
    let flake = store.root().join("flake");
    std::fs::create_dir_all(flake.join("busybox")).unwrap();
    std::fs::copy(
        store.root().join("busybox/busybox"),
        flake.join("busybox/busybox"),
    )
    .unwrap();
    std::fs::copy(
        store.root().join("generations.nix"),
        flake.join("generations.nix"),
    )
    .unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        "{ outputs = { self }: { systems = import ./generations.nix; }; }\n",
    )
    .unwrap();
    let url = format!("path:{}", flake.display());
    let mut cmd = waymark(&store);
    cmd.args([
        "diff",
        "--json",
        &format!("{url}#systems.g0"),
        &format!("{url}#systems.g1"),
    ]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        report["old"]["path"],
        pair.old.as_str(),
        "the flake evaluates to the same toplevel"
    );
    assert_eq!(report["new"]["path"], pair.new.as_str());

    let mut cmd = waymark(&store);
    cmd.args(["diff", &format!("{url}#systems.nope"), &pair.new]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}
