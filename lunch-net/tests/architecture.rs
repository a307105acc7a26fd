//! The invariants ARCHITECTURE.md states for lunch-net, checked on the
//! source: what it depends on, what it does not know about lunchd, and how
//! its modules use each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(path, text)` of every Rust file under lunch-net/src.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&crate_dir().join("src"), &mut out);
    out.sort();
    assert!(out.len() > 5, "lunch-net/src not found: {out:?}");
    out
}

/// The dependency names declared in a `[...dependencies]` table of
/// Cargo.toml, by table.
fn dependencies(manifest: &str) -> BTreeMap<String, Vec<String>> {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in manifest.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_owned();
        } else if table.ends_with("dependencies") && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            tables.entry(table.clone()).or_default().push(name.to_owned());
        }
    }
    tables
}

#[test]
fn lunch_net_does_not_depend_on_lunch_core_nor_on_axum_outside_its_tests() {
    let manifest = std::fs::read_to_string(crate_dir().join("Cargo.toml")).unwrap();
    let tables = dependencies(&manifest);
    let normal = &tables["dependencies"];
    assert!(
        normal.contains(&"tokio".to_owned()),
        "Cargo.toml not understood: {tables:?}"
    );
    for (table, names) in &tables {
        assert!(
            !names.iter().any(|n| n == "lunch-core" || n == "lunch_core"),
            "lunch-net depends on lunch-core in [{table}]: lunch-net stays a network layer that knows nothing of lunch"
        );
    }
    assert!(
        !normal.iter().any(|n| n == "axum"),
        "lunch-net depends on axum: handlers are plain hyper services; axum is only for the tests"
    );
    for (path, text) in sources() {
        assert!(!text.contains("lunch_core"), "{} names lunch_core", path.display());
    }
}

/// The text of comments and string literals of `source`, where a
/// configuration key could be named to a person.
fn prose(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut current = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        in_string = false;
                        out.push(std::mem::take(&mut current));
                        continue;
                    }
                    _ => {}
                }
                current.push(c);
            } else if c == '"' {
                in_string = true;
            } else if c == '/' && chars.peek() == Some(&'/') {
                chars.next();
                out.push(chars.collect());
                break;
            }
        }
        if in_string {
            // A string that goes on to the next line: take the rest.
            out.push(current);
        }
    }
    out
}

/// The sections and keys of lunchd's example configuration, which lists
/// every key (lunchd's tests check that it does).
fn config_names() -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let example = crate_dir().join("../deploy/lunchd.toml");
    let text = std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let mut sections = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        // A section shown commented out, as `#[proxy]`, is a section too.
        let line = match line.strip_prefix('#') {
            Some(rest) if rest.starts_with('[') => rest,
            _ => line,
        };
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = name.to_owned();
            sections.insert(section.clone());
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            sections.insert(section.clone());
        } else if let Some((key, _)) = line.trim_start_matches('#').split_once(" = ") {
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.insert((section.clone(), key.to_owned()));
            }
        }
    }
    assert!(
        sections.contains("limits") && keys.len() > 10,
        "{}: not understood",
        example.display()
    );
    (sections, keys)
}

/// Where `source` names a section or key of lunchd's configuration to a
/// person: `[section]` headers, `section.key` and `key = ` in its comments
/// and strings.
fn config_names_in(source: &str, sections: &BTreeSet<String>, keys: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut found = Vec::new();
    for prose in prose(source) {
        let mut names: Vec<String> = sections
            .iter()
            .flat_map(|s| [format!("[{s}]"), format!("[[{s}]]")])
            .filter(|header| prose.contains(header))
            .collect();
        for (section, key) in keys {
            if prose.contains(&format!("{section}.{key}")) {
                names.push(format!("{section}.{key}"));
            }
            let assignment = format!("{key} = ");
            let assigned = prose.match_indices(&assignment).any(|(at, _)| {
                !prose[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if assigned {
                names.push(assignment);
            }
        }
        found.extend(names.into_iter().map(|n| format!("`{n}` in {prose:?}")));
    }
    found
}

#[test]
fn lunch_net_names_no_configuration_key_of_lunchd() {
    let (sections, keys) = config_names();
    let found: Vec<String> = sources()
        .iter()
        .flat_map(|(path, text)| {
            config_names_in(text, &sections, &keys)
                .into_iter()
                .map(move |n| format!("{}: {n}", path.display()))
        })
        .collect();
    assert!(
        found.is_empty(),
        "lunch-net's messages and docs name lunchd's configuration; return the facts and let lunchd \
         add the key:\n{}",
        found.join("\n")
    );
}

#[test]
fn configuration_names_are_found_in_messages_and_docs_only() {
    let (sections, keys) = config_names();
    let check = |source: &str| config_names_in(source, &sections, &keys).len();
    // What lunch-net said before lunchd took over the keys.
    assert_eq!(
        check("hint: \", or set `redirect = false` under [http] to run HTTPS only\","),
        2
    );
    assert_eq!(
        check("/// every field is configurable in lunchd's `[limits]` section."),
        1
    );
    assert_eq!(check("// takes effect on restart: http.redirect"), 1);
    // Code that uses the same words is no message.
    assert_eq!(
        check("let slots = limits.max_connections.max(1); let redirect = false;"),
        0
    );
    assert_eq!(check("\"the server's idle_timeout_ms = 5\""), 0);
}

#[test]
fn the_prose_of_a_source_is_its_comments_and_strings() {
    assert_eq!(
        prose("let a = \"set `redirect = false` under [http]\"; // see [limits]\n/// docs\nx"),
        ["set `redirect = false` under [http]", " see [limits]", "/ docs"]
    );
    assert_eq!(prose(r#"f("a \" b", "c")"#), [r#"a \" b"#, "c"]);
}

/// The modules of lunch-net each module's file refers to (`crate::name`).
fn module_uses() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources
        .iter()
        .filter_map(|(path, _)| Some(path.file_stem()?.to_str()?.to_owned()))
        .filter(|m| m != "lib")
        .collect();
    let mut uses = BTreeMap::new();
    for (path, text) in &sources {
        let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if module == "lib" {
            continue;
        }
        let mut used = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                // `use crate::{a::X, b};`
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && name != module {
                    used.insert(name);
                }
            }
        }
        uses.insert(module, used);
    }
    uses
}

#[test]
fn no_two_modules_use_each_other() {
    let uses = module_uses();
    assert!(
        uses["server"].contains("workers"),
        "module uses not understood: {uses:?}"
    );
    // Any cycle, not only pairs: follow every path from every module.
    fn visit(
        module: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(start) = path.iter().position(|m| m == module) {
            panic!(
                "lunch-net's modules use each other in a circle: {} -> {module}; move what both need into a \
                 module of its own",
                path[start..].join(" -> ")
            );
        }
        if done.contains(module) {
            return;
        }
        path.push(module.to_owned());
        for next in uses.get(module).into_iter().flatten() {
            visit(next, uses, path, done);
        }
        path.pop();
        done.insert(module.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in uses.keys() {
        visit(module, &uses, &mut Vec::new(), &mut done);
    }
}
