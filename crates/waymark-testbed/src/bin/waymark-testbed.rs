//! Builds fixture closures in a private store, for the benchmark and for exploring by hand.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use waymark_testbed::fixtures::{self, Scenario};
use waymark_testbed::{Layout, PrivateStore, build_pair};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fixture {
    /// The small planted web host pair (tests and demo)
    Web,
    /// A synthetic update: bumps, additions, removals, rebuilds near the leaves
    Update,
    /// A synthetic mass rebuild: glibc bumped
    Mass,
}

/// Build a pair of generations in a private Nix store and print it as JSON
#[derive(Debug, Parser)]
struct Args {
    /// Which pair to build
    #[arg(long, value_enum, default_value = "web")]
    fixture: Fixture,
    /// Packages in a synthetic pair (about 1.9 closure paths each)
    #[arg(long, default_value_t = 800)]
    packages: usize,
    /// Seed of a synthetic pair
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory of the store (created or reused)
    #[arg(long)]
    dir: PathBuf,
    /// Lay the store out like /nix (store/, var/nix/), to mount it on /nix
    #[arg(long)]
    nix_layout: bool,
    /// Only print how many paths each generation's closure has; build nothing
    #[arg(long)]
    count_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (old, new) = match args.fixture {
        Fixture::Web => (fixtures::web_gen1(), fixtures::web_gen2()),
        Fixture::Update => fixtures::synthetic_pair(args.packages, args.seed, Scenario::Update),
        Fixture::Mass => fixtures::synthetic_pair(args.packages, args.seed, Scenario::MassRebuild),
    };
    if args.count_only {
        // The toplevel and busybox are not packages of the model.
        let doc =
            serde_json::json!({ "old": old.closure().len() + 2, "new": new.closure().len() + 2 });
        #[allow(clippy::print_stdout)]
        {
            println!("{doc}");
        }
        return Ok(());
    }
    let layout = if args.nix_layout {
        Layout::Nix
    } else {
        Layout::Compact
    };
    let store = PrivateStore::at_with(&args.dir, layout).context("opening the store")?;
    let pair = build_pair(&store, &old, &new).context("building the pair")?;
    let env: serde_json::Map<String, serde_json::Value> = store
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_string_lossy().into_owned().into()))
        .collect();
    let doc =
        serde_json::json!({ "env": env, "old": pair.old, "new": pair.new, "truth": pair.truth });
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
