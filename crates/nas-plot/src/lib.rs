//! Pictures of a run, drawn from its `metrics.jsonl` alone (so a finished, a running and a
//! committed run are drawn alike), as SVG with `plotters`:
//!
//! - `curves.svg`: per epoch, the losses (`*_loss`), accuracies (`*_accuracy`) or
//!   perplexities (`*_ppl`), and the learning rate (`lr`);
//! - `controller.svg` (ENAS): reward, baseline and the reward batches' accuracy, and the
//!   controller's entropy, per epoch;
//! - `alphas.svg` (DARTS): each edge's softmax weights over the epochs, one small chart
//!   per edge and one line per operation (from the epoch lines' `alpha_softmax`).
//!
//! The library returns the SVG text; the caller writes it (atomically).

mod error;
mod metrics;
mod panels;

pub use error::{Error, Result};
pub use metrics::{epoch_lines, parse_metrics};
pub use panels::{alphas_svg, controller_svg, curves_svg};

/// One picture: its file name in the run directory and its SVG text.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// `curves.svg`, `controller.svg` or `alphas.svg`.
    pub file: &'static str,
    /// The drawing.
    pub svg: String,
}

/// Every picture the lines of `metrics` (a `metrics.jsonl`'s text, named `source` in
/// errors) have data for; none before the first epoch line.
pub fn run_plots(metrics: &str, source: &str) -> Result<Vec<Plot>> {
    let lines = parse_metrics(metrics, source)?;
    let epochs = epoch_lines(&lines);
    let mut plots = Vec::new();
    if let Some(svg) = curves_svg(&epochs)? {
        plots.push(Plot {
            file: "curves.svg",
            svg,
        });
    }
    if let Some(svg) = controller_svg(&epochs)? {
        plots.push(Plot {
            file: "controller.svg",
            svg,
        });
    }
    if let Some(svg) = alphas_svg(&epochs)? {
        plots.push(Plot {
            file: "alphas.svg",
            svg,
        });
    }
    Ok(plots)
}
