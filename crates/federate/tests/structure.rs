//! The crates' structure, checked: no import cycle between the top-level modules of any crate
//! (a module depends on another when it names `crate::other` outside its tests; a directory
//! module counts as one). `scripts/module_cycles.py` prints the same graph with the size
//! guidelines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text of a file without its tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The modules of `src` named `crate::x` (or `x` inside `use crate::{x, ...}`) in `text`.
fn named(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        if let Some(inner) = rest.strip_prefix('{') {
            for part in inner.split('}').next().unwrap_or("").split(',') {
                out.insert(ident(part.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| modules.contains(m));
    out
}

/// Strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Reachability by repeated search: small graphs, clarity over speed.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in &graph[&m] {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in graph.keys() {
        let comp: Vec<String> =
            graph.keys().filter(|o| *o == m || (all[m].contains(*o) && all[o].contains(m))).cloned().collect();
        if comp.len() > 1 && !out.contains(&comp) {
            out.push(comp);
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = krate.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        // Top-level module of each file: its first path component under src/.
        let module_of = |f: &Path| {
            let rel = f.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            first.trim_end_matches(".rs").to_string()
        };
        let modules: BTreeSet<String> =
            files.iter().map(|f| module_of(f)).filter(|m| m != "lib" && m != "main").collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> =
            modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
        for f in &files {
            let m = module_of(f);
            if !modules.contains(&m) || f.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let deps = named(&code(f), &modules);
            graph.get_mut(&m).unwrap().extend(deps.into_iter().filter(|d| *d != m));
        }
        for comp in cycles(&graph) {
            found.push(format!("{}: {}", krate.file_name().to_string_lossy(), comp.join(", ")));
        }
    }
    assert!(found.is_empty(), "import cycles (see scripts/module_cycles.py for the edges):\n{}", found.join("\n"));
}

#[test]
fn the_cycle_finder_finds_cycles_and_only_them() {
    let g = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            graph.entry(a.to_string()).or_default().insert(b.to_string());
            graph.entry(b.to_string()).or_default();
        }
        graph
    };
    assert_eq!(cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")])), vec![vec!["a", "b", "c"]]);
    assert!(cycles(&g(&[("a", "b"), ("b", "c"), ("d", "a")])).is_empty());
    let modules: BTreeSet<String> = ["client", "dp", "messages"].iter().map(|s| s.to_string()).collect();
    let deps = named("use crate::{dp, messages::FitTask};\nlet x = crate::client::f(); crate::seed::g();", &modules);
    assert_eq!(deps, modules);
}
