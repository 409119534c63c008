//! `nas search enas` and the ENAS counts as a user runs them: a search to the end, a run
//! killed with SIGKILL and resumed to the same weights and arc, the random-policy
//! ablation, retraining the found cell, bad configurations.

// Test helpers may panic on a broken fixture: that is a failed test, not a bug to handle.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{epoch_lines, fails_with, nas, ok, read, run};

/// A small ENAS search on the embedded digits: 152 training and 48 validation images,
/// 9 shared steps and 2 controller updates of 2 children per epoch, 4 epochs.
const TINY_ENAS: &[&str] = &[
    "--set",
    "model.filters=4",
    "--set",
    "model.nodes=3",
    "--set",
    "data.max_train_images=200",
    "--set",
    "data.valid_images=48",
    "--set",
    "data.batch_size=16",
    "--set",
    "controller.train_steps=2",
    "--set",
    "controller.num_aggregate=2",
    "--set",
    "controller.derive_samples=3",
    "--set",
    "run.epochs=4",
    "--set",
    "run.keep_checkpoints=1",
];

fn search_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["search", "enas", "--out", out.to_str().unwrap()];
    args.extend_from_slice(TINY_ENAS);
    args.extend_from_slice(extra);
    args
}

fn search(out: &Path, extra: &[&str]) -> Output {
    run(&search_args(out, extra))
}

