//! Package identity from store path names: `<hash>-<pname>-<version>[-<output>]`.

/// Length of the base-32 hash part of a store path's base name.
pub const HASH_LEN: usize = 32;

/// Output names recognised when no deriver tells us which output a path is. Only used as a
/// fallback: output suffixes are otherwise read from the deriver's name.
const KNOWN_OUTPUTS: &[&str] = &[
    "bin", "dev", "devdoc", "doc", "debug", "info", "lib", "lib32", "lib64", "man", "out",
    "static", "py", "terminfo", "modules", "getent",
];

/// Returns the name part of a store path (`/nix/store/<hash>-openssl-3.0.13` →
/// `openssl-3.0.13`), or `None` when the base name is not `<32 chars>-<name>`.
pub fn store_path_name(path: &str) -> Option<&str> {
    let base = path.rsplit('/').next()?;
    let (hash, name) = (base.get(..HASH_LEN)?, base.get(HASH_LEN + 1..)?);
    (base.as_bytes().get(HASH_LEN) == Some(&b'-')
        && !name.is_empty()
        && hash.bytes().all(|b| b.is_ascii_alphanumeric()))
    .then_some(name)
}

/// Splits a derivation name like `builtins.parseDrvName`: the name ends at the first `-`
/// that is followed by a character that is not a letter.
///
/// # Example
/// ```
/// use waymark_diff::parse_drv_name;
/// assert_eq!(parse_drv_name("python3.11-requests-2.31.0"), ("python3.11-requests", "2.31.0"));
/// assert_eq!(parse_drv_name("system-path"), ("system-path", ""));
/// ```
pub fn parse_drv_name(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'-' && bytes.get(i + 1).is_some_and(|n| !n.is_ascii_alphabetic()) {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

/// What a closure path is, as a package: name, version and which output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageId {
    /// Package name without version (`openssl`, `python3.11-requests`).
    pub pname: String,
    /// Version, possibly empty (`3.0.13`).
    pub version: String,
    /// Output name (`out`, `lib`, `man`).
    pub output: String,
}

/// Identifies the package, version and output of a store path name.
///
/// With the deriver's name (`openssl-3.0.13` from `<hash>-openssl-3.0.13.drv`) the output
/// is exact: the path name is the derivation name plus `-<output>` unless it is `out`.
/// Without it, a trailing known output name is stripped from the version, which is the
/// best that `nix store diff-closures` does too.
///
/// # Example
/// ```
/// use waymark_diff::package_id;
/// let id = package_id("krb5-1.21.2-lib", Some("krb5-1.21.2"));
/// assert_eq!((id.pname.as_str(), id.version.as_str(), id.output.as_str()), ("krb5", "1.21.2", "lib"));
/// ```
pub fn package_id(path_name: &str, deriver_name: Option<&str>) -> PackageId {
    let (pname, version, output) = split_package(path_name, deriver_name);
    PackageId {
        pname: pname.to_owned(),
        version: version.to_owned(),
        output: output.to_owned(),
    }
}

/// [`package_id`] without allocating: (package name, version, output), borrowed.
pub fn split_package<'a>(
    path_name: &'a str,
    deriver_name: Option<&'a str>,
) -> (&'a str, &'a str, &'a str) {
    let make = |drv_name: &'a str, output: &'a str| {
        let (pname, version) = parse_drv_name(drv_name);
        (pname, version, output)
    };
    if let Some(drv_name) = deriver_name {
        if path_name == drv_name {
            return make(drv_name, "out");
        }
        if let Some(output) = path_name
            .strip_prefix(drv_name)
            .and_then(|rest| rest.strip_prefix('-'))
        {
            return make(drv_name, output);
        }
    }
    let (pname, version) = parse_drv_name(path_name);
    if let Some((rest, suffix)) = version.rsplit_once('-')
        && KNOWN_OUTPUTS.contains(&suffix)
        && !rest.is_empty()
    {
        return make(&path_name[..path_name.len() - suffix.len() - 1], suffix);
    }
    if version.is_empty()
        && deriver_name.is_none()
        && let Some((rest, suffix)) = pname.rsplit_once('-')
        && KNOWN_OUTPUTS.contains(&suffix)
        && !rest.is_empty()
    {
        return make(rest, suffix);
    }
    make(path_name, "out")
}

/// Returns the name of a derivation path (`/nix/store/<hash>-foo-1.0.drv` → `foo-1.0`).
pub fn drv_name(drv_path: &str) -> Option<&str> {
    store_path_name(drv_path)?.strip_suffix(".drv")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path_name: &str, deriver: Option<&str>) -> (String, String, String) {
        let p = package_id(path_name, deriver);
        (p.pname, p.version, p.output)
    }

    #[test]
    fn outputs_from_deriver_are_not_versions() {
        assert_eq!(
            id("openssl-3.0.13-dev", Some("openssl-3.0.13")),
            ("openssl".into(), "3.0.13".into(), "dev".into())
        );
        assert_eq!(
            id("linux-6.6.30-modules", Some("linux-6.6.30")),
            ("linux".into(), "6.6.30".into(), "modules".into())
        );
        // An output name the fallback list does not know is still exact with a deriver.
        assert_eq!(
            id("util-linux-2.39.4-login", Some("util-linux-2.39.4")),
            ("util-linux".into(), "2.39.4".into(), "login".into())
        );
    }

    #[test]
    fn fallback_strips_known_outputs_only() {
        assert_eq!(
            id("krb5-1.21.2-lib", None),
            ("krb5".into(), "1.21.2".into(), "lib".into())
        );
        assert_eq!(
            id("bash-5.2p26-man", None),
            ("bash".into(), "5.2p26".into(), "man".into())
        );
        assert_eq!(
            id("foo-1.0-rc1", None),
            ("foo".into(), "1.0-rc1".into(), "out".into())
        );
        assert_eq!(
            id("system-path", None),
            ("system-path".into(), String::new(), "out".into())
        );
        assert_eq!(
            id("libfoo-dev", None),
            ("libfoo".into(), String::new(), "dev".into())
        );
    }

    #[test]
    fn store_names() {
        let p = "/nix/store/gi0j3kcrq19vpiamy3wzi5dwdjsll4ql-openssl-3.0.13";
        assert_eq!(store_path_name(p), Some("openssl-3.0.13"));
        assert_eq!(store_path_name("/nix/store/short-name"), None);
        assert_eq!(
            drv_name("/x/store/j3whfw0zicwz2n9x32w3wc4h6lzhni7w-openssl-3.0.13.drv"),
            Some("openssl-3.0.13")
        );
    }
}
