//! `nas search darts` and `nas count` as a user runs them: a search to the end, a run
//! killed with SIGKILL and resumed, a loss that becomes NaN, bad configurations.

// Test helpers may panic on a broken fixture: that is a failed test, not a bug to handle.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Output, Stdio};

mod common;
use common::{epoch_lines, fails_with, nas, ok, read, run, TINY, TINY_TRAIN};
use std::time::{Duration, Instant};

fn search(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["search", "darts", "--out", out.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn a_search_killed_with_sigkill_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let stdout = ok(&search(&a, &[]));
    assert!(stdout.starts_with("Genotype(normal=["), "{stdout}");
    for file in [
        "genotype.json",
        "genotype.py",
        "genotype.svg",
        "alphas.safetensors",
        "config.toml",
        "curves.svg",
        "alphas.svg",
        "events.out.tfevents.candle-nas",
    ] {
        assert!(a.join(file).is_file(), "{file} missing");
    }
    // `nas plot` redraws the same pictures; a folder that is not a run is refused.
    let curves = read(&a.join("curves.svg"));
    std::fs::remove_file(a.join("alphas.svg")).unwrap();
    let plotted = ok(&run(&["plot", a.to_str().unwrap()]));
    assert!(plotted.contains("curves.svg, alphas.svg"), "{plotted}");
    assert_eq!(read(&a.join("curves.svg")), curves);
    fails_with(
        &run(&["plot", dir.path().to_str().unwrap()]),
        "is not a run directory",
    );
    let config = String::from_utf8(read(&a.join("config.toml"))).unwrap();
    assert!(
        config.contains("channels = 2") && config.contains("epochs = 4"),
        "{config}"
    );
    let epochs = epoch_lines(&a);
    assert_eq!(epochs.len(), 4);
    // The alphas moved away from their 1e-3 N(0, 1) start (12 Adam steps of lr 3e-3 can
    // move one by up to 0.036) and were saved every epoch.
    assert!(a.join("alphas/epoch-0004.safetensors").is_file());
    let alphas =
        candle_core::safetensors::load(a.join("alphas.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for name in ["alphas_normal", "alphas_reduce"] {
        let max = alphas[name]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max > 0.01, "{name} barely moved: max |alpha| = {max}");
    }

    // The same search, killed once its second checkpoint exists, then resumed.
    let b = dir.path().join("b");
    let mut args: Vec<&str> = vec!["search", "darts", "--out", b.to_str().unwrap()];
    args.extend_from_slice(TINY);
    let mut child = nas(&args)
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
    let resumed = ok(&run(&["search", "darts", "--resume", b.to_str().unwrap()]));
    let first = |s: &str| s.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        first(&resumed),
        first(&stdout),
        "the resumed run found another genotype"
    );
    for file in ["alphas.safetensors", "genotype.json", "genotype.py"] {
        assert_eq!(read(&a.join(file)), read(&b.join(file)), "{file} differs");
    }
    let (ea, eb) = (epoch_lines(&a), epoch_lines(&b));
    assert_eq!(
        eb.len(),
        4,
        "metrics.jsonl has duplicated or missing epochs"
    );
    for (x, y) in ea.iter().zip(&eb) {
        for key in [
            "train_loss",
            "val_loss",
            "val_accuracy",
            "genotype",
            "alpha_softmax",
        ] {
            assert_eq!(x[key], y[key], "{key} of epoch {}", x["epoch"]);
        }
    }
    // A finished run resumes to the same outputs without training again.
    let again = ok(&run(&["search", "darts", "--resume", b.to_str().unwrap()]));
    assert_eq!(first(&again), first(&stdout));
}

#[test]
fn a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ok(&search(&a, &["--set", "run.epochs=1"]));
    let ckpt = a.join("checkpoints/epoch-0001");
    let before = read(&ckpt.join("weights.safetensors"));
    // Continue the run with a learning rate that blows the weights up.
    let config = String::from_utf8(read(&a.join("config.toml"))).unwrap();
    let config = config
        .replace("epochs = 1", "epochs = 2")
        .replace("lr = 0.025", "lr = 1e30");
    assert!(config.contains("lr = 1e30"), "{config}");
    std::fs::write(a.join("config.toml"), config).unwrap();
    let out = run(&["search", "darts", "--resume", a.to_str().unwrap()]);
    fails_with(&out, "is not finite");
    assert_eq!(read(&ckpt.join("weights.safetensors")), before);
    assert!(!a.join("checkpoints/epoch-0002").exists());
}

