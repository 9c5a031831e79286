//! The layering of `src/` (design.md, "Imports flow one way"): read from the sources, every
//! top-level module's `crate::X` imports outside test code form a graph without a cycle, and
//! the driver imports nothing from `cnm` (it has its own types; `cnm` converts).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The directory a file's child modules live in (`a/mod.rs` → `a/`, `a/b.rs` → `a/b/`).
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap();
    match file.file_stem().unwrap().to_str().unwrap() {
        "mod" | "lib" | "main" => dir.to_path_buf(),
        stem => dir.join(stem),
    }
}

/// The source without comments and without items under a `#[cfg(...test...)]` attribute;
/// the files of test-only `mod x;` declarations are pushed to `test_paths`.
fn non_test_code(file: &Path, src: &str, test_paths: &mut Vec<PathBuf>) -> String {
    let lines: Vec<&str> = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        let is_test_cfg = l.starts_with("#[cfg(") && l.contains("test");
        if !is_test_cfg {
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
            continue;
        }
        // Skip the attributed item: up to its `;` or its matching `}`.
        let mut path_attr = None;
        let mut depth = 0i32;
        let mut item = String::new();
        i += 1;
        while i < lines.len() {
            let l = lines[i];
            if let Some(p) = l.trim().strip_prefix("#[path = \"") {
                path_attr = p.strip_suffix("\"]").map(str::to_string);
            }
            item.push_str(l);
            item.push('\n');
            depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
            i += 1;
            if depth == 0 && (l.contains('}') || l.trim_end().ends_with(';')) {
                break;
            }
        }
        let decl = item
            .lines()
            .map(str::trim)
            .find(|l| !l.starts_with("#["))
            .unwrap_or("");
        let decl = decl.strip_prefix("pub ").unwrap_or(decl);
        if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
            let name = name.trim();
            match path_attr {
                Some(p) => {
                    let f = file.parent().unwrap().join(p);
                    test_paths.push(child_dir(&f));
                    test_paths.push(f);
                }
                None => {
                    let dir = child_dir(file);
                    test_paths.push(dir.join(format!("{name}.rs")));
                    test_paths.push(dir.join(name));
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let tops: BTreeSet<String> = files
        .iter()
        .map(|f| top_of(&src, f))
        .filter(|t| t != "lib" && t != "main")
        .collect();
    let mut test_paths = Vec::new();
    let mut code = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        code.push((f.clone(), non_test_code(f, &text, &mut test_paths)));
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (f, text) in code {
        let top = top_of(&src, &f);
        if top == "lib" || top == "main" || test_paths.iter().any(|t| f.starts_with(t)) {
            continue;
        }
        let edges = g.entry(top.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")],
            };
            for n in names {
                if n != top && tops.contains(n) {
                    edges.insert(n.to_string());
                }
            }
        }
    }
    g
}

fn top_of(src: &Path, f: &Path) -> String {
    let rel = f.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// A cycle, if any, as the modules along it.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn render(g: &BTreeMap<String, BTreeSet<String>>) -> String {
    g.iter()
        .map(|(k, v)| {
            format!(
                "{k} -> {}",
                v.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let g = graph();
    println!("{}", render(&g));
    assert!(g.contains_key("driver") && g.contains_key("cnm"), "{g:?}");
    if let Some(c) = cycle(&g) {
        panic!("import cycle {}\n{}", c.join(" -> "), render(&g));
    }
}

#[test]
fn the_driver_imports_no_wire_type() {
    let g = graph();
    assert!(
        !g["driver"].contains("cnm"),
        "src/driver imports crate::cnm:\n{}",
        render(&g)
    );
    // The leaves import nothing of the crate.
    for leaf in ["names", "range"] {
        assert!(g[leaf].is_empty(), "{leaf} imports {:?}", g[leaf]);
    }
}

#[test]
fn the_scanner_sees_an_import_cycle_and_skips_test_code() {
    let mut test_paths = Vec::new();
    let file = Path::new("/x/src/a/mod.rs");
    let code = non_test_code(
        file,
        "use crate::b::X;\n#[cfg(test)]\nmod tests {\n    use crate::c::Y;\n}\n#[cfg(test)]\n#[path = \"t.rs\"]\nmod t;\n// crate::d\n",
        &mut test_paths,
    );
    assert!(code.contains("crate::b") && !code.contains("crate::c") && !code.contains("crate::d"));
    assert_eq!(
        test_paths,
        [PathBuf::from("/x/src/a/t"), PathBuf::from("/x/src/a/t.rs")]
    );
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(cycle(&g), Some(vec!["a".into(), "b".into(), "a".into()]));
}
