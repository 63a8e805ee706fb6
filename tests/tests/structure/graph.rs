//! Reads a crate's Rust sources (no compiler, no dependencies) into the
//! graph of which source file imports which, and measures its functions.
//! Shared by the workspace's structure test (`tests/tests/structure/`)
//! and the coordinator's layering test (`coordinator/tests/layers.rs`,
//! through `#[path]`).
//!
//! # How the file graph is derived
//!
//! - **Files.** A crate's files are its roots (`src/lib.rs`, `src/main.rs`,
//!   `src/bin/*.rs`, `src/bin/*/main.rs`) and every file they reach
//!   through `mod name;` declarations (`name.rs` or `name/mod.rs` beside a
//!   `lib.rs`/`main.rs`/`mod.rs`, else in the folder named after the file).
//!   Each file has a module path (`src/core/accounts.rs` is
//!   `core::accounts`, `src/core/mod.rs` is `core`, a root is the crate).
//! - **Test code is left out**: any item under `#[cfg(test)]` (or
//!   `#[cfg(all(test, …))]`) or `#[test]` (so `#[cfg(test)] mod tests { … }`
//!   and `#[cfg(test)] mod tests;`), files with `#![cfg(test)]`, and files
//!   named `tests.rs` or inside a `tests/` folder.
//!   Comments (doc links included) and literals are skipped too.
//! - **References.** Every `use` tree (groups `{a, b::c}` and `self` in
//!   them expanded) and every path in code (`a::b::c`, outside `use`)
//!   whose first segment is `crate`, `self`, `super` or the name of a
//!   child module (file or inline) of the module it is written in.
//!   A path in code may also start with a name a `use` of the same module
//!   brought in (`use crate::core::dispatch;` … `dispatch::start_job()`):
//!   it continues from where that `use` leads. Paths starting anywhere
//!   else (`std`, other crates, `Self`, local types, `$crate` in macros)
//!   are not edges. `self`/`super`/child names are resolved relative to
//!   the module the path is written in (inline `mod m { … }` blocks
//!   included).
//! - **Targets.** A reference names the file of the longest prefix of its
//!   resolved path that is a file (or inline) module:
//!   `crate::core::accounts::Keys` is `core/accounts.rs`,
//!   `crate::core::Core` is `core/mod.rs`, `crate::now_ms` the crate root.
//!   When the rest of the path starts with a name that file brings in by
//!   a `use` of its own (a re-export `pub use child::X;`, or a private
//!   `use a::X;` a child module sees), the reference follows it to where
//!   the item is defined: a file naming `crate::X` depends on the file
//!   defining `X`, not on `lib.rs`.
//! - **Edges.** A file has an edge to the target of each of its
//!   references, except (a) to itself and (b) a re-export: a `pub use`
//!   (any `pub(…)` too) whose target is inside the file's own module
//!   (`pub use child::X;` in a `mod.rs`/`lib.rs`) and whose name the file
//!   does not use itself (no identifier `X` outside `use` items; when it
//!   does, as in `pub use child::run; … run()`, it is an edge). Declaring
//!   `mod child;` is no edge either. Any other use of a child by its
//!   parent file (a private `use child::X;`, a path `child::f()` in code)
//!   IS an edge, and so is a child's reference to its parent file
//!   (`super::X`, `crate::X` where `X` is defined in the parent).
//! - **Cycles.** A tangle is a set of two or more files that all reach
//!   each other (a strongly connected component); each is reported once,
//!   as the shortest cycle from its first file back to it, each step with
//!   the line and path that make the edge, then every file in it when the
//!   tangle is larger than that cycle.
//!
//! # How function lengths are measured
//!
//! A function is an `fn name` with a body; its length runs from the line
//! of `fn` to the line of its closing brace, both included (attributes and
//! doc comments above it are not counted). Test code is left out as
//! above. A function inside another counts on its own and inside the
//! outer one.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

// ---------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    Lifetime,
    Literal,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
}

impl Token {
    fn is_ident(&self, s: &str) -> bool {
        matches!(&self.tok, Tok::Ident(i) if i == s)
    }
    fn is_punct(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }
    fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(i) => Some(i),
            _ => None,
        }
    }
}

