//! The architecture's rules that the compiler does not check, checked on
//! the source: protocol crates know nothing of MQTT, SQLite or WASM, and
//! the gateway's rooms import each other in one direction only.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::repo_root;

/// The gateway's rooms, from the bottom up: each may import only rooms
/// before it. The leaves import nothing of the gateway.
const ROOMS: &[&str] = &[
    "control", "counters", "current", "store", "config", "uplink", "ops", "daemon", "cli",
];
const LEAVES: &[&str] = &["control", "counters", "current"];

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((path, text));
        }
    }
    files
}

/// The rooms of the gateway that `text` names through `crate::` or
/// `kite_gateway::` paths.
fn rooms_named(text: &str) -> BTreeSet<&str> {
    let mut named = BTreeSet::new();
    for prefix in ["crate::", "kite_gateway::"] {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            let room: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if let Some(room) = ROOMS.iter().find(|r| **r == room) {
                named.insert(*room);
            }
            // `use crate::{a, b::c}`
            if rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for part in group.split(',') {
                    let room = part.trim().split("::").next().unwrap_or_default();
                    if let Some(room) = ROOMS.iter().find(|r| **r == room) {
                        named.insert(*room);
                    }
                }
            }
        }
    }
    named
}

#[test]
fn the_gateways_rooms_import_in_one_direction() {
    let src = repo_root().join("gateway/src");
    let mut checked = 0;
    for (path, text) in sources(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let room = first.trim_end_matches(".rs");
        let Some(level) = ROOMS.iter().position(|r| *r == room) else {
            // lib.rs and main.rs only declare and dispatch.
            continue;
        };
        checked += 1;
        for named in rooms_named(&text) {
            if named == room {
                continue;
            }
            let named_level = ROOMS.iter().position(|r| *r == named).unwrap();
            assert!(
                !LEAVES.contains(&room),
                "{}: the leaf {room} imports {named}",
                relative.display()
            );
            assert!(
                named_level < level,
                "{}: {room} imports {named}, a room above it ({ROOMS:?}, bottom first)",
                relative.display()
            );
        }
    }
    assert!(
        checked >= 30,
        "only {checked} files checked under {}",
        src.display()
    );
}

#[test]
fn protocol_crates_know_nothing_of_mqtt_sqlite_or_wasm() {
    // Every crate under protocols/, so a new one cannot slip past.
    let crates: Vec<_> = std::fs::read_dir(repo_root().join("protocols"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    assert!(crates.len() >= 5, "{crates:?}");
    for krate in crates {
        let manifest = krate.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let dependencies = text
            .split("[dependencies]")
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap();
        for forbidden in ["rumqttc", "rusqlite", "wasmtime", "axum"] {
            assert!(
                !dependencies.contains(forbidden),
                "{}: depends on {forbidden}",
                manifest.display()
            );
        }
    }
}

#[test]
fn the_rule_sees_imports_of_every_shape() {
    assert_eq!(
        rooms_named("use crate::store::{Buffer};\nuse crate::{config, uplink::wire};\nfn f() { crate::ops::x(); }"),
        BTreeSet::from(["config", "ops", "store", "uplink"])
    );
    assert_eq!(
        rooms_named("use super::x;\nuse kite_core::y;"),
        BTreeSet::new()
    );
}
