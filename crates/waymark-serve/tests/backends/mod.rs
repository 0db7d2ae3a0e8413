//! The stores under test: SQLite in a temporary directory, and PostgreSQL in a fresh
//! database of the server `WAYMARK_TEST_POSTGRES` names (.ci/services.sh starts one).
//! Under CI a missing server is a failure; elsewhere the PostgreSQL runs say NOT RUN and
//! pass (`source .ci/services.sh` first to run them).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use postgres::{Client, NoTls};

/// The admin URL of the test server, if there is one.
#[allow(clippy::print_stderr)] // says why it passes without running
pub fn server() -> Option<String> {
    match std::env::var("WAYMARK_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("WAYMARK_TEST_POSTGRES is not set: .ci/run starts PostgreSQL (.ci/services.sh)")
        }
        _ => {
            eprintln!("NOT RUN: WAYMARK_TEST_POSTGRES is not set (source .ci/services.sh)");
            None
        }
    }
}

/// A URL with another database name (`postgres://user@host/DB?query`).
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = url.split_once('?').map_or((url, ""), |(h, q)| (h, q));
    let base = head.rsplit_once('/').map_or(head, |(b, _)| b);
    if query.is_empty() {
        format!("{base}/{db}")
    } else {
        format!("{base}/{db}?{query}")
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty database on the test server: its URL (None: no server, not run).
pub fn fresh_database() -> Option<String> {
    let url = server()?;
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut admin = Client::connect(&url, NoTls)
        .unwrap_or_else(|e| panic!("connecting to WAYMARK_TEST_POSTGRES ({url}): {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    Some(with_database(&url, &name))
}
