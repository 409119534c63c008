//! The run directory's TensorBoard event file, read back by TensorBoard's own reader
//! (`EventAccumulator` from the `tensorboard` package on PyPI): every scalar of
//! `metrics.jsonl` at its step, also after a resume cut the run back to a checkpoint.
//!
//! The reader runs in a virtual environment this test creates under the target folder
//! (`pip install tensorboard`, once); `NAS_PYTHON` names another interpreter that has it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use nas_train::tensorboard::EVENTS_FILE;
use nas_train::{CheckpointState, RunDir};

/// A Python with the `tensorboard` package: `$NAS_PYTHON`, or a virtual environment in
/// the target folder made on first use (under a lock, so concurrent tests share it).
fn python_with_tensorboard() -> PathBuf {
    if let Some(p) = std::env::var_os("NAS_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-tensorboard");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(".lock")).unwrap();
    lock.lock().unwrap();
    let python = root.join("venv/bin/python");
    let ready = root.join("venv/.ready");
    if !ready.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join("venv"))
            .status()
            .expect("python3 is needed to read the event files back (python3 -m venv)");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "tensorboard==2.21.0"])
            .status()
            .unwrap();
        assert!(status.success(), "pip install tensorboard failed");
        std::fs::write(&ready, b"").unwrap();
    }
    python
}

/// Every scalar TensorBoard reads from `dir`: tag -> [(step, value)].
fn read_back(dir: &Path) -> HashMap<String, Vec<(i64, f32)>> {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let out = Command::new(python_with_tensorboard())
        .args(["-c", script])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn state(epoch: usize) -> CheckpointState {
    CheckpointState {
        epoch,
        global_step: epoch as u64 * 2,
        seed: 1,
        metrics_len: 0,
        events_len: None,
        score: None,
        extra: serde_json::Value::Null,
        best: None,
    }
}

fn weights() -> [(&'static str, HashMap<String, Tensor>); 1] {
    let w = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    [("weights", HashMap::from([("w".to_string(), w)]))]
}

fn step(global: i64, loss: f64) -> serde_json::Value {
    serde_json::json!({"kind": "step", "phase": "shared", "epoch": global / 2, "step": global % 2,
        "global_step": global, "loss": loss, "arc": "0 1"})
}

#[test]
fn tensorboard_reads_every_scalar_and_a_resume_leaves_no_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let run = RunDir::create(dir.path(), "a = 1\n", 3).unwrap();
        run.log(&step(1, 2.5)).unwrap();
        run.log(&step(2, 2.0)).unwrap();
        run.log(&serde_json::json!({"kind": "epoch", "epoch": 0, "val_accuracy": 0.5}))
            .unwrap();
        run.save_checkpoint(state(1), &weights()).unwrap();
        // An epoch the run was killed in: logged, never checkpointed.
        run.log(&step(3, 9.0)).unwrap();
        run.log(&step(4, 9.0)).unwrap();
    }
    let run = RunDir::open(dir.path(), 3).unwrap();
    run.resume(&Device::Cpu).unwrap().unwrap();
    run.log(&step(3, 1.5)).unwrap();
    run.log(&serde_json::json!({"kind": "epoch", "epoch": 1, "val_accuracy": 0.75}))
        .unwrap();

    let scalars = read_back(dir.path());
    assert_eq!(
        scalars["step/shared/loss"],
        [(1, 2.5), (2, 2.0), (3, 1.5)],
        "{scalars:?}"
    );
    assert_eq!(scalars["epoch/val_accuracy"], [(0, 0.5), (1, 0.75)]);
    assert_eq!(
        scalars.len(),
        2,
        "only numeric fields are scalars: {scalars:?}"
    );

    // A run whose event file is gone (or older than event files) gets it rebuilt.
    drop(run);
    std::fs::remove_file(dir.path().join(EVENTS_FILE)).unwrap();
    let run = RunDir::open(dir.path(), 3).unwrap();
    run.resume(&Device::Cpu).unwrap().unwrap();
    let scalars = read_back(dir.path());
    assert_eq!(scalars["step/shared/loss"], [(1, 2.5), (2, 2.0)]);
    assert_eq!(scalars["epoch/val_accuracy"], [(0, 0.5)]);
}
