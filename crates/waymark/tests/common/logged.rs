//! Wrappers that log how programs were run, for tests that count what a deploy starts.

/// Programs that log their arguments (one run a line, in `log-PROGRAM` of the
/// directory) and run the real ones; with a `PATH` that finds them first.
pub struct Logged {
    dir: tempfile::TempDir,
    pub path: String,
}

impl Logged {
    pub fn new(programs: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for program in programs {
            let real = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .unwrap();
            let real = String::from_utf8(real.stdout).unwrap();
            let script = format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}/log-{program}'\nexec '{}' \"$@\"\n",
                dir.path().display(),
                real.trim()
            );
            let wrapper = dir.path().join(program);
            std::fs::write(&wrapper, script).unwrap();
            std::fs::set_permissions(
                &wrapper,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Self { dir, path }
    }

    /// The runs of `program` so far, one line of arguments each.
    pub fn runs(&self, program: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("log-{program}"))).unwrap_or_default()
    }

    /// The runs of `nix copy` to a store.
    pub fn copies(&self) -> Vec<String> {
        self.runs("nix")
            .lines()
            .filter(|l| l.contains(" copy ") && l.contains(" --to "))
            .map(str::to_owned)
            .collect()
    }

    /// The store paths `nix copy` to a store was given, run by run.
    pub fn copied(&self) -> Vec<Vec<String>> {
        self.copies()
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .skip_while(|a| *a != "copy")
                    .filter(|a| a.starts_with("/nix/store/"))
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }
}
