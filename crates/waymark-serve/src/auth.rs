//! Who is asking: bearer tokens from token files, which hold only the tokens' SHA-256
//! (a leaked file grants nothing), mapped to tenants; and the optional authorisation
//! callback to the panel, cached briefly and failing closed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::{Error, Result};

/// The known tokens' hashes and their tenants.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], String)>,
}

/// Whether `name` is a tenant name: it goes into paths and logs, so a short plain word.
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// The SHA-256 of a token, as token files write it (`sha256:` and 64 hex digits).
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads token files: lines `TENANT sha256:HEX` (`#` comments and blank lines
    /// skipped). A line that is neither refuses the whole file.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self> {
        let mut tokens = Self::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
            tokens.add_text(path, &text)?;
        }
        Ok(tokens)
    }

    fn add_text(&mut self, path: &Path, text: &str) -> Result<()> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: &str| Error::Tokens {
                path: path.to_owned(),
                line: n + 1,
                message: message.to_owned(),
            };
            let mut words = line.split_whitespace();
            let (Some(tenant), Some(hash), None) = (words.next(), words.next(), words.next())
            else {
                return Err(bad(
                    "expected `TENANT sha256:HEX` (hash a token with `printf %s TOKEN | sha256sum`)",
                ));
            };
            if !valid_tenant(tenant) {
                return Err(bad(
                    "the tenant name is not 1 to 63 of a-z, 0-9, '-', '_', '.' starting with a letter or digit",
                ));
            }
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(parse_hex)
                .ok_or_else(|| {
                    bad("the hash is not `sha256:` and 64 hexadecimal digits (the file holds hashes, never tokens)")
                })?;
            self.entries.push((digest, tenant.to_owned()));
        }
        Ok(())
    }

    /// Adds one token's hash for `tenant`.
    pub fn insert_hash(&mut self, tenant: &str, hash: &str) -> bool {
        match hash.strip_prefix("sha256:").and_then(parse_hex) {
            Some(digest) if valid_tenant(tenant) => {
                self.entries.push((digest, tenant.to_owned()));
                true
            }
            _ => false,
        }
    }

    /// The tenant of a presented token. Every entry is compared, in constant time, so
    /// the answer's timing tells nothing of which hash came close.
    pub fn tenant(&self, token: &str) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, tenant) in &self.entries {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(tenant.clone());
            }
        }
        found
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Tenant, action, deployment: what the callback is asked.
type Question = (String, String, String);

/// The panel's say on each request, when it has one.
pub struct Authorizer {
    url: Option<String>,
    client: reqwest::Client,
    ttl: Duration,
    cache: Mutex<HashMap<Question, (Instant, bool)>>,
}

impl Authorizer {
    /// Asks `url` (POST of `{"tenant","action","deployment"}`; any 2xx allows), or
    /// allows everything a token allows when `None`.
    pub fn new(url: Option<String>, ttl: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self {
            url,
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `tenant` may do `action` on `deployment` (empty: the tenant's whole
    /// account). An unreachable or failing callback denies.
    pub async fn allows(&self, tenant: &str, action: &str, deployment: &str) -> bool {
        let Some(url) = &self.url else {
            return true;
        };
        let key = (tenant.to_owned(), action.to_owned(), deployment.to_owned());
        {
            let cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, allowed)) = cache.get(&key)
                && at.elapsed() < self.ttl
            {
                return *allowed;
            }
        }
        let body =
            serde_json::json!({"tenant": tenant, "action": action, "deployment": deployment});
        let allowed = match self.client.post(url).json(&body).send().await {
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        };
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), allowed));
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants_by_hash_only() {
        let mut t = Tokens::default();
        let text = format!(
            "# panel tokens\nacme {}\n\nglobex {}\n",
            hash_token("s3cret"),
            hash_token("other")
        );
        t.add_text(Path::new("tokens"), &text).unwrap();
        assert_eq!(t.tenant("s3cret").as_deref(), Some("acme"));
        assert_eq!(t.tenant("other").as_deref(), Some("globex"));
        assert_eq!(t.tenant("s3cre"), None);
        assert_eq!(t.tenant(""), None);
    }

    #[test]
    fn a_bad_token_line_names_its_line() {
        let mut t = Tokens::default();
        let err = t
            .add_text(Path::new("tokens"), "acme sha256:00\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tokens:1: the hash"), "{err}");
        let err = t
            .add_text(Path::new("tokens"), "\nAcme! sha256:00\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tokens:2: the tenant"), "{err}");
        // A plain token where a hash belongs is refused, not taken as a hash.
        let err = t.add_text(Path::new("t"), "acme s3cret\n").unwrap_err();
        assert!(err.to_string().contains("never tokens"), "{err}");
    }
}
