//! The shape of the source, checked: no two modules import each other (no import cycle at all), the
//! library prints nothing (what it does goes to an event sink; only the command line and the server's
//! log print), and progress bars are made in one place. The module graph is read from `src/` with a
//! small lexer: `use` items (brace groups expanded) and paths written in code (`crate::a::b`,
//! `super::x`, `pipe::...` in the binary), resolved to the module files they name, through the `pub
//! use` re-exports of a module. A parent's `pub use` of its own children declares its API and is not
//! an import. Unit-test modules (`#[cfg(test)] mod ... { }`) are left out: they may import anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: `lib::train::learner`, `bin::cli::train` (the binary's modules), as path segments.
type Module = Vec<String>;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src/` defines.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    let krate = match parts.first().map(String::as_str) {
        Some("main") | Some("cli") => "bin",
        _ => "lib",
    };
    if parts == ["main"] || parts == ["lib"] {
        parts.clear();
    }
    std::iter::once(krate.to_string()).chain(parts).collect()
}

/// `src` with comments, string and character literals blanked (replaced by spaces or an empty
/// literal), so that what remains is code.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char(b.get(i.wrapping_sub(1)).copied())
        {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// `code` without the unit-test modules (`#[cfg(test)]` followed by `mod name {`, to the matching
/// brace).
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = out[at + "#[cfg(test)]".len()..].trim_start();
        let is_mod = rest.starts_with("mod ") || rest.starts_with("pub(crate) mod ");
        let Some(open) = out[at..].find('{').map(|o| at + o) else {
            break;
        };
        if !is_mod || out[at..open].contains(';') {
            // Not a module (a test-only function or import): blank the attribute only.
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let mut depth = 0;
        let mut end = open;
        for (k, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// The paths of a `use` tree (`a::{b, c::{d, e as f}}` → `a::b`, `a::c::d`, `a::c::e`).
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        return vec![path.replace(' ', "")];
    };
    let close = tree.rfind('}').unwrap_or(tree.len());
    let prefix = tree[..open].replace(' ', "");
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, open + 1);
    for (k, ch) in tree[open + 1..close].char_indices() {
        let k = open + 1 + k;
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..close]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// One reference of a module to a path: from a `use` item (`public` for `pub use`) or from code.
struct Reference {
    path: String,
    public: bool,
}

