//! The module import graph of a crate's `src/`, read from the source text, and its loops.
//!
//! What it is for: the layer rules of docs/architecture.md and issue 17 ("no module
//! imports a module that imports it back") checked mechanically, by `tests/tests/layers.rs`.
//! Every `.rs` file is a module (`foo.rs` and `foo/mod.rs` are `crate::foo`, `foo/bar.rs`
//! is `crate::foo::bar`, `#[path]` is followed); `main.rs` and `src/bin/` are crates of
//! their own and are left out. An import is every `crate::...` and `super::...` path, in a
//! `use` (grouped trees included) or inline (`crate::a::f()`); it points to the deepest
//! module that is a file. Comments and string literals are blanked first. Test-only code
//! (`#[cfg(test)] mod tests { ... }`, `#[cfg(test)] use`, files declared with
//! `#[cfg(test)] mod x;`) is not part of the layers and is left out.
//!
//! What it is not: a Rust parser. Paths that start with a child module's name or
//! `self::` are not followed, so a directory's `mod.rs` re-exporting its own children is
//! not counted; `mod child;` declarations are not imports; macros are not expanded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module path below `crate`, e.g. `["engine", "cost"]`; empty for the crate root.
pub type ModPath = Vec<String>;

/// One import found in a file: the path as written (made absolute) and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Absolute module path of the item named (`crate` left out).
    pub path: ModPath,
    /// 1-based line of the path's first segment.
    pub line: usize,
}

/// The modules of one crate and the imports between their files.
#[derive(Debug, Default)]
pub struct Graph {
    /// What the crate is called in reports (e.g. `coordinator/src`).
    pub name: String,
    /// Module path of each file, by the file's path relative to the workspace root.
    pub files: BTreeMap<PathBuf, ModPath>,
    /// file -> imported file -> where (first line, path as resolved).
    pub edges: BTreeMap<PathBuf, BTreeMap<PathBuf, (usize, String)>>,
}

/// Replaces comments and the contents of string, byte-string, raw-string and char
/// literals by spaces (newlines kept, so line numbers hold). Lifetimes stay.
pub fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in out.iter_mut().take(to.min(c.len())).skip(from) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            let end = c[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(c.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c[i] == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == 'r'
            && (i == 0
                || !ident(c[i - 1])
                || (matches!(c[i - 1], 'b' | 'c') && (i < 2 || !ident(c[i - 2]))))
            && matches!(next, Some('#' | '"'))
        {
            // r"..." or r#"..."#: ends at a quote followed by as many hashes.
            let hashes = c[i + 1..].iter().take_while(|&&x| x == '#').count();
            let open = i + 1 + hashes;
            if c.get(open) != Some(&'"') {
                i += 1; // r#ident, a raw identifier
                continue;
            }
            let mut j = open + 1;
            while j < c.len() {
                if c[j] == '"'
                    && c[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&x| x == '#')
                        .count()
                        == hashes
                {
                    break;
                }
                j += 1;
            }
            blank(&mut out, open + 1, j);
            i = j + 1 + hashes;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else if c[i] == '\'' {
            // A char literal ('a', '\n', '\u{1F600}', '\''), or else a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 1;
                while j < c.len() && c[j] != '\'' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            } else if c.get(i + 2) == Some(&'\'') {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

fn tokens(stripped: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = stripped.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// A path as written: its segments (`crate`, `super`, names) and the line it starts on.
type RawPath = (Vec<String>, usize);

/// Parses a use tree starting at `toks[i]` with `prefix` before it; pushes every leaf
/// path and returns the index after the tree.
fn use_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &RawPath,
    out: &mut Vec<RawPath>,
) -> usize {
    let mut path = prefix.clone();
    loop {
        match toks.get(i) {
            Some((Tok::Ident(s), _)) if s == "as" => {
                // `as alias`: the alias is not part of the path.
                out.push(path);
                return i + 2;
            }
            Some((Tok::Ident(s), line)) => {
                if path.0.is_empty() {
                    path.1 = *line;
                }
                path.0.push(s.clone());
                i += 1;
            }
            Some((Tok::Punct('{'), _)) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some((Tok::Punct('}'), _)) => return i + 1,
                        Some((Tok::Punct(','), _)) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, &path, out),
                    }
                }
            }
            Some((Tok::Punct('*'), _)) => {
                out.push(path);
                return i + 1;
            }
            Some((Tok::Sep, _)) => i += 1,
            _ => {
                if !path.0.is_empty() {
                    out.push(path);
                }
                return i;
            }
        }
    }
}