/// The tokens of Rust source, without comments; literals are opaque.
pub fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_start(&c, i) {
            // r"…", r#"…"#, br"…", cr#"…"#: no escapes, ends at `"` + hashes.
            let hashes = len - 1 - usize::from(c[i] != 'r');
            let start_line = line;
            i += len;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '\n' {
                    line += 1;
                }
                if c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push(Token {
                tok: Tok::Literal,
                line: start_line,
            });
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && at(i + 1) == '"') {
            let start_line = line;
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if at(i) == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Literal,
                line: start_line,
            });
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            let q = if ch == '\'' { i } else { i + 1 };
            if at(q + 1) == '\\' {
                // An escaped char literal: '\n', '\'', '\u{..}'.
                i = q + 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token {
                    tok: Tok::Literal,
                    line,
                });
            } else if at(q + 2) == '\'' {
                i = q + 3;
                out.push(Token {
                    tok: Tok::Literal,
                    line,
                });
            } else {
                // A lifetime or a label.
                i = q + 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Lifetime,
                    line,
                });
            }
        } else if ch.is_alphabetic() || ch == '_' {
            if ch == 'r' && at(i + 1) == '#' {
                i += 2; // a raw identifier
            }
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(c[start..i].iter().collect()),
                line,
            });
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (c[i].is_alphanumeric()
                    || c[i] == '_'
                    || (c[i] == '.' && at(i + 1).is_ascii_digit()))
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Literal,
                line,
            });
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

/// The length of a raw string's opening (`r#"` is 3) when one starts at `i`.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if (c[j] == 'b' || c[j] == 'c') && c.get(j + 1) == Some(&'r') {
        j += 1;
    }
    if c[j] != 'r' {
        return None;
    }
    // Not the tail of an identifier (`bar"` is not a raw string).
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(j + 1 - i)
}

/// The index just past the group opened at `open` (`(`, `[` or `{`).
fn close_of(toks: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// The index just past the item starting at `i`: its `;` or its first
/// `{ … }` block at the item's own level.
fn end_of_item(toks: &[Token], mut i: usize) -> usize {
    while i < toks.len() {
        match toks[i].tok {
            Tok::Punct(';') => return i + 1,
            Tok::Punct('{') => return close_of(toks, i),
            Tok::Punct('(' | '[') => i = close_of(toks, i),
            // The end of the enclosing block: the item was an expression.
            Tok::Punct('}') => return i,
            _ => i += 1,
        }
    }
    i
}

/// Whether the attribute whose `[` is at `open` marks test-only code:
/// `#[test]`, `#[tokio::test]`, `#[cfg(test)]`, `#[cfg(all(test, …))]`.
fn is_test_attr(toks: &[Token], open: usize) -> bool {
    let words: Vec<String> = toks[open + 1..close_of(toks, open) - 1]
        .iter()
        .map(|t| match &t.tok {
            Tok::Ident(s) => s.clone(),
            Tok::Punct(c) => c.to_string(),
            _ => "?".into(),
        })
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["test"]
            | [.., "?", "test"]
            | ["cfg", "(", "test", ")"]
            | ["cfg", "(", "all", "(", "test", ..]
    )
}

