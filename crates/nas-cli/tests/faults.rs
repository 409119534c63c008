//! The run directory under faults, as an adversarial user meets them: a kill in every
//! rename window of a training run (through `strace -e inject`, skipped when strace is
//! missing), two runs in one folder, output paths that are not regular files, a full
//! stdout, a bad configuration, corrupt or stray checkpoints and leftovers, a finished
//! run resumed.

// Test helpers may panic on a broken fixture: that is a failed test, not a bug to handle.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{fails_with, nas, ok, run, TINY, TINY_TRAIN};
use std::time::{Duration, Instant};

fn train_args(out: &Path) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(TINY_TRAIN.iter().map(|s| s.to_string()));
    args
}

/// What a finished training run reports: the best checkpoint's validation loss and the
/// test accuracy.
fn outcome(dir: &Path) -> (String, String) {
    let best = ok(&run(&[
        "eval",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--best",
        "--split",
        "val",
        "--json",
    ]));
    let best: serde_json::Value = serde_json::from_str(&best).unwrap();
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    (
        best["loss"].to_string(),
        results["test"]["top1"].to_string(),
    )
}

fn has_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A kill at each of the first renames of a run (the configuration, every checkpoint's
/// commit, every `best.json`), then a resume: the best checkpoint and the results are
/// those of an uninterrupted run.
#[test]
fn a_kill_at_any_rename_resumes_to_the_same_best_checkpoint_and_result() {
    if !has_strace() {
        eprintln!("strace is missing: skipping the kill-at-rename test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let args = train_args(&whole);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&run(&args));
    let expected = outcome(&whole);
    for n in 1..=9 {
        let cut = dir.path().join(format!("cut-{n}"));
        let mut cmd = Command::new("strace");
        cmd.args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=rename,renameat,renameat2",
            "-e",
            &format!("inject=rename,renameat,renameat2:signal=KILL:when={n}"),
            env!("CARGO_BIN_EXE_nas"),
        ]);
        cmd.args(train_args(&cut))
            .env("CANDLE_NUM_THREADS", "1")
            .env("NAS_DATA_DIR", "/nonexistent");
        let killed = cmd.output().unwrap();
        assert!(!killed.status.success(), "rename {n} was not reached");
        if !cut.join("config.toml").exists() {
            // Killed before the run existed: nothing to resume, and nothing is left that
            // would block starting it again.
            let again = train_args(&cut);
            let again: Vec<&str> = again.iter().map(String::as_str).collect();
            ok(&run(&again));
        } else {
            ok(&run(&["train", "--resume", cut.to_str().unwrap()]));
        }
        assert_eq!(outcome(&cut), expected, "killed at rename {n}");
        let leftovers: Vec<PathBuf> = std::fs::read_dir(&cut)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "rename {n}: {leftovers:?}");
    }
}

/// A second run into a folder in use, and a second resume of it, are refused while the
/// first runs; once it is killed, its resume is not blocked.
#[test]
fn a_run_directory_is_held_by_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut args = train_args(&out);
    args.extend(["--set".into(), "run.epochs=40".into()]);
    let first_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = nas(&first_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("config.toml").exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "no run started");
        std::thread::sleep(Duration::from_millis(20));
    }
    fails_with(&run(&first_args), "in use by another run");
    fails_with(
        &run(&["train", "--resume", out.to_str().unwrap()]),
        "in use by another run",
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // Killed: the kernel released the lock. Resume to two epochs to keep the test short.
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("epochs = 40"), "{config}");
    let resumed = nas(&["train", "--resume", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It runs (no lock error) until we stop it.
    std::thread::sleep(Duration::from_millis(1500));
    let mut resumed = resumed;
    assert!(
        resumed.try_wait().unwrap().is_none(),
        "the resume ended early"
    );
    resumed.kill().unwrap();
    resumed.wait().unwrap();
}

/// `-o` writes through a symbolic link and refuses a FIFO, a device and a directory,
/// leaving them as they were.
#[test]
fn output_paths_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.py");
    std::fs::write(&real, "old").unwrap();
    let link = dir.path().join("link.py");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    ok(&run(&[
        "genotype",
        "show",
        "darts-v2",
        "-o",
        link.to_str().unwrap(),
    ]));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&real)
        .unwrap()
        .starts_with("Genotype("));
    let fifo = dir.path().join("fifo");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        fails_with(
            &run(&["genotype", "show", "darts-v2", "-o", fifo.to_str().unwrap()]),
            "not a regular file",
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }
    fails_with(
        &run(&["genotype", "show", "darts-v2", "-o", "/dev/full"]),
        "is a device, FIFO or socket, not a regular file",
    );
    fails_with(
        &run(&[
            "genotype",
            "show",
            "darts-v2",
            "-o",
            dir.path().to_str().unwrap(),
        ]),
        "is a directory",
    );
}

