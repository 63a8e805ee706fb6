//! The workspace's structure, checked from its sources (this target needs
//! no built binary and starts nothing):
//!
//! - no two source files of any workspace crate import each other in a
//!   cycle (how the file graph is derived is documented at the top of
//!   `graph.rs`; in short: `use` trees and `crate::`/`self::`/`super::`/
//!   child-module paths, resolved to the file that defines what they
//!   name; a parent's `mod child;` and `pub use child::X;` are no edges;
//!   test code is left out);
//! - no file in `coordinator/src` over 800 lines;
//! - no non-test function over 120 lines in `coordinator/`,
//!   `crates/router/` and `simulations/` (from the `fn` line to its
//!   closing brace; `#[cfg(test)]` code, `tests.rs`, `tests/` folders and
//!   benches are skipped).
//!
//! - ARCHITECTURE.md's code map matches the tree: every non-test source
//!   file of a member's `src/` is named there (by its file name, or its
//!   folder for a `mod.rs`), and every `….rs` path it names in backticks
//!   exists.
//!
//! - `sharenet-prompt` and the coordinator link no candle or cudarc
//!   (`deps.rs`, from `Cargo.lock`).
//!
//! Run with `-- --nocapture` to see the longest functions that remain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deps;
mod graph;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files in `coordinator/src` stay below this many lines.
const MAX_FILE_LINES: usize = 800;
/// Non-test functions in the crates below stay below this many lines.
const MAX_FN_LINES: usize = 120;
/// The crates whose functions are measured.
const MEASURED: &[&str] = &["coordinator", "crates/router", "simulations"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The workspace's members, from the root `Cargo.toml`.
fn members() -> Vec<String> {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let start = manifest.find("members = [").expect("a members list");
    let list = &manifest[start..];
    let list = &list[..list.find(']').unwrap()];
    let members: Vec<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(
        members.len() > 10,
        "read the workspace's members: {members:?}"
    );
    members
}

#[test]
fn no_crate_has_an_import_cycle_between_files() {
    let mut report = Vec::new();
    for member in members() {
        let dir = workspace().join(&member);
        let sources = graph::read_sources(&dir);
        let graph = graph::crate_graph(&sources);
        assert!(!graph.files.is_empty(), "{member} has sources");
        // Every non-test file is reached from a crate root, so none is
        // missed by the walk.
        let missed: Vec<&String> = sources
            .keys()
            .filter(|f| !graph::is_test_file(f) && !graph.files.contains(*f))
            .collect();
        assert!(
            missed.is_empty(),
            "{member}: not reached from a crate root: {missed:?}"
        );
        report.extend(graph::report(&graph, &format!("{member}/")));
    }
    for line in &report {
        println!("import cycle: {line}");
    }
    assert!(
        report.is_empty(),
        "import cycles between files:\n{}",
        report.join("\n")
    );
}

#[test]
fn no_coordinator_file_is_over_800_lines() {
    let sources = graph::read_sources(&workspace().join("coordinator"));
    assert!(sources.len() > 10, "read the coordinator's sources");
    let long: Vec<String> = sources
        .iter()
        .map(|(file, text)| (file, text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_FILE_LINES)
        .map(|(file, lines)| format!("coordinator/{file}: {lines} lines"))
        .collect();
    for line in &long {
        println!("file over {MAX_FILE_LINES} lines: {line}");
    }
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// The `.rs` files under `dir`, not descending into folders named in
/// `skip_dirs`; `tests.rs` files are left out unless `with_tests_rs`.
fn rs_files(dir: &Path, skip_dirs: &[&str], with_tests_rs: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !skip_dirs.contains(&name.as_str()) {
                rs_files(&path, skip_dirs, with_tests_rs, out);
            }
        } else if name.ends_with(".rs") && (with_tests_rs || name != "tests.rs") {
            out.push(path);
        }
    }
}

/// The `.rs` files of a crate outside tests and benches.
fn measured_files(dir: &Path, out: &mut Vec<PathBuf>) {
    rs_files(dir, &["tests", "benches", "target"], false, out);
}

#[test]
fn no_function_is_over_120_lines() {
    let root = workspace();
    let mut all = Vec::new();
    for krate in MEASURED {
        let mut files = Vec::new();
        measured_files(&root.join(krate), &mut files);
        assert!(!files.is_empty(), "{krate} has sources");
        for path in files {
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            for f in graph::functions(&std::fs::read_to_string(&path).unwrap()) {
                all.push((f.lines, format!("{rel}:{} fn {}", f.line, f.name)));
            }
        }
    }
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let (long, short): (Vec<_>, Vec<_>) = all.iter().partition(|(n, _)| *n > MAX_FN_LINES);
    for (n, f) in &long {
        println!("function over {MAX_FN_LINES} lines: {f}: {n} lines");
    }
    for (n, f) in short.iter().take(5) {
        println!("longest remaining: {f}: {n} lines");
    }
    let long: Vec<String> = long
        .iter()
        .map(|(n, f)| format!("{f}: {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

// ---------------------------------------------------------------------
// The parser, on small crates

fn krate(files: &[(&str, &str)]) -> graph::Graph {
    let sources: BTreeMap<String, String> = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    graph::crate_graph(&sources)
}

fn edges(g: &graph::Graph) -> Vec<String> {
    g.edges
        .iter()
        .flat_map(|(a, to)| to.keys().map(move |b| format!("{a} -> {b}")))
        .collect()
}

#[test]
fn a_cycle_between_two_files_is_found_and_shown_as_a_path() {
    let g = krate(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "src/b.rs",
            "pub struct B;\n\nfn f() -> crate::a::A { todo!() }\n",
        ),
    ]);
    let cycles = graph::cycles(&g);
    assert_eq!(
        cycles,
        vec![vec![
            "src/a.rs".to_string(),
            "src/b.rs".into(),
            "src/a.rs".into()
        ]]
    );
    assert_eq!(
        graph::show_cycle(&g, "x/", &cycles[0]),
        "x/src/a.rs:1 (crate::b::B) -> x/src/b.rs:3 (crate::a::A) -> x/src/a.rs"
    );
}

#[test]
fn a_longer_cycle_is_shown_through_every_file() {
    let g = krate(&[
        ("src/lib.rs", "mod a; mod b; mod c;"),
        ("src/a.rs", "use crate::b::X;"),
        ("src/b.rs", "use crate::c::Y;\npub struct X;"),
        ("src/c.rs", "fn f() { crate::a::g() }"),
    ]);
    let cycles = graph::cycles(&g);
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0], ["src/a.rs", "src/b.rs", "src/c.rs", "src/a.rs"]);
}