/// The tokens of a file's non-test code (see the module doc); empty when
/// the whole file is test code (`#![cfg(test)]`).
pub fn non_test(toks: &[Token]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i].is_punct('#') {
            let inner = toks.get(i + 1).is_some_and(|t| t.is_punct('!'));
            let open = i + 1 + usize::from(inner);
            if toks.get(open).is_some_and(|t| t.is_punct('[')) {
                let end = close_of(toks, open);
                if is_test_attr(toks, open) {
                    if inner {
                        return Vec::new();
                    }
                    // Skip the attributes that follow, then the item.
                    let mut j = end;
                    while toks.get(j).is_some_and(|t| t.is_punct('#'))
                        && toks.get(j + 1).is_some_and(|t| t.is_punct('['))
                    {
                        j = close_of(toks, j + 1);
                    }
                    i = end_of_item(toks, j);
                } else {
                    // Attributes themselves carry no references.
                    i = end;
                }
                continue;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------
// One file's declarations and references

/// A path written in a file, before resolution.
#[derive(Clone, Debug)]
pub struct Ref {
    /// The module (relative to the file's own) the path is written in:
    /// empty at the file's top level, `["m"]` inside `mod m { … }`.
    pub scope: Vec<String>,
    pub path: Vec<String>,
    pub line: usize,
    /// Written in a `use` item.
    pub is_use: bool,
    /// The name a `use` brings into scope (its last segment or its
    /// `as` name); `None` for a glob or a path in code.
    pub name: Option<String>,
    /// A `pub use` / `pub(…) use`.
    pub public_use: bool,
}

#[derive(Debug, Default)]
pub struct Parsed {
    /// `mod name;` declarations: (scope, name).
    pub mod_decls: Vec<(Vec<String>, String)>,
    /// Inline `mod name { … }` modules, as scopes.
    pub inline: Vec<Vec<String>>,
    pub refs: Vec<Ref>,
    /// Every identifier outside `use` items: a name a `pub use`
    /// re-exports is used by the file itself when it is among them.
    pub idents: BTreeSet<String>,
}

/// One path of a `use` tree and the name it brings into scope (`None`
/// for a glob).
type UsePath = (Vec<String>, Option<String>);

/// Parses a `use` tree at `i`, pushing each full path (a `*` glob ends
/// at its module, `self` names its prefix). Returns the index past it.
fn use_tree(toks: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<UsePath>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(s)) if s == "self" && !path.is_empty() => i += 1,
            Some(Tok::Ident(s)) if s == "as" => {
                let alias = toks.get(i + 1).and_then(Token::ident).map(str::to_string);
                out.push((path, alias));
                return i + 2;
            }
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
            }
            Some(Tok::PathSep) => i += 1,
            Some(Tok::Punct('*')) => {
                out.push((path, None));
                return i + 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.tok) {
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, &path, out),
                    }
                }
            }
            _ => {
                let name = path.last().cloned();
                out.push((path, name));
                return i;
            }
        }
    }
}

/// A file's `mod` declarations, inline modules and the paths it names.
pub fn parse(src: &str) -> Parsed {
    let toks = non_test(&lex(src));
    let mut p = Parsed::default();
    // Inline modules open at a brace depth: (name, depth inside).
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let names =
        |scope: &[(String, usize)]| scope.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        match &t.tok {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if scope.last().is_some_and(|(_, d)| *d == depth) {
                    scope.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                let name = toks.get(i + 1).and_then(Token::ident).map(str::to_string);
                match (name, toks.get(i + 2).map(|t| &t.tok)) {
                    (Some(name), Some(Tok::Punct(';'))) => {
                        p.mod_decls.push((names(&scope), name));
                        i += 3;
                    }
                    (Some(name), Some(Tok::Punct('{'))) => {
                        depth += 1;
                        scope.push((name, depth));
                        p.inline.push(names(&scope));
                        i += 3;
                    }
                    _ => i += 1,
                }
            }
            Tok::Ident(kw) if kw == "use" => {
                let public = i >= 1
                    && (toks[i - 1].is_ident("pub")
                        || (toks[i - 1].is_punct(')')
                            && toks[..i - 1]
                                .iter()
                                .rposition(|t| t.is_punct('('))
                                .is_some_and(|o| o >= 1 && toks[o - 1].is_ident("pub"))));
                let mut paths = Vec::new();
                let start =
                    i + 1 + usize::from(toks.get(i + 1).is_some_and(|t| t.tok == Tok::PathSep));
                let leading_sep = start == i + 2;
                i = use_tree(&toks, start, &[], &mut paths);
                if !leading_sep {
                    for (path, name) in paths {
                        p.refs.push(Ref {
                            scope: names(&scope),
                            path,
                            line: t.line,
                            is_use: true,
                            name,
                            public_use: public,
                        });
                    }
                }
            }
            Tok::Ident(first)
                if toks.get(i + 1).is_some_and(|n| n.tok == Tok::PathSep)
                    && !(i >= 1
                        && (toks[i - 1].tok == Tok::PathSep || toks[i - 1].is_punct('$'))) =>
            {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|n| n.tok == Tok::PathSep) {
                    match toks.get(j + 1).and_then(Token::ident) {
                        Some(seg) => {
                            path.push(seg.to_string());
                            j += 2;
                        }
                        None => break,
                    }
                }
                p.refs.push(Ref {
                    scope: names(&scope),
                    path,
                    line: t.line,
                    is_use: false,
                    name: None,
                    public_use: false,
                });
                i = j;
            }
            Tok::Ident(name) => {
                p.idents.insert(name.clone());
                i += 1;
            }
            _ => i += 1,
        }
    }
    p
}

