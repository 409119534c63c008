//! A run directory: the resolved configuration, `metrics.jsonl`, checkpoints and final
//! outputs, laid out so that a run killed at any moment can resume.
//!
//! ```text
//! <run>/config.toml                 the resolved configuration, written once
//! <run>/metrics.jsonl               one JSON object per line (epochs, logged steps)
//! <run>/events.out.tfevents.candle-nas  the same numbers for TensorBoard
//! <run>/checkpoints/epoch-0003/     a complete checkpoint: *.safetensors + state.json
//! <run>/checkpoints/.epoch-0004.tmp a checkpoint being written (ignored, removed)
//! ```
//!
//! A checkpoint directory is filled under a temporary name and renamed when complete,
//! so a directory named `epoch-*` is always whole: that rename is the commit. Its
//! `state.json` records the length of `metrics.jsonl` at that point (resuming cuts the
//! file back to it, so lines of an epoch that was interrupted are not duplicated) and the
//! best checkpoint so far (and the event file's length, cut back likewise), so the best record is committed with the checkpoint: pruning
//! keeps the best the newest checkpoint names, and `best.json` is only its copy for
//! readers, rewritten on every commit and resume.
//!
//! A run holds an exclusive lock on `<run>/.lock` (`flock`, released by the kernel when
//! the process dies) from [`RunDir::create`] or [`RunDir::open`] until the `RunDir` is
//! dropped: a second run in the same folder is refused, a killed run never blocks its
//! resume. Opening also removes what a killed run left: half-written checkpoints and the
//! temporary files of atomic writes. Resume reads the newest checkpoint that is whole;
//! unreadable newer ones are moved aside (`checkpoints/.epoch-N.corrupt`) and named in a
//! warning.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::tensorboard;

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
    /// Length in bytes of the TensorBoard event file then (absent in runs written before
    /// there was one: resuming rebuilds the file from `metrics.jsonl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_len: Option<u64>,
    /// The value of the metric that decides the best checkpoint, if any (higher is better).
    pub score: Option<f64>,
    /// Free-form extra state of the training loop.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// The best checkpoint up to and including this one (filled in on saving).
    #[serde(default)]
    pub best: Option<Best>,
}

/// The best checkpoint of a run: its folder name and score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Best {
    /// The folder under `checkpoints/`, e.g. `epoch-0003`.
    pub checkpoint: String,
    /// Its score (higher is better).
    pub score: f64,
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
    /// The lock held for the run's life (`None` for [`RunDir::inspect`]).
    _lock: Option<std::sync::Arc<fs::File>>,
}

const CONFIG: &str = "config.toml";
const METRICS: &str = "metrics.jsonl";
const CHECKPOINTS: &str = "checkpoints";
const BEST: &str = "best.json";
const LOCK: &str = ".lock";

