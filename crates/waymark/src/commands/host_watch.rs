//! `waymark host-watch`: the host side of `waymark converge`. Run on a host (over its
//! ssh connection, or as a service), it reports what the host runs at the start and
//! again at once whenever it changes, in the line protocol of
//! `waymark_converge::protocol`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use notify::{EventKind, RecursiveMode, Watcher as _};
use waymark_converge::Facts;
use waymark_converge::protocol::{facts_line, hello_line};

use super::Global;
use super::known_good::MarkDirs;
use crate::ExitStatus;

/// Report what this host runs, at once on every change (for `waymark converge`)
///
/// Prints a `hello` line, then a `facts` line (`/run/current-system`, the system
/// profile, `/run/booted-system`, the latest known-good closure of TARGET) at the start
/// and whenever one of them changes, watched with inotify; it looks again every
/// `--recheck` seconds in case an event was missed. Ends when its output is closed
/// (the controller went away).
#[derive(Debug, Args)]
pub struct HostWatchArgs {
    /// This host's name in the fleet (its known-good marks are kept under it)
    pub target: String,
    /// Seconds between checks made without an event (a safety net)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub recheck: u64,
    #[command(flatten)]
    dirs: MarkDirs,
}

const RUN: &str = "/run";
const PROFILES: &str = "/nix/var/nix/profiles";

/// Watches the records directory (recursively: it is small), or, before the first mark,
/// its nearest existing ancestor alone (never a large tree such as `/nix/var`, whose
/// store database would flood the watcher); returns what is watched.
fn arm(
    watcher: &mut notify::RecommendedWatcher,
    records: &Path,
    say: &mut impl FnMut(&str) -> bool,
) -> PathBuf {
    let (dir, mode) = if records.is_dir() {
        (records.to_owned(), RecursiveMode::Recursive)
    } else {
        let mut nearest = records.to_owned();
        while !nearest.is_dir() {
            match nearest.parent() {
                Some(p) => nearest = p.to_owned(),
                None => break,
            }
        }
        (nearest, RecursiveMode::NonRecursive)
    };
    if let Err(e) = watcher.watch(&dir, mode) {
        say(&format!("error\twatching {}: {e}", dir.display()));
    }
    dir
}

/// A link's canonical target; `None` when it is missing or dangling.
fn resolved(path: &str) -> Option<String> {
    std::fs::canonicalize(path)
        .ok()
        .map(|p| p.display().to_string())
}

fn read_facts(dirs: &MarkDirs, target: &str) -> Facts {
    let known_good = dirs
        .open()
        .ok()
        .and_then(|(kg, _)| kg.get(target, None).ok())
        .map(|r| r.closure);
    Facts {
        current: resolved("/run/current-system"),
        profile: resolved("/nix/var/nix/profiles/system"),
        booted: resolved("/run/booted-system"),
        known_good,
    }
}

/// Whether an event concerns the facts: the two links in /run, the system profile's
/// links, anything under the target's records (not their lock, which reading takes).
fn relevant(path: &Path, records: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match path.parent() {
        Some(p) if p == Path::new(RUN) => matches!(name, "current-system" | "booted-system"),
        Some(p) if p == Path::new(PROFILES) => name.starts_with("system"),
        // The lock file is `.lock` exactly (waymark-known-good's name for it).
        _ => path.starts_with(records) && name != ".lock",
    }
}

pub fn cmd_host_watch(_global: Global, args: &HostWatchArgs) -> anyhow::Result<ExitStatus> {
    if !waymark_known_good::valid_target(&args.target) {
        anyhow::bail!(
            "host-watch: invalid target name {:?}: {}",
            args.target,
            waymark_known_good::TARGET_RULE
        );
    }
    let state = args
        .dirs
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/waymark"));
    let records = state.join("known-good");
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).context("starting inotify")?;
    let mut out = std::io::stdout().lock();
    let mut say =
        |line: &str| -> bool { writeln!(out, "{line}").and_then(|()| out.flush()).is_ok() };
    if !say(&hello_line("watch")) {
        return Ok(ExitStatus::Success);
    }
    for dir in [RUN, PROFILES] {
        if let Err(e) = watcher.watch(Path::new(dir), RecursiveMode::NonRecursive) {
            say(&format!("error\twatching {dir}: {e}"));
        }
    }
    let mut armed = arm(&mut watcher, &records, &mut say);
    let mut last = read_facts(&args.dirs, &args.target);
    if !say(&facts_line(&last)) {
        return Ok(ExitStatus::Success);
    }
    let recheck = Duration::from_secs(args.recheck);
    // The safety net's clock runs from the last look, whatever else happens: a stream of
    // unrelated events (a store at work) must not put it off.
    let mut next_check = Instant::now() + recheck;
    loop {
        let wait = next_check.saturating_duration_since(Instant::now());
        let look = match rx.recv_timeout(wait) {
            Ok(Ok(event)) => {
                if event.need_rescan() {
                    // The kernel's queue overflowed: events were lost, look again.
                    true
                } else if armed != records && event.paths.iter().any(|p| records.starts_with(p)) {
                    // A directory on the way to the records appeared: watch further down.
                    armed = arm(&mut watcher, &records, &mut say);
                    true
                } else {
                    !matches!(event.kind, EventKind::Access(_))
                        && event.paths.iter().any(|p| relevant(p, &records))
                }
            }
            Ok(Err(e)) => {
                if !say(&format!("error\tinotify: {e}")) {
                    break;
                }
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if !look {
            continue;
        }
        // A burst (a switch moves several links) is read once.
        while rx.try_recv().is_ok() {}
        next_check = Instant::now() + recheck;
        let now = read_facts(&args.dirs, &args.target);
        if now != last {
            if !say(&facts_line(&now)) {
                break;
            }
            last = now;
        } else if !say("") {
            // Nothing new: an empty line only tells whether the controller is still
            // there (a closed pipe ends the watcher).
            break;
        }
    }
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_system_links_and_the_targets_records_count() {
        let records = Path::new("/var/lib/waymark/known-good");
        assert!(relevant(Path::new("/run/current-system"), records));
        assert!(relevant(Path::new("/run/booted-system"), records));
        assert!(!relevant(Path::new("/run/user"), records));
        assert!(relevant(
            Path::new("/nix/var/nix/profiles/system-42-link"),
            records
        ));
        assert!(!relevant(
            Path::new("/nix/var/nix/profiles/per-user"),
            records
        ));
        assert!(relevant(
            Path::new("/var/lib/waymark/known-good/web1/m.json"),
            records
        ));
        assert!(!relevant(
            Path::new("/var/lib/waymark/known-good/web1/.lock"),
            records
        ));
    }
}
