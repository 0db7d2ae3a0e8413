//! Version ordering: Nix's (`builtins.compareVersions`), so that "downgrade" means what
//! Nix would call older, with one change: every pre-release marker sorts before the
//! release it leads to, not only `pre`. Nix puts `1.9.6-rc4` after `1.9.6` (`rc` is a
//! word, and words sort after the end of a version), so a release-candidate → release
//! move read as a downgrade (issue 22); no operator, and no other tool (dix), reads it
//! so. Markers, as a separate component or glued on (`1.0rc1`, `1.0-beta.2`), in order:
//! `dev`/`snapshot` < `alpha` < `beta` < `pre`/`preview` < `rc`, case-insensitive; all
//! before anything else, the end of the version included. Everything else is Nix's.

use std::cmp::Ordering;

/// Splits off the next version component the way Nix's `nextComponent` does: separators
/// are `.` and `-`; a component is a run of digits or a run of non-digits.
fn next_component(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(['.', '-']);
    let Some(first) = s.chars().next() else {
        return ("", "");
    };
    let end = if first.is_ascii_digit() {
        s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len())
    } else {
        s.find(|c: char| c.is_ascii_digit() || c == '.' || c == '-')
            .unwrap_or(s.len())
    };
    (&s[..end], &s[end..])
}

fn as_number(c: &str) -> Option<u128> {
    if c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Components longer than u128 are compared as digit strings of equal length.
    c.parse().ok().or(Some(u128::MAX))
}

/// The rank of a pre-release marker, `None` for any other component.
fn pre_release(c: &str) -> Option<u8> {
    match c.to_ascii_lowercase().as_str() {
        "dev" | "snapshot" => Some(0),
        "alpha" => Some(1),
        "beta" => Some(2),
        "pre" | "preview" => Some(3),
        "rc" => Some(4),
        _ => None,
    }
}

fn component_less(c1: &str, c2: &str) -> bool {
    let (n1, n2) = (as_number(c1), as_number(c2));
    match (n1, n2) {
        (Some(a), Some(b)) => a < b,
        _ if c1.is_empty() && n2.is_some() => true,
        // Nix's rule for `pre`, widened to every marker (see the module comment).
        _ => match (pre_release(c1), pre_release(c2)) {
            (Some(a), Some(b)) => a < b || (a == b && c1 < c2),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => nix_less(c1, c2, n1, n2),
        },
    }
}

fn nix_less(c1: &str, c2: &str, n1: Option<u128>, n2: Option<u128>) -> bool {
    match (n1, n2) {
        // Nix assumes `2.3a` < `2.3.1`.
        (_, Some(_)) => true,
        (Some(_), _) => false,
        _ => c1 < c2,
    }
}

/// Compares two version strings with the semantics of Nix's `builtins.compareVersions`,
/// except that every pre-release marker sorts before the release (see the module doc).
///
/// # Example
/// ```
/// use std::cmp::Ordering;
/// use waymark_diff::compare_versions;
/// assert_eq!(compare_versions("3.0.13", "3.0.14"), Ordering::Less);
/// assert_eq!(compare_versions("1.0pre1", "1.0"), Ordering::Less);
/// assert_eq!(compare_versions("1.9.6-rc4", "1.9.6"), Ordering::Less);
/// ```
pub fn compare_versions(v1: &str, v2: &str) -> Ordering {
    let (mut p1, mut p2) = (v1, v2);
    while !p1.trim_start_matches(['.', '-']).is_empty()
        || !p2.trim_start_matches(['.', '-']).is_empty()
    {
        let (c1, r1) = next_component(p1);
        let (c2, r2) = next_component(p2);
        if component_less(c1, c2) {
            return Ordering::Less;
        }
        if component_less(c2, c1) {
            return Ordering::Greater;
        }
        p1 = r1;
        p2 = r2;
    }
    Ordering::Equal
}

