//! The mechanical "Done when" rules of issue 17 (the coordinator's layers), one test each:
//! - no module import loop in `coordinator/src`, `agent/src` or `shared/src` (see
//!   `persona_tests::layers` for what counts as an import), between files and, for the
//!   coordinator, between its top-level modules (its layers: `store` never reaches back
//!   up to `api`, even through a sibling file);
//! - `coordinator/src` holds at most 6 files at its root;
//! - only files under `coordinator/src/store/` name `rusqlite`.
//!
//! While refactoring, `LAYERS_REPORT=1 cargo test -p persona-tests --test layers --
//! --nocapture report` prints every crate's loops and each module's imports without
//! failing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use persona_tests::layers::{Graph, Import, imports, scan_file, strip};

const CRATES: [&str; 3] = ["coordinator/src", "agent/src", "shared/src"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root above tests/")
        .to_path_buf()
}

fn graph(src: &str) -> Graph {
    Graph::scan(&root(), src).unwrap_or_else(|e| panic!("reading {src}: {e}"))
}

fn assert_no_loops(src: &str) {
    let g = graph(src);
    assert!(
        g.files.len() > 5,
        "{src}: only {} modules found",
        g.files.len()
    );
    let cycles = g.cycles();
    assert!(
        cycles.is_empty(),
        "module import loops (an import must only point down):\n{}",
        g.describe_cycles()
    );
}

#[test]
fn no_import_loop_in_coordinator_src() {
    assert_no_loops("coordinator/src");
}

#[test]
fn no_import_loop_in_agent_src() {
    assert_no_loops("agent/src");
}

#[test]
fn no_import_loop_in_shared_src() {
    assert_no_loops("shared/src");
}

type Layers = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The graph of top-level modules (`api`, `store`, ...; `lib` for the crate root): a
/// file's imports become its top-level module's, and a module's imports of itself drop.
fn layer_edges(g: &Graph) -> Layers {
    let top = |f: &Path| {
        g.files
            .get(f)
            .and_then(|m| m.first().cloned())
            .unwrap_or_else(|| "lib".to_owned())
    };
    let mut out = Layers::new();
    for (from, tos) in &g.edges {
        let a = top(from);
        let set = out.entry(a.clone()).or_default();
        for to in tos.keys() {
            let b = top(to);
            if b != a {
                set.insert(b);
            }
        }
    }
    out
}

/// One loop through top-level modules, if there is any.
fn layer_loop(edges: &Layers) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &Layers,
        state: &mut std::collections::BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied() {
                Some(1) => {
                    let at = stack.iter().position(|x| x == m).unwrap_or(0);
                    let mut l = stack[at..].to_vec();
                    l.push(m.clone());
                    return Some(l);
                }
                Some(_) => {}
                None => {
                    if let Some(l) = visit(m, edges, state, stack) {
                        return Some(l);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str())
            && let Some(l) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(l);
        }
    }
    None
}

#[test]
fn coordinator_layers_point_only_down() {
    let edges = layer_edges(&graph("coordinator/src"));
    // The store is the bottom of the feature layers: it names no other module.
    assert!(
        edges.get("store").is_none_or(|s| s.is_empty()),
        "store imports {:?}",
        edges.get("store")
    );
    let found = layer_loop(&edges);
    assert!(
        found.is_none(),
        "top-level modules in a loop: {found:?}\nall: {edges:?}"
    );
}

#[test]
fn a_loop_between_layers_is_found() {
    let mut e = Layers::new();
    e.entry("api".into()).or_default().insert("profile".into());
    e.entry("profile".into())
        .or_default()
        .insert("store".into());
    assert!(layer_loop(&e).is_none());
    e.entry("store".into()).or_default().insert("api".into());
    assert_eq!(
        layer_loop(&e),
        Some(vec![
            "api".into(),
            "profile".into(),
            "store".into(),
            "api".into()
        ])
    );
}

