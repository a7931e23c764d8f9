//! The layout reads like the design: no module cycles in any crate, and the
//! README's map of crates names exactly the workspace's crates.
//!
//! A module cycle is counted at the level where two modules meet: a
//! reference from `a::x` to `b::y` (siblings `a` and `b` under one parent)
//! is an edge `a → b`. Children may use their parent and parents their
//! children; siblings at every level must form a DAG.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use regex::Regex;

type ModPath = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The workspace members, from the root Cargo.toml.
fn members() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("root Cargo.toml");
    let line = text.lines().find(|l| l.trim_start().starts_with("members")).expect("a members line");
    Regex::new(r#""([^"]+)""#).expect("regex").captures_iter(line).map(|c| c[1].to_string()).collect()
}

/// Every module file of a crate's `src/`, by module path (`lib.rs`/`main.rs` → []).
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<ModPath, PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).expect("under src").with_extension("");
                let path: ModPath = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                let path = if path == ["lib"] || path == ["main"] { Vec::new() } else { path };
                out.insert(path, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The module paths a file refers to through `crate::` and `super::`.
fn references(module: &ModPath, text: &str) -> Vec<ModPath> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut refs = Vec::new();
    let path = Regex::new(r"\bcrate((?:::\w+)+)").expect("regex");
    for c in path.captures_iter(&code) {
        refs.push(c[1].split("::").skip(1).map(str::to_string).collect());
    }
    let sup = Regex::new(r"\b((?:super::)+)(\w+(?:::\w+)*)").expect("regex");
    let base = |n: usize| module[..module.len().saturating_sub(n)].to_vec();
    for c in sup.captures_iter(&code) {
        let mut p = base(c[1].matches("super::").count());
        p.extend(c[2].split("::").map(str::to_string));
        refs.push(p);
    }
    let group = Regex::new(r"use\s+(crate::|(?:super::)+)\{([^;]*)\};").expect("regex");
    for c in group.captures_iter(&code) {
        let prefix = if &c[1] == "crate::" { Vec::new() } else { base(c[1].matches("super::").count()) };
        for item in c[2].split(',') {
            let first =
                item.trim().split("::").next().unwrap_or("").trim_matches(|ch: char| ch == '{' || ch.is_whitespace());
            if !first.is_empty() {
                let mut p = prefix.clone();
                p.push(first.to_string());
                refs.push(p);
            }
        }
    }
    refs
}

/// Sibling edges of one crate: (from, to) → an example (file → file).
fn sibling_edges(mods: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<(ModPath, ModPath), String> {
    let mut edges = BTreeMap::new();
    for (m, file) in mods {
        let text = std::fs::read_to_string(file).expect("source file");
        for r in references(m, &text) {
            let Some(target) = (1..=r.len()).rev().map(|k| r[..k].to_vec()).find(|p| mods.contains_key(p)) else {
                continue;
            };
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue; // an ancestor or a descendant
            }
            let (a, b) = (m[..=common].to_vec(), target[..=common].to_vec());
            edges.entry((a, b)).or_insert_with(|| format!("{} -> {}", m.join("::"), target.join("::")));
        }
    }
    edges
}

/// Strongly connected components with more than one module.
fn cycles(edges: &BTreeMap<(ModPath, ModPath), String>) -> Vec<BTreeSet<ModPath>> {
    let nodes: BTreeSet<&ModPath> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |from: &ModPath| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for ((a, b), _) in edges.range((n.clone(), Vec::new())..) {
                if *a != n {
                    break;
                }
                if seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&ModPath, BTreeSet<ModPath>> = nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut out: Vec<BTreeSet<ModPath>> = Vec::new();
    for n in &nodes {
        let comp: BTreeSet<ModPath> =
            nodes.iter().filter(|m| reach[*n].contains(**m) && reach[**m].contains(*n)).map(|m| (*m).clone()).collect();
        if comp.len() > 1 && !out.contains(&comp) {
            out.push(comp);
        }
    }
    out
}

#[test]
fn no_module_cycles_in_any_crate() {
    let mut found = Vec::new();
    for member in members() {
        let src = workspace().join(&member).join("src");
        let edges = sibling_edges(&modules(&src));
        for comp in cycles(&edges) {
            let names: Vec<String> = comp.iter().map(|m| m.join("::")).collect();
            let via: Vec<&String> =
                edges.iter().filter(|((a, b), _)| comp.contains(a) && comp.contains(b)).map(|(_, e)| e).collect();
            found.push(format!("{member}: {} (via {via:?})", names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "mod a; mod b;").expect("write");
    std::fs::write(src.join("a.rs"), "mod x;").expect("write");
    std::fs::write(src.join("a/x.rs"), "use crate::b::Thing; // crate::c is a comment").expect("write");
    std::fs::write(src.join("b.rs"), "use super::{a::x::Other};").expect("write");
    let edges = sibling_edges(&modules(src));
    let found = cycles(&edges);
    assert_eq!(found.len(), 1, "{edges:?}");
    assert!(found[0].contains(&vec!["a".to_string()]) && found[0].contains(&vec!["b".to_string()]));
}

#[test]
fn the_readme_maps_every_crate_and_only_those() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let mapped: BTreeSet<String> = Regex::new(r"(?m)^\| `([a-z-]+)/` \(`meridian")
        .expect("regex")
        .captures_iter(&readme)
        .map(|c| c[1].to_string())
        .collect();
    let members: BTreeSet<String> = members().into_iter().collect();
    assert_eq!(mapped, members, "README's crate table vs Cargo.toml members");
}