/// A full stdout is exit 2 with one line, not a panic.
#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    for args in [
        &["search", "darts", "--dry-run"][..],
        &["train", "--genotype", "darts-v2", "--dry-run"],
        &["train-lm", "--genotype", "darts-rnn-v2", "--dry-run"],
        &["search", "darts-rnn", "--dry-run"],
        &["genotype", "show", "darts-v2"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = nas(args).stdout(full).output().unwrap();
        fails_with(&out, "writing to stdout");
    }
}

/// A configuration that cannot make a network is refused before anything is created,
/// with the field named, by `--dry-run` too.
#[test]
fn a_bad_configuration_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (set, field) in [
        ("model.channels=0", "model.channels"),
        ("model.layers=1", "model.layers"),
        ("model.steps=0", "model.steps"),
        ("model.multiplier=0", "model.multiplier"),
        ("data.crop_padding=1000", "data.crop_padding"),
        ("data.cutout=1000", "data.cutout"),
        ("weights.lr=1e308", "weights.lr = 1e308 is out of range"),
        ("arch.lr=inf", "arch.lr = inf is out of range"),
    ] {
        let out = dir.path().join(set.replace('=', "-"));
        let args = [
            "search",
            "darts",
            "--set",
            set,
            "--out",
            out.to_str().unwrap(),
        ];
        fails_with(&run(&args), field);
        assert!(
            !out.join("config.toml").exists(),
            "{set}: a run was created"
        );
        if set.starts_with("model.") || set.contains("lr") {
            fails_with(&run(&["search", "darts", "--set", set, "--dry-run"]), field);
        }
    }
    let out = dir.path().join("train");
    let mut args = train_args(&out);
    args.extend(["--set".into(), "model.channels=3".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&run(&args), "model.channels");
    assert!(!out.join("config.toml").exists());
}

/// Resume skips (and moves aside) a corrupt newest checkpoint, a stray empty one and one
/// whose state.json names another epoch, removes a killed run's temporary files, and
/// ends with the uninterrupted run's result; a finished run resumed reports real numbers.
#[test]
fn resume_uses_the_newest_whole_checkpoint_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut args = train_args(&whole);
    args.extend(["--set".into(), "run.keep_checkpoints=2".into()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&run(&args_ref));
    let expected = outcome(&whole);
    // A finished run resumed: the numbers of the run, not NaN.
    let again = ok(&run(&["train", "--resume", whole.to_str().unwrap()]));
    assert!(!again.contains("NaN"), "{again}");
    assert_eq!(outcome(&whole), expected);

    let cut = dir.path().join("cut");
    let mut args = train_args(&cut);
    args.extend(["--set".into(), "run.keep_checkpoints=2".into()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&run(&args_ref));
    let ckpts = cut.join("checkpoints");
    // The newest checkpoint's weights are corrupt; a stray empty folder and one whose
    // state.json names another epoch sort after it.
    std::fs::write(ckpts.join("epoch-0004/weights.safetensors"), b"garbage").unwrap();
    std::fs::create_dir_all(ckpts.join("epoch-9999")).unwrap();
    std::fs::create_dir_all(ckpts.join("epoch-0005")).unwrap();
    std::fs::write(
        ckpts.join("epoch-0005/state.json"),
        std::fs::read(ckpts.join("epoch-0003/state.json")).unwrap(),
    )
    .unwrap();
    for leftover in [
        "best.json.tmp4242",
        "genotype.svg.tmp17",
        "checkpoints/.epoch-0006.tmp",
    ] {
        let p = cut.join(leftover);
        if leftover.ends_with(".tmp") {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::write(&p, b"half").unwrap();
        }
    }
    let out = run(&["train", "--resume", cut.to_str().unwrap()]);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("epoch-9999") && log.contains("epoch-0004"),
        "{log}"
    );
    assert_eq!(outcome(&cut), expected);
    for gone in [
        "best.json.tmp4242",
        "genotype.svg.tmp17",
        "checkpoints/.epoch-0006.tmp",
    ] {
        assert!(!cut.join(gone).exists(), "{gone} left behind");
    }
    for aside in [".epoch-9999.corrupt", ".epoch-0005.corrupt"] {
        assert!(ckpts.join(aside).exists(), "{aside} not kept");
    }
}