fn tensors(path: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

fn same_tensors(a: &Path, b: &Path) -> bool {
    let (ta, tb) = (tensors(a), tensors(b));
    ta.len() == tb.len()
        && ta.iter().all(|(k, x)| {
            let y = &tb[k];
            let x: Vec<f32> = x
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            let y: Vec<f32> = y
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            x == y
        })
}

#[test]
fn an_enas_search_killed_with_sigkill_resumes_to_the_same_weights_and_arc() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let stdout = ok(&search(&a, &[]));
    let arc = stdout.lines().next().unwrap().to_string();
    // 2 cells of 3 nodes, 4 integers per node.
    assert_eq!(arc.split(' ').count(), 24, "{stdout}");
    for file in [
        "genotype.json",
        "genotype.arc",
        "genotype.svg",
        "derive.json",
        "config.toml",
        "curves.svg",
        "controller.svg",
        "events.out.tfevents.candle-nas",
    ] {
        assert!(a.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        String::from_utf8(read(&a.join("genotype.arc")))
            .unwrap()
            .trim(),
        arc
    );
    let derive: serde_json::Value = serde_json::from_slice(&read(&a.join("derive.json"))).unwrap();
    assert_eq!(derive["samples"].as_array().unwrap().len(), 3);
    assert_eq!(derive["chosen"]["arc"], arc.as_str());
    let best = derive["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["accuracy"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(derive["chosen"]["accuracy"].as_f64().unwrap(), best);
    assert!(derive["chosen"]["log_prob"].as_f64().unwrap() < 0.0);
    let epochs = epoch_lines(&a);
    assert_eq!(epochs.len(), 4);
    for e in &epochs {
        assert_eq!(e["samples"].as_array().unwrap().len(), 3, "{e}");
        assert!(e["reward"].as_f64().is_some(), "{e}");
    }
    let last = a.join("checkpoints/epoch-0004");

    // The same search, killed once its second checkpoint exists, then resumed.
    let b = dir.path().join("b");
    let mut child = nas(&search_args(&b, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !b.join("checkpoints/epoch-0002").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the search ended before it was killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !b.join("genotype.json").exists(),
        "the run finished before the kill"
    );
    let resumed = ok(&run(&["search", "enas", "--resume", b.to_str().unwrap()]));
    assert_eq!(
        resumed.lines().next().unwrap(),
        arc,
        "the resumed run found another arc"
    );
    for file in ["genotype.json", "genotype.arc", "derive.json"] {
        assert_eq!(read(&a.join(file)), read(&b.join(file)), "{file} differs");
    }
    for group in ["weights", "controller", "optimizer", "controller_optimizer"] {
        let file = format!("{group}.safetensors");
        assert!(
            same_tensors(
                &last.join(&file),
                &b.join("checkpoints/epoch-0004").join(&file)
            ),
            "{group} differs after the resume"
        );
    }
    let eb = epoch_lines(&b);
    assert_eq!(
        eb.len(),
        4,
        "metrics.jsonl has duplicated or missing epochs"
    );
    for (x, y) in epochs.iter().zip(&eb) {
        for key in ["train_loss", "reward", "samples", "best_arc"] {
            assert_eq!(x[key], y[key], "{key} of epoch {}", x["epoch"]);
        }
    }

    // The found cell retrains with `nas train`.
    let t = dir.path().join("t");
    let genotype = a.join("genotype.json");
    let out = ok(&run(&[
        "train",
        "--genotype",
        genotype.to_str().unwrap(),
        "--out",
        t.to_str().unwrap(),
        "--set",
        "model.channels=4",
        "--set",
        "run.epochs=1",
    ]));
    assert!(out.contains("test"), "{out}");
    let results: serde_json::Value =
        serde_json::from_slice(&read(&t.join("results.json"))).unwrap();
    assert_eq!(results["genotype"], arc.as_str());
}

#[test]
fn the_random_policy_trains_no_controller() {
    let dir = tempfile::tempdir().unwrap();
    let lstm = dir.path().join("lstm");
    let random = dir.path().join("random");
    let one = ["--set", "run.epochs=1"];
    ok(&search(&lstm, &one));
    let stdout = ok(&search(
        &random,
        &["--set", "run.epochs=1", "--controller", "random"],
    ));
    assert!(!stdout.contains("log-probability"), "{stdout}");
    let derive: serde_json::Value =
        serde_json::from_slice(&read(&random.join("derive.json"))).unwrap();
    assert_eq!(derive["policy"], "random");
    let config = String::from_utf8(read(&random.join("config.toml"))).unwrap();
    assert!(config.contains("kind = \"random\""), "{config}");
    // Both start from the same controller (same seed); only the LSTM policy moved it.
    let ckpt = "checkpoints/epoch-0001/controller.safetensors";
    let (a, b) = (lstm.join(ckpt), random.join(ckpt));
    assert!(!same_tensors(&a, &b), "the LSTM controller did not move");
    // No controller step ran with the random policy: 9 steps, all shared.
    let steps = |run: &Path| -> usize {
        let m = String::from_utf8(read(&run.join("metrics.jsonl"))).unwrap();
        m.lines()
            .filter(|l| l.contains("\"phase\":\"controller\""))
            .count()
    };
    let lines_random = steps(&random);
    assert_eq!(lines_random, 0);
}

#[test]
fn enas_counts_are_the_reference_counts() {
    // crates/nas-enas/tests/fixtures/reference_counts.py
    let out = ok(&run(&["count", "--model", "enas-micro-search", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params"], 5_373_140);
    assert_eq!(v["params_with_aux"], 5_373_140 + 412_928);
    let out = ok(&run(&[
        "count",
        "--model",
        "enas-controller",
        "--space",
        "micro",
    ]));
    assert!(out.contains("41733 parameters"), "{out}");
    fails_with(
        &run(&["count", "--model", "enas-controller"]),
        "--space micro",
    );
}

#[test]
fn bad_enas_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    fails_with(
        &search(&out, &["--set", "model.filters=7"]),
        "model.filters",
    );
    // The digits are 8x8: too small for the auxiliary head's 5x5 pooling.
    fails_with(
        &search(&out, &["--set", "model.aux_head=true"]),
        "model.aux_head",
    );
    fails_with(
        &search(&out, &["--set", "data.valid_images=8"]),
        "data.valid_images",
    );
    fails_with(
        &search(&out, &["--set", "controller.kind=\"greedy\""]),
        "greedy",
    );
    // Refused from its estimate, before anything is allocated or created.
    fails_with(
        &search(&out, &["--set", "model.filters=4096"]),
        "this search needs about",
    );
    assert!(!out.exists(), "a refused search left a run folder");
    let toml = ok(&run(&[
        "search",
        "enas",
        "--dataset",
        "cifar10",
        "--dry-run",
    ]));
    for line in [
        "batch_size = 160",
        "filters = 20",
        "train_steps = 30",
        "num_aggregate = 10",
        "epochs = 150",
    ] {
        assert!(toml.contains(line), "{line} missing:\n{toml}");
    }
}
