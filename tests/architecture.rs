//! The architecture's rules, checked (ARCHITECTURE.md, "Layers"): which crate may depend on
//! which, what the pure crates may use at all, that the product never contains the dev tools
//! (nor tokio's `test-util`), that the demo's binary builds no AWS SDK, and that no crate's
//! modules import each other in a cycle.
//!
//! The crate graph is read from `cargo metadata` and `cargo tree` (the cargo running this
//! test), the imports from the sources.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const PRODUCT: &str = "runner-updater";
const DEV: &str = "runner-updater-dev";

/// The workspace's crates and the workspace crates each may depend on (normal dependencies).
/// Dependencies point down: interface → runtime → ports ← adapters; everyone may use the core
/// (and the configuration, which only reads text); dev may use everything; nothing uses dev.
const LAYERS: [(&str, &[&str]); 9] = [
    ("runner-updater-core", &[]),
    ("runner-updater-config", &["runner-updater-core"]),
    ("runner-updater-ports", &["runner-updater-core"]),
    (
        "runner-updater-adapters",
        &["runner-updater-core", "runner-updater-ports"],
    ),
    (
        "runner-updater-aws",
        &["runner-updater-core", "runner-updater-ports"],
    ),
    (
        "runner-updater-runtime",
        &[
            "runner-updater-core",
            "runner-updater-config",
            "runner-updater-ports",
        ],
    ),
    (
        "runner-updater-interface",
        &[
            "runner-updater-core",
            "runner-updater-config",
            "runner-updater-ports",
            "runner-updater-adapters",
            "runner-updater-runtime",
        ],
    ),
    (
        PRODUCT,
        &[
            "runner-updater-core",
            "runner-updater-config",
            "runner-updater-ports",
            "runner-updater-adapters",
            "runner-updater-aws",
            "runner-updater-runtime",
            "runner-updater-interface",
        ],
    ),
    (
        DEV,
        &[
            PRODUCT,
            "runner-updater-aws",
            "runner-updater-core",
            "runner-updater-config",
            "runner-updater-ports",
            "runner-updater-adapters",
            "runner-updater-runtime",
            "runner-updater-interface",
        ],
    ),
];

/// External crates only the product (and the dev tools) may depend on: the AWS SDK is
/// `runner-updater-aws`'s, the exporter, the HTTP server and the CLI parser the product's.
const PRODUCT_ONLY: [(&str, &[&str]); 5] = [
    ("aws-config", &["runner-updater-aws"]),
    ("opentelemetry-otlp", &[PRODUCT]),
    ("tonic", &[PRODUCT]),
    ("axum", &[PRODUCT]),
    ("clap", &[PRODUCT, DEV]),
];

/// Every external crate the pure crates may depend on: no tokio, no AWS SDK, no IO library.
const PURE: [(&str, &[&str]); 3] = [
    (
        "runner-updater-core",
        // jiff: update windows in their time zones, from the tz database compiled into it
        // (`tzdb-bundle-always`; `tz-system` off: it reads no zoneinfo file).
        &[
            "jiff",
            "semver",
            "serde",
            "serde_json",
            "statig",
            "thiserror",
        ],
    ),
    ("runner-updater-config", &["serde", "thiserror", "toml"]),
    ("runner-updater-ports", &["async-trait", "thiserror"]),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Each workspace crate: its normal dependencies and its dev-dependencies, by name.
fn manifests() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--no-deps",
    ]))
    .unwrap();
    let mut crates = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let mut normal = BTreeSet::new();
        let mut dev = BTreeSet::new();
        for dependency in package["dependencies"].as_array().unwrap() {
            let name = dependency["name"].as_str().unwrap().to_owned();
            // Build-dependencies are built into the crate's build too: held like normal ones.
            match dependency["kind"].as_str() {
                Some("dev") => dev.insert(name),
                _ => normal.insert(name),
            };
        }
        crates.insert(package["name"].as_str().unwrap().to_owned(), (normal, dev));
    }
    crates
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it_and_nothing_on_the_dev_tools() {
    let crates = manifests();
    let expected: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    let found: BTreeSet<&str> = crates.keys().map(String::as_str).collect();
    assert_eq!(
        found, expected,
        "the workspace's crates changed: update LAYERS here and the map in ARCHITECTURE.md"
    );
    for (name, allowed) in LAYERS {
        let (normal, dev) = &crates[name];
        for dependency in normal.iter().filter(|d| expected.contains(d.as_str())) {
            assert!(
                allowed.contains(&dependency.as_str()),
                "{name} depends on {dependency}, which its layer may not use (ARCHITECTURE.md, \"Layers\")"
            );
        }
        if name != DEV {
            assert!(
                !normal.contains(DEV) && !dev.contains(DEV),
                "{name} depends on the dev tools' crate"
            );
        }
        let sdk: Vec<&String> = normal
            .iter()
            .filter(|d| d.starts_with("aws-sdk-") || d.as_str() == "aws-config")
            .collect();
        if name != "runner-updater-aws" {
            assert!(
                sdk.is_empty(),
                "{name} depends on the AWS SDK ({sdk:?}): only runner-updater-aws may"
            );
        }
        for (external, owners) in PRODUCT_ONLY {
            assert!(
                !normal.contains(external) || owners.contains(&name),
                "{name} depends on {external}, which only {owners:?} may (ARCHITECTURE.md, \"Layers\")"
            );
        }
    }
}

