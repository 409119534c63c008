//! What the command-line tests share: running `nas` on the embedded digits, and
//! reading what it wrote.

// Test helpers may panic on a broken fixture: that is a failed test, not a bug to handle.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// A small search on the embedded digits: 48 + 48 images, 3 steps per epoch.
pub const TINY: &[&str] = &[
    "--set",
    "model.channels=2",
    "--set",
    "model.layers=3",
    "--set",
    "data.max_train_images=96",
    "--set",
    "data.batch_size=16",
    "--set",
    "run.epochs=4",
    "--set",
    "run.keep_checkpoints=1",
];

/// A small training run on the embedded digits.
pub const TINY_TRAIN: &[&str] = &[
    "--genotype",
    "darts-v2",
    "--set",
    "model.channels=4",
    "--set",
    "model.layers=3",
    "--set",
    "run.epochs=4",
    "--set",
    "data.batch_size=64",
];

/// `nas` with `args`, on one candle thread, reading the embedded digits.
pub fn nas(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nas"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("CANDLE_NUM_THREADS", "1")
        .env(
            "NAS_DATA_DIR",
            "/nonexistent-so-the-embedded-digits-are-used",
        );
    cmd
}

pub fn run(args: &[&str]) -> Output {
    nas(args).output().unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "nas failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Status 2, and the last stderr line is the one-line error containing `needle`.
pub fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(last.contains(needle), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn epoch_lines(run: &Path) -> Vec<serde_json::Value> {
    String::from_utf8(read(&run.join("metrics.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .collect()
}
