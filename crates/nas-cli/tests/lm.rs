//! The recurrent commands as a user runs them, on the real PTB in `../shared/datasets`:
//! `nas search darts-rnn` killed with SIGKILL and resumed, `nas train-lm` to a test
//! perplexity that `nas eval` reproduces, `nas count --model ptb|search-rnn`, and errors.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{epoch_lines, read};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")
}

fn nas(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nas"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir())
        .env_remove("RUST_LOG")
        .env("CANDLE_NUM_THREADS", "1");
    cmd
}

fn plain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nas"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "nas failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Starts `args`, waits for `marker` to exist, then kills the process with SIGKILL.
fn kill_once_exists(args: &[&str], marker: &Path) {
    let mut child = nas(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{} never appeared",
            marker.display()
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before it was killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

const SEARCH: &[&str] = &[
    "search",
    "darts-rnn",
    "--preset",
    "tiny",
    "--set",
    "run.epochs=3",
];

#[test]
fn a_recurrent_search_killed_with_sigkill_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let mut args = SEARCH.to_vec();
    args.extend(["--out", a.to_str().unwrap()]);
    let stdout = ok(&nas(&args).output().unwrap());
    assert!(stdout.starts_with("Genotype(recurrent=["), "{stdout}");
    for file in [
        "genotype.json",
        "genotype.py",
        "genotype.svg",
        "alphas.safetensors",
    ] {
        assert!(a.join(file).is_file(), "{file} missing");
    }
    let epochs = epoch_lines(&a);
    assert_eq!(epochs.len(), 3);
    // Perplexity is finite and below the vocabulary size's uniform guess by the end.
    let ppl = epochs[2]["val_ppl"].as_f64().unwrap();
    assert!(
        ppl.is_finite() && ppl < 10_000.0,
        "validation perplexity {ppl}"
    );
    // The architecture weights moved from their 1e-3 N(0, 1) start.
    let alphas =
        candle_core::safetensors::load(a.join("alphas.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let max = alphas["weights"]
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max > 0.01, "the alphas barely moved: max |alpha| = {max}");
    // The saved alphas derive the same genotype through `nas genotype derive`.
    let alphas_path = a.join("alphas.safetensors");
    let derived = ok(&plain(&[
        "genotype",
        "derive",
        "--space",
        "darts-rnn",
        "--alphas",
        alphas_path.to_str().unwrap(),
    ]));
    assert_eq!(derived.trim(), stdout.lines().next().unwrap().trim());

    let b = dir.path().join("b");
    let mut args = SEARCH.to_vec();
    args.extend(["--out", b.to_str().unwrap()]);
    kill_once_exists(&args, &b.join("checkpoints/epoch-0001"));
    assert!(
        !b.join("genotype.json").exists(),
        "the run finished before the kill"
    );
    let resumed = ok(
        &nas(&["search", "darts-rnn", "--resume", b.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let first = |s: &str| s.lines().next().unwrap_or_default().to_string();
    assert_eq!(first(&resumed), first(&stdout));
    for file in ["alphas.safetensors", "genotype.json", "genotype.py"] {
        assert_eq!(read(&a.join(file)), read(&b.join(file)), "{file} differs");
    }
    let (ea, eb) = (epoch_lines(&a), epoch_lines(&b));
    assert_eq!(
        eb.len(),
        3,
        "metrics.jsonl has duplicated or missing epochs"
    );
    for (x, y) in ea.iter().zip(&eb) {
        for key in ["train_loss", "val_loss", "arch_val_loss", "genotype"] {
            assert_eq!(x[key], y[key], "{key} of epoch {}", x["epoch"]);
        }
    }
}

#[test]
fn train_lm_reports_test_perplexity_that_eval_reproduces_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let base = [
        "train-lm",
        "--genotype",
        "darts-rnn-v2",
        "--preset",
        "tiny",
        "--set",
        "run.epochs=5",
        "--set",
        "optim.nonmono=1",
    ];
    let mut args = base.to_vec();
    args.extend(["--out", a.to_str().unwrap()]);
    let stdout = ok(&nas(&args).output().unwrap());
    assert!(stdout.starts_with("test perplexity "), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&read(&a.join("results.json"))).unwrap();
    let test_ppl = results["test"]["ppl"].as_f64().unwrap();
    assert!(test_ppl.is_finite() && test_ppl > 1.0, "{results}");
    // 82,430 test tokens in 50 columns: 1,648 rows, 1,647 predicted per column.
    assert_eq!(results["test"]["tokens"], 50 * 1_647);
    let eval = ok(&nas(&[
        "eval",
        "--checkpoint",
        a.to_str().unwrap(),
        "--best",
        "--json",
    ])
    .output()
    .unwrap());
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["ppl"], results["test"]["ppl"], "{eval} vs {results}");

    // Killed after its first checkpoint and resumed: the same test perplexity.
    let b = dir.path().join("b");
    let mut args = base.to_vec();
    args.extend(["--out", b.to_str().unwrap()]);
    kill_once_exists(&args, &b.join("checkpoints/epoch-0001"));
    ok(&nas(&["train-lm", "--resume", b.to_str().unwrap()])
        .output()
        .unwrap());
    let again: serde_json::Value = serde_json::from_slice(&read(&b.join("results.json"))).unwrap();
    for key in ["loss", "ppl", "tokens"] {
        assert_eq!(again["test"][key], results["test"][key], "test {key}");
    }
    let (ea, eb) = (epoch_lines(&a), epoch_lines(&b));
    assert_eq!(eb.len(), 5);
    // NT-ASGD (nonmono 1) switched exactly where the logged validation losses say it
    // should: the first epoch whose loss is worse than the best but the last; averaging
    // from then on.
    let losses: Vec<f64> = ea.iter().map(|e| e["val_loss"].as_f64().unwrap()).collect();
    let switch = (2..losses.len()).find(|&e| {
        losses[e]
            > losses[..e - 1]
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
    });
    for (e, line) in ea.iter().enumerate() {
        assert_eq!(
            line["switched_to_asgd"],
            Some(e) == switch,
            "epoch {e}: {losses:?}"
        );
        assert_eq!(
            line["averaging"],
            switch.is_some_and(|s| e >= s),
            "epoch {e}"
        );
    }
    for (x, y) in ea.iter().zip(&eb) {
        for key in ["train_loss", "val_loss", "averaging"] {
            assert_eq!(x[key], y[key], "{key} of epoch {}", x["epoch"]);
        }
    }
}

#[test]
fn count_prints_the_reference_parameter_counts() {
    let count = |args: &[&str]| -> u64 {
        let mut all = vec!["count", "--json"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&ok(&plain(&all))).unwrap();
        v["params"].as_u64().unwrap()
    };
    // The paper's retraining setting: "23M" (Table 2).
    assert_eq!(
        count(&["--model", "ptb", "--genotype", "darts-rnn-v2"]),
        22_960_000
    );
    assert_eq!(count(&["--model", "search-rnn"]), 4_810_000);
    let out = plain(&["count", "--model", "ptb", "--genotype", "darts-v2"]);
    fails_with(&out, "takes a DARTS recurrent genotype");
}

#[test]
fn recurrent_commands_name_what_is_wrong() {
    let out = nas(&["train-lm", "--genotype", "darts-v2", "--preset", "tiny"])
        .output()
        .unwrap();
    fails_with(&out, "nas train-lm takes a DARTS recurrent genotype");
    let out = nas(&[
        "search",
        "darts-rnn",
        "--preset",
        "tiny",
        "--set",
        "model.nhid=7",
        "--dry-run",
    ])
    .output()
    .unwrap();
    fails_with(&out, "emsize and nhid must be equal");
    let out = nas(&["search", "darts-rnn", "--preset", "huge"])
        .output()
        .unwrap();
    fails_with(&out, "unknown preset \"huge\"");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nas"))
        .args(["search", "darts-rnn", "--preset", "tiny", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    fails_with(&out, "cargo xtask download ptb");
}

/// WikiText-2's published file names (`wiki.{train,valid,test}.tokens`) go through the
/// same code: a corpus written in that layout trains and tests.
#[test]
fn train_lm_reads_a_wikitext2_layout() {
    let dir = tempfile::tempdir().unwrap();
    let wiki = dir.path().join("wikitext2");
    std::fs::create_dir_all(&wiki).unwrap();
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "home",
    ];
    let text = |n: usize, salt: usize| -> String {
        (0..n)
            .map(|i| {
                let w = words[(i * 7 + salt * 3 + i / 13) % words.len()];
                if i % 12 == 11 {
                    format!("{w}\n")
                } else {
                    format!("{w} ")
                }
            })
            .collect()
    };
    std::fs::write(wiki.join("wiki.train.tokens"), text(8_000, 1)).unwrap();
    std::fs::write(wiki.join("wiki.valid.tokens"), text(2_500, 2)).unwrap();
    std::fs::write(wiki.join("wiki.test.tokens"), text(2_500, 3)).unwrap();
    let out = dir.path().join("run");
    let done = Command::new(env!("CARGO_BIN_EXE_nas"))
        .args(["train-lm", "--genotype", "darts-rnn-v1", "--preset", "tiny"])
        .args([
            "--dataset",
            "wikitext2",
            "--set",
            "run.epochs=1",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .env("CANDLE_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = ok(&done);
    assert!(stdout.starts_with("test perplexity "), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&read(&out.join("results.json"))).unwrap();
    let ppl = results["test"]["ppl"].as_f64().unwrap();
    // 11 words (10 and <eos>): a model that learned anything beats the uniform 11.
    assert!(ppl.is_finite() && ppl < 11.0, "{results}");
}

/// `train-lm` killed at each of its first renames (the run's files, every checkpoint's
/// commit and `best.json`; `strace -e inject`, skipped when strace is missing), then
/// resumed, ends with the uninterrupted run's best checkpoint and test perplexity.
#[test]
fn train_lm_killed_at_any_rename_resumes_to_the_same_result() {
    if !Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("strace is missing: skipping the kill-at-rename test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "train-lm",
        "--genotype",
        "darts-rnn-v2",
        "--preset",
        "tiny",
        "--seed",
        "4",
        "--set",
        "run.epochs=3",
        "--set",
        "run.keep_checkpoints=1",
    ];
    let outcome = |run: &Path| {
        let eval = ok(&nas(&[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--best",
            "--json",
        ])
        .output()
        .unwrap());
        let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
        let results: serde_json::Value =
            serde_json::from_slice(&read(&run.join("results.json"))).unwrap();
        (eval["loss"].to_string(), results["test"]["ppl"].to_string())
    };
    let whole = dir.path().join("whole");
    let mut args = base.to_vec();
    args.extend(["--out", whole.to_str().unwrap()]);
    ok(&nas(&args).output().unwrap());
    let expected = outcome(&whole);
    for n in 1..=9 {
        let cut = dir.path().join(format!("cut-{n}"));
        let inject = format!("inject=rename,renameat,renameat2:signal=KILL:when={n}");
        let killed = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=rename,renameat,renameat2",
            ])
            .args(["-e", &inject, env!("CARGO_BIN_EXE_nas")])
            .args(base)
            .args(["--out", cut.to_str().unwrap(), "--data-dir"])
            .arg(data_dir())
            .env("CANDLE_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(!killed.status.success(), "rename {n} was not reached");
        if cut.join("config.toml").exists() {
            ok(&nas(&["train-lm", "--resume", cut.to_str().unwrap()])
                .output()
                .unwrap());
        } else {
            let mut args = base.to_vec();
            args.extend(["--out", cut.to_str().unwrap()]);
            ok(&nas(&args).output().unwrap());
        }
        assert_eq!(outcome(&cut), expected, "killed at rename {n}");
    }
}