#[test]
fn coordinator_src_holds_at_most_6_files_at_its_root() {
    let dir = root().join("coordinator/src");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files.len() <= 6,
        "coordinator/src holds {} files at its root (at most 6): {}",
        files.len(),
        files.join(" ")
    );
}

#[test]
fn only_coordinator_src_store_names_rusqlite() {
    // As `grep -rln rusqlite coordinator/src`: any file, any mention.
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root.join("coordinator/src"), &mut files);
    let store = root.join("coordinator/src/store");
    let mut outside: Vec<String> = files
        .iter()
        .filter(|p| !p.starts_with(&store))
        .filter(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(b"rusqlite".len())
                .any(|w| w == b"rusqlite")
        })
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    outside.sort();
    assert!(
        outside.is_empty(),
        "{} file(s) outside coordinator/src/store/ name rusqlite:\n  {}",
        outside.len(),
        outside.join("\n  ")
    );
}

/// With `LAYERS_REPORT=1`: prints each crate's loops and every module's imports, and
/// passes whatever they are.
#[test]
fn report() {
    if std::env::var_os("LAYERS_REPORT").is_none_or(|v| v.is_empty() || v == "0") {
        return;
    }
    for src in CRATES {
        let g = graph(src);
        println!("{}", g.describe_cycles());
        println!("{}", g.describe_imports());
    }
}

// The parser, on small examples.

fn paths(src: &str, module: &[&str]) -> Vec<String> {
    let m: Vec<String> = module.iter().map(|s| (*s).to_owned()).collect();
    imports(src, &m)
        .into_iter()
        .map(|Import { path, .. }| path.join("::"))
        .collect()
}

#[test]
fn grouped_and_nested_use_trees_give_every_leaf() {
    let src = "use crate::{a::X, b::{Y, c::{Z, W}}, d};\nuse crate::e::{self, F as G};\n";
    assert_eq!(
        paths(src, &["m"]),
        ["a::X", "b::Y", "b::c::Z", "b::c::W", "d", "e", "e::F"]
    );
}

#[test]
fn super_is_relative_to_the_file_and_to_inline_modules() {
    let src = "use super::super::x::Y;\nuse super::{Z, w::V};\nmod tests {\n    use super::*;\n    fn f() { super::super::q::g(); }\n}\nfn h() { super::k(); }\n";
    assert_eq!(
        paths(src, &["a", "b", "c"]),
        [
            "a::x::Y",
            "a::b::Z",
            "a::b::w::V",
            "a::b::c",
            "a::b::q::g",
            "a::b::k"
        ]
    );
    // Above the crate root there is nothing to import.
    assert!(paths("use super::x;", &[]).is_empty());
}

#[test]
fn visibility_and_inline_paths() {
    let src = "pub(crate) use crate::store::Store;\npub(in crate::a) fn f() {}\npub(super) use crate::b::c::D;\nfn g() -> crate::x::Y { crate::engine::plan::<u8>(&crate::z::ZS); $crate::m::n!(); }\nextern crate core;\n";
    assert_eq!(
        paths(src, &["q"]),
        [
            "store::Store",
            "b::c::D",
            "x::Y",
            "engine::plan",
            "z::ZS",
            "m::n"
        ]
    );
}

#[test]
fn test_only_code_is_not_part_of_the_layers() {
    let src = "use crate::a::A;\n#[cfg(test)]\nuse crate::t1::X;\n#[cfg(test)]\nmod tests {\n    use crate::t2::Y;\n    mod deeper { fn f() { crate::t3::g(); } }\n}\n#[cfg(not(test))]\nmod real { use crate::b::B; }\n#[cfg(test)]\n#[allow(dead_code)]\npub(crate) mod more_tests { use crate::t4::Z; }\nfn h() { crate::c::C::new(); }\n";
    assert_eq!(paths(src, &["m"]), ["a::A", "b::B", "c::C::new"]);
    let scan = scan_file(
        "mod a;\n#[cfg(test)]\nmod oracle;\n#[cfg(test)] pub mod fixtures;\n",
        &[],
    );
    assert_eq!(scan.test_children, ["oracle", "fixtures"]);
}

