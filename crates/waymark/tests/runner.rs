//! CLI tests, one binary (jj style): each `test_<cmd>.rs` is a module here.

mod common;
mod test_converge;
mod test_demo;
mod test_deploy;
mod test_deploy_fleet;
mod test_deploy_interrupts;
mod test_deploy_systemd;
mod test_diff;
mod test_diff_remote;
mod test_engine;
mod test_fleet;
mod test_hostile;
mod test_known_good;
mod test_page;
mod test_release;
mod test_serve;
mod test_sim_fleet;

#[test]
fn every_test_file_is_listed() {
    // A test file that is not a module above would silently never run.
    let listed = include_str!("runner.rs");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| m.starts_with("test_")) {
            assert!(
                listed.contains(&format!("mod {module};")),
                "tests/{name} is not listed in runner.rs"
            );
        }
    }
}