#[test]
fn a_graph_without_a_cycle_passes() {
    let g = krate(&[
        (
            "src/lib.rs",
            "pub mod a;\npub mod b;\npub use a::A;\npub use b::B;\n",
        ),
        ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
        ("src/b.rs", "pub struct B;\n"),
    ]);
    assert_eq!(edges(&g), ["src/a.rs -> src/b.rs"]);
    assert!(graph::cycles(&g).is_empty());
}

#[test]
fn grouped_imports_make_an_edge_per_module() {
    let g = krate(&[
        ("src/lib.rs", "mod a; mod b; mod c;"),
        (
            "src/a.rs",
            "use crate::{b, c::{self, C}};\nfn f() { b::g() }",
        ),
        ("src/b.rs", "pub fn g() {}"),
        ("src/c/mod.rs", "mod d; pub struct C;"),
        ("src/c/d.rs", "use super::super::{a::A as _, b};"),
    ]);
    assert_eq!(
        edges(&g),
        [
            "src/a.rs -> src/b.rs",
            "src/a.rs -> src/c/mod.rs",
            "src/c/d.rs -> src/a.rs",
            "src/c/d.rs -> src/b.rs",
        ]
    );
}

#[test]
fn super_and_self_resolve_from_the_files_module() {
    let g = krate(&[
        ("src/lib.rs", "pub mod m;"),
        (
            "src/m/mod.rs",
            "mod x; mod y;\npub struct Shared;\nfn f() { self::y::g() }\n",
        ),
        ("src/m/x.rs", "use super::Shared;\nuse super::y;"),
        ("src/m/y.rs", "pub fn g() {}"),
    ]);
    assert_eq!(
        edges(&g),
        [
            "src/m/mod.rs -> src/m/y.rs",
            "src/m/x.rs -> src/m/mod.rs",
            "src/m/x.rs -> src/m/y.rs",
        ]
    );
}

