//! The deployment material outside the chart: every example config in `ops/examples/`
//! is accepted by the real binary and runs the roles its first line says it runs, and
//! the systemd unit in `ops/systemd/` passes `systemd-analyze verify` and starts a
//! command line the binary takes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod common;
use common::bin;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `pylon config` for `args`, its data directory a fresh one: the merged tree, or the
/// error the binary printed.
fn effective(args: &[&str]) -> Result<toml::Table, String> {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .arg("config")
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("PYLON_PROFILE")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap())
}

fn roles_of(tree: &toml::Table) -> BTreeSet<String> {
    tree.get("roles")
        .and_then(|r| r.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_example_config_is_accepted_and_runs_the_roles_it_names() {
    let dir = workspace().join("ops/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut seen = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        // "# Runs: relay, autonat (and …)" or "# Runs: nothing but the node core".
        let runs = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# Runs: "))
            .unwrap_or_else(|| panic!("{name}: the first line must say `# Runs: …`"));
        let named: BTreeSet<String> = if runs.starts_with("nothing") {
            BTreeSet::new()
        } else {
            runs.split('(')
                .next()
                .unwrap()
                .split(',')
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect()
        };
        let path = file.to_str().unwrap();
        let tree = effective(&["--config", path]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(roles_of(&tree), named, "{name}: the roles it runs");
        seen.extend(named);
    }
    // Each role has an example of its own, and the two profiles have theirs.
    for role in ["bootstrap", "relay", "autonat"] {
        assert!(seen.contains(role), "no example runs {role}");
    }
    for profile in ["public.toml", "minimal.toml"] {
        assert!(dir.join(profile).is_file(), "{profile}");
    }
}

/// The embedded default is the public profile: the DHT in auto mode, the AutoNAT server
/// and a relay with conservative limits; `--profile minimal` runs none of it; a bad
/// profile is refused naming the key.
#[test]
fn the_default_is_a_public_node_and_minimal_is_the_node_core() {
    let public = effective(&[]).unwrap();
    assert_eq!(
        roles_of(&public),
        BTreeSet::from(["autonat".to_string(), "relay".to_string()])
    );
    assert_eq!(public["kad"]["server"].as_str(), Some("auto"));
    assert_eq!(
        public["roles"]["relay"]["max_reservations"].as_integer(),
        Some(128)
    );
    let minimal = effective(&["--profile", "minimal"]).unwrap();
    assert!(roles_of(&minimal).is_empty());
    assert!(!minimal.contains_key("kad"));
    let one = effective(&["--role", "bootstrap"]).unwrap();
    assert_eq!(roles_of(&one), BTreeSet::from(["bootstrap".to_string()]));
    let err = effective(&["--profile", "max"]).unwrap_err();
    assert!(
        err.contains("profile") && err.contains("public, minimal"),
        "{err}"
    );
}

#[test]
fn the_systemd_unit_verifies_and_its_command_line_is_accepted() {
    let unit = std::fs::read_to_string(workspace().join("ops/systemd/pylon.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/pylon"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args.first(), Some(&"run"));

    // The same arguments, `run` swapped for `config` and the config file for an example:
    // the binary takes them.
    let example = workspace().join("ops/examples/public.toml");
    let mut check: Vec<String> = Vec::new();
    let mut i = 1;
    while i < args.len() {
        match args[i] {
            "--config" => {
                check.extend(["--config".into(), example.display().to_string()]);
                i += 2;
            }
            // effective() gives its own data directory.
            "--data-dir" => i += 2,
            other => {
                check.push(other.into());
                i += 1;
            }
        }
    }
    let check: Vec<&str> = check.iter().map(String::as_str).collect();
    effective(&check).unwrap();

    // systemd's own check, on a copy pointing at the binary under test.
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        panic!("systemd-analyze is missing: install Debian's systemd (ops/test.sh does)");
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pylon.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/pylon", &bin())).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("pylon.service"),
        "systemd-analyze verify: {stderr}"
    );
}
