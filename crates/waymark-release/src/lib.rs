//! Release records: an annotated tag `release/<target>/<UTC>-<shortrev>` on the validated
//! commit, whose message records what was built and the evidence, and a branch
//! `release/<target>` that only fast-forwards. Tag and branch move together or not at
//! all; a tag never moves. Git is driven through libgit2.
//!
//! # Example
//! ```no_run
//! use waymark_release::Releases;
//!
//! let releases = Releases::open(std::path::Path::new("."))?;
//! for r in releases.list("web1")? {
//!     println!("{} {} {}", r.tag, r.commit, r.closure);
//! }
//! # Ok::<(), waymark_release::Error>(())
//! ```

mod error;

use std::path::Path;

use git2::{BranchType, Oid, Repository, Signature};
use serde::{Deserialize, Serialize};
use waymark_evidence::Evidence;
use waymark_known_good::Record;

use error::git;
pub use error::{Error, Result};

/// Identifier of the JSON block in a release tag's message.
pub const SCHEMA: &str = "waymark.release/v1";
const BEGIN: &str = "-----BEGIN WAYMARK RELEASE-----";
const END: &str = "-----END WAYMARK RELEASE-----";

/// What a release tag records (its message's JSON block), plus the tag itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The tag name (`release/web1/20261123T172900Z-1a2b3c4`).
    pub tag: String,
    /// The target.
    pub target: String,
    /// The known-good mark it corresponds to.
    pub mark: String,
    /// The released commit.
    pub commit: String,
    /// The closure that was built and validated.
    pub closure: String,
    /// Its derivation, when known.
    pub drv: Option<String>,
    /// When the closure was marked known-good.
    pub marked_at: String,
    /// The gate evidence.
    pub evidence: Evidence,
    /// Who tagged (from the tag object; not in the JSON block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagger: Option<String>,
    /// When it was tagged, Unix seconds (from the tag object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagged_at: Option<i64>,
}

/// What `tag` did.
#[derive(Debug, Clone, Serialize)]
pub struct TagOutcome {
    /// The release.
    pub release: Release,
    /// False when the tag already existed for this mark (a rerun after a crash).
    pub created: bool,
    /// The branch's previous tip, when it moved (`None`: created, or already there).
    pub branch_from: Option<String>,
    /// Whether the branch moved or was created.
    pub branch_moved: bool,
}

/// The release branch of a target.
pub fn branch_name(target: &str) -> String {
    format!("release/{target}")
}

/// The release tag of a target's mark.
pub fn tag_name(target: &str, mark: &str) -> String {
    format!("release/{target}/{mark}")
}

fn message(r: &Release) -> String {
    let e = &r.evidence;
    let diff = e.diff.as_ref().map_or_else(
        || "(not recorded)".to_owned(),
        |d| {
            let mut s = format!(
                "{} changed, {} added, {} removed, {} rebuilt",
                d.changed, d.added, d.removed, d.rebuilt
            );
            if !d.root_causes.is_empty() {
                s.push_str("; root causes: ");
                s.push_str(&d.root_causes.join(", "));
            }
            s
        },
    );
    let json = serde_json::to_string_pretty(&Release {
        tagger: None,
        tagged_at: None,
        ..r.clone()
    })
    .expect("a release serialises");
    format!(
        "release {target} {mark}\n\ncommit:     {commit}\nclosure:    {closure}\nderivation: {drv}\ngates:      {gates}\ndiff:       {diff}\nknown-good: {mark} (marked {marked_at})\n\n{BEGIN}\n{json}\n{END}\n",
        target = r.target,
        mark = r.mark,
        commit = r.commit,
        closure = r.closure,
        drv = r.drv.as_deref().unwrap_or("(not recorded)"),
        gates = e.summary(),
        marked_at = r.marked_at,
    )
}

fn parse_message(tag: &str, message: &str) -> Result<Release> {
    let bad = || Error::NotARelease {
        tag: tag.to_owned(),
    };
    let start = message.find(BEGIN).ok_or_else(bad)? + BEGIN.len();
    let end = message[start..].find(END).ok_or_else(bad)? + start;
    let r: Release = serde_json::from_str(&message[start..end]).map_err(|_| bad())?;
    if r.schema != SCHEMA {
        return Err(bad());
    }
    Ok(r)
}

