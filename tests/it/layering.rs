//! The layering `docs/architecture.md` promises, read off the sources: no
//! import cycle between the crate's folders (each dialect counted as its
//! own), the connection machinery and the hub import no dialect and no
//! router, and the hub imports no authentication.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folder (or top-level file) a module path belongs to; a dialect is
/// its own room.
fn room(path: &[&str]) -> Option<String> {
    match path {
        ["dialect", dialect, ..] => Some(format!("dialect::{dialect}")),
        [top, ..] => Some((*top).to_string()),
        [] => None,
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::…` path in `text` (unit tests and comments left out),
/// with `crate::{a, b::c}` groups expanded one level.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(segments(item.trim()));
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

/// The leading module names of a path (`hub::key::WatchKey` → `hub`, `key`).
fn segments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in text.split("::") {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        let whole = name.len() == piece.len();
        out.push(name);
        if !whole {
            break;
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap().with_extension("");
        let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
        let Some(from) = room(&parts).filter(|r| r != "lib" && r != "main") else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for path in crate_paths(&text) {
            let names: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(to) = room(&names).filter(|to| *to != from && to != "dialect") {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
        edges.entry(from).or_default();
    }
    edges
}

/// A cycle through `start`, if any, as the rooms it passes.
fn cycle_from(
    edges: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    trail: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in edges.get(at).into_iter().flatten() {
        if next == start {
            let mut cycle = trail.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if !trail.contains(next) {
            trail.push(next.clone());
            if let Some(cycle) = cycle_from(edges, start, next, trail) {
                return Some(cycle);
            }
            trail.pop();
        }
    }
    None
}

#[test]
fn no_folder_imports_itself_back() {
    let edges = graph();
    assert!(
        edges.contains_key("hub") && edges.contains_key("ws"),
        "{edges:?}"
    );
    for start in edges.keys() {
        let mut trail = vec![start.clone()];
        if let Some(cycle) = cycle_from(&edges, start, start, &mut trail) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_machinery_and_the_hub_know_no_dialect_and_no_router() {
    let edges = graph();
    let forbidden: [(&str, &[&str]); 3] = [
        ("ws", &["server", "config", "auth"]),
        ("hub", &["ws", "server", "config", "auth"]),
        ("upstream", &["hub", "ws", "server", "config", "auth"]),
    ];
    for (room, never) in forbidden {
        let imports = &edges[room];
        for to in imports {
            assert!(
                !never.contains(&to.as_str()) && !to.starts_with("dialect"),
                "{room} imports {to}: {imports:?}"
            );
        }
    }
}

#[test]
fn the_path_reader_finds_grouped_and_nested_imports() {
    let text = "use crate::hub::Hub;\nuse crate::{ws::conn, dialect::headlamp::Settings};\n// crate::server is a comment\nlet x = crate::auth::policy::Policy::default();\n";
    let rooms: Vec<Option<String>> = crate_paths(text)
        .iter()
        .map(|p| room(&p.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    assert_eq!(
        rooms,
        [
            Some("hub".into()),
            Some("ws".into()),
            Some("dialect::headlamp".into()),
            Some("auth".into())
        ]
    );
}
