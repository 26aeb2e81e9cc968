//! The defaults of `[kad]` and of every role are written once, in code (`kad::Config`'s
//! and each role's `Config::default`); default.toml (the commented example the binary
//! embeds) and README.md's config table document them. These tests read both documents
//! and hold every documented default to the code's, so they cannot drift.
#![allow(clippy::unwrap_used)]

use super::*;

const README: &str = include_str!("../../README.md");

/// A documented value, as TOML.
fn toml_value(text: &str) -> Value {
    let mut t: Table = toml::from_str(&format!("v = {text}"))
        .unwrap_or_else(|e| panic!("documented default {text} is not TOML: {e}"));
    t.remove("v").unwrap()
}

/// The rows of README.md's config table (section "Configuration") for keys
/// `{prefix}.*`: (key without the prefix, default). A row may name several keys, with
/// their defaults in the same order.
fn readme_defaults(prefix: &str) -> Vec<(String, Value)> {
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    };
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with("Configuration\n"))
        .expect("README.md has a Configuration section");
    let mut out = Vec::new();
    for line in section.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let mut cells = format!("`{row}")
            .split(" | ")
            .map(String::from)
            .collect::<Vec<_>>();
        cells.truncate(2);
        let [keys, defaults] = &cells[..] else {
            continue;
        };
        let keys = ticked(keys);
        if !keys.iter().any(|k| k.starts_with(&format!("{prefix}."))) {
            continue;
        }
        let defaults = ticked(defaults);
        assert_eq!(keys.len(), defaults.len(), "README.md row: {line}");
        for (key, default) in keys.iter().zip(defaults) {
            let key = key
                .strip_prefix(&format!("{prefix}."))
                .unwrap_or_else(|| panic!("README.md row mixes sections: {line}"));
            out.push((key.to_string(), toml_value(&default)));
        }
    }
    out
}

/// The keys of default.toml's commented-out `# [section]` block: the `# key = value`
/// lines right under it.
fn default_toml_block(section: &str) -> Vec<(String, Value)> {
    let mut lines = DEFAULT_TOML.lines();
    let header = format!("# [{section}]");
    assert!(
        lines.any(|l| l.trim() == header),
        "default.toml has no `{header}` block"
    );
    let mut out = Vec::new();
    for line in lines {
        let Some(Ok(t)) = line.strip_prefix("# ").map(toml::from_str::<Table>) else {
            break;
        };
        match t.into_iter().next() {
            Some((key, value)) if !value.is_table() => out.push((key, value)),
            _ => break,
        }
    }
    out
}

/// Holds each documented default of `section` to `defaults`; with `complete`, every key
/// must be documented.
fn check(
    document: &str,
    section: &str,
    documented: Vec<(String, Value)>,
    defaults: &Table,
    complete: bool,
) {
    for (key, value) in &documented {
        let Some(default) = defaults.get(key) else {
            panic!("{document} documents {section}.{key}, which is not a key");
        };
        assert_eq!(
            value, default,
            "{document} documents {section}.{key} = {value}, the default is {default}"
        );
    }
    if complete {
        for key in defaults.keys() {
            assert!(
                documented.iter().any(|(k, _)| k == key),
                "{document} does not document {section}.{key} (default {})",
                defaults[key]
            );
        }
    }
}

#[test]
fn kad_file_defaults_are_the_component_defaults() {
    let read = kad(&RawKad::default()).unwrap();
    let component = pylon_node::protocols::kad::Config::default();
    assert_eq!(format!("{read:?}"), format!("{component:?}"));
}

#[test]
fn autonat_defaults_are_documented_and_read_back() {
    let defaults = Table::try_from(RawAutonat::default()).unwrap();
    check(
        "README.md",
        "autonat",
        readme_defaults("autonat"),
        &defaults,
        true,
    );
    let read = autonat(&RawAutonat::default()).unwrap();
    assert_eq!(read, pylon_node::protocols::autonat::Config::default());
}

/// `[admin]` is written out in default.toml (it is on by default): README.md's rows hold
/// to those values, every key has one.
#[test]
fn admin_defaults_are_documented() {
    let Some(Value::Table(defaults)) = default_tree().remove("admin") else {
        panic!("default.toml has no [admin] section");
    };
    check(
        "README.md",
        "admin",
        readme_defaults("admin"),
        &defaults,
        true,
    );
    let c = load(Sources {
        file: None,
        env: Vec::new(),
        flags: Flags::default(),
        xdg_data_home: Some("/xdg".into()),
        home: None,
    })
    .unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:5001".parse().unwrap()));
    assert_eq!(c.admin_http, crate::http::Config::default());
    assert_eq!(c.admin_token_file, PathBuf::from("/xdg/pylon/admin.token"));
}

#[test]
fn kad_defaults_are_documented() {
    let defaults = Table::try_from(RawKad::default()).unwrap();
    check("README.md", "kad", readme_defaults("kad"), &defaults, true);
    let block = default_toml_block("kad");
    assert!(!block.is_empty());
    check("default.toml", "kad", block, &defaults, false);
}

#[test]
fn role_defaults_are_documented() {
    for role in pylon_roles::all() {
        let section = format!("roles.{}", role.name());
        let defaults = role.defaults();
        check(
            "README.md",
            &section,
            readme_defaults(&section),
            &defaults,
            true,
        );
        check(
            "default.toml",
            &section,
            default_toml_block(&section),
            &defaults,
            true,
        );
    }
}

#[test]
fn a_stale_document_is_caught() {
    let defaults = Table::try_from(RawKad::default()).unwrap();
    let stale = std::panic::catch_unwind(|| {
        check(
            "README.md",
            "kad",
            vec![("k".into(), Value::Integer(16))],
            &defaults,
            false,
        )
    });
    assert!(stale.is_err());
    let missing = std::panic::catch_unwind(|| {
        check(
            "README.md",
            "kad",
            vec![("k".into(), Value::Integer(20))],
            &defaults,
            true,
        )
    });
    assert!(missing.is_err());
}