/// Messages name the file and say the cause once; a search run given to `nas eval` is
/// named as one; a genotype file with a byte-order mark reads.
#[test]
fn messages_name_the_problem_once() {
    let dir = tempfile::tempdir().unwrap();
    // A training run's folder without its genotype: the cause once, with the path.
    let train = dir.path().join("train");
    std::fs::create_dir_all(&train).unwrap();
    let config = ok(&run(&["train", "--genotype", "darts-v2", "--dry-run"]));
    std::fs::write(train.join("config.toml"), config).unwrap();
    let out = run(&["eval", "--checkpoint", train.to_str().unwrap()]);
    fails_with(
        &out,
        "genotype.json: No such file or directory (os error 2)",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A search run.
    let search = dir.path().join("search");
    std::fs::create_dir_all(&search).unwrap();
    let config = ok(&run(&["search", "darts", "--dry-run"]));
    std::fs::write(search.join("config.toml"), config).unwrap();
    fails_with(
        &run(&["eval", "--checkpoint", search.to_str().unwrap()]),
        "this is a search run",
    );
    // A byte-order mark before a JSON genotype.
    let json = ok(&run(&["genotype", "show", "darts-v2", "--format", "json"]));
    let bom = dir.path().join("bom.json");
    std::fs::write(&bom, format!("\u{feff}{json}")).unwrap();
    let shown = ok(&run(&["genotype", "show", bom.to_str().unwrap()]));
    assert!(shown.starts_with("Genotype("), "{shown}");
    // A megabyte value is not repeated whole.
    let big = dir.path().join("big.toml");
    let config = ok(&run(&["search", "darts", "--dry-run"]));
    let config = config.replacen(
        "channels = 8",
        &format!("channels = \"{}\"", "x".repeat(1 << 20)),
        1,
    );
    std::fs::write(&big, config).unwrap();
    let out = run(&[
        "search",
        "darts",
        "--config",
        big.to_str().unwrap(),
        "--dry-run",
    ]);
    fails_with(&out, "bytes in all");
    assert!(
        out.stderr.len() < 2000,
        "{} bytes of error",
        out.stderr.len()
    );
    // A device is read only so far as a text file can be long.
    fails_with(
        &run(&["genotype", "show", "/dev/zero"]),
        "is larger than 64 MiB",
    );
}

/// Sizes that cannot fit: `count` counts without allocating, a search is refused with
/// its estimate before anything is created (unless `--no-memory-check`).
#[test]
fn a_run_that_cannot_fit_is_refused_before_it_allocates() {
    let started = Instant::now();
    let text = ok(&run(&[
        "count",
        "--model",
        "search-cnn",
        "--channels",
        "100000",
    ]));
    assert!(text.contains("parameters"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "count allocated"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("huge");
    let args = [
        "search",
        "darts",
        "--set",
        "model.channels=100000",
        "--out",
        out.to_str().unwrap(),
    ];
    fails_with(&run(&args), "this search needs about");
    assert!(!out.join("config.toml").exists());
    let started = Instant::now();
    let text = ok(&run(&[
        "count",
        "--model",
        "cifar",
        "--genotype",
        "darts-v2",
        "--channels",
        "100000",
    ]));
    assert!(text.contains("parameters"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "count allocated"
    );
    let train = dir.path().join("train");
    let mut args = train_args(&train);
    args.extend(["--set".into(), "model.channels=100000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&run(&args), "this training run needs about");
    assert!(!train.join("config.toml").exists());
}

/// A finished search resumed reports the validation accuracy of its final weights, not
/// NaN; a corrupt `best.json` (only a copy of the checkpoints' record) is rewritten.
#[test]
fn a_finished_search_resumed_reports_real_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let mut args = vec!["search", "darts", "--out", out.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--set", "run.epochs=2"]);
    let first = ok(&run(&args));
    std::fs::write(out.join("best.json"), b"{not json").unwrap();
    let again = ok(&run(&[
        "search",
        "darts",
        "--resume",
        out.to_str().unwrap(),
    ]));
    assert!(!again.contains("NaN"), "{again}");
    let accuracy = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("validation accuracy"))
            .map(str::to_string)
    };
    assert_eq!(accuracy(&again), accuracy(&first), "{first}\n{again}");
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("best.json")).unwrap()).unwrap();
    assert!(best["checkpoint"].is_string(), "{best}");
    // The final summary into a full stdout: exit 2, not a panic.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out_full = nas(&["search", "darts", "--resume", out.to_str().unwrap()])
        .stdout(full)
        .output()
        .unwrap();
    fails_with(&out_full, "writing to stdout");
    // `checkpoints` replaced by a file: the error names it.
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    std::fs::write(out.join("checkpoints"), b"").unwrap();
    fails_with(
        &run(&["search", "darts", "--resume", out.to_str().unwrap()]),
        "/checkpoints",
    );
    // An import of something that is not a checkpoint: the file named, no
    // "configuration:" prefix.
    let not_pt = dir.path().join("x.pt");
    std::fs::write(&not_pt, b"not a checkpoint").unwrap();
    let import = run(&[
        "import",
        "--from",
        not_pt.to_str().unwrap(),
        "--genotype",
        "darts-v2",
        "--model",
        "cifar",
        "--output",
        dir.path().join("w.safetensors").to_str().unwrap(),
    ]);
    fails_with(&import, "x.pt: not a readable PyTorch checkpoint");
    assert!(!String::from_utf8_lossy(&import.stderr).contains("configuration:"));
}

/// Writes an IDX file: `magic` 8 (unsigned bytes) with `dims`, then `data`.
fn idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Test images of another size than the training images are refused before training,
/// not trained on to a meaningless accuracy.
#[test]
fn test_images_of_another_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fm = dir.path().join("fashion-mnist");
    std::fs::create_dir_all(&fm).unwrap();
    let n = 40u32;
    idx(
        &fm.join("train-images-idx3-ubyte"),
        &[n, 28, 28],
        &vec![7; (n * 28 * 28) as usize],
    );
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    idx(&fm.join("train-labels-idx1-ubyte"), &[n], &labels);
    idx(
        &fm.join("t10k-images-idx3-ubyte"),
        &[n, 14, 14],
        &vec![7; (n * 14 * 14) as usize],
    );
    idx(&fm.join("t10k-labels-idx1-ubyte"), &[n], &labels);
    let out = dir.path().join("run");
    let mut args = train_args(&out);
    args.extend([
        "--dataset".into(),
        "fashion-mnist".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(
        &run(&args),
        "the test split holds 10 classes of [1, 14, 14] images",
    );
    assert!(!out.join("config.toml").exists());
}