/// The `use` items and the paths written in `code` outside them.
fn references(code: &str) -> Vec<Reference> {
    let mut refs = Vec::new();
    let mut spans = Vec::new();
    for (at, _) in code.match_indices("use") {
        let after = code[at + 3..].chars().next();
        if ident_char(code[..at].chars().last()) || ident_char(after) {
            continue;
        }
        let before = code[..at].trim_end();
        let public = ["pub", "pub(crate)", "pub(super)"]
            .iter()
            .any(|p| before.ends_with(p));
        if let Some(end) = code[at..].find(';') {
            for path in expand(&code[at + 3..at + end]) {
                refs.push(Reference { path, public });
            }
            spans.push(at..at + end);
        }
    }
    for root in ["crate::", "super::", "self::", "pipe::"] {
        for (at, _) in code.match_indices(root) {
            if ident_char(code[..at].chars().last()) || spans.iter().any(|s| s.contains(&at)) {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            refs.push(Reference {
                path: path.trim_end_matches(':').to_string(),
                public: false,
            });
        }
    }
    refs
}

struct Graph {
    modules: BTreeSet<Module>,
    /// Per module, the items it re-exports from another module (name → that module).
    reexports: BTreeMap<Module, BTreeMap<String, Module>>,
}

impl Graph {
    /// The module `path` (as written in module `m`) names: its longest prefix that is a module,
    /// followed through one re-export of the item after it. `None` for paths outside the crates
    /// (std, dependencies).
    fn resolve(&self, m: &Module, path: &str) -> Option<Module> {
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let (mut cur, rest): (Module, &[&str]) = match segs.first().copied() {
            Some("crate") => (vec![m[0].clone()], &segs[1..]),
            Some("pipe") => (vec!["lib".into()], &segs[1..]),
            Some("super") | Some("self") => {
                let mut base = m.clone();
                let mut k = 0;
                while let Some(s) = segs.get(k) {
                    match *s {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    k += 1;
                }
                (base, &segs[k..])
            }
            Some(first) => {
                let child: Module = m.iter().cloned().chain([first.to_string()]).collect();
                if !self.modules.contains(&child) {
                    return None;
                }
                (m.clone(), &segs[..])
            }
            None => return None,
        };
        for s in rest {
            let child: Module = cur.iter().cloned().chain([s.to_string()]).collect();
            if self.modules.contains(&child) {
                cur = child;
            } else {
                if let Some(t) = self.reexports.get(&cur).and_then(|r| r.get(*s)) {
                    cur = t.clone();
                }
                break;
            }
        }
        Some(cur)
    }
}

struct Source {
    graph: Graph,
    /// Per module, its file and its code (comments, literals and unit tests left out).
    code: BTreeMap<Module, (PathBuf, String)>,
    /// Per module, the modules it imports.
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

fn read_source() -> Source {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let code: BTreeMap<Module, (PathBuf, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            (
                module_of(&src, f),
                (f.clone(), without_test_modules(&code_only(&text))),
            )
        })
        .collect();
    let mut graph = Graph {
        modules: code.keys().cloned().collect(),
        reexports: BTreeMap::new(),
    };
    let refs: BTreeMap<Module, Vec<Reference>> = code
        .iter()
        .map(|(m, (_, c))| (m.clone(), references(c)))
        .collect();
    // Re-exports may chain (a parent re-exporting a child's re-export): resolve a few rounds.
    for _ in 0..3 {
        for (m, rs) in &refs {
            for r in rs.iter().filter(|r| r.public) {
                let Some((_, name)) = r.path.rsplit_once("::") else {
                    continue;
                };
                let own: Module = m.iter().cloned().chain([name.to_string()]).collect();
                if name == "*" || graph.modules.contains(&own) {
                    continue;
                }
                if let Some(t) = graph.resolve(m, &r.path).filter(|t| t != m) {
                    graph
                        .reexports
                        .entry(m.clone())
                        .or_default()
                        .insert(name.into(), t);
                }
            }
        }
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, rs) in &refs {
        for r in rs {
            let Some(t) = graph.resolve(m, &r.path) else {
                continue;
            };
            let own_api = r.public && t.starts_with(m);
            if t == *m || t.len() == 1 || own_api {
                continue;
            }
            edges.entry(m.clone()).or_default().insert(t);
        }
    }
    Source { graph, code, edges }
}

/// The groups of modules that import each other, directly or through others (Tarjan's strongly
/// connected components of more than one module).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        groups: Vec<Vec<Module>>,
    }
    fn visit(s: &mut State, v: &Module) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        for w in s.edges.get(v).cloned().unwrap_or_default() {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let lw = s.low[&w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                let done = w == *v;
                group.push(w);
                if done {
                    break;
                }
            }
            if group.len() > 1 {
                s.groups.push(group);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        groups: Vec::new(),
    };
    let nodes: BTreeSet<Module> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a.clone()).chain(bs.iter().cloned()))
        .collect();
    for v in &nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.groups
}

fn name(m: &Module) -> String {
    m.join("::")
}