/// Parses `Name <email>`.
pub fn parse_identity(s: &str) -> Option<(String, String)> {
    let (name, rest) = s.split_once('<')?;
    let email = rest.strip_suffix('>')?;
    let name = name.trim();
    (!name.is_empty() && email.contains('@')).then(|| (name.to_owned(), email.to_owned()))
}

/// Release records in one repository.
pub struct Releases {
    repo: Repository,
}

/// What to release.
#[derive(Debug, Clone)]
pub struct TagRequest {
    /// The target.
    pub target: String,
    /// The commit (an id, or a revision such as `HEAD`).
    pub rev: String,
    /// The known-good record of the mark.
    pub mark: Record,
    /// `Name <email>`; default: git config `user.name` / `user.email`.
    pub tagger: Option<String>,
}

impl Releases {
    /// Opens the repository at or above `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let repo = Repository::discover(path).map_err(|source| Error::NoRepo {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { repo })
    }

    /// The underlying repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Resolves a revision to a commit id, refusing a symbolic one in a dirty tree.
    pub fn resolve_commit(&self, rev: &str) -> Result<Oid> {
        let commit = self
            .repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|source| Error::UnknownCommit {
                rev: rev.to_owned(),
                source,
            })?;
        let explicit = rev.len() >= 7 && rev.bytes().all(|b| b.is_ascii_hexdigit());
        if !explicit && !self.repo.is_bare() {
            let mut opts = git2::StatusOptions::new();
            opts.include_untracked(false).include_ignored(false);
            let statuses = self
                .repo
                .statuses(Some(&mut opts))
                .map_err(git("reading the working tree status"))?;
            if !statuses.is_empty() {
                return Err(Error::Dirty {
                    rev: rev.to_owned(),
                });
            }
        }
        Ok(commit.id())
    }

    fn signature(&self, tagger: Option<&str>) -> Result<Signature<'static>> {
        match tagger {
            Some(t) => {
                let (name, email) = parse_identity(t).ok_or_else(|| Error::BadTagger {
                    given: t.to_owned(),
                })?;
                Signature::now(&name, &email).map_err(git("making the tagger signature"))
            }
            None => self
                .repo
                .signature()
                .map(|s| s.to_owned())
                .map_err(|_| Error::NoIdentity),
        }
    }

    fn branch_tip(&self, target: &str) -> Result<Option<Oid>> {
        match self
            .repo
            .find_branch(&branch_name(target), BranchType::Local)
        {
            Ok(b) => Ok(b.get().target()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(git("reading the release branch")(e)),
        }
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    fn is_ancestor(&self, ancestor: Oid, descendant: Oid) -> Result<bool> {
        Ok(ancestor == descendant
            || self
                .repo
                .graph_descendant_of(descendant, ancestor)
                .map_err(git("walking the history"))?)
    }

    /// Tags the release and fast-forwards the target's branch, both or neither.
    ///
    /// # Errors
    /// Unknown commit, mark for another commit, tag collision, non-fast-forward, no
    /// identity. Nothing is changed on error.
    pub fn tag(&self, req: &TagRequest) -> Result<TagOutcome> {
        if !waymark_known_good::valid_target(&req.target) {
            return Err(Error::BadTarget(req.target.clone()));
        }
        let commit = self.resolve_commit(&req.rev)?;
        let commit_hex = commit.to_string();
        if !commit_hex.starts_with(&req.mark.rev) {
            return Err(Error::RevMismatch {
                mark: req.mark.mark.clone(),
                mark_rev: req.mark.rev.clone(),
                commit: commit_hex,
            });
        }
        if !waymark_known_good::valid_mark(&req.mark.mark) {
            return Err(Error::BadMark(req.mark.mark.clone()));
        }
        let tag = tag_name(&req.target, &req.mark.mark);
        let release = Release {
            schema: SCHEMA.to_owned(),
            tag: tag.clone(),
            target: req.target.clone(),
            mark: req.mark.mark.clone(),
            commit: commit_hex.clone(),
            closure: req.mark.closure.clone(),
            drv: req.mark.drv.clone(),
            marked_at: req.mark.marked_at.clone(),
            evidence: req.mark.evidence.clone(),
            tagger: None,
            tagged_at: None,
        };
        // An existing tag: the same release (converge after a crash) or a collision.
        let existing = match self.repo.find_reference(&format!("refs/tags/{tag}")) {
            Ok(r) => Some(
                r.peel_to_commit()
                    .map_err(git("reading the existing tag"))?
                    .id(),
            ),
            Err(e) if e.code() == git2::ErrorCode::NotFound => None,
            Err(e) => return Err(git("reading tags")(e)),
        };
        if let Some(existing) = existing
            && existing != commit
        {
            return Err(Error::TagExists {
                tag,
                existing: existing.to_string(),
            });
        }
        // The branch check comes before anything is written.
        let branch_ref = format!("refs/heads/{}", branch_name(&req.target));
        let tip = self.branch_tip(&req.target)?;
        if let Some(tip) = tip
            && !self.is_ancestor(tip, commit)?
        {
            return Err(Error::NonFastForward {
                branch: branch_name(&req.target),
                from: tip.to_string(),
                to: commit_hex,
            });
        }
        let created = existing.is_none();
        if created {
            let sig = self.signature(req.tagger.as_deref())?;
            let object = self
                .repo
                .find_object(commit, None)
                .map_err(git("reading the commit"))?;
            self.repo
                .tag(&tag, &object, &sig, &message(&release), false)
                .map_err(|e| match e.code() {
                    git2::ErrorCode::Exists => Error::TagExists {
                        tag: tag.clone(),
                        existing: "another commit".into(),
                    },
                    _ => git(format!("creating tag {tag}"))(e),
                })?;
        }
        waymark_fault::crash_at("after-tag");
        let log = format!("waymark release: {tag}");
        let try_move = || match tip {
            Some(t) if t == commit => Ok(false),
            // Compare-and-swap: a concurrent move of the branch makes this fail, not clobber.
            Some(t) => self
                .repo
                .reference_matching(&branch_ref, commit, true, t, &log)
                .map(|_| true),
            None => self
                .repo
                .reference(&branch_ref, commit, false, &log)
                .map(|_| true),
        };
        let mut moved = try_move();
        // A ref another writer holds locked for a moment is busy, not refused: wait for
        // it (a concurrent run of this release finishing), or the tag just made would be
        // taken back while that run, seeing the tag, leaves the branch without it.
        for _ in 0..100 {
            match &moved {
                Err(e) if e.code() == git2::ErrorCode::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    moved = try_move();
                }
                _ => break,
            }
        }
        let moved = match moved {
            Ok(m) => m,
            // Someone moved the branch meanwhile. At our commit (a concurrent run of this
            // same release), both have converged: keep the tag.
            Err(_) if self.branch_tip(&req.target)? == Some(commit) => false,
            Err(e) => {
                if created {
                    // Together or not at all: take back the tag we just made.
                    let _ = self.repo.tag_delete(&tag);
                }
                return Err(git(format!("moving {branch_ref}"))(e));
            }
        };
        Ok(TagOutcome {
            release,
            created,
            branch_from: tip.filter(|t| moved && *t != commit).map(|t| t.to_string()),
            branch_moved: moved,
        })
    }

    /// The releases of a target, oldest first, read back from the tags.
    pub fn list(&self, target: &str) -> Result<Vec<Release>> {
        if !waymark_known_good::valid_target(target) {
            return Err(Error::BadTarget(target.to_owned()));
        }
        let glob = format!("refs/tags/release/{target}/*");
        let mut releases = Vec::new();
        for reference in self
            .repo
            .references_glob(&glob)
            .map_err(git("listing tags"))?
        {
            let reference = reference.map_err(git("listing tags"))?;
            let name = reference.shorthand().unwrap_or_default().to_owned();
            let Ok(tag) = reference.peel_to_tag() else {
                return Err(Error::NotARelease { tag: name });
            };
            let message =
                String::from_utf8_lossy(tag.message_bytes().unwrap_or_default()).into_owned();
            let mut r = parse_message(&name, &message)?;
            if let Some(t) = tag.tagger() {
                r.tagger = Some(format!(
                    "{} <{}>",
                    t.name().unwrap_or_default(),
                    t.email().unwrap_or_default()
                ));
                r.tagged_at = Some(t.when().seconds());
            }
            releases.push(r);
        }
        releases.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(releases)
    }

    /// Pushes the release branch and tags of `target` (or of every target) to `remote`.
    /// Never forces: a remote branch that is not an ancestor of ours, or a remote tag
    /// on another commit, is refused before anything is sent, and whatever the remote
    /// refuses is reported. Returns the refs pushed.
    pub fn push(&self, remote_name: &str, target: Option<&str>) -> Result<Vec<String>> {
        let mut remote = self
            .repo
            .find_remote(remote_name)
            .map_err(git(format!("finding remote {remote_name}")))?;
        let config = self.repo.config().map_err(git("reading git config"))?;
        let config = &config;
        let callbacks = || {
            let mut cb = git2::RemoteCallbacks::new();
            cb.credentials(move |url, user, allowed| {
                if allowed.contains(git2::CredentialType::SSH_KEY) {
                    git2::Cred::ssh_key_from_agent(user.unwrap_or("git"))
                } else if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
                    git2::Cred::credential_helper(config, url, user)
                } else {
                    git2::Cred::default()
                }
            });
            cb
        };
        let pattern = target.map_or_else(|| "release/".to_owned(), |t| format!("release/{t}"));
        let mut local: Vec<(String, Oid)> = Vec::new();
        for glob in [
            format!("refs/heads/{pattern}*"),
            format!("refs/tags/{pattern}*"),
        ] {
            for r in self
                .repo
                .references_glob(&glob)
                .map_err(git("listing refs"))?
            {
                let r = r.map_err(git("listing refs"))?;
                let name = r.name().unwrap_or_default().to_owned();
                let is_release = target.is_none_or(|t| {
                    name == format!("refs/heads/release/{t}")
                        || name.starts_with(&format!("refs/tags/release/{t}/"))
                });
                if let (true, Some(oid)) = (is_release, r.target()) {
                    local.push((name, oid));
                }
            }
        }
        let conn = remote
            .connect_auth(git2::Direction::Push, Some(callbacks()), None)
            .map_err(git(format!("connecting to {remote_name}")))?;
        let remote_refs: std::collections::HashMap<String, Oid> = conn
            .list()
            .map_err(git(format!("listing refs of {remote_name}")))?
            .iter()
            .map(|h| (h.name().to_owned(), h.oid()))
            .collect();
        drop(conn);
        let mut refspecs = Vec::new();
        for (name, oid) in &local {
            match remote_refs.get(name) {
                Some(r) if r == oid => {} // already there
                Some(r) if name.starts_with("refs/tags/") => {
                    let _ = r;
                    let existing = self
                        .repo
                        .find_reference(name)
                        .ok()
                        .and_then(|x| x.peel_to_commit().ok())
                        .map(|c| c.id().to_string());
                    return Err(Error::TagExists {
                        tag: format!("{} at {remote_name}", name.trim_start_matches("refs/tags/")),
                        existing: existing.unwrap_or_default(),
                    });
                }
                Some(r) => {
                    let branch = name.trim_start_matches("refs/heads/").to_owned();
                    if self.repo.find_commit(*r).is_err() {
                        return Err(Error::RemoteAhead {
                            remote: remote_name.to_owned(),
                            branch,
                            remote_tip: r.to_string(),
                        });
                    }
                    if !self.is_ancestor(*r, *oid)? {
                        return Err(Error::NonFastForward {
                            branch: format!("{branch} at {remote_name}"),
                            from: r.to_string(),
                            to: oid.to_string(),
                        });
                    }
                    refspecs.push(format!("{name}:{name}"));
                }
                None => refspecs.push(format!("{name}:{name}")),
            }
        }
        if refspecs.is_empty() {
            return Ok(Vec::new());
        }
        let rejected = std::cell::RefCell::new(None);
        {
            let mut cb = callbacks();
            cb.push_update_reference(|reference, status| {
                if let Some(msg) = status {
                    rejected
                        .borrow_mut()
                        .get_or_insert((reference.to_owned(), msg.to_owned()));
                }
                Ok(())
            });
            let mut opts = git2::PushOptions::new();
            opts.remote_callbacks(cb);
            remote
                .push(&refspecs, Some(&mut opts))
                .map_err(|e| Error::Rejected {
                    remote: remote_name.to_owned(),
                    reference: refspecs.join(" "),
                    message: e.message().to_owned(),
                })?;
        }
        if let Some((reference, message)) = rejected.into_inner() {
            return Err(Error::Rejected {
                remote: remote_name.to_owned(),
                reference,
                message,
            });
        }
        Ok(refspecs
            .into_iter()
            .map(|r| r.split(':').next().unwrap_or_default().to_owned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(
            parse_identity("Release Bot <bot@example.org>"),
            Some(("Release Bot".into(), "bot@example.org".into()))
        );
        assert_eq!(parse_identity("nobody"), None);
    }
}