// ---------------------------------------------------------------------
// A crate's file graph

/// Why one file depends on another: the first reference seen.
#[derive(Clone, Debug)]
pub struct Edge {
    pub line: usize,
    pub path: String,
}

#[derive(Debug, Default)]
pub struct Graph {
    /// Every non-test source file, relative to the crate's folder.
    pub files: BTreeSet<String>,
    /// file → file it depends on → why.
    pub edges: BTreeMap<String, BTreeMap<String, Edge>>,
}

struct FileMod {
    file: String,
    module: Vec<String>,
    parsed: Parsed,
}

/// The `.rs` files of a crate's `src/`, relative to the crate's folder
/// (`src/lib.rs`), with their text.
pub fn read_sources(crate_dir: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let rel = rel.to_string_lossy().replace('\\', "/");
                if let Ok(text) = std::fs::read_to_string(&path) {
                    out.insert(rel, text);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&crate_dir.join("src"), crate_dir, &mut out);
    out
}

/// Whether a path names a test file: `tests.rs` or anything in `tests/`.
pub fn is_test_file(rel: &str) -> bool {
    rel.split('/')
        .any(|part| part == "tests" || part == "tests.rs")
}

/// The folder a file's `mod child;` declarations live in: a crate root's
/// or a `mod.rs`'s own folder, else the folder named after the file.
fn child_dir(file: &str, is_root: bool) -> String {
    let (dir, name) = file.rsplit_once('/').unwrap_or(("", file));
    if is_root || name == "mod.rs" {
        dir.to_string()
    } else {
        format!("{dir}/{}", name.trim_end_matches(".rs"))
    }
}

/// The file graph of one crate, from its sources keyed by their path
/// relative to the crate (`src/lib.rs`, `src/core/mod.rs`, …).
pub fn crate_graph(sources: &BTreeMap<String, String>) -> Graph {
    let roots = sources.keys().filter(|f| {
        *f == "src/lib.rs"
            || *f == "src/main.rs"
            || (f.starts_with("src/bin/")
                && (f.matches('/').count() == 2 || f.ends_with("/main.rs")))
    });
    let mut graph = Graph::default();
    for root in roots {
        // Walk the module tree from this root.
        let mut mods: Vec<FileMod> = Vec::new();
        let mut todo = vec![(root.clone(), Vec::<String>::new())];
        while let Some((file, module)) = todo.pop() {
            if is_test_file(&file) || mods.iter().any(|m| m.file == file) {
                continue;
            }
            let parsed = parse(&sources[&file]);
            for (scope, name) in &parsed.mod_decls {
                let dir = scope
                    .iter()
                    .fold(child_dir(&file, module.is_empty()), |d, s| {
                        format!("{d}/{s}")
                    });
                let child = [format!("{dir}/{name}.rs"), format!("{dir}/{name}/mod.rs")]
                    .into_iter()
                    .find(|f| sources.contains_key(f));
                if let Some(child) = child {
                    let mut m = module.clone();
                    m.extend(scope.iter().cloned());
                    m.push(name.clone());
                    todo.push((child, m));
                }
            }
            mods.push(FileMod {
                file,
                module,
                parsed,
            });
        }
        add_edges(&mods, &mut graph);
    }
    graph
}

