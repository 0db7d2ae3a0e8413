//! `waymark serve`: the deployment-sync queue service (docs/serve.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::Global;
use crate::ExitStatus;

/// Serve the deployment-sync queue: jobs that web panels submit, run through the gates
///
/// HTTP+JSON under /v1 (docs/openapi.json): deployments, jobs with modes (replace,
/// queue, reject, attach), cancels with a reason, logs, events as Server-Sent Events.
/// Its state (an `SQLite` database, logs) lives in --state-dir, created on first start.
/// With no --tokens, a token of tenant `default` is made in `STATE_DIR/token`. Deploys run
/// as `waymark deploy` does, with `WAYMARK_STATE_DIR`, `WAYMARK_REMOTE_COMMAND` and
/// `NIX_SSHOPTS` from this environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on
    #[arg(long, default_value = "127.0.0.1:8750", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// The service's state directory
    #[arg(
        long,
        env = "WAYMARK_SERVE_STATE_DIR",
        default_value = "/var/lib/waymark-serve",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Token file: lines `TENANT sha256:HEX` (the SHA-256 of each token, never the
    /// token) (can be repeated)
    #[arg(long = "tokens", value_name = "FILE")]
    pub tokens: Vec<PathBuf>,
    /// The panel's authorisation callback: a POST of `{"tenant","action","deployment"}` per
    /// request, any `2xx` allows, anything else (or no answer) denies
    #[arg(long, value_name = "URL")]
    pub authorize_url: Option<String>,
    /// Seconds an authorisation answer is kept
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub authorize_ttl: u64,
    /// Jobs run at the same time (0: accept jobs and run none)
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// The ssh identity file for a tenant's hosts, read by ssh at run time:
    /// TENANT=FILE (can be repeated)
    #[arg(long = "identity", value_name = "TENANT=FILE")]
    pub identities: Vec<String>,
    /// Keep jobs, events and logs in this PostgreSQL database (a postgres:// URL, with
    /// ?host=/socket/dir for a unix socket) instead of SQLite in the state directory:
    /// several replicas may share it
    #[arg(long, env = "WAYMARK_SERVE_DATABASE", value_name = "URL")]
    pub database: Option<String>,
}

fn identities(args: &ServeArgs) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for item in &args.identities {
        let Some((tenant, file)) = item.split_once('=') else {
            bail!("--identity {item:?}: expected TENANT=FILE");
        };
        if !waymark_serve::auth::valid_tenant(tenant) {
            bail!("--identity {item:?}: {tenant:?} is not a tenant name (a-z, 0-9, '-', '_', '.')");
        }
        if file.is_empty() || file.chars().any(char::is_whitespace) || !file.starts_with('/') {
            bail!(
                "--identity {item:?}: the file is an absolute path without spaces (ssh options split on spaces)"
            );
        }
        std::fs::File::open(file)
            .with_context(|| format!("--identity {tenant}=...: cannot read the identity file (check the path and its permissions)"))?;
        out.insert(tenant.to_owned(), PathBuf::from(file));
    }
    Ok(out)
}

/// Runs `waymark serve`.
pub fn cmd_serve(global: Global, args: &ServeArgs) -> anyhow::Result<ExitStatus> {
    let mut config = waymark_serve::Config::new(args.state_dir.clone());
    config.token_files.clone_from(&args.tokens);
    config.authorize_url.clone_from(&args.authorize_url);
    config.authorize_ttl = Duration::from_secs(args.authorize_ttl);
    config.workers = args.workers;
    config.identities = identities(args)?;
    if let Some(url) = &args.database {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!(
                "--database {url:?}: expected a postgres:// URL (leave it out for SQLite in the state directory)"
            );
        }
        config.database = Some(url.clone());
    }
    if let Some(url) = &args.authorize_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("--authorize-url {url:?}: expected an http:// or https:// URL");
    }
    let executor =
        Arc::new(waymark_serve::EngineExecutor::from_env().context("finding this program")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {} (is the port taken?)", args.listen))?;
        let addr = listener.local_addr().unwrap_or(args.listen);
        global.printer.info(format!(
            "Serving on http://{addr} (state in {}).",
            args.state_dir.display()
        ));
        waymark_serve::serve(config, executor, listener)
            .await
            .with_context(|| format!("serving from {}", args.state_dir.display()))
    })?;
    Ok(ExitStatus::Success)
}