/// Sorts versions oldest first; equal-comparing distinct strings keep a stable text order.
pub fn sort_versions(versions: &mut [String]) {
    versions.sort_by(|a, b| compare_versions(a, b).then_with(|| a.cmp(b)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_like_nix() {
        // Expected values from Nix's own tests (tests/lang/eval-okay-versions.nix).
        let ordered = [
            "1.0pre1", "1.0", "1.0a", "1.0.1", "1.1", "1.2pre", "1.2", "2.3a", "2.3.1", "2.3.1.1",
            "2.3.2",
        ];
        for pair in ordered.windows(2) {
            assert_eq!(
                compare_versions(pair[0], pair[1]),
                Ordering::Less,
                "{pair:?}"
            );
            assert_eq!(
                compare_versions(pair[1], pair[0]),
                Ordering::Greater,
                "{pair:?}"
            );
        }
        assert_eq!(compare_versions("2.3", "2.3"), Ordering::Equal);
        assert_eq!(compare_versions("6.6.30", "6.6.4"), Ordering::Greater);
        assert_eq!(compare_versions("5.2p26", "5.2p37"), Ordering::Less);
        assert_eq!(compare_versions("", "1"), Ordering::Less);
    }

    #[test]
    fn pre_releases_lead_to_their_release() {
        // The moves issue 22 found called downgrades, and their kin.
        let ordered = [
            ["1.9.6-rc4", "1.9.6"],
            ["1.1.5-rc2", "1.1.5"],
            ["2.0rc1", "2.0"],
            ["2.0-beta.2", "2.0"],
            ["2.0-alpha1", "2.0-beta1"],
            ["2.0-beta1", "2.0-rc1"],
            ["2.0-dev", "2.0-alpha"],
            ["2.0-SNAPSHOT", "2.0"],
            ["2.0-preview3", "2.0-rc1"],
            ["2.0-RC1", "2.0"],
            ["1.9.6", "1.9.7-rc1"],
            ["2.0-rc1", "2.0.1"],
            ["2.0-rc2", "2.0-rc10"],
        ];
        for [a, b] in ordered {
            assert_eq!(compare_versions(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare_versions(b, a), Ordering::Greater, "{b} > {a}");
        }
        // Words that are not markers keep Nix's order.
        assert_eq!(compare_versions("1.0", "1.0a"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1.0-foo"), Ordering::Less);
    }

    fn version() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            "[0-9]{1,3}",
            "(rc|alpha|beta|pre|dev|preview|snapshot|RC|p|a|b|git|unstable)",
        ];
        proptest::collection::vec((part, "[.-]?"), 0..6)
            .prop_map(|v| v.into_iter().map(|(p, s)| format!("{p}{s}")).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn transitive(a in version(), b in version(), c in version()) {
            let mut v = [a, b, c];
            v.sort_by(|x, y| compare_versions(x, y));
            prop_assert_ne!(compare_versions(&v[0], &v[2]), Ordering::Greater, "{:?}", v);
        }

        #[test]
        fn a_marker_leads_to_its_release(
            v in "[0-9]{1,2}(\\.[0-9]{1,2}){0,3}",
            m in "(rc|alpha|beta|pre|dev|preview|snapshot)",
            sep in "[.-]?",
            n in "[0-9]{0,2}",
        ) {
            let pre = format!("{v}-{m}{sep}{n}");
            prop_assert_eq!(compare_versions(&pre, &v), Ordering::Less, "{} < {}", pre, v);
            let glued = format!("{v}{m}{n}");
            prop_assert_eq!(compare_versions(&glued, &v), Ordering::Less, "{} < {}", glued, v);
        }

        #[test]
        fn antisymmetric(a in "[0-9a-z.-]{0,12}", b in "[0-9a-z.-]{0,12}") {
            prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
        }

        #[test]
        fn reflexive(a in "[0-9a-z.-]{0,12}") {
            prop_assert_eq!(compare_versions(&a, &a), Ordering::Equal);
        }
    }
}