/// A module path → its file, inline modules included.
fn module_files(mods: &[FileMod]) -> BTreeMap<Vec<String>, usize> {
    let mut out = BTreeMap::new();
    for (k, m) in mods.iter().enumerate() {
        out.insert(m.module.clone(), k);
        for inline in &m.parsed.inline {
            let mut path = m.module.clone();
            path.extend(inline.iter().cloned());
            out.entry(path).or_insert(k);
        }
    }
    out
}

/// The absolute module path a reference names, or `None` when it starts
/// outside the crate. A path in code may start with a name the file
/// imports (`use crate::core::dispatch;` … `dispatch::start_job`): it
/// continues from where that import leads.
fn absolute(m: &FileMod, r: &Ref, files: &BTreeMap<Vec<String>, usize>) -> Option<Vec<String>> {
    absolute_at(m, r, files, 0)
}

fn absolute_at(
    m: &FileMod,
    r: &Ref,
    files: &BTreeMap<Vec<String>, usize>,
    depth: usize,
) -> Option<Vec<String>> {
    let mut here = m.module.clone();
    here.extend(r.scope.iter().cloned());
    let (first, rest) = r.path.split_first()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.clone(),
        "super" => {
            let mut b = here.clone();
            b.pop()?;
            b
        }
        name => {
            let mut child = here.clone();
            child.push(name.to_string());
            if files.contains_key(&child) {
                child
            } else if depth < 4 {
                let import = m.parsed.refs.iter().find(|i| {
                    i.is_use
                        && i.name.as_deref() == Some(name)
                        && i.scope == r.scope
                        && !std::ptr::eq(*i, r)
                })?;
                absolute_at(m, import, files, depth + 1)?
            } else {
                return None;
            }
        }
    };
    let mut rest = rest.iter().peekable();
    while rest.peek().is_some_and(|s| *s == "super") {
        base.pop()?;
        rest.next();
    }
    base.extend(rest.cloned());
    Some(base)
}

/// The file an absolute path lands in (the longest prefix that is a
/// file or inline module), and that prefix's length.
fn landing(path: &[String], files: &BTreeMap<Vec<String>, usize>) -> (usize, usize) {
    (0..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n]).map(|k| (*k, n)))
        .unwrap_or((0, 0))
}

/// The file that defines what an absolute path names: where it lands,
/// or, when the name after the module is one the file imports
/// (`use a::X;`, `pub use child::X;`), where that import leads.
fn target(
    path: &[String],
    mods: &[FileMod],
    files: &BTreeMap<Vec<String>, usize>,
    hops: usize,
) -> usize {
    let (k, len) = landing(path, files);
    let Some(name) = path.get(len) else {
        return k;
    };
    if hops > 8 {
        return k;
    }
    let m = &mods[k];
    // The inline module (if any) inside the file the name is looked up in.
    let scope = &path[m.module.len().min(len)..len];
    let import = m
        .parsed
        .refs
        .iter()
        .filter(|r| r.is_use && r.scope == scope);
    for r in import {
        if r.name.as_ref() == Some(name)
            && let Some(abs) = absolute(m, r, files)
            && abs.as_slice() != &path[..=len]
        {
            let mut next = abs;
            next.extend(path[len + 1..].iter().cloned());
            return target(&next, mods, files, hops + 1);
        }
    }
    k
}

fn add_edges(mods: &[FileMod], graph: &mut Graph) {
    let files = module_files(mods);
    for (k, m) in mods.iter().enumerate() {
        graph.files.insert(m.file.clone());
        for r in &m.parsed.refs {
            let Some(abs) = absolute(m, r, &files) else {
                continue;
            };
            let (direct, _) = landing(&abs, &files);
            // A re-export of the file's own descendant is no edge, unless
            // the file also uses the name itself.
            let used_here = r.name.as_ref().is_some_and(|n| m.parsed.idents.contains(n));
            if r.public_use && mods[direct].module.starts_with(&m.module) && !used_here {
                continue;
            }
            let to = target(&abs, mods, &files, 0);
            if to == k {
                continue;
            }
            graph
                .edges
                .entry(m.file.clone())
                .or_default()
                .entry(mods[to].file.clone())
                .or_insert(Edge {
                    line: r.line,
                    path: r.path.join("::"),
                });
        }
    }
}

