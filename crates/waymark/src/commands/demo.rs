//! `waymark demo`: the main job on a built-in local demo, on a machine with only Nix.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use waymark_store::{LocalStore, Store};
use waymark_testbed::{PrivateStore, build_pair, fixtures, set_profile};

use super::Global;
use super::diff::{DiffArgs, OutputFormat, compute, print};
use crate::ExitStatus;

/// Build two demo system closures in a private store and diff them
///
/// Needs only Nix and a static busybox (`WAYMARK_BUSYBOX`, or Debian's busybox-static):
/// no nixpkgs, no network, no root. The store is left in the directory named at the end,
/// so you can look around and run `waymark diff` on it yourself.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's private store (default: a new directory under $TMPDIR)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the diff as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_demo(global: Global, args: &DemoArgs) -> anyhow::Result<ExitStatus> {
    let p = global.printer;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("waymark-demo-")
            .tempdir()
            .context("creating the demo directory")?
            .keep(),
    };
    let store = PrivateStore::at(&dir).context("creating the demo's private store")?;
    p.info(format_args!(
        "Building two generations of a demo host `web` in a private store in {}.",
        dir.display()
    ));
    p.info("Generation 2 bumps openssl and linux, downgrades nginx, adds htop and openssh, removes nano,");
    p.info("changes an environment variable of sqlite, a builder argument of bash and the source of dbus.");
    let (g1, g2) = (fixtures::web_gen1(), fixtures::web_gen2());
    let pair = build_pair(&store, &g1, &g2).context("building the demo closures")?;
    let profile = set_profile(&store, "system", &pair.old).context("setting generation 1")?;
    set_profile(&store, "system", &pair.new).context("setting generation 2")?;
    let link = |n: u32| profile.with_file_name(format!("system-{n}-link"));
    p.info("Diffing generation 1 against generation 2 of the system profile:\n");
    let diff_args = DiffArgs {
        old: link(1).to_string_lossy().into_owned(),
        new: link(2).to_string_lossy().into_owned(),
        store: None,
        old_store: None,
        new_store: None,
        output_format: OutputFormat::Text,
        json: args.json,
        exit_code: false,
        all: false,
        no_causes: false,
    };
    let local = Store::Local(LocalStore {
        store_dir: store.store_dir().to_string_lossy().into_owned(),
        real_store_dir: store.store_dir(),
        db: store.db_path(),
        url: None,
    });
    let report = compute(&diff_args, (local.clone(), local), global)?;
    let format = if args.json {
        OutputFormat::Json
    } else {
        OutputFormat::Text
    };
    print(&report, format, false, global)?;
    p.info(format_args!(
        "\nThe demo store stays in {dir}. To run the same diff yourself:\n  NIX_STORE_DIR={store} NIX_STATE_DIR={state} waymark diff {a} {b}",
        dir = dir.display(),
        store = store.store_dir().display(),
        state = store.state_dir().display(),
        a = diff_args.old,
        b = diff_args.new,
    ));
    Ok(ExitStatus::Success)
}
