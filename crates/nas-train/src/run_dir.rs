//! A run directory: the resolved configuration, `metrics.jsonl`, checkpoints and final
//! outputs, laid out so that a run killed at any moment can resume.
//!
//! ```text
//! <run>/config.toml                 the resolved configuration, written once
//! <run>/metrics.jsonl               one JSON object per line (epochs, logged steps)
//! <run>/checkpoints/epoch-0003/     a complete checkpoint: *.safetensors + state.json
//! <run>/checkpoints/.epoch-0004.tmp a checkpoint being written (ignored, removed)
//! ```
//!
//! A checkpoint directory is filled under a temporary name and renamed when complete,
//! so a directory named `epoch-*` is always whole. Its `state.json` records the length
//! of `metrics.jsonl` at that point; resuming cuts the file back to it, so lines of an
//! epoch that was interrupted are not duplicated.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};

/// The bookkeeping part of a checkpoint (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimisation steps completed over the whole run.
    pub global_step: u64,
    /// The run's seed; every random stream is derived from it and the epoch.
    pub seed: u64,
    /// Length in bytes of `metrics.jsonl` when the checkpoint was written.
    pub metrics_len: u64,
    /// The value of the metric that decides the best checkpoint, if any (higher is better).
    pub score: Option<f64>,
    /// Free-form extra state of the training loop.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A checkpoint read back: its state and its tensor groups.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// `state.json`.
    pub state: CheckpointState,
    /// Each `<group>.safetensors`, by group name.
    pub groups: HashMap<String, HashMap<String, Tensor>>,
}

impl LoadedCheckpoint {
    /// The tensor group `name`, or an error naming the checkpoint and the group.
    pub fn group(&self, name: &str) -> Result<&HashMap<String, Tensor>> {
        self.groups.get(name).ok_or_else(|| Error::Group {
            path: self.path.clone(),
            group: name.to_string(),
            message: format!("no {name}.safetensors"),
        })
    }

    /// Hands group `name` to `apply` (a store's `set_all`, an optimizer's `load_state`);
    /// a mismatch becomes an error naming the checkpoint and the group.
    pub fn load(
        &self,
        name: &str,
        apply: impl FnOnce(&HashMap<String, Tensor>) -> Result<()>,
    ) -> Result<()> {
        apply(self.group(name)?).map_err(|e| match e {
            Error::Mismatch(message) => Error::Group {
                path: self.path.clone(),
                group: name.to_string(),
                message,
            },
            other => other,
        })
    }
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    keep_last: usize,
}

const CONFIG: &str = "config.toml";
const METRICS: &str = "metrics.jsonl";
const CHECKPOINTS: &str = "checkpoints";
const BEST: &str = "best.json";

impl RunDir {
    /// Starts a new run in `root` (created if needed), writing `config` (TOML). A folder
    /// that already holds a run is refused: resume it or choose another one.
    pub fn create(root: &Path, config: &str, keep_last: usize) -> Result<Self> {
        if root.join(CONFIG).exists() {
            return Err(Error::Invalid(format!(
                "{} already holds a run (config.toml exists); resume it with --resume or choose another --out",
                root.display()
            )));
        }
        fs::create_dir_all(root.join(CHECKPOINTS)).map_err(|e| Error::io(root, e))?;
        write_atomic(&root.join(CONFIG), config.as_bytes())?;
        write_atomic(&root.join(METRICS), b"")?;
        Ok(RunDir {
            root: root.to_path_buf(),
            keep_last: keep_last.max(1),
        })
    }

