//! No module of a crate imports a module that imports it back (issue 17). The check reads
//! the sources: every `crate::` and `super::` path in a file (in `use` trees and inline)
//! is an edge from that file to the file of the longest module prefix it names, and a
//! cycle among those edges fails the test with the files and the edges that close it.
//!
//! A child naming its parent (`super::X` in `a/b.rs`) counts as an edge to `a/mod.rs`;
//! a parent's own `mod b;` and relative `b::X` paths do not (a parent always names its
//! children), so `mod.rs` files that only re-export stay loop-free. `super::` inside an
//! inline `#[cfg(test)] mod` names the file itself. What this is not: a Rust parser. It
//! strips comments and string literals line by line, which is enough for this code base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file defines (`a/b.rs` and `a/b/mod.rs` are `[a, b]`; `lib.rs` is `[]`),
/// or None for binaries.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main"] {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

/// The text without `//` comments and with string literals emptied.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut escaped = false;
        let mut prev = ' ';
        for c in line.chars() {
            if in_str {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_str = false;
                    out.push('"');
                }
                prev = c;
                continue;
            }
            if c == '/' && prev == '/' {
                out.pop();
                break;
            }
            if c == '"' {
                in_str = true;
            }
            out.push(c);
            prev = c;
        }
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Module>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{')
        && tree.ends_with('}')
    {
        let mut base = prefix.to_vec();
        base.extend(
            tree[..open]
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        let inner = &tree[open + 1..tree.len() - 1];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
        return;
    }
    let path = tree.split(" as ").next().unwrap_or("");
    let mut p = prefix.to_vec();
    p.extend(
        path.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    out.push(p);
}

/// `crate`/`super::super` as a module path, seen from `module`.
fn root(head: &str, module: &[String]) -> Module {
    if head == "crate" {
        return Vec::new();
    }
    let ups = head.matches("super").count();
    module[..module.len().saturating_sub(ups)].to_vec()
}

/// Every module path a file names through `crate::` or `super::`.
fn paths(module: &[String], text: &str) -> Vec<Module> {
    let mut text = code(text);
    // Inside an inline test module `super::` is this file: drop one level.
    let test_mod = text
        .match_indices("#[cfg(test)]")
        .map(|(i, _)| i)
        .find(|&i| {
            let after = text[i + "#[cfg(test)]".len()..].trim_start();
            after.starts_with("mod ")
                || after.starts_with("pub mod ")
                || after.starts_with("pub(crate) mod ")
        });
    if let Some(at) = test_mod {
        let (head, tail) = text.split_at(at);
        let mut fixed = String::with_capacity(tail.len());
        let mut rest = tail;
        while let Some(i) = rest.find("super::") {
            let before_ok = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !is_ident(c) && c != ':');
            fixed.push_str(&rest[..i]);
            fixed.push_str(if before_ok { "self::" } else { "super::" });
            rest = &rest[i + "super::".len()..];
        }
        fixed.push_str(rest);
        text = format!("{head}{}", fixed.replace("self::super::", "super::"));
    }
    let mut out = Vec::new();
    // `use` trees.
    let mut rest = text.as_str();
    while let Some(i) = rest.find("use ") {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        let after = &rest[i + 4..];
        rest = after;
        if !before_ok {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        let tree = after[..end].trim();
        for head in ["crate::", "super::super::", "super::"] {
            if let Some(t) = tree.strip_prefix(head) {
                let head = head.trim_end_matches("::");
                expand(&root(head, module), t, &mut out);
                break;
            }
        }
    }
    // Inline paths: `crate::a::b` and `super::a` (a `{` or `*` after the head is a use
    // tree, handled above).
    for head in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(head) {
            let at = from + i;
            from = at + head.len();
            if text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == ':')
            {
                continue;
            }
            let len: usize = text[from..]
                .chars()
                .take_while(|&c| is_ident(c) || c == ':')
                .map(char::len_utf8)
                .sum();
            let mut parts: Vec<String> = text[from..from + len]
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            let mut ups = usize::from(head == "super::");
            while parts.first().is_some_and(|p| p == "super") {
                parts.remove(0);
                ups += 1;
            }
            if parts.is_empty() {
                continue;
            }
            let mut p = if head == "crate::" {
                Vec::new()
            } else {
                module[..module.len().saturating_sub(ups)].to_vec()
            };
            p.extend(parts);
            out.push(p);
        }
    }
    out
}

/// The import graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(src, f).map(|m| (m, f.clone())))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut to = BTreeSet::new();
        for p in paths(module, &text) {
            let target = (0..=p.len())
                .rev()
                .map(|k| p[..k].to_vec())
                .find(|m| modules.contains_key(m));
            if let Some(t) = target
                && &t != module
            {
                to.insert(t);
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn loops(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.found.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("/")
    }
}

fn assert_no_loop(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src");
    let edges = graph(&src);
    assert!(edges.len() > 1, "no modules found under {}", src.display());
    let mut report = String::new();
    for comp in loops(&edges) {
        let members: BTreeSet<&Module> = comp.iter().collect();
        report += &format!(
            "loop: {}\n",
            comp.iter().map(name).collect::<Vec<_>>().join(" ")
        );
        for a in &comp {
            for b in edges[a].iter().filter(|b| members.contains(b)) {
                report += &format!("    {} -> {}\n", name(a), name(b));
            }
        }
    }
    assert!(
        report.is_empty(),
        "{crate_dir}/src has import loops:\n{report}"
    );
}

#[test]
fn the_checker_finds_a_loop_and_ignores_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "mod x;\npub use x::X;\n").expect("write");
    std::fs::write(
        src.join("a/x.rs"),
        "use crate::{b::{self, B}, c};\n// crate::a\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .expect("write");
    std::fs::write(src.join("b.rs"), "pub fn f() { crate::a::x::g(); }\n").expect("write");
    std::fs::write(src.join("c.rs"), "const S: &str = \"crate::a\";\n").expect("write");
    let edges = graph(src);
    let found: Vec<Vec<String>> = loops(&edges)
        .iter()
        .map(|c| c.iter().map(name).collect())
        .collect();
    assert_eq!(found, [vec!["a/x".to_owned(), "b".to_owned()]]);
}

#[test]
fn the_agent_has_no_import_loop() {
    assert_no_loop("agent");
}

#[test]
fn the_shared_crate_has_no_import_loop() {
    assert_no_loop("shared");
}