#[test]
fn comments_strings_and_chars_are_not_imports() {
    let src = r####"
// use crate::line_comment::A;
/* use crate::block::B; /* nested crate::nested::C */ still crate::comment::D */
/// See [`crate::doc::E`].
const S: &str = "crate::string::F \" crate::escaped::G";
const R: &str = r#"crate::raw::H " crate::raw2::I"#;
const B: &[u8] = b"crate::bytes::J";
const BR: &[u8] = br##"crate::rawbytes::K"##;
const C: char = '"';
const Q: char = '\'';
fn lifetimes<'a>(x: &'a str) -> &'a str { let _ = '{'; x }
use crate::real::L;
"####;
    assert_eq!(paths(src, &["m"]), ["real::L"]);
    // Lines survive the stripping, so reported lines are right.
    assert_eq!(strip(src).lines().count(), src.lines().count());
    let l = imports(src, &["m".to_owned()]);
    assert_eq!(l[0].line, 12);
}

#[test]
fn a_small_tree_resolves_to_the_deepest_file_and_finds_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x/src");
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\nmod c;\n");
    // a -> b::inner (a file) and b -> a via an item of a: a loop of two.
    write(
        "a/mod.rs",
        "pub mod leaf;\nuse crate::b::inner::{Thing, deeper::Item};\n",
    );
    write("a/leaf.rs", "use super::Local;\n");
    write(
        "b/mod.rs",
        "pub mod inner;\n#[path = \"other_name.rs\"]\npub mod renamed;\n",
    );
    write("b/inner.rs", "fn f() { crate::a::helper(); }\n");
    write("b/other_name.rs", "use crate::c::X;\n");
    write(
        "c.rs",
        "use crate::b::renamed::Y;\nuse crate::c::Z;\n#[cfg(test)]\nmod checks;\n",
    );
    // Test-only: neither a node nor an edge.
    write("c/checks.rs", "use crate::a::leaf::Everything;\n");
    // Separate crates: never read.
    write("main.rs", "use persona::a::X; use crate::b::inner::Q;\n");
    write("bin/tool.rs", "use crate::a::X;\n");

    let g = Graph::scan(dir.path(), "x/src").unwrap();
    let f = |s: &str| PathBuf::from(format!("x/src/{s}"));
    assert_eq!(g.files.len(), 7, "{:?}", g.files);
    assert!(!g.files.contains_key(&f("main.rs")));
    assert!(!g.files.contains_key(&f("c/checks.rs")));
    assert_eq!(g.files[&f("b/other_name.rs")], ["b", "renamed"]);
    let to = |from: &str| -> Vec<PathBuf> { g.edges[&f(from)].keys().cloned().collect() };
    assert_eq!(to("a/mod.rs"), [f("b/inner.rs")]);
    assert_eq!(to("a/leaf.rs"), [f("a/mod.rs")]);
    assert_eq!(to("b/inner.rs"), [f("a/mod.rs")]);
    // `mod` declarations are not imports; self-imports are left out.
    assert!(to("lib.rs").is_empty() && to("b/mod.rs").is_empty());
    assert_eq!(to("c.rs"), [f("b/other_name.rs")]);
    // b/other_name.rs <-> c.rs is a second loop.
    let shown: Vec<String> = g
        .cycles()
        .iter()
        .map(|c| {
            c.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect();
    assert_eq!(
        shown,
        [
            "x/src/a/mod.rs -> x/src/b/inner.rs -> x/src/a/mod.rs",
            "x/src/b/other_name.rs -> x/src/c.rs -> x/src/b/other_name.rs",
        ]
    );
    let report = g.describe_cycles();
    assert!(
        report.contains("x/src/a/mod.rs:2 uses crate::b::inner::Thing"),
        "{report}"
    );
    assert!(
        report.contains("x/src/b/inner.rs:1 uses crate::a::helper"),
        "{report}"
    );
}
