//! Ready-made generation pairs: a small realistic one with planted changes for tests and
//! the demo, and large synthetic ones for the benchmark.

use crate::model::{Generation, Pkg};

fn sel(refs: &[&str]) -> Vec<(String, String)> {
    refs.iter()
        .map(|r| match r.rsplit_once('.') {
            Some((k, o)) if ["out", "man", "bin", "modules"].contains(&o) => {
                (k.to_owned(), o.to_owned())
            }
            _ => ((*r).to_owned(), "out".to_owned()),
        })
        .collect()
}

/// A NixOS-like host, generation 1: a DAG of ~20 packages with realistic names and
/// outputs (`-dev`, `-lib`, `-man`), one package in two versions, a build-time-only tool.
pub fn web_gen1() -> Generation {
    let packages = vec![
        Pkg::new("glibc", "2.39-52")
            .outputs(&["out", "dev", "bin"])
            .size(8192),
        Pkg::new("zlib", "1.3.1")
            .outputs(&["out", "dev"])
            .deps(&["glibc"]),
        Pkg::new("perl", "5.38.2").deps(&["glibc"]),
        Pkg::new("openssl", "3.0.13")
            .outputs(&["out", "dev", "man"])
            .deps(&["glibc", "zlib"])
            .build_deps(&["perl"])
            .size(4096),
        Pkg::new("openssl", "1.1.1w")
            .key("openssl_1_1")
            .deps(&["glibc"]),
        Pkg::new("sqlite", "3.45.3")
            .outputs(&["out", "dev"])
            .deps(&["glibc", "zlib"])
            .env("NIX_CFLAGS_COMPILE", "-O2"),
        Pkg::new("python3", "3.11.9")
            .deps(&["glibc", "openssl", "sqlite", "zlib"])
            .size(16384),
        Pkg::new("python3.11-requests", "2.31.0").deps(&["python3"]),
        Pkg::new("krb5", "1.21.2")
            .outputs(&["out", "lib", "dev"])
            .deps(&["glibc"]),
        Pkg::new("curl", "8.7.1")
            .outputs(&["out", "bin", "dev", "man"])
            .deps(&["openssl", "zlib", "krb5.lib"]),
        Pkg::new("bash", "5.2p26")
            .outputs(&["out", "man"])
            .deps(&["glibc"])
            .args(&["--enable-readline"]),
        Pkg::new("dbus", "1.14.10")
            .outputs(&["out", "lib"])
            .deps(&["glibc"])
            .src("dbus 1.14.10 sources"),
        Pkg::new("util-linux", "2.39.4")
            .outputs(&["out", "lib"])
            .deps(&["glibc"]),
        Pkg::new("systemd", "255.6")
            .outputs(&["out", "lib", "man"])
            .deps(&["glibc", "dbus.lib", "util-linux.lib"]),
        Pkg::new("coreutils", "9.5")
            .outputs(&["out", "info"])
            .deps(&["glibc"]),
        Pkg::new("git", "2.44.0").deps(&["curl", "zlib", "python3"]),
        Pkg::new("nginx", "1.26.0").deps(&["openssl", "zlib"]),
        Pkg::new("linux", "6.6.30")
            .outputs(&["out", "modules"])
            .size(32768),
        Pkg::new("nano", "7.2")
            .outputs(&["out", "man"])
            .deps(&["glibc"]),
        Pkg::openssl_legacy_user(),
    ];
    Generation {
        host: "web".to_owned(),
        version: "24.05.1".to_owned(),
        packages,
        selected: sel(&[
            "bash",
            "bash.man",
            "coreutils",
            "curl.bin",
            "curl.man",
            "git",
            "nano",
            "nano.man",
            "nginx",
            "python3.11-requests",
            "systemd",
            "linux",
            "linux.modules",
            "legacy-app",
        ]),
        fail: Vec::new(),
    }
}

impl Pkg {
    fn openssl_legacy_user() -> Self {
        Pkg::new("legacy-app", "1.0").deps(&["openssl_1_1"])
    }
}

/// Generation 2 of [`web_gen1`], with planted changes:
/// - upgrades: `openssl` 3.0.13 → 3.0.14 (1.1.1w stays: two versions of one name),
///   `linux` 6.6.30 → 6.6.31; downgrade: `nginx` 1.26.0 → 1.24.0;
/// - added: `htop` and `openssh` (selected), `ncurses` (a deep dependency); removed: `nano`;
/// - same-version rebuilds caused by: the `openssl` bump (`curl`, `git`), an environment
///   variable of `sqlite` (`sqlite`, `python3`, `python3.11-requests`, `git`), a builder
///   argument of `bash`, the source of `dbus` (`dbus`, `systemd`);
/// - `krb5` 1.21.2: only its `lib` output was in the closure, now `out` is too (not a
///   version change, not a rebuild).
pub fn web_gen2() -> Generation {
    let mut g = web_gen1();
    "24.05.2".clone_into(&mut g.version);
    for p in &mut g.packages {
        match p.key.as_str() {
            "openssl" => "3.0.14".clone_into(&mut p.version),
            "linux" => "6.6.31".clone_into(&mut p.version),
            "nginx" => "1.24.0".clone_into(&mut p.version),
            "sqlite" => {
                p.env.insert(
                    "NIX_CFLAGS_COMPILE".to_owned(),
                    "-O2 -DSQLITE_ENABLE_FTS5".to_owned(),
                );
            }
            "bash" => p.extra_args.push("--without-bash-malloc".to_owned()),
            "dbus" => p.src = Some("dbus 1.14.10 sources + CVE-2024-0000.patch".to_owned()),
            _ => {}
        }
    }
    g.packages.retain(|p| p.key != "nano");
    g.packages.push(
        Pkg::new("ncurses", "6.4")
            .outputs(&["out", "dev"])
            .deps(&["glibc"]),
    );
    g.packages
        .push(Pkg::new("htop", "3.3.0").deps(&["glibc", "ncurses"]));
    g.packages
        .push(Pkg::new("openssh", "9.7p1").deps(&["glibc", "openssl", "krb5", "zlib"]));
    g.selected.retain(|(k, _)| k != "nano");
    g.selected.extend(sel(&["htop", "openssh"]));
    g
}