/// Whether the item starting at `toks[i]` (after its visibility) carries an attribute
/// `#[cfg(test)]` (or another `cfg` naming `test`, but not `not(test)`).
fn test_gated(toks: &[(Tok, usize)], i: usize) -> bool {
    let mut j = i;
    // Visibility first: `pub`, `pub(crate)`, `pub(in a::b)`.
    if j > 0 && toks[j - 1].0 == Tok::Punct(')') {
        if let Some(open) = toks[..j].iter().rposition(|t| t.0 == Tok::Punct('('))
            && open > 0
            && toks[open - 1].0 == Tok::Ident("pub".into())
        {
            j = open - 1;
        }
    } else if j > 0 && toks[j - 1].0 == Tok::Ident("pub".into()) {
        j -= 1;
    }
    // Then the attributes, last to first.
    while j > 0 && toks[j - 1].0 == Tok::Punct(']') {
        let mut depth = 0;
        let mut k = j - 1;
        loop {
            match toks[k].0 {
                Tok::Punct(']') => depth += 1,
                Tok::Punct('[') => depth -= 1,
                _ => {}
            }
            if depth == 0 || k == 0 {
                break;
            }
            k -= 1;
        }
        if k == 0 || toks[k - 1].0 != Tok::Punct('#') {
            return false;
        }
        let inner = &toks[k + 1..j - 1];
        let has = |w: &str| inner.iter().any(|t| t.0 == Tok::Ident(w.into()));
        if inner
            .first()
            .is_some_and(|t| t.0 == Tok::Ident("cfg".into()))
            && has("test")
            && !has("not")
        {
            return true;
        }
        j = k - 1;
    }
    false
}

/// What one file says about its imports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileScan {
    /// Every `crate::` and `super::` path outside test-only code.
    pub imports: Vec<Import>,
    /// Child modules declared as files under `#[cfg(test)]` (`#[cfg(test)] mod x;`).
    pub test_children: Vec<String>,
}

/// Every `crate::` and `super::` path of a file, made absolute against `module` (the
/// file's own module path), with inline `mod name { ... }` blocks taken into account.
/// Test-only code (`#[cfg(test)] mod tests { ... }`, `#[cfg(test)] use ...`) is not part
/// of the layers and is left out.
pub fn imports(src: &str, module: &[String]) -> Vec<Import> {
    scan_file(src, module).imports
}

/// [`imports`], and the test-only child modules a file declares.
pub fn scan_file(src: &str, module: &[String]) -> FileScan {
    let toks = tokens(&strip(src));
    let mut raw: Vec<(RawPath, ModPath)> = Vec::new();
    let mut test_children = Vec::new();
    // Inline modules: name, brace depth inside them, test-only.
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let here = |inline: &[(String, usize, bool)]| -> ModPath {
        module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _, _)| n.clone()))
            .collect()
    };
    let in_test = |inline: &[(String, usize, bool)]| inline.last().is_some_and(|m| m.2);
    let ident = |i: usize| match toks.get(i) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(s) if s == "mod" => {
                // `mod name { ... }` opens an inline module; `mod name;` declares a file.
                let test = in_test(&inline) || test_gated(&toks, i);
                match (ident(i + 1), toks.get(i + 2)) {
                    (Some(name), Some((Tok::Punct('{'), _))) => {
                        depth += 1;
                        inline.push((name.to_owned(), depth, test));
                        i += 3;
                    }
                    (Some(name), Some((Tok::Punct(';'), _))) => {
                        if test {
                            test_children.push(name.to_owned());
                        }
                        i += 3;
                    }
                    _ => i += 1,
                }
            }
            Tok::Ident(s)
                if s == "pub" && toks.get(i + 1).is_some_and(|t| t.0 == Tok::Punct('(')) =>
            {
                // Visibility (`pub(crate)`, `pub(in crate::a)`) names no import.
                let close = toks[i..].iter().position(|t| t.0 == Tok::Punct(')'));
                i += close.map_or(1, |p| p + 1);
            }
            Tok::Ident(s) if s == "use" => {
                let mut found = Vec::new();
                let test = in_test(&inline) || test_gated(&toks, i);
                i = use_tree(&toks, i + 1, &(Vec::new(), toks[i].1), &mut found);
                if !test {
                    let at = here(&inline);
                    raw.extend(found.into_iter().map(|p| (p, at.clone())));
                }
            }
            Tok::Ident(s)
                if (s == "crate" || s == "super")
                    && toks.get(i + 1).is_some_and(|t| t.0 == Tok::Sep)
                    && (i == 0 || toks[i - 1].0 != Tok::Sep) =>
            {
                let line = toks[i].1;
                let mut segs = vec![s.clone()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|t| t.0 == Tok::Sep) {
                    match ident(j + 1) {
                        Some(n) => segs.push(n.to_owned()),
                        None => break,
                    }
                    j += 2;
                }
                if !in_test(&inline) {
                    raw.push(((segs, line), here(&inline)));
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    let imports = raw
        .into_iter()
        .filter_map(|((segs, line), at)| absolute(&segs, &at).map(|path| Import { path, line }))
        .collect();
    FileScan {
        imports,
        test_children,
    }
}

/// `crate::a::b` -> `[a, b]`; `super::x` against `at` -> parent of `at` + `[x]`; a
/// trailing `self` (from `use a::{self}`) is dropped. None for other paths.
fn absolute(segs: &[String], at: &[String]) -> Option<ModPath> {
    let (mut base, rest): (ModPath, &[String]) = match segs.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &segs[1..]),
        Some("super") => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let mut b = at.to_vec();
            for _ in 0..ups {
                b.pop()?;
            }
            (b, &segs[ups..])
        }
        _ => return None,
    };
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// `#[path = "file.rs"] mod name;` declarations of a file, as (file, name).
fn path_attributes(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending: Option<String> = None;
    for line in src.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#[path") {
            pending = rest.split('"').nth(1).map(str::to_owned);
            continue;
        }
        if let Some(file) = pending.take() {
            let decl = line
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                out.push((file, name.trim().to_owned()));
            } else if line.starts_with("#[") {
                pending = Some(file);
            }
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            rs_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// The module path a file would have by its place in `src` (None: not a library module).
fn natural_module(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main.rs"] {
        return None;
    }
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => {}
        "mod.rs" => {}
        _ => parts.push(last.strip_suffix(".rs")?.to_owned()),
    }
    Some(parts)
}