#[test]
fn a_child_importing_from_a_parent_that_uses_it_is_a_cycle() {
    let g = krate(&[
        (
            "src/lib.rs",
            "mod child;\npub struct Config;\nfn run() { child::go() }\n",
        ),
        ("src/child.rs", "use crate::Config;\npub fn go() {}"),
    ]);
    assert_eq!(graph::cycles(&g).len(), 1, "{:?}", edges(&g));
}

#[test]
fn re_exports_are_no_edges_and_lead_to_the_defining_file() {
    let g = krate(&[
        (
            "src/lib.rs",
            "mod a;\nmod b;\npub use a::A;\npub(crate) use b::{B, Other as Renamed};\n",
        ),
        ("src/a.rs", "use crate::{B, Renamed};\npub struct A;"),
        (
            "src/b.rs",
            "pub struct B; pub struct Other;\nfn f(_: crate::A) {}",
        ),
    ]);
    // `crate::B` is `b::B`: a.rs depends on b.rs, not on lib.rs; lib.rs
    // depends on nothing; b.rs naming `crate::A` depends on a.rs.
    assert_eq!(edges(&g), ["src/a.rs -> src/b.rs", "src/b.rs -> src/a.rs"]);
    assert_eq!(graph::cycles(&g).len(), 1);
}

#[test]
fn a_re_export_the_parent_also_calls_is_an_edge() {
    let g = krate(&[
        (
            "src/lib.rs",
            "mod a;\npub use a::run;\npub struct Config;\nfn main() { run() }",
        ),
        ("src/a.rs", "pub fn run() -> crate::Config { todo!() }"),
    ]);
    assert_eq!(
        edges(&g),
        ["src/a.rs -> src/lib.rs", "src/lib.rs -> src/a.rs"]
    );
}

#[test]
fn test_code_comments_and_strings_make_no_edges() {
    let g = krate(&[
        ("src/lib.rs", "mod a;\nmod b;\n#[cfg(test)]\nmod tests;\n"),
        (
            "src/a.rs",
            "//! See [`crate::b::B`].\n\
             /* crate::b::B */\n\
             const S: &str = \"crate::b::B\";\n\
             const R: &str = r#\"crate::b::\"B\"#;\n\
             fn f<'a>(c: char) -> bool { c == '\"' }\n\
             #[cfg(test)]\n\
             mod tests {\n    use crate::b::B;\n}\n",
        ),
        (
            "src/b.rs",
            "use crate::a::f;\n#[test]\nfn t() { crate::a::g() }\n",
        ),
        ("src/tests.rs", "use crate::a::f;"),
    ]);
    assert_eq!(edges(&g), ["src/b.rs -> src/a.rs"]);
    assert!(!g.files.contains("src/tests.rs"));
}

#[test]
fn a_path_through_an_imported_module_leads_to_the_defining_file() {
    let g = krate(&[
        ("src/lib.rs", "mod a; mod m;"),
        ("src/m/mod.rs", "mod inner;\npub use inner::go;"),
        ("src/m/inner.rs", "pub fn go() {}"),
        ("src/a.rs", "use crate::m;\nfn f() { m::go() }"),
    ]);
    assert_eq!(
        edges(&g),
        ["src/a.rs -> src/m/inner.rs", "src/a.rs -> src/m/mod.rs"]
    );
}

