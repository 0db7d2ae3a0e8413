//! `waymark diff OLD NEW`.

use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use waymark_diff::DiffReport;
use waymark_store::{DrvFiles, Source, Store, read_closure, resolve};

use super::Global;
use crate::ExitStatus;
use crate::printer::{write_json, write_stdout};
use crate::render;

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people
    #[default]
    Text,
    /// One JSON document (schema `waymark.diff/v1`, see docs/diff-schema.json)
    Json,
}

/// Show what changed between two system closures, and why things were rebuilt
///
/// Each side is a store path, a profile or generation link
/// (/nix/var/nix/profiles/system, system-42-link, ./result), or a flake output
/// (.#nixosConfigurations.web.config.system.build.toplevel). With --old-store or
/// --store, a side can live in another store, e.g. the target's /run/current-system
/// over ssh-ng://.
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // independent command-line switches
pub struct DiffArgs {
    /// The closure to diff from
    pub old: String,
    /// The closure to diff to
    pub new: String,
    /// Store of both sides (a Nix store URL; default: this machine's store)
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Store of the old side (overrides --store)
    #[arg(long, value_name = "URL")]
    pub old_store: Option<String>,
    /// Store of the new side (overrides --store)
    #[arg(long, value_name = "URL")]
    pub new_store: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
    /// Print JSON (same as --output-format json)
    #[arg(long)]
    pub json: bool,
    /// Exit with 1 when the closures differ (0 when they are the same)
    #[arg(long)]
    pub exit_code: bool,
    /// List every rebuild and root cause, not only the first ones
    #[arg(long)]
    pub all: bool,
    /// Compare versions only: skip reading derivations for root causes
    #[arg(long)]
    pub no_causes: bool,
}

fn read_side(
    label: &str,
    store: Store,
    arg: &str,
) -> anyhow::Result<(Store, waymark_diff::Closure, Source)> {
    let path = resolve(&store, arg).with_context(|| format!("{label} side"))?;
    let (closure, source) = read_closure(&store, &path).with_context(|| format!("{label} side"))?;
    Ok((store, closure, source))
}

/// The stores the arguments name.
pub fn stores(args: &DiffArgs) -> anyhow::Result<(Store, Store)> {
    let old_url = args.old_store.as_deref().or(args.store.as_deref());
    let new_url = args.new_store.as_deref().or(args.store.as_deref());
    Ok((
        Store::from_url(old_url).context("old side")?,
        Store::from_url(new_url).context("new side")?,
    ))
}

/// Computes the report of two arguments in the given (old, new) stores.
pub fn compute(
    args: &DiffArgs,
    stores: (Store, Store),
    global: Global,
) -> anyhow::Result<DiffReport> {
    let started = Instant::now();
    let (old_store, new_store) = stores;
    // Both closures at once: two database reads (or two nix calls) in parallel.
    let (old, new) = std::thread::scope(|s| {
        let old = s.spawn(|| read_side("old", old_store, &args.old));
        let new = read_side("new", new_store, &args.new);
        (old.join().expect("reading a closure does not panic"), new)
    });
    let ((old_store, old, old_source), (new_store, new, new_source)) = (old?, new?);
    global.printer.detail(format_args!(
        "read {} + {} paths ({:?}, {:?}) in {:?}",
        old.paths.len(),
        new.paths.len(),
        old_source,
        new_source,
        started.elapsed()
    ));
    if old_source == Source::Cli || new_source == Source::Cli {
        global
            .printer
            .detail("the store database was not readable: used the nix CLI");
    }
    let drvs = DrvFiles::new([&old_store, &new_store]);
    let loader: Option<&dyn waymark_diff::DrvLoader> = (!args.no_causes).then_some(&drvs);
    let report = waymark_diff::diff_with(&old, &new, loader);
    global
        .printer
        .detail(format_args!("diffed in {:?}", started.elapsed()));
    Ok(report)
}

/// Prints a report in the requested format.
pub fn print(
    report: &DiffReport,
    format: OutputFormat,
    all: bool,
    global: Global,
) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => return write_json(report),
        OutputFormat::Text => render::render(
            report,
            render::Options {
                color: global.color.should_style(),
                all,
            },
        ),
    };
    write_stdout(&text).context("writing to stdout")
}

pub fn cmd_diff(global: Global, args: &DiffArgs) -> anyhow::Result<ExitStatus> {
    let report = compute(args, stores(args)?, global)?;
    let format = if args.json {
        OutputFormat::Json
    } else {
        args.output_format
    };
    print(&report, format, args.all, global)?;
    if !report.missing_derivations.is_empty() {
        global.printer.warn(format_args!(
            "{} derivations were unavailable; rebuilds through them are reported by version only",
            report.missing_derivations.len()
        ));
    }
    Ok(if args.exit_code && report.has_differences() {
        ExitStatus::Negative
    } else {
        ExitStatus::Success
    })
}