/// Takes the exclusive lock of the run in `root`, or says who holds it.
fn lock(root: &Path) -> Result<std::sync::Arc<fs::File>> {
    let path = root.join(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(std::sync::Arc::new(file)),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: root.to_path_buf(),
            lock: path,
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// True for the temporary files [`crate::write_atomic`] and other writers leave when
/// killed: `<name>.tmp<pid>`, `.tmp<random>`.
fn is_leftover(name: &str) -> bool {
    let digits_after = |tag: &str| {
        name.rsplit_once(tag)
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    };
    digits_after(".tmp") || (name.starts_with(".tmp") && name.len() > 4)
}

impl RunDir {
    /// Starts a new run in `root` (created if needed), writing `config` (TOML). A folder
    /// that already holds a run is refused: resume it or choose another one.
    pub fn create(root: &Path, config: &str, keep_last: usize) -> Result<Self> {
        RunDir::create_with(root, config, &[], keep_last)
    }

    /// [`RunDir::create`], writing `inputs` (`(file name, bytes)`: what a resume reads
    /// besides the configuration, such as the genotype being trained) before the
    /// configuration, so that a folder with a configuration always has them.
    pub fn create_with(
        root: &Path,
        config: &str,
        inputs: &[(&str, &[u8])],
        keep_last: usize,
    ) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let lock = lock(root)?;
        if root.join(CONFIG).exists() {
            return Err(Error::Invalid(format!(
                "{} already holds a run (config.toml exists); resume it with --resume or choose another --out",
                root.display()
            )));
        }
        let checkpoints = root.join(CHECKPOINTS);
        fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
        let run = RunDir {
            root: root.to_path_buf(),
            keep_last: keep_last.max(1),
            _lock: Some(lock),
        };
        // What a start killed before it wrote its configuration left.
        run.remove_leftovers()?;
        write_atomic(&root.join(METRICS), b"")?;
        run.rebuild_events("")?;
        for (name, bytes) in inputs {
            write_atomic(&root.join(name), bytes)?;
        }
        // The configuration last: a folder holds a run once it has one.
        write_atomic(&root.join(CONFIG), config.as_bytes())?;
        Ok(run)
    }

    /// Opens an existing run to resume it: takes its lock and removes what a killed run
    /// left behind.
    pub fn open(root: &Path, keep_last: usize) -> Result<Self> {
        let mut run = RunDir::inspect(root)?;
        run.keep_last = keep_last.max(1);
        run._lock = Some(lock(root)?);
        let checkpoints = root.join(CHECKPOINTS);
        fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
        run.remove_leftovers()?;
        Ok(run)
    }

    /// Opens an existing run to read it (an evaluation), without its lock: a run in
    /// progress can be read.
    pub fn inspect(root: &Path) -> Result<Self> {
        if !root.join(CONFIG).is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a run directory: it has no config.toml",
                root.display()
            )));
        }
        Ok(RunDir {
            root: root.to_path_buf(),
            keep_last: 1,
            _lock: None,
        })
    }

    /// Removes half-written checkpoints and temporary files in the run's folder and its
    /// subfolders (one level down); under the lock, none of them belongs to a live writer.
    fn remove_leftovers(&self) -> Result<()> {
        let mut dirs = vec![self.root.clone()];
        for entry in fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let p = entry.map_err(|e| Error::io(&self.root, e))?.path();
            if p.is_dir() && !p.is_symlink() {
                dirs.push(p);
            }
        }
        for dir in dirs {
            for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let p = entry.map_err(|e| Error::io(&dir, e))?.path();
                let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let half_checkpoint = name.starts_with(".epoch-") && name.ends_with(".tmp");
                if half_checkpoint && p.is_dir() {
                    fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
                } else if is_leftover(name) && p.is_file() {
                    tracing::info!(file = %p.display(), "removing a temporary file a killed run left");
                    fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        Ok(())
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The configuration written when the run was created.
    pub fn config(&self) -> Result<String> {
        let path = self.root.join(CONFIG);
        crate::atomic::read_text(&path)
    }

    /// Appends one line to `metrics.jsonl`, and its numbers to the TensorBoard event file.
    pub fn log(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.root.join(METRICS);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&path, e))?;
        if let Some(record) = tensorboard::line_record(value, tensorboard::now()) {
            let path = self.root.join(tensorboard::EVENTS_FILE);
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            f.write_all(&record).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Writes the event file anew from the lines of `metrics` (a new run: none), every
    /// event stamped now.
    fn rebuild_events(&self, metrics: &str) -> Result<()> {
        let bytes = tensorboard::events_of_metrics(metrics, tensorboard::now());
        write_atomic(&self.root.join(tensorboard::EVENTS_FILE), &bytes)
    }

    fn metrics_len(&self) -> Result<u64> {
        file_len(&self.root.join(METRICS))
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
        state.events_len = Some(file_len(&self.root.join(tensorboard::EVENTS_FILE))?);
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
        let previous = self.best()?;
        state.best = match (state.score, previous) {
            (Some(score), Some(b)) if score <= b.1 => Some(Best {
                checkpoint: b.0,
                score: b.1,
            }),
            (Some(score), _) => Some(Best {
                checkpoint: name.clone(),
                score,
            }),
            (None, b) => b.map(|(checkpoint, score)| Best { checkpoint, score }),
        };
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| Error::format(&tmp, e.to_string()))?;
        let state_path = tmp.join("state.json");
        fs::write(&state_path, json).map_err(|e| Error::io(&state_path, e))?;
        sync(&state_path)?;
        if done.exists() {
            fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
        }
        // The commit: the checkpoint and its best record appear together.
        fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
        sync(&dir)?;
        self.write_best(state.best.as_ref())?;
        self.prune(state.best.as_ref())?;
        Ok(done)
    }

    /// `best.json`, the readers' copy of the best record.
    fn write_best(&self, best: Option<&Best>) -> Result<()> {
        let Some(best) = best else {
            return Ok(());
        };
        let v = serde_json::json!({ "checkpoint": best.checkpoint, "score": best.score });
        write_atomic(&self.root.join(BEST), v.to_string().as_bytes())
    }

    /// The best checkpoint's folder name and score, as the newest whole checkpoint
    /// records it (`best.json` for runs whose checkpoints predate the record).
    pub fn best(&self) -> Result<Option<(String, f64)>> {
        for path in self.checkpoints()?.iter().rev() {
            if let Ok(state) = read_state(path) {
                if let Some(b) = state.best {
                    return Ok(Some((b.checkpoint, b.score)));
                }
                break;
            }
        }
        let path = self.root.join(BEST);
        if !path.exists() {
            return Ok(None);
        }
        let text = crate::atomic::read_text(&path)?;
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

    fn prune(&self, best: Option<&Best>) -> Result<()> {
        let best = best.map(|b| b.checkpoint.clone());
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

    /// Reads the newest whole checkpoint and cuts `metrics.jsonl` back to its length.
    /// Newer checkpoints that cannot be read are moved aside (`.epoch-N.corrupt`) with a
    /// warning; when none can be read, the error names the newest. `None` when the run
    /// has none yet.
    pub fn resume(&self, device: &Device) -> Result<Option<LoadedCheckpoint>> {
        let all = self.checkpoints()?;
        if all.is_empty() {
            write_atomic(&self.root.join(METRICS), b"")?;
            self.rebuild_events("")?;
            return Ok(None);
        }
        let mut failed: Vec<(PathBuf, Error)> = Vec::new();
        let mut found = None;
        for path in all.iter().rev() {
            match read_checkpoint(path, device) {
                Ok(ckpt) => {
                    found = Some(ckpt);
                    break;
                }
                Err(e) => failed.push((path.clone(), e)),
            }
        }
        let Some(ckpt) = found else {
            let (_, first) = failed.swap_remove(0);
            return Err(first);
        };
        for (path, e) in failed {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let mut aside = path.with_file_name(format!(".{name}.corrupt"));
            for k in 2.. {
                if !aside.exists() {
                    break;
                }
                aside = path.with_file_name(format!(".{name}.corrupt-{k}"));
            }
            fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
            tracing::warn!(
                skipped = %path.display(), moved_to = %aside.display(), error = %e,
                "resuming from {}: a newer checkpoint cannot be read", ckpt.path.display()
            );
        }
        let mut ckpt = ckpt;
        let dir = self.root.join(CHECKPOINTS);
        if ckpt
            .state
            .best
            .as_ref()
            .is_some_and(|b| !dir.join(&b.checkpoint).is_dir())
        {
            // Resuming behind newer checkpoints that were pruned against a best record
            // now gone: the best of the checkpoints that are left, recorded again.
            ckpt.state.best = self.best_of_existing()?;
            let json = serde_json::to_vec_pretty(&ckpt.state)
                .map_err(|e| Error::format(&ckpt.path, e.to_string()))?;
            write_atomic(&ckpt.path.join("state.json"), &json)?;
        }
        self.write_best(ckpt.state.best.as_ref())?;
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
                    ckpt.path.display()
                ),
            ));
        }
        f.set_len(ckpt.state.metrics_len)
            .map_err(|e| Error::io(&metrics, e))?;
        self.cut_events(ckpt.state.events_len)?;
        Ok(Some(ckpt))
    }

    /// Cuts the event file back to `len` bytes, the length a checkpoint recorded; when it
    /// recorded none or the file is shorter (a run older than event files, a file
    /// removed), rebuilds it from `metrics.jsonl` (already cut back).
    fn cut_events(&self, len: Option<u64>) -> Result<()> {
        let path = self.root.join(tensorboard::EVENTS_FILE);
        if let Some(len) = len {
            if file_len(&path)? >= len && len > 0 {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                return f.set_len(len).map_err(|e| Error::io(&path, e));
            }
        }
        tracing::info!(file = %path.display(), "rebuilding the TensorBoard event file from metrics.jsonl");
        let metrics = crate::atomic::read_text(&self.root.join(METRICS))?;
        self.rebuild_events(&metrics)
    }
}