#[test]
fn inline_modules_resolve_from_inside_them() {
    let g = krate(&[
        ("src/lib.rs", "mod a; mod b;"),
        (
            "src/a.rs",
            "mod inner {\n    use super::super::b::B;\n}\npub struct A;",
        ),
        ("src/b.rs", "pub struct B;"),
    ]);
    assert_eq!(edges(&g), ["src/a.rs -> src/b.rs"]);
}

#[test]
fn binaries_are_crates_of_their_own() {
    let g = krate(&[
        ("src/lib.rs", "pub mod a;"),
        ("src/a.rs", ""),
        ("src/main.rs", "mod cli;\nfn main() { cli::run() }"),
        ("src/cli.rs", "use crate::main_helper;"),
        ("src/bin/tool.rs", "mod part;\nfn main() {}"),
        ("src/bin/part.rs", "use crate::main;"),
    ]);
    assert_eq!(g.files.len(), 6);
    assert_eq!(
        edges(&g),
        [
            "src/bin/part.rs -> src/bin/tool.rs",
            "src/cli.rs -> src/main.rs",
            "src/main.rs -> src/cli.rs",
        ]
    );
}

#[test]
fn functions_are_measured_from_fn_to_closing_brace() {
    let src = "\
fn short() {}

/// Doc lines do not count.
pub async fn long<T: Fn(u8) -> [u8; 2]>(x: T)
where
    T: Send,
{
    let s = \"}\";
    let f = |x: u8| { x };
}

trait T {
    fn declared(&self);
    fn default(&self) -> u8 {
        1
    }
}

#[cfg(test)]
mod tests {
    fn not_counted() {
        //
    }
}
";
    let fns: Vec<(String, usize, usize)> = graph::functions(src)
        .into_iter()
        .map(|f| (f.name, f.line, f.lines))
        .collect();
    assert_eq!(
        fns,
        [
            ("short".to_string(), 1, 1),
            ("long".into(), 4, 7),
            ("default".into(), 14, 3),
        ]
    );
}

#[test]
fn the_code_map_names_every_source_file_and_nothing_gone() {
    let root = workspace();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut unnamed = Vec::new();
    for member in members() {
        let mut files = Vec::new();
        // The non-test files of the member's `src/`.
        rs_files(
            &root.join(&member).join("src"),
            &["tests"],
            false,
            &mut files,
        );
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let named = match name.as_str() {
                // Crate roots are the crate's own heading.
                "lib.rs" | "main.rs" => true,
                // A folder module is named by its folder.
                "mod.rs" => {
                    let folder = file.parent().unwrap().file_name().unwrap();
                    map.contains(&format!("{}/", folder.to_string_lossy()))
                }
                _ => {
                    let stem = name.trim_end_matches(".rs");
                    map.contains(&name) || map.contains(&format!("{stem}/"))
                }
            };
            if !named {
                unnamed.push(file.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "source files ARCHITECTURE.md does not name:\n{}",
        unnamed.join("\n")
    );
    // Every `path/to/file.rs` it names exists somewhere in the workspace.
    let mut all = Vec::new();
    for member in members() {
        // Every `.rs` file of the member, tests and benches included.
        rs_files(
            &root.join(&member),
            &["target", "node_modules"],
            true,
            &mut all,
        );
    }
    let all: Vec<String> = all
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    let mut gone = Vec::new();
    for quoted in map.split('`').skip(1).step_by(2) {
        if quoted.ends_with(".rs")
            && quoted.contains('/')
            && !quoted.contains(char::is_whitespace)
            && !quoted.contains('*')
            && !all.iter().any(|f| f.ends_with(quoted))
        {
            gone.push(quoted.to_string());
        }
    }
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md names files that do not exist:\n{}",
        gone.join("\n")
    );
}