#[test]
fn no_modules_import_each_other() {
    let s = read_source();
    // The reader sees the graph: modules that do import others.
    let learner: Module = ["lib", "train", "learner"].map(String::from).to_vec();
    let optim: Module = ["lib", "train", "optim"].map(String::from).to_vec();
    assert!(
        s.edges[&learner].contains(&optim),
        "{:?}",
        s.edges[&learner]
    );
    assert!(
        s.graph.modules.len() > 60,
        "{} modules",
        s.graph.modules.len()
    );
    let found: Vec<String> = cycles(&s.edges)
        .iter()
        .map(|group| {
            let members: BTreeSet<&Module> = group.iter().collect();
            let inner: Vec<String> = group
                .iter()
                .flat_map(|a| {
                    s.edges[a]
                        .iter()
                        .filter(|b| members.contains(b))
                        .map(move |b| format!("{} -> {}", name(a), name(b)))
                })
                .collect();
            inner.join(", ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "modules that import each other: {found:#?}"
    );
}

/// The checker finds a cycle where there is one, through a re-export and a `super::` path.
#[test]
fn the_checker_finds_a_two_module_cycle() {
    let code = without_test_modules(&code_only(
        "use super::b::{self, Thing as T}; // use crate::c;\nfn f() { let s = \"crate::d::x\"; super::e::go(); }\n#[cfg(test)]\nmod tests { use crate::z::Y; }",
    ));
    let paths: Vec<String> = references(&code).into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["super::b::self", "super::b::Thing", "super::e::go"]);
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let edges = BTreeMap::from([
        (m("lib::a"), BTreeSet::from([m("lib::b")])),
        (m("lib::b"), BTreeSet::from([m("lib::c")])),
        (m("lib::c"), BTreeSet::from([m("lib::a")])),
        (m("lib::d"), BTreeSet::from([m("lib::a")])),
    ]);
    let found = cycles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
    let graph = Graph {
        modules: [
            m("lib"),
            m("lib::infer"),
            m("lib::infer::classify"),
            m("lib::report"),
        ]
        .into_iter()
        .collect(),
        reexports: BTreeMap::from([(
            m("lib::infer"),
            BTreeMap::from([("classify".to_string(), m("lib::infer::classify"))]),
        )]),
    };
    assert_eq!(
        graph.resolve(&m("lib::report"), "crate::infer::classify::run"),
        Some(m("lib::infer::classify"))
    );
    assert_eq!(
        graph.resolve(&m("lib::infer::classify"), "super::super::report::argmax"),
        Some(m("lib::report"))
    );
    assert_eq!(graph.resolve(&m("lib::report"), "std::fmt"), None);
}

/// The library reports through events and prints nothing: `print!`, `println!`, `eprint!`,
/// `eprintln!` and `dbg!` appear only in the command line (`src/main.rs`, `src/cli/`), except the one
/// line of the test hook `pipe::util::pause_point`. The server logs
/// through `tracing`. Progress bars (indicatif) are made in one place, `src/cli/render.rs`.
#[test]
fn the_library_prints_nothing_and_one_place_makes_progress_bars() {
    let s = read_source();
    let mut printing = Vec::new();
    let mut bars = Vec::new();
    for (m, (file, code)) in &s.code {
        for mac in ["print!", "println!", "eprint!", "eprintln!", "dbg!"] {
            let mut hits = code
                .match_indices(mac)
                .filter(|(at, _)| !ident_char(code[..*at].chars().last()))
                .count();
            // The one exception: the test hook `pipe::util::pause_point` prints `paused at <point>`,
            // the line a test waits for (only when PIPE_TEST_PAUSE names that point).
            if file.ends_with("src/util.rs") && mac == "eprintln!" {
                hits = hits.saturating_sub(1);
            }
            if hits > 0 && m[0] == "lib" {
                printing.push(format!("{}: {hits} {mac}", file.display()));
            }
        }
        if code.contains("indicatif") && !file.ends_with("src/cli/render.rs") {
            bars.push(file.display().to_string());
        }
    }
    assert!(
        printing.is_empty(),
        "library code that prints: {printing:#?}"
    );
    assert!(
        bars.is_empty(),
        "progress bars made outside src/cli/render.rs: {bars:?}"
    );
    // The check sees printing where there is some: the command line prints.
    let cli = &s.code[&vec!["bin".to_string(), "cli".into(), "train".into()]].1;
    assert!(cli.contains("println!"));
}
