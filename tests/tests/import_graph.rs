//! No import circles inside a crate.
//!
//! Each crate's module graph is drawn from its sources: a module (a file under `src/`,
//! `src/bin` excluded: binaries are crates of their own) points at every module whose path
//! it names — `use crate::…`, `use super::…`, `use self::…`, `use <child module>::…` (brace
//! groups expanded) and `crate::…` / `super::…` / `<child module>::…` paths in code. A path
//! goes to the longest module prefix it names (`crate::store::keys::X` is `store` when `keys`
//! is an inline module of `store.rs`); inline modules (`mod tests { … }`) belong to their
//! file, so `use super::*` in a test module is no edge. Declaring a child (`mod x;`) is
//! containment, not an import; a re-export (`pub use x::Y`) is an import. The graph is
//! checked twice: file by file, and with each folder module (`push/`, `dashboard/`) read as
//! one. Test code counts: a circle through a test helper is still a circle for whoever reads
//! the files.
//!
//! Run: `cargo test -p spacesync-tests --test import_graph -- --nocapture`
//! (prints each crate's modules and imports, and every circle with the line of each
//! import). An import may be left out, with its reason, in [`ALLOWED`] (none is now).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside its crate (`[]` is the crate root).
type ModPath = Vec<String>;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every module file under `src`, by module path.
fn module_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<ModPath, PathBuf>, top: bool) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            panic!("cannot read {}", dir.display());
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if p.is_dir() {
                if top && name == "bin" {
                    continue;
                }
                let mut sub = prefix.to_vec();
                sub.push(name);
                walk(&p, &sub, out, false);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let m = match stem {
                    "lib" | "main" if top => prefix.to_vec(),
                    "mod" => prefix.to_vec(),
                    _ => {
                        let mut m = prefix.to_vec();
                        m.push(stem.to_string());
                        m
                    }
                };
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out, true);
    out
}