#[test]
fn the_pure_crates_use_no_runtime_no_aws_and_no_io() {
    let crates = manifests();
    for (name, allowed) in PURE {
        let (normal, _) = &crates[name];
        for dependency in normal.iter().filter(|d| !d.starts_with("runner-updater")) {
            assert!(
                allowed.contains(&dependency.as_str()),
                "{name} depends on {dependency}: the pure crates use no tokio, no AWS SDK, no IO \
                 library (ARCHITECTURE.md); if it is pure, add it here with a reason"
            );
        }
        // And no IO, clock or process through the standard library either.
        let directory = root()
            .join("crates")
            .join(name.trim_start_matches("runner-updater-"))
            .join("src");
        for (path, text) in sources(&directory) {
            let code = expand_groups(&without_comments(without_tests(&text)), "std::");
            for forbidden in [
                "std::fs",
                "std::net",
                "std::env",
                "std::process",
                "std::thread",
                "SystemTime",
                "Instant",
                "tokio",
            ] {
                assert!(
                    !code.contains(forbidden),
                    "{} uses {forbidden}: the pure crates take time and data as values",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_product_has_no_dev_tool_and_no_test_util_and_the_demo_builds_no_aws_sdk() {
    // Features as cargo resolves them for a build of the product alone (the Dockerfile's).
    let tokio = cargo(&[
        "tree",
        "--locked",
        "--package",
        PRODUCT,
        "--edges",
        "normal",
        "--invert",
        "tokio",
        "--depth",
        "0",
        "--format",
        "{p} {f}",
    ]);
    assert!(tokio.starts_with("tokio "), "{tokio}");
    assert!(
        !tokio.contains("test-util"),
        "the product's tokio has test-util: {tokio}"
    );
    let packages = |package: &str| -> BTreeSet<String> {
        cargo(&[
            "tree",
            "--locked",
            "--package",
            package,
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
    };
    let product = packages(PRODUCT);
    assert!(!product.contains(DEV), "the product contains the dev tools");
    assert!(product.contains("aws-sdk-ecs"), "{product:?}");
    let demo = packages("runner-updater-interface");
    for heavy in [
        "aws-config",
        "aws-sdk-ecs",
        "aws-sdk-ssm",
        "aws-sdk-cloudformation",
        "opentelemetry-otlp",
        "tonic",
        "axum",
    ] {
        assert!(
            !demo.contains(heavy),
            "the demo's crate builds {heavy}: the newcomer's first command must not"
        );
    }
}

#[test]
fn no_crate_has_an_import_cycle_between_its_top_level_modules() {
    let mut directories = vec![root().join("src")];
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        directories.push(entry.unwrap().path().join("src"));
    }
    for directory in directories {
        let graph = module_graph(&directory);
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{}: the modules {} import each other in a cycle",
                directory.display(),
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_import_scan_sees_grouped_imports_and_super_paths() {
    let directory = tempfile::tempdir().unwrap();
    let src = directory.path();
    std::fs::create_dir_all(src.join("sim")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "pub mod driver;\npub mod scheduler;\npub mod sim;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("driver.rs"),
        "use crate::{retry, scheduler::Wake};\n",
    )
    .unwrap();
    std::fs::write(src.join("scheduler.rs"), "use super::driver::Driver;\n").unwrap();
    std::fs::write(
        src.join("retry.rs"),
        "// crate::driver in a comment is no import\n",
    )
    .unwrap();
    std::fs::write(src.join("sim/mod.rs"), "mod ecs;\n").unwrap();
    std::fs::write(
        src.join("sim/ecs.rs"),
        "use super::super::retry;\nuse super::Faults;\n",
    )
    .unwrap();
    let graph = module_graph(src);
    let edges = |module: &str| graph[module].iter().cloned().collect::<Vec<_>>();
    assert_eq!(edges("driver"), ["retry", "scheduler"]);
    assert_eq!(edges("scheduler"), ["driver"]);
    assert!(edges("retry").is_empty());
    assert_eq!(edges("sim"), ["retry"]);
    let cycle = find_cycle(&graph).unwrap();
    assert!(cycle.contains(&"scheduler".to_owned()), "{cycle:?}");
    assert_eq!(
        expand_groups("use std::{fs, time::{Instant}};", "std::"),
        "use std::fs, std::time::{Instant};"
    );
}

#[test]
fn the_dockerfile_builds_every_crate_of_the_workspace_in_its_dependency_layer() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let directory = entry.unwrap().path();
        let name = directory.file_name().unwrap().to_str().unwrap().to_owned();
        let copy = format!("COPY crates/{name}/Cargo.toml crates/{name}/");
        assert!(
            dockerfile.contains(&copy),
            "the Dockerfile's dependency layer lacks `{copy}`"
        );
        let manifest = std::fs::read_to_string(directory.join("Cargo.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&manifest).unwrap();
        for bin in manifest
            .get("bin")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(path) = bin.get("path").and_then(toml::Value::as_str) {
                let placeholder = format!("crates/{name}/{path}");
                assert!(
                    dockerfile.contains(&placeholder),
                    "the Dockerfile's dependency layer has no placeholder for {placeholder}"
                );
            }
        }
    }
}

/// A file compiled into the product from outside `src/` and `crates/` (an `include_str!`) must
/// be copied into the image's build too: the set-up template was not, at first.
#[test]
fn every_file_the_sources_include_is_copied_into_the_image_build() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut sources = Vec::new();
    let mut stack = vec![root().join("src"), root().join("crates")];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("tests") {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    let mut found = 0;
    for source in sources {
        let text = std::fs::read_to_string(&source).unwrap();
        for (at, _) in text.match_indices("include_str!(\"") {
            let rest = &text[at + "include_str!(\"".len()..];
            let relative = &rest[..rest.find('"').unwrap()];
            let included = source.parent().unwrap().join(relative);
            let included = included
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: {relative}: {e}", source.display()));
            let top = included
                .strip_prefix(root().canonicalize().unwrap())
                .unwrap()
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .to_owned();
            found += 1;
            if top != "src" && top != "crates" {
                assert!(
                    dockerfile.contains(&format!("COPY {top} ./{top}")),
                    "{} includes {relative}: the Dockerfile must `COPY {top} ./{top}`",
                    source.display()
                );
            }
        }
    }
    assert!(found >= 1, "the scan found no include_str!");
}

#[test]
fn the_cycle_check_finds_a_cycle_and_passes_a_chain() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    };
    assert_eq!(
        find_cycle(&graph(&[
            ("scheduler", "driver"),
            ("driver", "reader"),
            ("reader", "retry")
        ])),
        None
    );
    let cycle = find_cycle(&graph(&[
        ("driver", "fleet"),
        ("fleet", "driver"),
        ("fleet", "retry"),
    ]))
    .unwrap();
    assert!(
        cycle.contains(&"driver".to_owned()) && cycle.contains(&"fleet".to_owned()),
        "{cycle:?}"
    );
}

/// The `.rs` files under `directory`, with their text.
fn sources(directory: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                found.push((path, text));
            }
        }
    }
    found.sort();
    found
}

/// A file's text up to its unit tests (`#[cfg(test)] mod tests` ends our files).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// `prefix{a, b::c}` written out as `prefix::a, prefix::b::c` (nested groups one level deep
/// are enough for imports: `crate::{a::{b, c}}` gives `crate::a::…`), so a grouped import
/// is seen like a plain one.
fn expand_groups(code: &str, prefix: &str) -> String {
    let opening = format!("{prefix}{{");
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find(&opening) {
        out.push_str(&rest[..at]);
        let inner_start = at + opening.len();
        let mut depth = 1;
        let mut end = inner_start;
        for (offset, c) in rest[inner_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = inner_start + offset;
                break;
            }
        }
        if depth != 0 {
            out.push_str(&rest[at..]);
            return out;
        }
        let mut item = String::new();
        let mut level = 0;
        let mut items = Vec::new();
        for c in rest[inner_start..end].chars() {
            match c {
                '{' => level += 1,
                '}' => level -= 1,
                ',' if level == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        let expanded: Vec<String> = items
            .iter()
            .map(|item| item.trim())
            .filter(|item| !item.is_empty())
            .map(|item| format!("{prefix}{item}"))
            .collect();
        out.push_str(&expanded.join(", "));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Code without its comments (line comments and doc comments; good enough to scan imports).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file of `src/` belongs to (`driver.rs` → `driver`,
/// `sim/ecs.rs` → `sim`); `None` for the crate's root and its binaries.
fn top_module(directory: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(directory).unwrap();
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" | "bin" => None,
        file => Some(file.trim_end_matches(".rs").to_owned()),
    }
}

/// Which top-level modules of a crate import which (`crate::<module>` outside unit tests).
fn module_graph(directory: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let files = sources(directory);
    for (path, _) in &files {
        if let Some(module) = top_module(directory, path) {
            graph.entry(module).or_default();
        }
    }
    for (path, text) in &files {
        let Some(module) = top_module(directory, path) else {
            continue;
        };
        let mut code = expand_groups(&without_comments(without_tests(text)), "crate::");
        // `super::x` names the crate's `x` from a file of the crate's root (`driver.rs`,
        // `sim/mod.rs`), and `super::super::x` from one a folder down (`sim/ecs.rs`).
        let relative = path.strip_prefix(directory).unwrap();
        let depth = relative.components().count();
        let is_mod = relative.ends_with("mod.rs");
        let root_super = if depth == 1 || (depth == 2 && is_mod) {
            "super::"
        } else {
            "super::super::"
        };
        code = code.replace(root_super, "crate::");
        for (at, _) in code.match_indices("crate::") {
            // `runner_updater_core::…` is another crate, not this one's `crate::`.
            if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let target: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if target != module && graph.contains_key(&target) {
                graph.get_mut(&module).unwrap().insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if any (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in &graph[node] {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}
