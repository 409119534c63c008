//! Progress bars for training loops, and a tracing writer that prints above them so the
//! two never tear each other's lines.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nas_train::{Progress, StepStats};

/// The bars of this process. Hidden when stderr is not a terminal.
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        if std::io::stderr().is_terminal() {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        }
    })
}

/// A `tracing` writer: whole lines go above the bars (or straight to stderr when there
/// are no bars).
#[derive(Debug, Default)]
pub struct LogWriter {
    buf: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        let text = text.trim_end_matches('\n');
        if bars().is_hidden() {
            // Log lines on a closed or full stderr are dropped, not a panic.
            let _ = writeln!(std::io::stderr(), "{text}");
            Ok(())
        } else {
            bars().println(text)
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Renders epochs and steps as two bars.
pub struct Bars {
    epochs: Option<ProgressBar>,
    steps: Option<ProgressBar>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            epochs: None,
            steps: None,
        }
    }
}

impl Progress for Bars {
    fn run_start(&mut self, epochs: usize, start_epoch: usize) {
        let bar = bars().add(ProgressBar::new(epochs as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "epochs {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start_epoch as u64);
        bar.enable_steady_tick(Duration::from_millis(500));
        self.epochs = Some(bar);
    }

    fn epoch_start(&mut self, epoch: usize, steps: usize) {
        if let Some(old) = self.steps.take() {
            old.finish_and_clear();
        }
        let bar = bars().add(ProgressBar::new(steps as u64));
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix((epoch + 1).to_string());
        self.steps = Some(bar);
    }

    fn step(&mut self, _step: usize, stats: &StepStats) {
        if let Some(bar) = &self.steps {
            // Language models report no accuracy: show perplexity instead.
            let quality = if stats.accuracy.is_nan() {
                format!("ppl {:.1}", stats.loss.exp())
            } else {
                format!("acc {:.1}%", 100.0 * stats.accuracy)
            };
            bar.set_message(format!(
                "loss {:.3} {quality} lr {:.4}",
                stats.loss, stats.lr
            ));
            bar.inc(1);
        }
    }

    fn evaluating(&mut self, batches: usize) {
        if let Some(bar) = &self.steps {
            bar.set_message(format!("evaluating {batches} batches"));
        }
    }

    fn epoch_end(&mut self, _epoch: usize, summary: &serde_json::Value) {
        if let Some(bar) = &self.epochs {
            if let Some(acc) = summary["val_accuracy"].as_f64() {
                bar.set_message(format!("val acc {:.1}%", 100.0 * acc));
            } else if let Some(ppl) = summary["val_ppl"].as_f64() {
                bar.set_message(format!("val ppl {ppl:.1}"));
            }
            bar.inc(1);
        }
    }

    fn run_end(&mut self) {
        for bar in [self.steps.take(), self.epochs.take()]
            .into_iter()
            .flatten()
        {
            bar.finish_and_clear();
        }
    }
}
