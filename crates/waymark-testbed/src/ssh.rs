//! A simulated host reachable over SSH: a real sshd on 127.0.0.1 with its own keys, whose
//! sessions see a private store (`SetEnv NIX_STORE_DIR=…`), so `ssh-ng://` store URLs,
//! `nix copy` and remote commands work as they would against a machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cmd::{keygen, wait_listening};
use crate::error::{Error, Result};
use crate::store::PrivateStore;

/// An sshd serving one store. Stopped (by its PID, nothing else) when dropped.
#[derive(Debug)]
pub struct SshHost {
    alias: String,
    config: PathBuf,
    child: Child,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io(Path::new("127.0.0.1")))?;
    Ok(l.local_addr().map_err(io(Path::new("127.0.0.1")))?.port())
}

impl SshHost {
    /// Starts an sshd named `alias` whose sessions use `store`.
    pub fn start(store: &PrivateStore, alias: &str) -> Result<Self> {
        let dir = store.root().join(format!("ssh-{alias}"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        keygen(&dir.join("host_key"))?;
        keygen(&dir.join("client_key"))?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_key.pub"), &authorized).map_err(io(&authorized))?;
        let port = free_port()?;
        let env: Vec<String> = store
            .env()
            .into_iter()
            .filter(|(k, _)| *k != "NIX_CONFIG")
            .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
            .collect();
        let sshd_config = dir.join("sshd_config");
        let text = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
             PidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nSetEnv {env}\n",
            host = dir.join("host_key").display(),
            auth = authorized.display(),
            env = env.join(" "),
        );
        std::fs::write(&sshd_config, text).map_err(io(&sshd_config))?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let config = dir.join("ssh_config");
        let text = format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  \
             IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
             LogLevel ERROR\n  BatchMode yes\n",
            key = dir.join("client_key").display(),
        );
        std::fs::write(&config, text).map_err(io(&config))?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&sshd_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "/usr/sbin/sshd".into(),
                source,
            })?;
        let host = Self {
            alias: alias.to_owned(),
            config,
            child,
        };
        wait_listening(port, "sshd", None)?;
        Ok(host)
    }

    /// The host's name in [`Self::ssh_config`].
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The client configuration (`ssh -F`), also what `NIX_SSHOPTS` must name.
    pub fn ssh_config(&self) -> &Path {
        &self.config
    }

    /// The value of `NIX_SSHOPTS` that reaches this host.
    pub fn nix_sshopts(&self) -> String {
        format!("-F {}", self.config.display())
    }

    /// `ssh-ng://<alias>`.
    pub fn store_url(&self) -> String {
        format!("ssh-ng://{}", self.alias)
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