impl RunDir {
    /// The best-scoring whole checkpoint there is.
    fn best_of_existing(&self) -> Result<Option<Best>> {
        let mut best: Option<Best> = None;
        for path in self.checkpoints()? {
            let Ok(state) = read_state(&path) else {
                continue;
            };
            if let Some(score) = state.score {
                if best.as_ref().is_none_or(|b| score > b.score) {
                    let checkpoint = path.file_name().unwrap_or_default().to_string_lossy();
                    best = Some(Best {
                        checkpoint: checkpoint.into_owned(),
                        score,
                    });
                }
            }
        }
        Ok(best)
    }
}

/// A checkpoint's `state.json`, checked against the folder's name.
/// A file's length; 0 when it does not exist.
fn file_len(path: &Path) -> Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_state(path: &Path) -> Result<CheckpointState> {
    let state_path = path.join("state.json");
    let text = crate::atomic::read_text(&state_path)?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e.to_string()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name != format!("epoch-{:04}", state.epoch) {
        return Err(Error::format(
            &state_path,
            format!("records epoch {}, but its folder is {name}", state.epoch),
        ));
    }
    Ok(state)
}

/// Reads one checkpoint folder.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<LoadedCheckpoint> {
    let state = read_state(path)?;
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
            events_len: None,
            score: Some(score),
            extra: serde_json::Value::Null,
            best: None,
        }
    }

    fn names(run: &RunDir) -> Vec<String> {
        run.checkpoints()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
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
        let names = names(&run);
        assert_eq!(names, ["epoch-0002", "epoch-0003", "epoch-0004"]);
        assert_eq!(run.best().unwrap().unwrap().0, "epoch-0002");
        // An interrupted epoch: a log line and a half-written checkpoint.
        run.log(&serde_json::json!({ "epoch": 5 })).unwrap();
        fs::create_dir_all(dir.path().join("checkpoints/.epoch-0005.tmp")).unwrap();
        drop(run);
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

    /// A kill between a checkpoint's commit and `best.json`'s rename leaves a stale
    /// `best.json`: the record in the checkpoint still decides pruning, and resume
    /// rewrites the copy.
    #[test]
    fn the_best_record_is_committed_with_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "", 1).unwrap();
        for (epoch, score) in [(1, 0.5), (2, 0.9)] {
            run.save_checkpoint(state(epoch, score), &[("weights", tensors(1.0))])
                .unwrap();
        }
        let best_json = dir.path().join("best.json");
        fs::write(&best_json, r#"{"checkpoint": "epoch-0001", "score": 0.5}"#).unwrap();
        assert_eq!(run.best().unwrap().unwrap().0, "epoch-0002");
        run.save_checkpoint(state(3, 0.1), &[("weights", tensors(1.0))])
            .unwrap();
        let names = names(&run);
        assert_eq!(names, ["epoch-0002", "epoch-0003"]);
        fs::write(&best_json, r#"{"checkpoint": "epoch-0001", "score": 0.5}"#).unwrap();
        drop(run);
        let again = RunDir::open(dir.path(), 1).unwrap();
        again.resume(&Device::Cpu).unwrap().unwrap();
        let text = fs::read_to_string(&best_json).unwrap();
        assert!(text.contains("epoch-0002"), "{text}");
    }

    /// One live `RunDir` per folder; dropping it (or the process dying) frees it.
    #[test]
    fn a_folder_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunDir::create(dir.path(), "", 1).unwrap();
        let err = RunDir::open(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("in use by another run"), "{err}");
        assert!(RunDir::inspect(dir.path()).is_ok());
        drop(first);
        RunDir::open(dir.path(), 1).unwrap();
    }

    #[test]
    fn leftovers_are_recognised() {
        for name in ["best.json.tmp123", ".tmpA1b2", "genotype.svg.tmp9"] {
            assert!(is_leftover(name), "{name}");
        }
        for name in ["best.json", "epoch-0001", "a.tmp", ".lock", "tmp3"] {
            assert!(!is_leftover(name), "{name}");
        }
    }

    /// Resuming behind newer checkpoints whose best record pruned the one the resumed
    /// checkpoint names: the best of those left is recorded instead.
    #[test]
    fn a_stale_best_record_is_rebuilt_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "", 2).unwrap();
        for (epoch, score) in [(1, 0.9), (2, 0.1), (3, 0.95)] {
            run.save_checkpoint(state(epoch, score), &[("weights", tensors(1.0))])
                .unwrap();
        }
        // epoch-0001 was pruned after epoch 3 became best; epoch 3 is now corrupt.
        assert_eq!(names(&run), ["epoch-0002", "epoch-0003"]);
        fs::write(
            dir.path()
                .join("checkpoints/epoch-0003/weights.safetensors"),
            b"x",
        )
        .unwrap();
        drop(run);
        let again = RunDir::open(dir.path(), 2).unwrap();
        let ckpt = again.resume(&Device::Cpu).unwrap().unwrap();
        assert_eq!(ckpt.state.epoch, 2);
        assert_eq!(again.best().unwrap().unwrap().0, "epoch-0002");
    }
}
