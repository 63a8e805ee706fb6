//! The coordinator's layering, checked from its sources, file by file:
//! nothing under `src/core/` names axum or the HTTP layer, nothing outside
//! `src/http/` (but the crate roots that assemble the server) imports it,
//! `config.rs` imports neither, and no two files import each other in a
//! cycle, inside `http/` and `core/` included (`http` → `core` → the leaf
//! files, never back). The core's modules are read from the `src/core/`
//! folder, so a new one is checked without being listed here.
//!
//! The file graph comes from the workspace's structure test
//! (`tests/tests/structure/graph.rs`, which documents how edges are
//! derived): `use` trees and `crate::`/`self::`/`super::`/child-module
//! paths, resolved to the file defining what they name; test code
//! (`tests.rs`, `#[cfg(test)]` items) is left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/tests/structure/graph.rs"]
mod graph;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn coordinator_graph() -> graph::Graph {
    let g = graph::crate_graph(&graph::read_sources(&crate_dir()));
    assert!(
        g.files.len() > 20,
        "read the coordinator's sources: {:?}",
        g.files
    );
    g
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

/// The core's modules: each file and folder in `src/core/` but `mod.rs`
/// and test files.
fn core_modules() -> BTreeSet<String> {
    std::fs::read_dir(crate_dir().join("src/core"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name != "mod.rs" && !graph::is_test_file(name))
        .map(|name| name.trim_end_matches(".rs").to_string())
        .collect()
}

#[test]
fn core_knows_no_http() {
    let core = crate_dir().join("src/core");
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
    let g = coordinator_graph();
    for (from, to) in &g.edges {
        if from.starts_with("src/core/") {
            for target in to.keys() {
                assert!(!target.starts_with("src/http/"), "{from} imports {target}");
            }
        }
    }
}

#[test]
fn every_core_module_is_in_the_graph() {
    let g = coordinator_graph();
    let modules = core_modules();
    for expected in [
        "accounts",
        "dashboard",
        "dispatch",
        "metrics",
        "routing",
        "spotcheck",
    ] {
        assert!(
            modules.contains(expected),
            "read {expected} from src/core: {modules:?}"
        );
    }
    for m in &modules {
        let file = format!("src/core/{m}.rs");
        let folder = format!("src/core/{m}/mod.rs");
        assert!(
            g.files.contains(&file) || g.files.contains(&folder),
            "core module {m} is not declared in core/mod.rs (or the graph missed it)"
        );
    }
}

#[test]
fn nothing_but_the_crate_roots_imports_the_http_layer() {
    let g = coordinator_graph();
    assert!(
        g.edges["src/http/openai.rs"]
            .keys()
            .any(|to| to.starts_with("src/core/dispatch/")),
        "http reaches the core's dispatch: {:#?}",
        g.edges
    );
    for (from, to) in &g.edges {
        if from.starts_with("src/http/") || from == "src/lib.rs" || from == "src/main.rs" {
            continue;
        }
        for target in to.keys() {
            assert!(!target.starts_with("src/http/"), "{from} imports {target}");
        }
    }
    for target in g
        .edges
        .get("src/config.rs")
        .into_iter()
        .flat_map(|t| t.keys())
    {
        assert!(
            !target.starts_with("src/core/") && !target.starts_with("src/http/"),
            "config.rs imports {target}"
        );
    }
}

#[test]
fn files_import_each_other_without_cycles() {
    let g = coordinator_graph();
    let report = graph::report(&g, "coordinator/");
    assert!(report.is_empty(), "import cycles:\n{}", report.join("\n"));
}
