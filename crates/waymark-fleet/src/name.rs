//! The one rule for target (host) names. A name goes into file names (records), GC root
//! directories, git refs (`release/<target>/<mark>`), ssh destinations and JSON, so it
//! must be valid for all of them; it is checked once, by the first command that sees it,
//! and the error states this rule (issue 22: `a..b`, `web.lock` and `web.` were accepted
//! by one command and refused by the next).

/// The rule, as error messages state it.
pub const TARGET_RULE: &str = "a target name is 1 to 64 ASCII letters, digits, '.', '_' and '-', starting and ending with a letter or digit, without '..' and not ending in '.lock'";

/// The longest target name.
pub const TARGET_MAX: usize = 64;

/// Whether `name` is a valid target name ([`TARGET_RULE`]).
///
/// # Example
/// ```
/// use waymark_fleet::valid_target;
/// assert!(valid_target("web-1.example_org"));
/// assert!(!valid_target("a..b") && !valid_target("web.lock") && !valid_target("web."));
/// ```
pub fn valid_target(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: Option<&u8>| c.is_some_and(u8::is_ascii_alphanumeric);
    (1..=TARGET_MAX).contains(&b.len())
        && edge(b.first())
        && edge(b.last())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !name.contains("..")
        // Case-folded: a ref is a file, and some file systems fold case.
        && !name.to_ascii_lowercase().ends_with(".lock")
}

/// Shows a name from outside in a one-line message: quoted and escaped, so a newline or
/// a control character in it cannot split or forge a line.
pub fn quoted(name: &str) -> String {
    format!("{name:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        for good in [
            "web",
            "web1",
            "w",
            "web-1.example_org",
            "a.b",
            &"x".repeat(64),
        ] {
            assert!(valid_target(good), "{good}");
        }
        for bad in [
            "",
            "a..b",
            "web.lock",
            "web.",
            "web-",
            ".web",
            "-web",
            "_web",
            "a/b",
            "../etc",
            "web 1",
            "web\n",
            "web@x",
            "a:b",
            "a~b",
            "a^b",
            "a?b",
            "a*b",
            "a[b",
            "a\\b",
            "a@{b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!valid_target(bad), "{bad:?}");
        }
        assert_eq!(quoted("a\nb"), r#""a\nb""#);
    }

    /// git's ref-format rules (git-check-ref-format(1)) for one component.
    fn git_component_ok(c: &str) -> bool {
        !c.is_empty()
            && !c.starts_with('.')
            && std::path::Path::new(c)
                .extension()
                .is_none_or(|e| e != "lock")
            && !c.contains("..")
            && !c.contains("@{")
            && c != "@"
            && !c.bytes().any(|b| {
                b < 0x20
                    || b == 0x7f
                    || matches!(
                        b,
                        b' ' | b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\' | b'/'
                    )
            })
            && !c.ends_with('.')
    }

    fn any_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9._-]{0,70}",
            "[a-z0-9.@{}~^:?*\\[\\\\ /\n\t-]{0,12}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every accepted name is a valid file name, GC root name, git ref component
        /// (libgit2 agrees on the whole tag name), ssh host (no option, no user part) and
        /// survives JSON unchanged.
        #[test]
        fn accepted_names_fit_every_consumer(name in any_name()) {
            if valid_target(&name) {
                prop_assert!(name != "." && name != ".." && !name.contains(['/', '\0']));
                prop_assert!(name.len() <= 255 - ".drv".len() - 40, "leaves room for a mark");
                prop_assert!(git_component_ok(&name));
                let tag = format!("refs/tags/release/{name}/20261123T172900Z-1a2b3c4");
                prop_assert!(git2::Reference::is_valid_name(&tag), "{}", tag);
                let branch = format!("refs/heads/release/{name}");
                prop_assert!(git2::Reference::is_valid_name(&branch), "{}", branch);
                prop_assert!(!name.starts_with('-') && !name.contains(['@', ' ', '\n']));
                let json = serde_json::to_string(&name).unwrap();
                prop_assert_eq!(json, format!("\"{name}\""));
            }
        }

        /// Names that break git's rules are refused.
        #[test]
        fn git_refusals_are_refused(name in any_name()) {
            let tag = format!("refs/tags/release/{name}/20261123T172900Z-1a2b3c4");
            if !git2::Reference::is_valid_name(&tag) || !git_component_ok(&name) {
                prop_assert!(!valid_target(&name));
            }
        }
    }
}
