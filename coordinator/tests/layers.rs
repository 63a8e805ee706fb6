//! The coordinator's layering, checked from its sources: nothing under
//! `src/core/` names axum or the HTTP layer, and the modules import each
//! other without cycles (`http` → `core` → the leaf modules, never back).
//! A module here is a file under `src/core/`, the `src/core/dispatch/`
//! folder as a whole, `src/core/mod.rs` as `core`, and `src/http/` as a
//! whole; test code (`tests.rs`, `#[cfg(test)]` sections) is left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CORE_CHILDREN: &[&str] = &[
    "accounts",
    "clock",
    "dispatch",
    "error",
    "job",
    "queries",
    "receipts",
    "registry",
    "routing",
    "settle",
    "spotcheck",
    "sync",
    "transport",
];

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

/// The module a source file belongs to, at the granularity above.
fn module_of(rel: &str) -> String {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        ["http", ..] => "http".into(),
        ["core", "mod"] => "core".into(),
        ["core", child, ..] => format!("core::{child}"),
        [one] => (*one).into(),
        _ => rel.into(),
    }
}

/// The non-test code of a file.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    // `lib.rs` declares its test module near the top; elsewhere test
    // sections come last.
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Modules a piece of code refers to through `crate::…` paths (and, in
/// `core/mod.rs`, through its children's names).
fn references(module: &str, code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add_core_path = |rest: &str| {
        let first = rest
            .trim_start_matches('{')
            .split([':', ',', '}', ';', ' ', '\n', '`', ']', ')'])
            .next()
            .unwrap_or("");
        if CORE_CHILDREN.contains(&first) {
            out.insert(format!("core::{first}"));
        } else {
            out.insert("core".to_string());
        }
    };
    for (i, _) in code.match_indices("crate::core::") {
        let rest = &code[i + "crate::core::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                add_core_path(item.trim());
            }
        } else {
            add_core_path(rest);
        }
    }
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        for leaf in ["http", "config"] {
            if rest.starts_with(leaf) {
                out.insert(leaf.to_string());
            }
        }
    }
    if module == "core" {
        for child in CORE_CHILDREN {
            if code.contains(&format!("{child}::")) {
                out.insert(format!("core::{child}"));
            }
        }
    }
    out.remove(module);
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if rel.ends_with("tests.rs") || rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let module = module_of(&rel);
        let refs = references(&module, &code(&path));
        graph.entry(module).or_default().extend(refs);
    }
    graph
}

#[test]
fn core_knows_no_http() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    sources(&core, &mut files);
    assert!(files.len() > 10, "found the core's sources");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let words: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric() && c != '_' && c != ':')
            .collect();
        assert!(
            !words
                .iter()
                .any(|w| *w == "axum" || w.starts_with("axum::") || w.starts_with("crate::http")),
            "{} names axum or the HTTP layer",
            path.display()
        );
    }
}

#[test]
fn modules_import_each_other_without_cycles() {
    let graph = graph();
    assert!(graph["http"].contains("core::dispatch"), "{graph:#?}");
    assert!(
        graph.values().all(|refs| !refs.contains("http")),
        "nothing imports the HTTP layer: {graph:#?}"
    );
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => panic!("import cycle: {} -> {next}", path.join(" -> ")),
                Some(_) => {}
                None => visit(next, graph, state, path),
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            visit(node, &graph, &mut state, &mut Vec::new());
        }
    }
}