/// Every cycle in the graph, one per tangle, as a path of files that
/// returns to its start.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    tangles(graph).iter().map(|t| cycle_in(graph, t)).collect()
}

/// The tangles of the graph: each set of two or more files that all
/// reach each other (a strongly connected component), sorted.
pub fn tangles(graph: &Graph) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components.
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.edges.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for f in &graph.files {
        if !t.index.contains_key(f.as_str()) {
            visit(&mut t, f);
        }
    }
    let mut out: Vec<Vec<String>> = t
        .out
        .iter()
        .map(|comp| {
            let mut files: Vec<String> = comp.iter().map(|f| f.to_string()).collect();
            files.sort();
            files
        })
        .collect();
    out.sort();
    out
}

/// A cycle through a tangle: the shortest way from its first file back
/// to it, breadth first inside the tangle.
pub fn cycle_in(graph: &Graph, tangle: &[String]) -> Vec<String> {
    {
        let set: BTreeSet<&str> = tangle.iter().map(String::as_str).collect();
        let start = *set.iter().next().expect("non-empty");
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut last = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for w in graph.edges.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !set.contains(w) {
                    continue;
                }
                if w == start {
                    last = Some(v);
                    break 'bfs;
                }
                if !prev.contains_key(w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![start.to_string()];
        let mut v = last.expect("a component has a cycle");
        while v != start {
            path.push(v.to_string());
            v = prev[v];
        }
        path.push(start.to_string());
        let n = path.len();
        path[1..n - 1].reverse();
        path
    }
}

/// A cycle as text: `a.rs:12 (crate::b::X) -> b.rs:3 (super::a) -> a.rs`.
pub fn show_cycle(graph: &Graph, prefix: &str, cycle: &[String]) -> String {
    let mut s = String::new();
    for pair in cycle.windows(2) {
        let e = &graph.edges[&pair[0]][&pair[1]];
        s.push_str(&format!("{prefix}{}:{} ({}) -> ", pair[0], e.line, e.path));
    }
    s.push_str(&format!("{prefix}{}", cycle[cycle.len() - 1]));
    s
}

/// Each tangle of the graph as one line: a cycle through it (see
/// [`show_cycle`]), then, when the tangle holds more files than that
/// cycle, every file in it.
pub fn report(graph: &Graph, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for tangle in tangles(graph) {
        let cycle = cycle_in(graph, &tangle);
        let mut line = show_cycle(graph, prefix, &cycle);
        if tangle.len() + 1 > cycle.len() {
            let files: Vec<String> = tangle.iter().map(|f| format!("{prefix}{f}")).collect();
            line += &format!(
                "\n    (one tangle of {} files: {})",
                tangle.len(),
                files.join(", ")
            );
        }
        out.push(line);
    }
    out
}

// ---------------------------------------------------------------------
// Function lengths

#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub line: usize,
    /// Lines from `fn` to the closing brace, both included.
    pub lines: usize,
}

/// The non-test functions with a body in a piece of source.
pub fn functions(src: &str) -> Vec<Function> {
    let toks = non_test(&lex(src));
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if !t.is_ident("fn") {
            continue;
        }
        let Some(name) = toks.get(i + 1).and_then(Token::ident) else {
            continue; // a `fn(…)` pointer type
        };
        // The body: the first `{` at the signature's own level.
        let mut j = i + 2;
        while j < toks.len() {
            match toks[j].tok {
                Tok::Punct(';') => break,
                Tok::Punct('(' | '[') => j = close_of(&toks, j),
                Tok::Punct('{') => {
                    let close = close_of(&toks, j) - 1;
                    let end = toks.get(close).map_or(t.line, |c| c.line);
                    out.push(Function {
                        name: name.to_string(),
                        line: t.line,
                        lines: end - t.line + 1,
                    });
                    break;
                }
                _ => j += 1,
            }
        }
    }
    out
}