/// A token of Rust source with comments, strings and character literals removed.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Tokens with their line numbers. Good enough for `use` lines and paths: literals and
/// comments vanish, lifetimes are not mistaken for character literals.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let n = c.len();
    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
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
        } else if ch == '"' {
            i += 1;
            while i < n && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // Raw and byte strings: r"…", r#"…"#, b"…", br#"…"#.
            if matches!(word.as_str(), "r" | "br" | "b" | "rb")
                && i < n
                && (c[i] == '"' || (c[i] == '#' && word.contains('r')))
            {
                let mut hashes = 0;
                while i < n && c[i] == '#' {
                    hashes += 1;
                    i += 1;
                }
                if c.get(i) != Some(&'"') {
                    out.push((Tok::Ident(word), line));
                    continue;
                }
                i += 1;
                let raw = word.contains('r');
                loop {
                    if i >= n {
                        break;
                    }
                    if c[i] == '\n' {
                        line += 1;
                    }
                    if !raw && c[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                        i += 1 + hashes;
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            if word == "b" && c.get(i) == Some(&'\'') {
                continue; // b'x': the quote is handled next round
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The paths a `use` tree names, each with the line it is on (`a::{b, c::d}` gives `a::b`
/// and `a::c::d`; `self` inside braces names the prefix).
fn use_paths(toks: &[(Tok, usize)]) -> Vec<(Vec<String>, usize)> {
    fn tree(
        toks: &[(Tok, usize)],
        i: &mut usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, usize)>,
    ) {
        let mut path = prefix.to_vec();
        let mut line = toks.get(*i).map(|t| t.1).unwrap_or(0);
        while let Some((t, l)) = toks.get(*i) {
            match t {
                Tok::Ident(w) if w == "as" => {
                    *i += 2; // `as name`
                }
                Tok::Ident(w) => {
                    if path.len() == prefix.len() {
                        line = *l;
                    }
                    if !(w == "self" && !prefix.is_empty() && path.len() == prefix.len()) {
                        path.push(w.clone());
                    }
                    *i += 1;
                }
                Tok::Path => *i += 1,
                Tok::Punct('{') => {
                    *i += 1;
                    loop {
                        tree(toks, i, &path, out);
                        match toks.get(*i) {
                            Some((Tok::Punct(','), _)) => *i += 1,
                            Some((Tok::Punct('}'), _)) => {
                                *i += 1;
                                break;
                            }
                            _ => break,
                        }
                    }
                    return;
                }
                Tok::Punct('*') => {
                    *i += 1;
                }
                _ => break,
            }
        }
        if path.len() > prefix.len() || !prefix.is_empty() {
            out.push((path, line));
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    tree(toks, &mut i, &[], &mut out);
    out
}

/// One import: from a module to a module, first seen at `file:line`.
#[derive(Debug, Clone)]
struct Edge {
    to: ModPath,
    at: String,
}

/// The edges out of one module file.
fn edges_of(
    module: &ModPath,
    file: &Path,
    known: &BTreeMap<ModPath, PathBuf>,
    rel: &Path,
) -> Vec<Edge> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let toks = tokens(&text);
    let shown = file.strip_prefix(rel).unwrap_or(file).display().to_string();
    // Child modules of this file (declared with `mod x;` or present as files).
    let children: BTreeSet<String> = known
        .keys()
        .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
        .filter_map(|k| k.last().cloned())
        .collect();
    let mut out = Vec::new();
    // Inline-module depth: at depth d, `super` first leaves the inline modules.
    let mut inline_depth = 0usize;
    let mut brace_stack: Vec<bool> = Vec::new(); // true: this brace opened an inline mod
    let resolve = |segs: &[String], inline_depth: usize| -> Option<ModPath> {
        let mut base: ModPath;
        let mut rest = segs;
        match segs.first().map(String::as_str) {
            Some("crate") => {
                base = Vec::new();
                rest = &segs[1..];
            }
            Some("self") => {
                base = module.clone();
                rest = &segs[1..];
            }
            Some("super") => {
                base = module.clone();
                let mut ups: usize = 0;
                while rest.first().map(String::as_str) == Some("super") {
                    ups += 1;
                    rest = &rest[1..];
                }
                // Leaving inline modules stays in this file.
                let file_ups = ups.saturating_sub(inline_depth);
                for _ in 0..file_ups {
                    base.pop()?;
                }
            }
            Some(first) if children.contains(first) => {
                base = module.clone();
            }
            _ => return None,
        }
        // The longest known module prefix.
        let mut best = base.clone();
        let mut cur = base;
        for s in rest {
            cur.push(s.clone());
            if known.contains_key(&cur) {
                best = cur.clone();
            }
        }
        Some(best)
    };
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = &toks[i];
        let prev = if i > 0 { Some(&toks[i - 1].0) } else { None };
        match t {
            Tok::Ident(w) if w == "mod" => {
                if let (Some((Tok::Ident(_), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline_depth += 1;
                    brace_stack.push(true);
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" && prev != Some(&Tok::Path) => {
                let end = toks[i..]
                    .iter()
                    .position(|(t, _)| *t == Tok::Punct(';'))
                    .map(|p| i + p)
                    .unwrap_or(toks.len());
                let body = &toks[i + 1..end];
                // `use ::x` is an external crate.
                if body.first().map(|t| &t.0) != Some(&Tok::Path) {
                    for (segs, l) in use_paths(body) {
                        if let Some(to) = resolve(&segs, inline_depth) {
                            out.push(Edge {
                                to,
                                at: format!("{shown}:{l}"),
                            });
                        }
                    }
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(w)
                if (w == "crate" || w == "super" || children.contains(w))
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path)
                    && prev != Some(&Tok::Path)
                    && prev != Some(&Tok::Punct('$'))
                    && prev != Some(&Tok::Ident("in".into())) =>
            {
                let mut segs = vec![w.clone()];
                let mut j = i + 1;
                while let (Some((Tok::Path, _)), Some((Tok::Ident(s), _))) =
                    (toks.get(j), toks.get(j + 1))
                {
                    segs.push(s.clone());
                    j += 2;
                }
                if let Some(to) = resolve(&segs, inline_depth) {
                    out.push(Edge {
                        to,
                        at: format!("{shown}:{line}"),
                    });
                }
                i = j;
                continue;
            }
            Tok::Punct('{') => brace_stack.push(false),
            Tok::Punct('}') if brace_stack.pop() == Some(true) => inline_depth -= 1,
            _ => {}
        }
        i += 1;
    }
    out.retain(|e| e.to != *module);
    out
}

/// A crate's module graph: for each module, the modules it imports and where.
struct Graph {
    name: String,
    edges: BTreeMap<ModPath, BTreeMap<ModPath, String>>,
}

fn graph(name: &str, src: &str) -> Graph {
    let root = root();
    let src = root.join(src);
    let known = module_files(&src);
    let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, String>> = BTreeMap::new();
    for (m, file) in &known {
        let out = edges.entry(m.clone()).or_default();
        for e in edges_of(m, file, &known, &root) {
            out.entry(e.to).or_insert(e.at);
        }
    }
    Graph {
        name: name.to_string(),
        edges,
    }
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "(crate root)".to_string()
    } else {
        m.join("::")
    }
}

/// Every circle, one per strongly connected component, as `a → b → … → a` with the line
/// of each import.
fn circles(g: &Graph) -> Vec<String> {
    // Tarjan's strongly connected components.
    struct T<'a> {
        g: &'a BTreeMap<ModPath, BTreeMap<ModPath, String>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        on: BTreeSet<&'a ModPath>,
        stack: Vec<&'a ModPath>,
        next: usize,
        sccs: Vec<Vec<&'a ModPath>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            if let Some(out) = self.g.get(v) {
                for w in out.keys() {
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low[v];
                        self.low.insert(v, lv.min(lw));
                    } else if self.on.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low[v];
                        self.low.insert(v, lv.min(iw));
                    }
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    self.sccs.push(scc);
                }
            }
        }
    }
    let mut t = T {
        g: &g.edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in g.edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    let mut out = Vec::new();
    for scc in t.sccs {
        let members: BTreeSet<&ModPath> = scc.iter().copied().collect();
        let Some(start) = members.iter().next().copied() else {
            continue;
        };
        // Shortest way from start back to start inside the component.
        let mut prev: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut found = None;
        while let Some(v) = queue.pop_front() {
            for w in g.edges.get(v).into_iter().flat_map(|o| o.keys()) {
                if !members.contains(w) {
                    continue;
                }
                if w == start {
                    found = Some(v);
                    break;
                }
                if !prev.contains_key(w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some(last) = found else { continue };
        let mut path = vec![last];
        while let Some(p) = prev.get(path[path.len() - 1]) {
            path.push(p);
        }
        path.reverse(); // start, …, last
        let mut s = show(start);
        for w in path.windows(2).map(|w| (w[0], w[1])).chain([(last, start)]) {
            let at = &g.edges[w.0][w.1];
            s.push_str(&format!(" → {} ({at})", show(w.1)));
        }
        if members.len() > path.len() {
            let others: Vec<String> = members
                .iter()
                .filter(|m| !path.contains(m))
                .map(|m| show(m))
                .collect();
            s.push_str(&format!("; also in this knot: {}", others.join(", ")));
        }
        out.push(s);
    }
    out
}

/// Imports left out of the graph, each with why and until when. The check fails when one
/// is no longer there, so this list cannot outlive its reason.
const ALLOWED: &[(&str, &str, &str, &str)] = &[];

fn check(name: &str, src: &str) {
    let mut g = graph(name, src);
    for (krate, from, to, why) in ALLOWED.iter().filter(|a| a.0 == name) {
        let from: ModPath = from.split("::").map(str::to_string).collect();
        let to: ModPath = to.split("::").map(str::to_string).collect();
        let removed = g.edges.get_mut(&from).and_then(|out| out.remove(&to));
        let Some(at) = removed else {
            panic!(
                "{krate}: the allowed import {} → {} is gone; remove it from ALLOWED",
                show(&from),
                show(&to)
            );
        };
        println!(
            "{krate}: leaving out {} → {} ({at}): {why}",
            show(&from),
            show(&to)
        );
    }
    // Modules in folders (`push/`, `dashboard/`) are also read as one: no circle between
    // top-level modules either.
    let mut top: BTreeMap<ModPath, BTreeMap<ModPath, String>> = BTreeMap::new();
    for (from, out) in &g.edges {
        let f: ModPath = from.iter().take(1).cloned().collect();
        let entry = top.entry(f.clone()).or_default();
        for (to, at) in out {
            let t: ModPath = to.iter().take(1).cloned().collect();
            if t != f {
                entry.entry(t).or_insert_with(|| at.clone());
            }
        }
    }
    let top = Graph {
        name: format!("{name} (top-level modules)"),
        edges: top,
    };
    let mut found = circles(&g);
    if g.edges.len() != top.edges.len() {
        let file_level = found.clone();
        found.extend(
            circles(&top)
                .into_iter()
                .filter(|c| !file_level.contains(c))
                .map(|c| format!("between top-level modules: {c}")),
        );
    }
    let n_edges: usize = g.edges.values().map(BTreeMap::len).sum();
    println!(
        "{}: {} modules, {n_edges} imports, {} circle(s)",
        g.name,
        g.edges.len(),
        found.len()
    );
    for c in &found {
        println!("  circle: {c}");
    }
    assert!(
        found.is_empty(),
        "import circles in {}:\n  {}",
        g.name,
        found.join("\n  ")
    );
}

#[test]
fn the_agent_has_no_import_circle() {
    check("agent", "agent/src");
}

#[test]
fn shared_has_no_import_circle() {
    check("shared", "shared/src");
}

#[test]
fn the_http_edge_has_no_import_circle() {
    check("shared/http", "shared/http/src");
}

#[test]
fn the_hub_has_no_import_circle() {
    check("hub", "hub/src");
}

#[test]
fn the_reader_sees_what_it_should() {
    // Brace groups, renames, `self` in a group, paths in code, inline modules, literals.
    let dir = std::env::temp_dir().join(format!("import-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("m")).expect("temp dir");
    for f in [
        "lib.rs", "a.rs", "c.rs", "h.rs", "j.rs", "k.rs", "x.rs", "z.rs",
    ] {
        std::fs::write(dir.join(f), "").expect("write");
    }
    std::fs::write(dir.join("m/mod.rs"), "").expect("write");
    std::fs::write(dir.join("m/f.rs"), "").expect("write");
    let src = r##"use crate::{a::{self, B}, c::D as E};
use super::f::*;
fn g() { let s = "crate::x::y"; let r = r#"crate::z"#; crate::h::i(); 'a'; }
mod tests { use super::*; use super::super::j; }
pub(in crate::k) fn l() {}
"##;
    std::fs::write(dir.join("m/g.rs"), src).expect("write");
    let known = module_files(&dir);
    let g: ModPath = vec!["m".to_string(), "g".to_string()];
    let edges = edges_of(&g, &dir.join("m/g.rs"), &known, &dir);
    let got: BTreeSet<String> = edges
        .iter()
        .map(|e| format!("{} {}", show(&e.to), e.at))
        .collect();
    let want: BTreeSet<String> = [
        "a m/g.rs:1",
        "c m/g.rs:1",
        "m::f m/g.rs:2",
        "h m/g.rs:3",
        "m m/g.rs:4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
    // A folder module naming its child in code; a re-export is an import too.
    std::fs::write(
        dir.join("m/mod.rs"),
        "mod f;\npub use f::X;\nfn y() { f::z(); }\n",
    )
    .expect("write");
    let m: ModPath = vec!["m".to_string()];
    let edges = edges_of(&m, &dir.join("m/mod.rs"), &known, &dir);
    let got: BTreeSet<String> = edges
        .iter()
        .map(|e| format!("{} {}", show(&e.to), e.at))
        .collect();
    let want: BTreeSet<String> = ["m::f m/mod.rs:2", "m::f m/mod.rs:3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, want);
}