impl Graph {
    /// Reads every library module of the crate whose sources are at `root/src_rel`.
    pub fn scan(root: &Path, src_rel: &str) -> std::io::Result<Graph> {
        let src = root.join(src_rel);
        let mut all = Vec::new();
        rs_files(&src, &mut all)?;
        all.sort();
        let mut modules: BTreeMap<PathBuf, ModPath> = BTreeMap::new();
        let mut texts: BTreeMap<PathBuf, String> = BTreeMap::new();
        for f in &all {
            if let Some(m) = natural_module(&src, f) {
                modules.insert(f.clone(), m);
                texts.insert(f.clone(), std::fs::read_to_string(f)?);
            }
        }
        // `#[path]` gives a file the declared module's name instead of its own.
        let declared: Vec<(PathBuf, ModPath)> = texts
            .iter()
            .flat_map(|(f, text)| {
                let m = modules[f].clone();
                let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
                path_attributes(text).into_iter().map(move |(file, name)| {
                    let mut p = m.clone();
                    p.push(name);
                    (dir.join(file), p)
                })
            })
            .collect();
        for (f, p) in declared {
            if let Some(m) = modules.get_mut(&f) {
                *m = p;
            }
        }
        // Files that exist only under `#[cfg(test)]` are tests, not layers.
        let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
        for (f, text) in &texts {
            for name in scan_file(text, &modules[f]).test_children {
                let mut p = modules[f].clone();
                p.push(name);
                test_only.insert(p);
            }
        }
        modules.retain(|_, m| !test_only.iter().any(|t| m.starts_with(t)));
        let by_module: BTreeMap<&ModPath, &PathBuf> = modules.iter().map(|(f, m)| (m, f)).collect();
        let rel = |f: &Path| f.strip_prefix(root).unwrap_or(f).to_path_buf();
        let mut g = Graph {
            name: src_rel.to_owned(),
            ..Graph::default()
        };
        for (f, m) in &modules {
            let from = rel(f);
            g.files.insert(from.clone(), m.clone());
            let out = g.edges.entry(from.clone()).or_default();
            for imp in imports(&texts[f], m) {
                // The deepest module on the path that is a file; the root at worst.
                let target = (0..=imp.path.len())
                    .rev()
                    .find_map(|n| by_module.get(&imp.path[..n].to_vec()).copied());
                let Some(target) = target.map(|t| rel(t)) else {
                    continue;
                };
                if target != from {
                    let shown = std::iter::once("crate")
                        .chain(imp.path.iter().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join("::");
                    out.entry(target).or_insert((imp.line, shown));
                }
            }
        }
        Ok(g)
    }

    /// Strongly connected sets of more than one file (each holds at least one loop).
    pub fn tangles(&self) -> Vec<Vec<PathBuf>> {
        // Tarjan's algorithm; it recurses at most as deep as there are files.
        struct T<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a PathBuf, usize>,
            low: BTreeMap<&'a PathBuf, usize>,
            stack: Vec<&'a PathBuf>,
            on: BTreeSet<&'a PathBuf>,
            out: Vec<Vec<PathBuf>>,
        }
        fn visit<'a>(t: &mut T<'a>, v: &'a PathBuf) {
            let n = t.index.len();
            t.index.insert(v, n);
            t.low.insert(v, n);
            t.stack.push(v);
            t.on.insert(v);
            let g = t.g;
            for w in g.edges.get(v).into_iter().flat_map(BTreeMap::keys) {
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
                let mut set = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on.remove(w);
                    set.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    t.out.push(set);
                }
            }
        }
        let mut t = T {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            out: Vec::new(),
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v) {
                visit(&mut t, v);
            }
        }
        t.out.sort();
        t.out
    }

    /// The loops to break: for every import that lies on a loop, the shortest loop
    /// through it, each written once, as `a.rs -> b.rs -> a.rs`.
    pub fn cycles(&self) -> Vec<Vec<PathBuf>> {
        let mut seen: BTreeSet<Vec<PathBuf>> = BTreeSet::new();
        let mut out = Vec::new();
        for set in self.tangles() {
            let inside: BTreeSet<&PathBuf> = set.iter().collect();
            for u in &set {
                for v in self.edges[u].keys().filter(|v| inside.contains(v)) {
                    // u, then the way back from v to u (without u a second time).
                    let Some(mut path) = self.shortest(v, u, &inside) else {
                        continue;
                    };
                    path.pop();
                    path.insert(0, u.clone());
                    // One spelling per loop: start at its smallest file.
                    let k = (0..path.len()).min_by_key(|&i| &path[i]).unwrap_or(0);
                    path.rotate_left(k);
                    if seen.insert(path.clone()) {
                        let mut shown = path.clone();
                        shown.push(path[0].clone());
                        out.push(shown);
                    }
                }
            }
        }
        out
    }

    /// Breadth-first path from `from` to `to` within `inside`, both ends included.
    fn shortest(
        &self,
        from: &PathBuf,
        to: &PathBuf,
        inside: &BTreeSet<&PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        let mut prev: BTreeMap<&PathBuf, &PathBuf> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        let mut reached = BTreeSet::from([from]);
        while let Some(x) = queue.pop_front() {
            if x == to {
                let mut path = vec![x.clone()];
                let mut cur = x;
                while let Some(p) = prev.get(cur) {
                    path.push((*p).clone());
                    cur = p;
                }
                path.reverse();
                return Some(path);
            }
            for y in self.edges[x].keys().filter(|y| inside.contains(y)) {
                if reached.insert(y) {
                    prev.insert(y, x);
                    queue.push_back(y);
                }
            }
        }
        None
    }

    /// `a.rs -> b.rs -> a.rs`, one loop a line, each step with the line that imports.
    pub fn describe_cycles(&self) -> String {
        let mut s = String::new();
        let tangles = self.tangles();
        let _ = writeln!(
            s,
            "{}: {} file(s) in {} tangle(s), {} loop(s) to break",
            self.name,
            tangles.iter().map(Vec::len).sum::<usize>(),
            tangles.len(),
            self.cycles().len()
        );
        for t in &tangles {
            let names: Vec<String> = t.iter().map(|p| p.display().to_string()).collect();
            let _ = writeln!(s, "  tangle of {}: {}", t.len(), names.join(", "));
        }
        for c in self.cycles() {
            let names: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
            let _ = writeln!(s, "  {}", names.join(" -> "));
            for w in c.windows(2) {
                let (line, path) = &self.edges[&w[0]][&w[1]];
                let _ = writeln!(s, "      {}:{line} uses {path}", w[0].display());
            }
        }
        s
    }

    /// Every file's imports (file -> files it imports, with the first line of each).
    pub fn describe_imports(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}: imports per module", self.name);
        for (f, out) in &self.edges {
            let m = std::iter::once("crate")
                .chain(self.files[f].iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("::");
            let _ = writeln!(s, "  {} ({m})", f.display());
            for (to, (line, path)) in out {
                let _ = writeln!(s, "      -> {} (line {line}: {path})", to.display());
            }
        }
        s
    }
}
