//! `waymark known-good`: manage known-good marks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use waymark_evidence::Evidence;
use waymark_known_good::{Dirs, KnownGood, MarkRequest, Record};
use waymark_store::{Store, resolve};

use super::Global;
use crate::ExitStatus;
use crate::printer::{write_json as json, write_stdout};

/// Where marks live: shared by `known-good` and `release tag`.
#[derive(Debug, Clone, Args)]
pub struct MarkDirs {
    /// Directory of the records [default: /var/lib/waymark]
    #[arg(long, global = true, env = "WAYMARK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of the GC root links, inside the store's gcroots
    /// [default: /nix/var/nix/gcroots/waymark, following `NIX_STATE_DIR`]
    #[arg(long, global = true, env = "WAYMARK_ROOTS_DIR", value_name = "DIR")]
    pub roots_dir: Option<PathBuf>,
    /// The store holding the closures (a local store URL; default: this machine's)
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
}

impl MarkDirs {
    /// Opens the marks these options name.
    pub fn open(&self) -> anyhow::Result<(KnownGood, Store)> {
        let store = Store::from_url(self.store.as_deref())?;
        let mut dirs = Dirs::default_for(&store);
        if let Some(s) = &self.state_dir {
            dirs.state.clone_from(s);
        }
        if let Some(r) = &self.roots_dir {
            dirs.roots.clone_from(r);
        }
        Ok((KnownGood::new(dirs, store.clone()), store))
    }
}

/// Manage known-good marks: GC-rooted closures that passed every gate
#[derive(Debug, Args)]
pub struct KnownGoodArgs {
    #[command(subcommand)]
    command: KnownGoodCommand,
    #[command(flatten)]
    dirs: MarkDirs,
    /// Print JSON (records as in docs/known-good-schema.json)
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum KnownGoodCommand {
    /// Pin a closure as known-good for a target
    Mark {
        /// The target (host) name
        target: String,
        /// The closure: a store path or a link to one
        closure: String,
        /// The commit the closure was built from (7 to 40 hex digits)
        #[arg(long)]
        rev: String,
        /// The evidence document (docs/evidence-schema.json); - reads stdin
        #[arg(long, value_name = "FILE")]
        evidence: PathBuf,
    },
    /// List the marks of one target or all, repairing what a crash left
    List {
        /// Only this target
        target: Option<String>,
    },
    /// Show one mark (default: the latest)
    Show {
        /// The target
        target: String,
        /// The mark name
        mark: Option<String>,
    },
    /// Print the latest known-good closure of a target (what a rollback redeploys)
    Latest {
        /// The target
        target: String,
    },
    /// Print the known-good closure before the latest
    Previous {
        /// The target
        target: String,
    },
    /// Remove old marks; never the latest
    Prune {
        /// The target
        target: String,
        /// How many of the newest marks to keep (at least 1)
        #[arg(long, value_parser = parse_keep)]
        keep: usize,
        /// Also keep marks made within this long (e.g. 30days, 12h)
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        keep_since: Option<Duration>,
    },
    /// Remove one mark (the latest only with --force)
    Unmark {
        /// The target
        target: String,
        /// The mark name
        mark: String,
        /// Also unmark the latest mark, leaving the target's rollback to the one before
        #[arg(long)]
        force: bool,
    },
}

/// `--keep` counts marks kept, and the latest is always kept: 0 would read as "remove
/// everything" and do something else.
fn parse_keep(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("keep at least 1 mark (the latest is never pruned)".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of marks")),
    }
}

fn describe(r: &Record) -> String {
    format!(
        "target:     {}\nmark:       {}\nclosure:    {}\nderivation: {}\ncommit:     {}\nmarked at:  {}\ngates:      {}\nroot:       {}\n",
        r.target,
        r.mark,
        r.closure,
        r.drv.as_deref().unwrap_or("(not in the store when marked)"),
        r.rev,
        r.marked_at,
        r.evidence.summary(),
        r.roots.closure,
    )
}

pub fn cmd_known_good(global: Global, args: &KnownGoodArgs) -> anyhow::Result<ExitStatus> {
    let (kg, store) = args.dirs.open()?;
    let p = global.printer;
    match &args.command {
        KnownGoodCommand::Mark {
            target,
            closure,
            rev,
            evidence,
        } => {
            let bytes = if evidence.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .context("reading the evidence from stdin")?;
                buf
            } else {
                std::fs::read(evidence)
                    .with_context(|| format!("reading the evidence file {}", evidence.display()))?
            };
            let evidence = Evidence::parse(&bytes)
                .with_context(|| format!("reading the evidence file {}", evidence.display()))?;
            let closure = resolve(&store, closure)?;
            let record = kg.mark(&MarkRequest {
                target: target.clone(),
                closure,
                rev: rev.clone(),
                evidence,
            })?;
            if args.json {
                json(&record)?;
            } else {
                write_stdout(&format!("{}\n", record.mark))?;
                p.info(format_args!(
                    "Marked {} known-good for {target}; GC root {}",
                    record.closure, record.roots.closure
                ));
            }
        }
        KnownGoodCommand::List { target } => {
            let listing = kg.list(target.as_deref())?;
            for r in &listing.repairs {
                p.warn(format_args!("{} {}: {}", r.target, r.mark, r.action));
            }
            if args.json {
                json(&listing)?;
            } else {
                let mut out = String::new();
                for r in &listing.marks {
                    out.push_str(&format!("{:<16} {:<30} {}\n", r.target, r.mark, r.closure));
                }
                write_stdout(&out)?;
                if listing.marks.is_empty() {
                    p.info("No known-good marks.");
                }
            }
            if listing.repairs.iter().any(|r| r.broken) {
                p.warn("some marks are broken: their closures are gone; redeploy and mark again, or unmark them");
                return Ok(ExitStatus::Negative);
            }
        }
        KnownGoodCommand::Show { target, mark } => {
            let r = kg.get(target, mark.as_deref())?;
            if args.json {
                json(&r)?;
            } else {
                write_stdout(&describe(&r))?;
            }
        }
        KnownGoodCommand::Latest { target } | KnownGoodCommand::Previous { target } => {
            let r = if matches!(args.command, KnownGoodCommand::Latest { .. }) {
                kg.latest(target)?
            } else {
                kg.previous(target)?
            };
            if args.json {
                json(&r)?;
            } else {
                write_stdout(&format!("{}\n", r.closure))?;
            }
        }
        KnownGoodCommand::Prune {
            target,
            keep,
            keep_since,
        } => {
            let removed = kg.prune(target, *keep, *keep_since)?;
            if args.json {
                json(&removed)?;
            } else {
                write_stdout(
                    &removed
                        .iter()
                        .map(|r| format!("{}\n", r.mark))
                        .collect::<String>(),
                )?;
                p.info(format_args!("Removed {} mark(s) of {target}; their closures can now be garbage-collected unless rooted elsewhere.", removed.len()));
            }
        }
        KnownGoodCommand::Unmark {
            target,
            mark,
            force,
        } => {
            let r = kg.unmark(target, mark, *force)?;
            if args.json {
                json(&r)?;
            } else {
                write_stdout(&format!("{}\n", r.mark))?;
            }
        }
    }
    Ok(ExitStatus::Success)
}
