//! Nix's version ordering (`builtins.compareVersions`), so that "downgrade" means what
//! Nix itself would call older.

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

fn component_less(c1: &str, c2: &str) -> bool {
    let (n1, n2) = (as_number(c1), as_number(c2));
    match (n1, n2) {
        (Some(a), Some(b)) => a < b,
        _ if c1.is_empty() && n2.is_some() => true,
        _ if c1 == "pre" && c2 != "pre" => true,
        _ if c2 == "pre" => false,
        // Nix assumes `2.3a` < `2.3.1`.
        (_, Some(_)) => true,
        (Some(_), _) => false,
        _ => c1 < c2,
    }
}

/// Compares two version strings with the semantics of Nix's `builtins.compareVersions`.
///
/// # Example
/// ```
/// use std::cmp::Ordering;
/// use waymark_diff::compare_versions;
/// assert_eq!(compare_versions("3.0.13", "3.0.14"), Ordering::Less);
/// assert_eq!(compare_versions("1.0pre1", "1.0"), Ordering::Less);
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

    proptest! {
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
