//! `waymark serve`: a deployment-sync queue that web panels drive. A deployment names
//! hosts of a fleet flake; a job deploys it at a revision (with an optional JSON
//! configuration the flake reads) through the gated deploy. Jobs are queued, superseded,
//! cancelled with a reason and watched live over HTTP (docs/serve.md,
//! docs/openapi.json).
//!
//! The job decisions are pure functions ([`model`]); storage is one trait ([`Store`],
//! `SQLite` in [`Sqlite`]); logs another ([`Logs`]); the deploy a third ([`Executor`]).
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), waymark_serve::Error> {
//! let config = waymark_serve::Config::new("/var/lib/waymark-serve".into());
//! let executor = std::sync::Arc::new(waymark_serve::EngineExecutor::from_env().unwrap());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8750").await.unwrap();
//! waymark_serve::serve(config, executor, listener).await
//! # }
//! ```

pub mod api;
pub mod auth;
mod error;
pub mod executor;
pub mod logs;
pub mod model;
pub mod page;
pub mod postgres;
pub mod problem;
mod rows;
pub mod runner;
mod sqlite;
pub mod store;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use error::{Error, Result};
pub use executor::{CancelFlag, EngineExecutor, Executor, Progress, RunOutcome, RunSpec};
pub use logs::{FileLogs, Logs};
pub use postgres::Postgres;
pub use sqlite::Sqlite;
pub use store::Store;

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory: database, logs, configurations (created on first start).
    pub state_dir: PathBuf,
    /// Token files (`TENANT sha256:HEX` lines). None: a token of tenant `default` is
    /// made in the state directory (`token`, mode 0600) on first start.
    pub token_files: Vec<PathBuf>,
    /// The panel's authorisation callback.
    pub authorize_url: Option<String>,
    /// How long the callback's answers are kept.
    pub authorize_ttl: Duration,
    /// Jobs run at the same time (0: accept jobs, run none).
    pub workers: usize,
    /// Each tenant's ssh identity file.
    pub identities: HashMap<String, PathBuf>,
    /// A PostgreSQL URL (`postgres://…`): jobs, events and logs in that database, which
    /// several replicas may share. None: SQLite and log files in the state directory.
    pub database: Option<String>,
}

impl Config {
    /// The defaults, with `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            token_files: Vec::new(),
            authorize_url: None,
            authorize_ttl: Duration::from_secs(10),
            workers: 4,
            identities: HashMap::new(),
            database: None,
        }
    }
}

/// The database file in a state directory.
pub fn database_path(state_dir: &Path) -> PathBuf {
    state_dir.join("serve.sqlite")
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(Error::io("creating", path))?;
    // An existing directory keeps its mode unless it is open to others.
    let meta = std::fs::metadata(path).map_err(Error::io("reading", path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("restricting", path))?;
    }
    Ok(())
}

/// The tokens: from the token files, or the state directory's own `token` (made on
/// first start) for a service started with no configuration.
fn load_tokens(config: &Config) -> Result<auth::Tokens> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if !config.token_files.is_empty() {
        return auth::Tokens::load(&config.token_files);
    }
    let path = config.state_dir.join("token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(Error::io("reading", "/dev/urandom"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(Error::io("creating", &path))?;
            std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
                .map_err(Error::io("writing", &path))?;
            token
        }
        Err(e) => return Err(Error::io("reading", &path)(e)),
    };
    let mut tokens = auth::Tokens::default();
    tokens.insert_hash("default", &auth::hash_token(&token));
    Ok(tokens)
}

/// Opens the state directory, recovers what a dead process left running, and serves on
/// `listener` until SIGINT or SIGTERM.
pub async fn serve(
    config: Config,
    executor: Arc<dyn Executor>,
    listener: tokio::net::TcpListener,
) -> Result<()> {
    let app = open(&config).await?;
    let runner = runner::Runner::new(
        app.shared.clone(),
        executor,
        config.workers,
        config.state_dir.join("configs"),
        config.identities.clone(),
    );
    if config.workers > 0 {
        tokio::spawn(runner.run());
    }
    let router = api::router(app);
    // On SIGINT or SIGTERM: no new connection; those open get a few seconds (an SSE
    // stream never ends by itself). A job still running is recovered at the next start,
    // as after a crash: re-queued before activation, needs-reconcile after.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let s2 = stopping.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown().await;
        s2.notify_one();
    });
    tokio::select! {
        r = server => r.map_err(Error::io("serving", &config.state_dir)),
        () = async {
            stopping.notified().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    }
}

/// The state directory opened: database migrated, interrupted jobs recovered (what
/// `serve` does before it listens).
pub async fn open(config: &Config) -> Result<Arc<api::App>> {
    create_private_dir(&config.state_dir)?;
    let tokens = load_tokens(config)?;
    let opened: (Arc<dyn Store>, Arc<dyn Logs>, _) = if let Some(url) = &config.database {
        let url = url.clone();
        let pg = tokio::task::spawn_blocking(move || Postgres::open(&url).map(Arc::new))
            .await
            .map_err(|e| Error::io("opening", &config.state_dir)(std::io::Error::other(e)))??;
        (pg.clone(), pg.clone(), Some(pg))
    } else {
        let db_path = database_path(&config.state_dir);
        let store = tokio::task::spawn_blocking(move || Sqlite::open(&db_path))
            .await
            .map_err(|e| Error::io("opening", &config.state_dir)(std::io::Error::other(e)))??;
        let logs = FileLogs::new(config.state_dir.join("logs"))?;
        (Arc::new(store), Arc::new(logs), None)
    };
    let (store, logs, pg) = opened;
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || s2.recover())
        .await
        .map_err(|e| Error::io("recovering", &config.state_dir)(std::io::Error::other(e)))??;
    let (events, _) = tokio::sync::watch::channel(0);
    let shared = Arc::new(runner::Shared {
        store,
        logs,
        wake: tokio::sync::Notify::new(),
        events,
    });
    if let Some(pg) = pg {
        // Another replica's events and submissions wake this one's streams and workers.
        let weak = Arc::downgrade(&shared);
        pg.listen(move |seq| {
            if let Some(shared) = weak.upgrade() {
                shared.events.send_modify(|s| *s = (*s + 1).max(seq));
                shared.wake.notify_one();
            }
        });
    }
    Ok(Arc::new(api::App {
        shared,
        tokens,
        authorizer: auth::Authorizer::new(config.authorize_url.clone(), config.authorize_ttl),
        requests: AtomicU64::new(0),
    }))
}

async fn shutdown() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
