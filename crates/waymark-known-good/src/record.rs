//! The record of a mark and the pure rules around it: names, order, what prune keeps.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use waymark_evidence::Evidence;

/// Identifier of the record format (`docs/known-good-schema.json`).
pub const SCHEMA: &str = "waymark.known-good/v1";

/// Where a mark's GC roots are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    /// The link that roots the closure.
    pub closure: String,
    /// The link that roots the closure's derivation, when it was in the store.
    pub drv: Option<String>,
}

/// One known-good mark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The target (host).
    pub target: String,
    /// The mark's name, `<UTC>-<shortrev>` (`20261123T172900Z-1a2b3c4`).
    pub mark: String,
    /// Order among the target's marks: the latest has the highest.
    pub seq: u64,
    /// The known-good closure.
    pub closure: String,
    /// Its derivation, when the store had it.
    pub drv: Option<String>,
    /// The commit it was built from.
    pub rev: String,
    /// When it was marked, RFC 3339 UTC.
    pub marked_at: String,
    /// The evidence that earned the mark.
    pub evidence: Evidence,
    /// Version of the tool that made the mark.
    pub tool_version: String,
    /// The GC roots.
    pub roots: Roots,
}

/// Checks a target name against the one rule every consumer shares
/// ([`waymark_fleet::TARGET_RULE`]): it becomes a directory, a GC root's parent, a part
/// of tag names and an ssh destination.
pub fn valid_target(target: &str) -> bool {
    waymark_fleet::valid_target(target)
}

/// Checks a mark name: `<8 digits>T<6 digits>Z-<7 hex>` with an optional `-N`. Mark
/// names become file names, so nothing else is accepted from a record.
pub fn valid_mark(mark: &str) -> bool {
    let b = mark.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let base = b.len() >= 24
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..24]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    base && (b.len() == 24 || (b.len() > 25 && b[24] == b'-' && digits(25..b.len())))
}

/// Normalises a commit id: 7 to 40 hex digits, lowercase.
pub fn normalize_rev(rev: &str) -> Option<String> {
    let r = rev.to_ascii_lowercase();
    ((7..=40).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())).then_some(r)
}

/// RFC 3339 UTC to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The mark name for a time and commit: `20261123T172900Z-1a2b3c4`, so names sort by time.
pub fn mark_name(t: SystemTime, rev: &str) -> String {
    let stamp: String = rfc3339(t)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{stamp}-{}", &rev[..7.min(rev.len())])
}

/// Which marks prune removes: all but the `keep` most recent and those marked within
/// `keep_since` of `now`; never the latest. `records` are ordered oldest first.
pub fn to_prune(
    records: &[Record],
    keep: usize,
    keep_since: Option<Duration>,
    now: SystemTime,
) -> Vec<&Record> {
    let keep = keep.max(1);
    let cutoff = keep_since.and_then(|d| now.checked_sub(d));
    records
        .iter()
        .rev()
        .enumerate()
        .filter(|(i, r)| {
            let recent = cutoff
                .is_some_and(|c| humantime::parse_rfc3339(&r.marked_at).is_ok_and(|t| t >= c));
            *i >= keep && !recent
        })
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, marked_at: &str) -> Record {
        Record {
            schema: SCHEMA.into(),
            target: "web1".into(),
            mark: format!("m{seq}"),
            seq,
            closure: String::new(),
            drv: None,
            rev: "abcdef1".into(),
            marked_at: marked_at.into(),
            evidence: waymark_evidence::Evidence {
                schema: waymark_evidence::SCHEMA.into(),
                target: "web1".into(),
                closure: String::new(),
                drv: None,
                rev: None,
                gates: vec![],
                diff: None,
            },
            tool_version: "0".into(),
            roots: Roots {
                closure: String::new(),
                drv: None,
            },
        }
    }

    #[test]
    fn names_sort_by_time() {
        let t = humantime::parse_rfc3339("2026-11-23T17:29:00Z").unwrap();
        assert_eq!(mark_name(t, "1a2b3c4d5e"), "20261123T172900Z-1a2b3c4");
        assert!(mark_name(t, "ffffff0") < mark_name(t + Duration::from_secs(1), "0000000"));
    }

    #[test]
    fn prune_keeps_the_newest_and_the_recent() {
        let now = humantime::parse_rfc3339("2026-11-23T12:00:00Z").unwrap();
        let rs: Vec<Record> = (1..=5)
            .map(|i| record(i, &format!("2026-11-{:02}T12:00:00Z", 17 + i)))
            .collect();
        let seqs = |v: Vec<&Record>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(to_prune(&rs, 2, None, now)), [1, 2, 3]);
        // keep 0 still keeps the latest.
        assert_eq!(seqs(to_prune(&rs, 0, None, now)), [1, 2, 3, 4]);
        // Marked within 3 days of the 23rd: the 21st, 22nd (and the 20th is exactly 3 days).
        assert_eq!(
            seqs(to_prune(&rs, 1, Some(Duration::from_hours(72)), now)),
            [1, 2]
        );
    }

    #[test]
    fn mark_names() {
        assert!(valid_mark("20261123T172900Z-1a2b3c4"));
        assert!(valid_mark("20261123T172900Z-1a2b3c4-12"));
        for bad in [
            "../../etc/passwd",
            "20261123T172900Z-1a2b3c4.drv",
            "20261123T172900Z-1A2B3C4",
            "x",
            "20261123T172900Z-1a2b3c4-",
        ] {
            assert!(!valid_mark(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Every name `mark_name` makes is a valid mark, and every valid mark is a safe
        /// file name and git ref component (its `.drv` and `.json` siblings too).
        #[test]
        fn mark_names_fit_files_and_refs(
            secs in 0u64..8_000_000_000,
            rev in "[0-9a-f]{7,40}",
            n in proptest::option::of(2u32..100_000),
            junk in "\\PC{0,30}",
        ) {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let base = mark_name(t, &rev);
            let name = n.map_or_else(|| base.clone(), |n| format!("{base}-{n}"));
            proptest::prop_assert!(valid_mark(&name), "{}", name);
            for candidate in [name.clone(), junk] {
                if valid_mark(&candidate) {
                    proptest::prop_assert!(!candidate.contains(['/', '\0', '\n']) && !candidate.starts_with('.'));
                    let tag = format!("refs/tags/release/web/{candidate}");
                    proptest::prop_assert!(!tag.contains("..") && !tag.contains("@{"), "{}", tag);
                    proptest::prop_assert!(candidate.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
                }
            }
        }
    }

    #[test]
    fn targets_and_revs() {
        assert!(valid_target("web-1.example_org"));
        assert!(
            !valid_target("../etc")
                && !valid_target("")
                && !valid_target("a/b")
                && !valid_target("-x")
        );
        assert_eq!(normalize_rev("ABCDEF1").as_deref(), Some("abcdef1"));
        assert!(normalize_rev("abc").is_none() && normalize_rev("xyzxyzx").is_none());
    }
}
