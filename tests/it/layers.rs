//! The crate's layers, checked against the `use` lines of every source file: a module may import
//! from its own layer (without a circle) and from the layers below it, never from above; the EE
//! emulator imports nothing from the rest of the crate, so that it can disagree with the client.
//!
//! The table below is the picture in ARCHITECTURE.md; a new top-level module must be added to it
//! (the test fails on a module it does not know).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom up, and the top-level modules in each.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "grid",
            "period",
            "naming",
            "collection",
            "order",
            "recipe",
            "ingest",
        ],
    ),
    (
        "adapters",
        &["auth", "queue", "store", "metrics", "earthengine"],
    ),
    ("config", &["config"]),
    (
        "pipeline",
        &["jobs", "submit", "schedule", "document", "campaign"],
    ),
    ("runtime", &["worker", "web"]),
    ("front ends", &["main", "cli", "demo", "bench", "soak"]),
];

/// Self-contained: it may import only from itself.
const ISOLATED: &[&str] = &["emulator"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The top-level module a source file belongs to: `src/queue/tracking/redis.rs` → `queue`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty path");
    let first = first.as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file with comments removed (line comments, doc comments and block comments),
/// so that a doc link such as [`crate::jobs::poll`] is not taken for an import. String literals
/// are kept: a path inside one is rare and would only make the test stricter.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Every top-level module a file's code names through `root::` (`crate` in the library,
/// `cedar` in the binary), including inside `use root::{a, b::c}` groups.
fn imports(code: &str, root: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let prefix = format!("{root}::");
    let mut i = 0;
    while let Some(at) = code[i..].find(&prefix) {
        let start = i + at;
        i = start + prefix.len();
        // `foo_crate::x` or `self.crate::…` are not paths rooted at `root`.
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// Top-level module → the top-level modules it imports (itself excluded).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let binary = ["main", "cli", "demo", "bench", "soak"];
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "lib" {
            continue;
        }
        let code = without_comments(&std::fs::read_to_string(&file).expect("readable source"));
        let mut deps = imports(&code, "crate");
        if binary.contains(&module.as_str()) {
            // The binary reaches the library as `cedar::`, and its own modules as `crate::`.
            deps.extend(imports(&code, "cedar"));
        }
        deps.remove(&module);
        graph.entry(module).or_default().extend(deps);
    }
    graph
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let graph = module_graph();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        if ISOLATED.contains(&module.as_str()) {
            continue;
        }
        let Some(own) = layer_of(module) else {
            wrong.push(format!(
                "{module}: not in the layer table of tests/it/layers.rs"
            ));
            continue;
        };
        for dep in deps {
            match layer_of(dep) {
                Some(l) if l <= own => {}
                Some(l) => wrong.push(format!(
                    "{module} ({}) imports {dep} ({}), a layer above it",
                    LAYERS[own].0, LAYERS[l].0
                )),
                None if ISOLATED.contains(&dep.as_str()) && LAYERS[own].0 == "front ends" => {}
                None => wrong.push(format!("{module} imports {dep}, which no layer holds")),
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn modules_import_each_other_without_a_circle() {
    let graph = module_graph();
    // Depth-first search with colours: meeting a grey module again closes a circle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => return None,
            Some(false) => {
                let from = path.iter().position(|p| *p == m).expect("on the path");
                let mut circle: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
                circle.push(m.to_string());
                return Some(circle);
            }
            None => {}
        }
        state.insert(m, false);
        path.push(m);
        for dep in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(dep, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m, true);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut state, &mut Vec::new()) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
}

#[test]
fn the_emulator_imports_nothing_from_the_rest_of_the_crate() {
    let graph = module_graph();
    for m in ISOLATED {
        let deps = graph.get(*m).cloned().unwrap_or_default();
        assert!(deps.is_empty(), "{m} imports {deps:?}");
    }
}

#[test]
fn the_parser_sees_grouped_nested_and_inline_paths_but_not_comments() {
    let code = without_comments(
        "use crate::{a::B, c::{d, e}, self};\n\
         /// see [`crate::doc_only`]\n\
         let x = crate::f::g(); /* crate::block */ my_crate::h();\n",
    );
    let found: Vec<String> = imports(&code, "crate").into_iter().collect();
    assert_eq!(found, ["a", "c", "f"]);
}
