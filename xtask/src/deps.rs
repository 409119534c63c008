//! `cargo xtask deps`: checks that every crate depends only on the crates ARCHITECTURE.md
//! allows it (the layers: genotypes; ops and data; training; networks; retraining;
//! searches; the command line), and that libraries stay free of argv parsing and
//! `anyhow`. Reads `cargo metadata`; CI runs it. Inside `nas-ops` the source folders are
//! layers too (kernels, cuda, ops, fused, modules): a file may name only its own folder
//! and those before it.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The workspace crates each library may depend on (normal and build dependencies;
/// dev-dependencies are free). A crate missing here fails the check until it is added.
const LAYERS: &[(&str, &[&str])] = &[
    ("nas-search-space", &[]),
    ("nas-ops", &["nas-search-space", "nas-kernels"]),
    ("nas-data", &[]),
    ("nas-train", &[]),
    ("nas-plot", &[]),
    (
        "nas-models",
        &["nas-search-space", "nas-ops", "nas-data", "nas-train"],
    ),
    (
        "nas-retrain",
        &[
            "nas-search-space",
            "nas-ops",
            "nas-data",
            "nas-train",
            "nas-models",
        ],
    ),
    (
        "nas-darts",
        &[
            "nas-search-space",
            "nas-ops",
            "nas-data",
            "nas-train",
            "nas-models",
            "nas-retrain",
        ],
    ),
    (
        "nas-enas",
        &[
            "nas-search-space",
            "nas-ops",
            "nas-data",
            "nas-train",
            "nas-models",
            "nas-retrain",
        ],
    ),
];

/// `nas-ops`'s source folders in layer order: a file in one may use only itself and the
/// folders before it (its tests may use anything).
const OPS_LAYERS: &[&str] = &["kernels", "cuda", "ops", "fused", "modules"];

/// Paths at `nas-ops`'s root that every layer may use.
const OPS_SHARED: &[&str] = &["error", "testing", "runtime"];

/// Packages that may depend on anything: binaries and test packages.
const TOP: &[&str] = &["nas-cli", "xtask", "nas-tests"];

/// External crates a library may not use, with the reason.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "nas-search-space",
        "candle-core",
        "genotypes are parsed, derived and drawn without tensors",
    ),
    (
        "nas-search-space",
        "candle-nn",
        "genotypes are parsed, derived and drawn without tensors",
    ),
    (
        "nas-data",
        "candle-nn",
        "data sets know nothing about models",
    ),
    ("*", "anyhow", "libraries return their own thiserror types"),
    ("*", "clap", "only nas-cli and xtask parse argv"),
    (
        "*",
        "indicatif",
        "libraries report progress through a trait",
    ),
    ("*", "ureq", "only xtask touches the network"),
];

pub fn run(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask deps");
    }
    let mut problems = check(&metadata()?);
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/nas-ops/src");
    problems.extend(check_ops_layers(&ops)?);
    if problems.is_empty() {
        println!("deps: every crate and every nas-ops layer uses only what its layer allows");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("deps: {p}");
        }
        bail!(
            "{} dependency rule(s) broken (see ARCHITECTURE.md, invariants)",
            problems.len()
        )
    }
}

/// The workspace's `cargo metadata`.
fn metadata() -> Result<Value> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing cargo metadata")
}

/// The broken rules in `cargo metadata`'s output, one line each.
fn check(meta: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let internal: Vec<&str> = packages
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("nas-"))
        .collect();
    for p in &packages {
        let Some(name) = p["name"].as_str() else {
            continue;
        };
        if TOP.contains(&name) || name == "nas-kernels" || name.starts_with("nas-fuzz") {
            continue;
        }
        let allowed = LAYERS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
        let Some(allowed) = allowed else {
            problems.push(format!(
                "{name} has no layer in xtask/src/deps.rs: add it there and to ARCHITECTURE.md"
            ));
            continue;
        };
        let deps = p["dependencies"].as_array().cloned().unwrap_or_default();
        for d in deps.iter().filter(|d| d["kind"].as_str() != Some("dev")) {
            let Some(dep) = d["name"].as_str() else {
                continue;
            };
            if (internal.contains(&dep) || dep.starts_with("nas-")) && !allowed.contains(&dep) {
                problems.push(format!(
                    "{name} depends on {dep}, which its layer may not use"
                ));
            }
            for (who, what, why) in FORBIDDEN {
                if (*who == "*" || *who == name) && *what == dep {
                    problems.push(format!("{name} depends on {dep}: {why}"));
                }
            }
        }
    }
    problems
}

