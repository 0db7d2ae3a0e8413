//! `waymark release`: manage release tags and branches.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use waymark_release::{Release, Releases, TagRequest, branch_name};

use super::Global;
use super::known_good::MarkDirs;
use crate::ExitStatus;
use crate::printer::{write_json as json, write_stdout};

/// Manage release records: annotated tags release/<target>/<UTC>-<shortrev> and
/// fast-forward-only branches release/<target>
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
    /// The git repository [default: the one containing the current directory]
    #[arg(long, global = true, value_name = "DIR", default_value = ".")]
    repo: PathBuf,
    /// Print JSON
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Tag a known-good mark's commit and fast-forward the target's release branch
    Tag {
        /// The target
        target: String,
        /// The released commit (an id; a symbolic name is refused in a dirty tree)
        #[arg(long)]
        rev: String,
        /// The known-good mark the release corresponds to
        #[arg(long)]
        mark: String,
        /// Tagger identity 'Name <email>' [default: git config user.name/user.email]
        #[arg(long)]
        tagger: Option<String>,
        #[command(flatten)]
        dirs: MarkDirs,
    },
    /// Push release branches and tags (never forced)
    Push {
        /// Only this target's
        target: Option<String>,
        /// The remote
        #[arg(long, default_value = "origin")]
        remote: String,
    },
    /// Show one release with its evidence (default: the latest)
    Show {
        /// The target
        target: String,
        /// The tag or mark name
        release: Option<String>,
    },
    /// List a target's releases, read back from the tags
    List {
        /// The target
        target: String,
    },
}

fn describe(r: &Release) -> String {
    let diff = r.evidence.diff.as_ref().map_or_else(String::new, |d| {
        format!(
            "diff:       {} changed, {} added, {} removed, {} rebuilt\n",
            d.changed, d.added, d.removed, d.rebuilt
        )
    });
    format!(
        "tag:        {}\ncommit:     {}\nclosure:    {}\nderivation: {}\nknown-good: {} (marked {})\ngates:      {}\n{diff}tagger:     {}\n",
        r.tag,
        r.commit,
        r.closure,
        r.drv.as_deref().unwrap_or("(not recorded)"),
        r.mark,
        r.marked_at,
        r.evidence.summary(),
        r.tagger.as_deref().unwrap_or("?"),
    )
}

pub fn cmd_release(global: Global, args: &ReleaseArgs) -> anyhow::Result<ExitStatus> {
    let releases = Releases::open(&args.repo).context(
        "opening the repository of the release records (run in a git checkout, or pass --repo DIR)",
    )?;
    let p = global.printer;
    match &args.command {
        ReleaseCommand::Tag {
            target,
            rev,
            mark,
            tagger,
            dirs,
        } => {
            let (kg, _) = dirs.open()?;
            // Checked against its GC root and the store: a release records what was
            // validated, not what an edited record claims.
            let record = kg.checked(target, mark)?;
            let outcome = releases.tag(&TagRequest {
                target: target.clone(),
                rev: rev.clone(),
                mark: record,
                tagger: tagger.clone(),
            })?;
            if args.json {
                json(&outcome)?;
            } else {
                write_stdout(&format!("{}\n", outcome.release.tag))?;
                let what = if outcome.created {
                    "Tagged"
                } else {
                    "Already tagged"
                };
                p.info(format_args!(
                    "{what} {} as {}.",
                    outcome.release.commit, outcome.release.tag
                ));
                if outcome.branch_moved {
                    p.info(format_args!(
                        "Moved {} to {}.",
                        branch_name(target),
                        outcome.release.commit
                    ));
                }
            }
        }
        ReleaseCommand::Push { target, remote } => {
            let pushed = releases.push(remote, target.as_deref())?;
            if args.json {
                json(&pushed)?;
            } else {
                write_stdout(&pushed.iter().map(|r| format!("{r}\n")).collect::<String>())?;
                p.info(format_args!("Pushed {} ref(s) to {remote}.", pushed.len()));
            }
        }
        ReleaseCommand::Show { target, release } => {
            let all = releases.list(target)?;
            let found = match release {
                None => all.last(),
                Some(n) => all.iter().find(|r| &r.tag == n || &r.mark == n),
            };
            let r = found.with_context(|| match release {
                None => format!("target {target} has no releases"),
                Some(n) => format!(
                    "no release {n} of target {target} (see: waymark release list {target})"
                ),
            })?;
            if args.json {
                json(r)?;
            } else {
                write_stdout(&describe(r))?;
            }
        }
        ReleaseCommand::List { target } => {
            let all = releases.list(target)?;
            if args.json {
                json(&all)?;
            } else {
                let out: String = all
                    .iter()
                    .map(|r| {
                        format!(
                            "{:<44} {} {}\n",
                            r.tag,
                            &r.commit[..12.min(r.commit.len())],
                            r.evidence.summary()
                        )
                    })
                    .collect();
                write_stdout(&out)?;
                if all.is_empty() {
                    p.info(format_args!("No releases of {target}."));
                }
            }
        }
    }
    Ok(ExitStatus::Success)
}