#[test]
fn bad_configurations_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    fails_with(
        &search(&out, &["--set", "model.chanels=4"]),
        "model.chanels",
    );
    fails_with(&search(&out, &["--preset", "cifar"]), "unknown preset");
    fails_with(&search(&out, &["--dataset", "svhn"]), "unknown data set");
    fails_with(&search(&out, &["--dataset", "ptb"]), "in-memory image set");
    assert!(!out.exists(), "a search that could not start left a folder");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[data]\nsurprise = 1\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    fails_with(&run(&["search", "darts", "--config", cfg_arg]), "c.toml");
    // Missing data names the data set and how to fetch it.
    let out = run(&[
        "search",
        "darts",
        "--dataset",
        "cifar10",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().join("y").to_str().unwrap(),
    ]);
    fails_with(&out, "cifar10");
    // Resuming something that is not a run.
    fails_with(
        &run(&["search", "darts", "--resume", dir.path().to_str().unwrap()]),
        "config.toml",
    );
    // A second search into a used folder is refused (the first run is not overwritten).
    ok(&search(&out_dir(dir.path()), &["--set", "run.epochs=1"]));
    fails_with(&search(&out_dir(dir.path()), &[]), "--resume");
}

fn out_dir(root: &Path) -> std::path::PathBuf {
    root.join("used")
}

#[test]
fn dry_run_prints_the_resolved_configuration() {
    let out = ok(&run(&[
        "search",
        "darts",
        "--dry-run",
        "--order",
        "second",
        "--seed",
        "7",
    ]));
    assert!(out.contains("dataset = \"digits\""), "{out}");
    assert!(out.contains("order = \"second\""), "{out}");
    assert!(out.contains("seed = 7"), "{out}");
    let paper = ok(&run(&["search", "darts", "--dry-run", "--preset", "paper"]));
    assert!(
        paper.contains("channels = 16") && paper.contains("epochs = 50"),
        "{paper}"
    );
}

