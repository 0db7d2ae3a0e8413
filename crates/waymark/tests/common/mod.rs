//! Shared fixtures of the CLI tests: real private stores built by the testbed.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use waymark_testbed::{BuiltPair, PrivateStore, build_pair, fixtures};

mod logged;
pub use logged::Logged;

/// The web host pair, built once per test run in a store under the target directory
/// (rebuilding it is a no-op when nothing changed).
pub struct Web {
    pub store: PrivateStore,
    pub pair: BuiltPair,
}

pub fn web() -> &'static Web {
    static WEB: OnceLock<Web> = OnceLock::new();
    WEB.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-store");
        let store = PrivateStore::at(&dir).expect("creating the fixture store");
        let pair = build_pair(&store, &fixtures::web_gen1(), &fixtures::web_gen2())
            .expect("building the web fixture (needs nix-bin and busybox-static)");
        Web { store, pair }
    })
}

/// A fresh store with the web pair, for tests that damage their store.
pub fn fresh_web() -> (PrivateStore, BuiltPair) {
    let store = PrivateStore::temp().expect("creating a store");
    let pair = build_pair(&store, &fixtures::web_gen1(), &fixtures::web_gen2()).expect("building");
    (store, pair)
}

/// `waymark` pointed at a store the way a user would: the variables Nix honours.
pub fn waymark(store: &PrivateStore) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waymark"));
    cmd.envs(store.env());
    for v in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE"] {
        cmd.env_remove(v);
    }
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mut cmd: Command) -> Run {
    let out = cmd.output().expect("running waymark");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Replaces what differs between machines: store hashes, temporary directories, sizes
/// (NAR sizes depend on the length of the store directory's name).
pub fn redact(text: &str, store: &PrivateStore) -> String {
    let text = text.replace(&store.root().display().to_string(), "[STORE]");
    let hash = regex_lite::Regex::new(r"/[0-9a-z]{32}-").unwrap();
    let size = regex_lite::Regex::new(r" *[+-]?\d+(\.\d+)? (B|KiB|MiB|GiB)\b").unwrap();
    let text = hash.replace_all(&text, "/[HASH]-");
    size.replace_all(&text, " [SIZE]").into_owned()
}
