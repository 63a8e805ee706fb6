//! Crates that must not link candle or cudarc: the prompt renderer
//! (`sharenet-prompt`) and the coordinator, which counts every request's
//! tokens with it. Read from `Cargo.lock`, whose dependency lists hold
//! every optional dependency of any feature: a crate absent from the
//! closure there is absent from every build.

use std::collections::{BTreeMap, BTreeSet};

use super::workspace;

/// Each package's dependencies by name, from `Cargo.lock`.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .expect("a package name")
            .trim_matches('"')
            .to_owned();
        let deps: Vec<String> = match block.find("dependencies = [") {
            None => Vec::new(),
            Some(start) => {
                let list = &block[start..];
                let list = &list[..list.find(']').expect("a closed list")];
                list.lines()
                    .skip(1)
                    .filter_map(|l| l.trim().trim_end_matches(',').strip_prefix('"'))
                    // "name", or "name version" where two versions coexist.
                    .filter_map(|d| d.trim_end_matches('"').split(' ').next())
                    .map(str::to_owned)
                    .collect()
            }
        };
        graph.entry(name).or_default().extend(deps);
    }
    graph
}

/// Every package `root` can link, itself included.
fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        if seen.insert(p.clone()) {
            stack.extend(graph.get(&p).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_prompt_renderer_and_the_coordinator_link_no_candle_or_cudarc() {
    let graph = lock_graph();
    // The walk itself works: the engine does link candle.
    assert!(closure(&graph, "sharenet-engine").contains("candle-core"));
    for root in ["sharenet-prompt", "sharenet-coordinator"] {
        let all = closure(&graph, root);
        assert!(all.len() > 10, "{root} was read from Cargo.lock: {all:?}");
        let bad: Vec<&String> = all
            .iter()
            .filter(|p| p.starts_with("candle") || p.starts_with("cudarc"))
            .collect();
        assert!(bad.is_empty(), "{root} links {bad:?}");
    }
}