#[test]
fn count_prints_the_reference_parameter_count() {
    // The reference search network at the paper's size: "param size = 1.930618MB".
    let out = ok(&run(&[
        "count",
        "--model",
        "search-cnn",
        "--channels",
        "16",
        "--layers",
        "8",
        "--classes",
        "10",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params"], 1_930_618);
    let text = ok(&run(&[
        "count",
        "--model",
        "search-cnn",
        "--channels",
        "8",
        "--layers",
        "5",
    ]));
    assert!(text.contains("394210 parameters"), "{text}");
    fails_with(
        &run(&["count", "--model", "search-cnn", "--channels", "5"]),
        "channels must be even",
    );
}

#[test]
fn count_of_evaluation_networks_matches_the_reference() {
    // The reference NetworkCIFAR / NetworkImageNet with DARTS-V2 (see the unit test in
    // nas-darts for the source of these numbers).
    let out = ok(&run(&[
        "count",
        "--model",
        "cifar",
        "--genotype",
        "darts-v2",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params"], 3_349_342);
    assert_eq!(v["params_with_aux"], 3_825_768);
    assert_eq!(v["mult_adds"], 528_359_040u64);
    let text = ok(&run(&[
        "count",
        "--model",
        "imagenet",
        "--genotype",
        "darts-v2",
    ]));
    assert!(text.contains("4718752 parameters (4.72M)"), "{text}");
    // A genotype file a search wrote works the same way.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.json");
    let json = ok(&run(&["genotype", "show", "darts-v2", "--format", "json"]));
    std::fs::write(&file, json).unwrap();
    let out = ok(&run(&[
        "count",
        "--model",
        "cifar",
        "--genotype",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert!(out.contains("3349342"), "{out}");
    // With the auxiliary head built, "parameters" still follow the papers (head
    // excluded); the head's total stands beside them.
    let out = ok(&run(&[
        "count",
        "--model",
        "cifar",
        "--genotype",
        "darts-v2",
        "--auxiliary",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params"], 3_349_342, "{out}");
    assert_eq!(v["params_with_aux"], 3_825_768, "{out}");
    let out = ok(&run(&[
        "count",
        "--model",
        "cifar",
        "--genotype",
        "darts-v2",
        "--auxiliary",
    ]));
    assert!(
        out.contains("3349342 parameters") && out.contains("3825768 with the auxiliary head"),
        "{out}"
    );
    fails_with(
        &run(&["count", "--model", "cifar", "--genotype", "darts-rnn-v2"]),
        "DARTS CNN or an ENAS micro genotype",
    );
    fails_with(&run(&["count", "--model", "cifar"]), "--genotype");
    // ENAS micro cells count in ENAS's own network (17 cells by default); the figures
    // are the reference TensorFlow graph's (see the unit test in nas-models).
    let out = ok(&run(&[
        "count",
        "--model",
        "cifar",
        "--genotype",
        "enas-micro",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["layers"], 17, "{v}");
    assert_eq!(v["params"], 3_894_372);
    assert_eq!(v["params_with_aux"], 4_389_220);
    assert_eq!(v["mult_adds"], 620_907_552u64);
    fails_with(
        &run(&["count", "--model", "imagenet", "--genotype", "enas-micro"]),
        "CIFAR network only",
    );
}

/// `nas eval --checkpoint DIR --json` plus `extra`, parsed.
fn eval_json(run_dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["eval", "--checkpoint", run_dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&run(&args))).unwrap()
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(&dir.join("results.json"))).unwrap()
}

#[test]
fn train_reports_test_accuracy_resumes_after_sigkill_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let mut args = vec!["train", "--out", a.to_str().unwrap()];
    args.extend_from_slice(TINY_TRAIN);
    let stdout = ok(&run(&args));
    assert!(stdout.starts_with("test accuracy "), "{stdout}");
    let ra = results(&a);
    assert_eq!(ra["test"]["images"], 360, "{ra}");
    assert_eq!(ra["val"]["images"], 200, "{ra}");
    // The network learns the digits: far above the 10% of chance after 4 epochs.
    assert!(ra["test"]["top1"].as_f64().unwrap() > 0.5, "{ra}");

    let b = dir.path().join("b");
    let mut args = vec!["train", "--out", b.to_str().unwrap()];
    args.extend_from_slice(TINY_TRAIN);
    let mut child = nas(&args)
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
            panic!("the run ended before it was killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("results.json").exists(),
        "the run finished before the kill"
    );
    ok(&run(&["train", "--resume", b.to_str().unwrap()]));
    assert_eq!(results(&b)["test"]["top1"], ra["test"]["top1"]);
    assert_eq!(results(&b)["test"]["loss"], ra["test"]["loss"]);

    // `nas eval` on the newest checkpoint gives the figures the run reported.
    assert_eq!(eval_json(&a, &[])["top1"], ra["test"]["top1"]);
    assert_eq!(
        eval_json(&a, &["--split", "val"])["top1"],
        ra["val"]["top1"]
    );
    fails_with(
        &run(&["eval", "--checkpoint", dir.path().to_str().unwrap()]),
        "config.toml",
    );
}

#[test]
fn train_builds_enas_micro_cells_and_evaluates_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let args = [
        "train",
        "--genotype",
        "enas-micro",
        "--out",
        a.to_str().unwrap(),
        "--set",
        "model.channels=4",
        "--set",
        "run.epochs=3",
        "--set",
        "model.dropout=0.1",
    ];
    ok(&run(&args));
    let ra = results(&a);
    // The results name the genotype in ENAS's own notation; the cells learn the digits.
    assert_eq!(
        ra["genotype"],
        "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1"
    );
    assert!(ra["test"]["top1"].as_f64().unwrap() > 0.5, "{ra}");
    let genotype = String::from_utf8(read(&a.join("genotype.json"))).unwrap();
    assert!(genotype.contains("enas-micro"), "{genotype}");
    // The run directory alone rebuilds the network.
    assert_eq!(eval_json(&a, &[])["top1"], ra["test"]["top1"]);
    // On CIFAR-10, ENAS cells default to ENAS's own final training.
    let toml = ok(&run(&[
        "train",
        "--genotype",
        "enas-micro",
        "--dataset",
        "cifar10",
        "--dry-run",
    ]));
    for line in [
        "batch_size = 144",
        "layers = 17",
        "schedule = \"sgdr\"",
        "nesterov = true",
        "dropout = 0.2",
        "epochs = 630",
    ] {
        assert!(toml.contains(line), "{line} missing:\n{toml}");
    }
}

#[test]
fn train_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = out.to_str().unwrap();
    fails_with(
        &run(&[
            "train",
            "--genotype",
            "darts-v2",
            "--out",
            o,
            "--set",
            "model.auxiliary=true",
        ]),
        "auxiliary",
    );
    fails_with(
        &run(&["train", "--genotype", "darts-rnn-v2", "--out", o]),
        "DARTS CNN or an ENAS micro genotype",
    );
    fails_with(
        &run(&[
            "train",
            "--genotype",
            "darts-v2",
            "--out",
            o,
            "--set",
            "data.valid_images=5000",
        ]),
        "data.valid_images",
    );
    assert!(!out.exists());
}

#[test]
fn import_converts_a_reference_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nas-models/tests/fixtures/darts_v2_c4_l3.pt");
    let out = dir.path().join("w.safetensors");
    let args = [
        "import",
        "--from",
        fixture.to_str().unwrap(),
        "--genotype",
        "darts-v2",
        "--model",
        "cifar",
        "--channels",
        "4",
        "--layers",
        "3",
        "-o",
        out.to_str().unwrap(),
    ];
    let stdout = ok(&run(&args));
    // 122 entries, less the 18 `num_batches_tracked` counters.
    assert!(stdout.starts_with("104 tensors"), "{stdout}");
    let tensors = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    assert!(tensors.contains_key("cells.2.preprocess0.conv_1.weight"));
    assert!(tensors.contains_key("stem.1.running_var"));
    let mut bad = args.to_vec();
    bad[4] = "darts-v1";
    fails_with(&run(&bad), "darts_v2_c4_l3.pt");

    // The file evaluates as it is: the 20 real CIFAR-10 test images as a test split.
    let data = dir.path().join("data");
    let cifar = data.join("cifar10/cifar-10-batches-bin");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/cifar10-sample/test_batch_first20.bin"),
        cifar.join("test_batch.bin"),
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--checkpoint",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let report: serde_json::Value = serde_json::from_str(&ok(&eval(&["--json"]))).unwrap();
    assert_eq!(report["images"], 20, "{report}");
    let top1 = report["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{report}");
    // An untrained-size network (C=4, 3 cells) still gives a finite loss near ln(10).
    let loss = report["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{report}");
    fails_with(&eval(&["--split", "val"]), "weights file");
    fails_with(&eval(&["--dataset", "digits"]), "takes 3x32x32 images");
}

#[test]
fn train_runs_on_an_imagenet_tree_of_real_jpegs() {
    // The 20 real sample JPEGs as a 2-class ImageFolder: 16 to train/, 4 to val/.
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/imagenet-sample/val");
    let mut files: Vec<_> = walk(&sample);
    files.sort();
    assert_eq!(files.len(), 20, "{}", sample.display());
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in files.iter().enumerate() {
        let split = if i < 16 { "train" } else { "val" };
        let class = dir.path().join(format!("imagenet/{split}/n0{}", i % 2));
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(f, class.join(f.file_name().unwrap())).unwrap();
    }
    let out = dir.path().join("run");
    let stdout = ok(&run(&[
        "train",
        "--genotype",
        "darts-v2",
        "--dataset",
        "imagenet",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "model.channels=4",
        "--set",
        "model.layers=3",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.valid_images=4",
        "--set",
        "run.epochs=2",
    ]));
    assert!(stdout.contains("on 4 images"), "{stdout}");
    let r = results(&out);
    assert_eq!(r["val"]["images"], 4);
    let config = String::from_utf8(read(&out.join("config.toml"))).unwrap();
    // The ImageNet preset: step decay, label smoothing, auxiliary head.
    assert!(
        config.contains("schedule = \"step\"") && config.contains("label_smoothing = 0.1"),
        "{config}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