/// Splitmix64: a few lines of deterministic randomness, so a seed names a fixture.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent_tenths: u64) -> bool {
        self.next() % 1000 < percent_tenths
    }
}

const STEMS: &[&str] = &[
    "libxml2",
    "gtk",
    "python3.12-numpy",
    "perl5.38-JSON",
    "libpng",
    "harfbuzz",
    "icu",
    "mesa",
    "libffi",
    "gnutls",
    "nettle",
    "pcre2",
    "expat",
    "fontconfig",
    "freetype",
    "cairo",
    "pango",
    "libxkbcommon",
    "wayland",
    "systemd-minimal",
    "libcap",
    "acl",
    "attr",
    "xz",
    "bzip2",
    "zstd",
    "lz4",
    "libarchive",
    "gmp",
    "mpfr",
    "readline",
    "ncurses",
    "libidn2",
    "nghttp2",
    "brotli",
    "libssh2",
    "libedit",
    "python3.12-setuptools",
    "rustc-wrapper",
    "go-modules",
];

/// How the second generation of a synthetic pair differs from the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A few percent of packages bumped, added, removed, rebuilt for other reasons.
    Update,
    /// glibc bumped: every path of the closure changes.
    MassRebuild,
}

/// A synthetic pair of `packages` packages (about 1.9 closure paths each), seeded.
pub fn synthetic_pair(packages: usize, seed: u64, scenario: Scenario) -> (Generation, Generation) {
    let mut rng = Rng(seed);
    let mut pkgs = vec![Pkg::new("glibc", "2.39-52").outputs(&["out", "dev", "bin"])];
    for i in 1..packages {
        let stem = STEMS[rng.below(STEMS.len())];
        let version = format!("{}.{}.{}", rng.below(5), rng.below(30), rng.below(12));
        let outputs: &[&str] = match rng.below(20) {
            0..=7 => &["out"],
            8..=13 => &["out", "dev"],
            14..=17 => &["out", "lib", "dev"],
            _ => &["out", "man"],
        };
        let mut p = Pkg::new(&format!("{stem}_{i}"), &version)
            .outputs(outputs)
            .deps(&["glibc"])
            .size(512 + rng.below(4096) as u64);
        let window = i.min(300);
        for _ in 0..rng.below(4) {
            let d = &pkgs[i - 1 - rng.below(window)];
            let o = d.outputs[rng.below(d.outputs.len())].clone();
            let o = if o == "man" { "out".to_owned() } else { o };
            if !p.deps.contains(&(d.key.clone(), o.clone())) {
                p.deps.push((d.key.clone(), o));
            }
        }
        pkgs.push(p);
    }
    let selected: Vec<(String, String)> = pkgs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 == 0 || *i + 400 > packages)
        .map(|(_, p)| (p.key.clone(), "out".to_owned()))
        .collect();
    let old = Generation {
        host: "bench".to_owned(),
        version: "1".to_owned(),
        packages: pkgs,
        selected,
        fail: Vec::new(),
    };
    let mut new = old.clone();
    "2".clone_into(&mut new.version);
    match scenario {
        Scenario::MassRebuild => "2.40-36".clone_into(&mut new.packages[0].version),
        Scenario::Update => {
            let n = new.packages.len();
            let mut removed = Vec::new();
            for (i, p) in new.packages.iter_mut().enumerate().skip(1) {
                // Changes near the leaves, as in a real update: a bump deep in the graph
                // is a mass rebuild, which has its own scenario.
                if i < n * 7 / 10 {
                    continue;
                }
                if rng.chance(40) {
                    p.version.push_str(".1");
                } else if rng.chance(4) {
                    p.version = format!("0.{}", p.version);
                } else if rng.chance(8) {
                    p.env
                        .insert("NIX_CFLAGS_COMPILE".to_owned(), "-O3".to_owned());
                } else if rng.chance(10) {
                    removed.push(p.key.clone());
                }
            }
            new.packages.retain(|p| !removed.contains(&p.key));
            for p in &mut new.packages {
                p.deps.retain(|d| !removed.contains(&d.0));
            }
            new.selected.retain(|d| !removed.contains(&d.0));
            for j in 0..n / 100 {
                let d = new.packages[rng.below(new.packages.len())].key.clone();
                let p = Pkg::new(&format!("added_{j}"), "1.0").deps(&["glibc", &d]);
                new.selected.push((p.key.clone(), "out".to_owned()));
                new.packages.push(p);
            }
        }
    }
    (old, new)
}
