//! What the PyTorch comparisons (`cargo xtask bench ops|darts-step|darts-rnn-step`) share:
//! the thread settings, building and running our release example, running the PyTorch
//! script (or saying why it was skipped), and the time / memory table.
//!
//! Threads: `RAYON_NUM_THREADS` (default 2) for both sides; ours also gets
//! `CANDLE_NUM_THREADS=1`, so candle's spin-waiting element-wise pool does not fight rayon
//! for the cores; the PyTorch side gets `OMP_NUM_THREADS` too, and the scripts call
//! `torch.set_num_threads(RAYON_NUM_THREADS)`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::project_root;

/// The Python that runs the PyTorch scripts: `NAS_TORCH_PYTHON`, else `python3`.
pub fn default_python() -> String {
    std::env::var("NAS_TORCH_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The thread count both sides run on: `RAYON_NUM_THREADS`, else 2.
pub fn threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".to_string())
}

/// Builds `cargo build --release -p PACKAGE --example EXAMPLE` and returns the binary's path.
pub fn build_example(package: &str, example: &str) -> Result<PathBuf> {
    let root = project_root();
    let status = Command::new("cargo")
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            package,
            "--example",
            example,
        ])
        .status()
        .context("building the bench")?;
    if !status.success() {
        bail!("building the bench failed");
    }
    Ok(root.join("target/release/examples").join(example))
}

/// Runs our bench binary on `threads` threads and reads the JSON it prints.
pub fn run_ours(exe: &Path, args: &[&str], threads: &str) -> Result<Value> {
    let out = Command::new(exe)
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .env("CANDLE_NUM_THREADS", "1")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("the bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("reading the bench's JSON")
}

/// Why the PyTorch side has no figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// What the table's torch cells say: `no python`, `no torch` or `failed`.
    pub short: &'static str,
    /// The whole reason, printed under the table.
    pub detail: String,
}

/// One result of several runs of a step bench: the median of their `seconds_per_step`
/// and the largest `peak_rss_mb`.
pub fn combine(runs: Vec<Value>) -> Value {
    let mut secs: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["seconds_per_step"].as_f64())
        .collect();
    secs.sort_by(f64::total_cmp);
    let peak = runs
        .iter()
        .filter_map(|r| r["peak_rss_mb"].as_f64())
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    match runs.len() {
        1 => runs.into_iter().next().expect("one run"),
        _ => serde_json::json!({
            "seconds_per_step": secs.get(secs.len() / 2),
            "peak_rss_mb": peak,
        }),
    }
}

/// Runs `python script args` on `threads` threads and reads the last line it prints as
/// JSON; `Ok(Err(_))` when the script could not run (no such Python, no torch, a crash),
/// an error when it ran but its last line is not JSON.
pub fn run_torch(
    python: &str,
    script: &Path,
    args: &[&str],
    threads: &str,
) -> Result<Result<Value, Skipped>> {
    let out = match Command::new(python)
        .arg(script)
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .env("OMP_NUM_THREADS", threads)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            return Ok(Err(Skipped {
                short: "no python",
                detail: format!("cannot run {python}: {e}"),
            }))
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        let short = if stderr.contains("No module named 'torch'") {
            "no torch"
        } else {
            "failed"
        };
        return Ok(Err(Skipped {
            short,
            detail: format!("{python} {} failed: {last}", script.display()),
        }));
    }
    parse_last_line(&out.stdout)
        .with_context(|| format!("reading the JSON of {python} {}", script.display()))
        .map(Ok)
}

/// The last line of `stdout`, as JSON.
fn parse_last_line(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("last line {line:?}"))
}

/// Prints the reasons the PyTorch side was skipped, each once, to stderr.
pub fn report_skips<'a>(skips: impl IntoIterator<Item = &'a Skipped>) {
    let mut seen: Vec<&str> = Vec::new();
    for s in skips {
        if !seen.contains(&s.detail.as_str()) {
            eprintln!("PyTorch comparison skipped: {}", s.detail);
            seen.push(&s.detail);
        }
    }
}

/// The header of the step tables (`darts-step`, `darts-rnn-step`).
pub fn print_step_header() {
    println!(
        "{:<7} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10}",
        "order", "ours s", "torch s", "time", "ours MB", "torch MB", "memory"
    );
}

/// One row of a step table, from the `seconds_per_step` and `peak_rss_mb` of both sides.
pub fn step_row(label: &str, ours: &Value, torch: &Result<Value, Skipped>) -> String {
    let get = |v: &Value, key: &str| v[key].as_f64();
    let (os, om) = (get(ours, "seconds_per_step"), get(ours, "peak_rss_mb"));
    let cell =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let (ps, pm, ts, tm) = match torch {
        Ok(t) => {
            let (ts, tm) = (get(t, "seconds_per_step"), get(t, "peak_rss_mb"));
            (cell(ts, 3), cell(tm, 0), ratio(os, ts), ratio(om, tm))
        }
        Err(s) => (
            s.short.to_string(),
            s.short.to_string(),
            "-".to_string(),
            "-".to_string(),
        ),
    };
    format!(
        "{:<7} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10}",
        label,
        cell(os, 3),
        ps,
        ts,
        cell(om, 0),
        pm,
        tm
    )
}

/// `a / b` as `1.23x`, or `-` when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_is_the_json() {
        let v = parse_last_line(b"a warning\n{\"seconds_per_step\": 1.5}\n").unwrap();
        assert_eq!(v["seconds_per_step"].as_f64(), Some(1.5));
        assert!(parse_last_line(b"{\"a\": 1}\nnot json\n").is_err());
    }

    #[test]
    fn missing_python_is_a_skip_not_an_error() {
        let r = run_torch(
            "/nonexistent/python-for-xtask-test",
            Path::new("x.py"),
            &[],
            "1",
        )
        .unwrap();
        assert_eq!(r.unwrap_err().short, "no python");
    }

    #[test]
    fn failing_script_is_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(
            &script,
            "echo \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n",
        )
        .unwrap();
        let r = run_torch("sh", &script, &[], "1").unwrap();
        let s = r.unwrap_err();
        assert_eq!(s.short, "no torch");
        assert!(s.detail.contains("No module named 'torch'"), "{}", s.detail);
    }

    #[test]
    fn script_json_is_read_and_rows_show_ratios_or_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(
            &script,
            "echo starting\necho '{\"seconds_per_step\": 2.0, \"peak_rss_mb\": 100.0}'\n",
        )
        .unwrap();
        let torch = run_torch("sh", &script, &[], "1").unwrap();
        let ours = serde_json::json!({"seconds_per_step": 1.0, "peak_rss_mb": 50.0});
        let row = step_row("first", &ours, &torch);
        assert!(row.contains("0.50x"), "{row}");
        assert!(row.contains("2.000"), "{row}");
        let skipped = Err(Skipped {
            short: "no torch",
            detail: String::new(),
        });
        let row = step_row("first", &ours, &skipped);
        assert!(row.contains("no torch"), "{row}");
        assert!(row.contains("1.000"), "{row}");
    }
}