/// The `crate::` paths in `nas-ops`'s layer folders under `src` that reach a later layer
/// (or the crate root's re-exports, which hide the layer), one line each.
fn check_ops_layers(src: &std::path::Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (rank, layer) in OPS_LAYERS.iter().enumerate() {
        let dir = src.join(layer);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .filter(|p| !p.ends_with("tests.rs"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = format!(
                "{layer}/{}",
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            problems.extend(layer_problems(&name, rank, &text));
        }
    }
    Ok(problems)
}

/// [`check_ops_layers`] for one file's text: code only, its test module and comments
/// left out (as are test files, `tests.rs`).
fn layer_problems(name: &str, rank: usize, text: &str) -> Vec<String> {
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or_default();
        for (at, _) in line.match_indices("crate::") {
            let path: String = line[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let ok = match OPS_LAYERS.iter().position(|l| *l == path) {
                Some(r) => r <= rank,
                None => OPS_SHARED.contains(&path.as_str()),
            };
            if !ok {
                problems.push(format!(
                    "nas-ops/src/{name}:{}: `crate::{path}` is not in its layer or one before it ({})",
                    i + 1,
                    OPS_LAYERS[..=rank].join(", ")
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_that_uses_a_module_or_a_root_reexport_is_reported() {
        let text = "use crate::kernels::elem::Elem;\nuse crate::modules::conv::Conv2d;\n\
                    fn f() { crate::DepthwiseConfig::default(); } // crate::fused\n\
                    #[cfg(test)]\nmod tests {\n    use crate::modules::cell;\n}\n";
        let problems = layer_problems("ops/x.rs", 2, text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("nas-ops/src/ops/x.rs:2: `crate::modules`"));
        assert!(problems[1].contains(":3: `crate::DepthwiseConfig`"));
        assert!(layer_problems("modules/x.rs", 4, "use crate::ops::pool;\n").is_empty());
    }

    #[test]
    fn the_ops_layers_as_they_are_pass() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/nas-ops/src");
        assert_eq!(
            check_ops_layers(&src).expect("readable"),
            Vec::<String>::new()
        );
    }

    fn package(name: &str, deps: &[(&str, Option<&str>)]) -> Value {
        serde_json::json!({
            "name": name,
            "dependencies": deps
                .iter()
                .map(|(d, kind)| serde_json::json!({ "name": d, "kind": kind }))
                .collect::<Vec<_>>(),
        })
    }

    #[test]
    fn a_search_crate_that_uses_another_search_crate_is_reported() {
        let meta = serde_json::json!({ "packages": [
            package("nas-train", &[("candle-core", None)]),
            package("nas-darts", &[("nas-train", None), ("nas-models", None)]),
            package("nas-enas", &[("nas-darts", None), ("nas-train", None)]),
            package("nas-cli", &[("nas-darts", None), ("anyhow", None)]),
        ]});
        let problems = check(&meta);
        assert_eq!(
            problems,
            vec!["nas-enas depends on nas-darts, which its layer may not use".to_string()]
        );
    }

    #[test]
    fn forbidden_externals_unknown_crates_and_dev_dependencies() {
        let meta = serde_json::json!({ "packages": [
            package("nas-search-space", &[("candle-core", None)]),
            package("nas-models", &[("anyhow", Some("dev")), ("clap", None)]),
            package("nas-new", &[]),
        ]});
        let problems = check(&meta);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("without tensors"), "{problems:?}");
        assert!(
            problems[1].contains("nas-models depends on clap"),
            "{problems:?}"
        );
        assert!(problems[2].contains("nas-new has no layer"), "{problems:?}");
    }

    #[test]
    fn the_workspace_as_it_is_passes() {
        assert_eq!(
            check(&metadata().expect("cargo metadata")),
            Vec::<String>::new()
        );
    }
}