    /// Opens an existing run to resume it.
    pub fn open(root: &Path, keep_last: usize) -> Result<Self> {
        if !root.join(CONFIG).is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a run directory: it has no config.toml",
                root.display()
            )));
        }
        fs::create_dir_all(root.join(CHECKPOINTS)).map_err(|e| Error::io(root, e))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            keep_last: keep_last.max(1),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The configuration written when the run was created.
    pub fn config(&self) -> Result<String> {
        let path = self.root.join(CONFIG);
        fs::read_to_string(&path).map_err(|e| Error::io(path, e))
    }

    /// Appends one line to `metrics.jsonl`.
    pub fn log(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.root.join(METRICS);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&path, e))
    }

    fn metrics_len(&self) -> Result<u64> {
        let path = self.root.join(METRICS);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes a file of final output atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.root.join(name), bytes)
    }

    /// Saves a checkpoint after `state.epoch` epochs with the given tensor groups, then
    /// removes all but the last `keep_last` checkpoints and the best one. The
    /// `metrics_len` of `state` is filled in here.
    pub fn save_checkpoint(
        &self,
        mut state: CheckpointState,
        groups: &[(&str, HashMap<String, Tensor>)],
    ) -> Result<PathBuf> {
        state.metrics_len = self.metrics_len()?;
        let dir = self.root.join(CHECKPOINTS);
        let name = format!("epoch-{:04}", state.epoch);
        let tmp = dir.join(format!(".{name}.tmp"));
        let done = dir.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (group, tensors) in groups {
            let path = tmp.join(format!("{group}.safetensors"));
            candle_core::safetensors::save(tensors, &path)
                .map_err(|e| Error::format(&path, e.to_string()))?;
            sync(&path)?;
        }
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| Error::format(&tmp, e.to_string()))?;
        let state_path = tmp.join("state.json");
        fs::write(&state_path, json).map_err(|e| Error::io(&state_path, e))?;
        sync(&state_path)?;
        if done.exists() {
            fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
        }
        fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
        if let Some(score) = state.score {
            let best = self.best()?;
            if best.is_none_or(|(_, s)| score > s) {
                let v = serde_json::json!({ "checkpoint": name, "score": score });
                write_atomic(&self.root.join(BEST), v.to_string().as_bytes())?;
            }
        }
        self.prune()?;
        Ok(done)
    }

    /// The best checkpoint's folder name and score.
    pub fn best(&self) -> Result<Option<(String, f64)>> {
        let path = self.root.join(BEST);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
        match (v["checkpoint"].as_str(), v["score"].as_f64()) {
            (Some(c), Some(s)) => Ok(Some((c.to_string(), s))),
            _ => Err(Error::format(
                path,
                "expected {\"checkpoint\": name, \"score\": number}",
            )),
        }
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join(CHECKPOINTS);
        let mut out: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("epoch-"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn prune(&self) -> Result<()> {
        let best = self.best()?.map(|(name, _)| name);
        let all = self.checkpoints()?;
        let cut = all.len().saturating_sub(self.keep_last);
        for path in &all[..cut] {
            let name = path.file_name().and_then(|n| n.to_str());
            if name.is_some() && name.map(str::to_string) == best {
                continue;
            }
            fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }

    /// Reads the newest complete checkpoint and cuts `metrics.jsonl` back to its length;
    /// removes any half-written one. `None` when the run has none yet.
    pub fn resume(&self, device: &Device) -> Result<Option<LoadedCheckpoint>> {
        let dir = self.root.join(CHECKPOINTS);
        for entry in fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            let p = entry.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".tmp"))
            {
                fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        let Some(path) = self.checkpoints()?.pop() else {
            write_atomic(&self.root.join(METRICS), b"")?;
            return Ok(None);
        };
        let ckpt = read_checkpoint(&path, device)?;
        let metrics = self.root.join(METRICS);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&metrics)
            .map_err(|e| Error::io(&metrics, e))?;
        let len = f.metadata().map_err(|e| Error::io(&metrics, e))?.len();
        if len < ckpt.state.metrics_len {
            return Err(Error::format(
                &metrics,
                format!(
                    "is {len} bytes, shorter than the {} bytes recorded by checkpoint {}",
                    ckpt.state.metrics_len,
                    path.display()
                ),
            ));
        }
        f.set_len(ckpt.state.metrics_len)
            .map_err(|e| Error::io(&metrics, e))?;
        Ok(Some(ckpt))
    }
}

/// Reads one checkpoint folder.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<LoadedCheckpoint> {
    let state_path = path.join("state.json");
    let text = fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e.to_string()))?;
    let mut groups = HashMap::new();
    for entry in fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .flatten()
    {
        let p = entry.path();
        let Some(group) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".safetensors"))
        else {
            continue;
        };
        let tensors = candle_core::safetensors::load(&p, device)
            .map_err(|e| Error::format(&p, format!("not a readable safetensors file: {e}")))?;
        groups.insert(group.to_string(), tensors);
    }
    Ok(LoadedCheckpoint {
        path: path.to_path_buf(),
        state,
        groups,
    })
}

fn sync(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: usize, score: f64) -> CheckpointState {
        CheckpointState {
            epoch,
            global_step: epoch as u64 * 10,
            seed: 1,
            metrics_len: 0,
            score: Some(score),
            extra: serde_json::Value::Null,
        }
    }

    fn tensors(x: f32) -> HashMap<String, Tensor> {
        HashMap::from([("w".to_string(), Tensor::new(&[x], &Device::Cpu).unwrap())])
    }

    #[test]
    fn keeps_the_last_n_and_the_best_and_resumes_from_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "a = 1\n", 2).unwrap();
        for (epoch, score) in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.2)] {
            run.log(&serde_json::json!({ "epoch": epoch })).unwrap();
            run.save_checkpoint(state(epoch, score), &[("weights", tensors(epoch as f32))])
                .unwrap();
        }
        let names: Vec<String> = run
            .checkpoints()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["epoch-0002", "epoch-0003", "epoch-0004"]);
        assert_eq!(run.best().unwrap().unwrap().0, "epoch-0002");
        // An interrupted epoch: a log line and a half-written checkpoint.
        run.log(&serde_json::json!({ "epoch": 5 })).unwrap();
        fs::create_dir_all(dir.path().join("checkpoints/.epoch-0005.tmp")).unwrap();
        let again = RunDir::open(dir.path(), 2).unwrap();
        assert_eq!(again.config().unwrap(), "a = 1\n");
        let ckpt = again.resume(&Device::Cpu).unwrap().unwrap();
        assert_eq!(ckpt.state.epoch, 4);
        let w: Vec<f32> = ckpt.groups["weights"]["w"].to_vec1().unwrap();
        assert_eq!(w, [4.0]);
        let metrics = fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 4, "{metrics}");
        assert!(!dir.path().join("checkpoints/.epoch-0005.tmp").exists());
    }

    #[test]
    fn a_run_folder_is_not_overwritten_and_resume_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        RunDir::create(dir.path(), "", 1).unwrap();
        let err = RunDir::create(dir.path(), "", 1).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = RunDir::open(empty.path(), 1).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn a_corrupt_checkpoint_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "", 3).unwrap();
        let path = run
            .save_checkpoint(state(1, 0.0), &[("weights", tensors(1.0))])
            .unwrap();
        fs::write(path.join("weights.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap();
        fs::write(path.join("state.json"), b"{\"epoch\": 1}").unwrap();
        let err = run.resume(&Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
