//! The three pictures: line charts over epochs, drawn with `plotters`' SVG backend.

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

type Line = Map<String, Value>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One curve: a name and its `(epoch, value)` points (epochs counted from 1).
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// One chart of several curves.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    title: &'static str,
    series: Vec<Series>,
}

/// The numeric values of `key` in `epochs`, at epoch + 1.
fn series(epochs: &[&Line], key: &str) -> Series {
    let points = epochs
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let y = l.get(key)?.as_f64()?;
            let x = l.get("epoch").and_then(Value::as_f64).unwrap_or(i as f64) + 1.0;
            y.is_finite().then_some((x, y))
        })
        .collect();
    Series {
        name: key.to_string(),
        points,
    }
}

/// The keys with a numeric value in some epoch line that `keep` accepts, sorted.
fn keys(epochs: &[&Line], keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = epochs
        .iter()
        .flat_map(|l| l.iter())
        .filter(|(k, v)| v.is_number() && keep(k))
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn panel(title: &'static str, epochs: &[&Line], keys: &[String]) -> Option<Panel> {
    let series: Vec<Series> = keys
        .iter()
        .map(|k| series(epochs, k))
        .filter(|s| !s.points.is_empty())
        .collect();
    (!series.is_empty()).then_some(Panel { title, series })
}

/// Controller quantities, drawn in `controller.svg` and not among the curves.
const CONTROLLER_KEYS: &[&str] = &["reward", "baseline", "reward_accuracy", "best_accuracy"];

/// `curves.svg`: losses, accuracies or perplexities, and the learning rate per epoch.
pub fn curves_svg(epochs: &[&Line]) -> Result<Option<String>> {
    let loss = keys(epochs, |k| k == "loss" || k.ends_with("_loss"));
    let acc = keys(epochs, |k| {
        (k.ends_with("_accuracy") || k.ends_with("_top5")) && !CONTROLLER_KEYS.contains(&k)
    });
    let ppl = keys(epochs, |k| k.ends_with("_ppl"));
    let panels: Vec<Panel> = [
        panel("loss", epochs, &loss),
        panel("accuracy", epochs, &acc),
        panel("perplexity", epochs, &ppl),
        panel("learning rate", epochs, &["lr".to_string()]),
    ]
    .into_iter()
    .flatten()
    .collect();
    if panels.iter().all(|p| p.title == "learning rate") {
        return Ok(None);
    }
    panels_svg("curves.svg", &panels).map(Some)
}

/// `controller.svg`: reward, baseline and accuracies of the controller's children, and
/// its entropy, per epoch; `None` for runs without a trained controller.
pub fn controller_svg(epochs: &[&Line]) -> Result<Option<String>> {
    let entropy = panel("controller entropy", epochs, &["entropy".to_string()]);
    let Some(entropy) = entropy else {
        return Ok(None);
    };
    let rewards: Vec<String> = CONTROLLER_KEYS.iter().map(|k| k.to_string()).collect();
    let panels: Vec<Panel> = [
        panel("reward and baseline", epochs, &rewards),
        Some(entropy),
    ]
    .into_iter()
    .flatten()
    .collect();
    panels_svg("controller.svg", &panels).map(Some)
}

fn draw_error(what: &'static str) -> impl Fn(String) -> Error {
    move |message| Error::Draw { what, message }
}

/// Panels side by side, 420 x 320 each.
fn panels_svg(what: &'static str, panels: &[Panel]) -> Result<String> {
    let mut svg = String::new();
    {
        let width = 420 * panels.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 320)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| draw_error(what)(e.to_string()))?;
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel).map_err(draw_error(what))?;
        }
        root.present()
            .map_err(|e| draw_error(what)(e.to_string()))?;
    }
    Ok(svg)
}

/// The x and y ranges of `series`, padded; never empty.
fn ranges(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 {
        0.05 * (y1 - y0)
    } else {
        0.05 * y0.abs().max(1e-3)
    };
    ((x0, x1), (y0 - pad, y1 + pad))
}

fn draw_panel(area: &Area<'_>, panel: &Panel) -> std::result::Result<(), String> {
    let ((x0, x1), (y0, y1)) = ranges(&panel.series);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(6)
        .y_labels(6)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(
                LineSeries::new(s.points.iter().copied(), color.stroke_width(2)).point_size(2),
            )
            .map_err(|e| e.to_string())?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// One cell's softmax weights: per edge, per op, per epoch.
struct CellWeights {
    name: String,
    edges: Vec<Vec<Vec<(f64, f64)>>>,
}

/// The `alpha_softmax` objects of `epochs` as per-cell curves, with the op names.
fn cell_weights(epochs: &[&Line]) -> Option<(Vec<String>, Vec<CellWeights>)> {
    let first = epochs.iter().find_map(|l| l.get("alpha_softmax"))?;
    let ops: Vec<String> = first
        .get("ops")?
        .as_array()?
        .iter()
        .filter_map(|o| o.as_str().map(str::to_string))
        .collect();
    let names: Vec<String> = ["normal", "reduce", "recurrent"]
        .iter()
        .filter(|n| first.get(**n).is_some())
        .map(|n| n.to_string())
        .collect();
    let mut cells = Vec::new();
    for name in names {
        let mut edges: Vec<Vec<Vec<(f64, f64)>>> = Vec::new();
        for (i, line) in epochs.iter().enumerate() {
            let Some(rows) = line
                .get("alpha_softmax")
                .and_then(|a| a.get(&name))
                .and_then(Value::as_array)
            else {
                continue;
            };
            let x = line
                .get("epoch")
                .and_then(Value::as_f64)
                .unwrap_or(i as f64)
                + 1.0;
            if edges.is_empty() {
                edges = vec![vec![Vec::new(); ops.len()]; rows.len()];
            }
            for (e, row) in rows.iter().enumerate().take(edges.len()) {
                for (o, p) in row.as_array().into_iter().flatten().enumerate() {
                    if let (Some(p), Some(curve)) = (p.as_f64(), edges[e].get_mut(o)) {
                        curve.push((x, p));
                    }
                }
            }
        }
        cells.push(CellWeights { name, edges });
    }
    Some((ops, cells))
}

/// The edge's label: DARTS's state numbers, `node <- input`. CNN cells: states 0 and 1
/// are the cell's inputs, node `i` is state `i + 2` and reads every earlier state;
/// recurrent cells: state 0 is the input, node `i` is state `i + 1`.
fn edge_label(cell: &str, edge: usize) -> String {
    let (first_inputs, offset) = if cell == "recurrent" { (1, 1) } else { (2, 2) };
    let mut e = edge;
    let mut node = 0;
    while e >= first_inputs + node {
        e -= first_inputs + node;
        node += 1;
    }
    format!("{} <- {}", node + offset, e)
}

/// `alphas.svg`: each edge's softmax weights over the epochs, a small chart per edge,
/// a line per op; `None` for runs that logged none.
pub fn alphas_svg(epochs: &[&Line]) -> Result<Option<String>> {
    const WHAT: &str = "alphas.svg";
    let Some((ops, cells)) = cell_weights(epochs) else {
        return Ok(None);
    };
    let cols = 7;
    let rows: Vec<usize> = cells.iter().map(|c| c.edges.len().div_ceil(cols)).collect();
    let (legend_h, title_h, chart_h, chart_w) = (36u32, 28u32, 130u32, 160u32);
    let height = legend_h
        + rows
            .iter()
            .map(|&r| title_h + r as u32 * chart_h)
            .sum::<u32>();
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (cols as u32 * chart_w, height)).into_drawing_area();
        let err = |e: String| Error::Draw {
            what: WHAT,
            message: e,
        };
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let (legend, mut body) = root.split_vertically(legend_h);
        for (o, op) in ops.iter().enumerate() {
            let x = 8 + (o as i32) * 130;
            let color = Palette99::pick(o).to_rgba();
            legend
                .draw(&Rectangle::new([(x, 12), (x + 14, 24)], color.filled()))
                .map_err(|e| err(e.to_string()))?;
            legend
                .draw(&Text::new(op.clone(), (x + 18, 12), ("sans-serif", 13)))
                .map_err(|e| err(e.to_string()))?;
        }
        for (cell, &r) in cells.iter().zip(&rows) {
            let (area, rest) = body.split_vertically(title_h + r as u32 * chart_h);
            body = rest;
            let area = area
                .titled(&format!("{} cell", cell.name), ("sans-serif", 16))
                .map_err(|e| err(e.to_string()))?;
            let grid = area.split_evenly((r, cols));
            for (e, (sub, curves)) in grid.iter().zip(&cell.edges).enumerate() {
                draw_edge(sub, &edge_label(&cell.name, e), curves).map_err(err)?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(Some(svg))
}

fn draw_edge(
    area: &Area<'_>,
    label: &str,
    curves: &[Vec<(f64, f64)>],
) -> std::result::Result<(), String> {
    let series: Vec<Series> = curves
        .iter()
        .map(|p| Series {
            name: String::new(),
            points: p.clone(),
        })
        .collect();
    let ((x0, x1), _) = ranges(&series);
    let mut chart = ChartBuilder::on(area)
        .caption(label, ("sans-serif", 12))
        .margin(4)
        .x_label_area_size(16)
        .y_label_area_size(28)
        .build_cartesian_2d(x0..x1, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(3)
        .y_labels(3)
        .label_style(("sans-serif", 9))
        .draw()
        .map_err(|e| e.to_string())?;
    for (o, points) in curves.iter().enumerate() {
        let color = Palette99::pick(o).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_labelled_with_the_states_they_join() {
        let cnn: Vec<String> = (0..14).map(|e| edge_label("normal", e)).collect();
        assert_eq!(
            &cnn[..5],
            ["2 <- 0", "2 <- 1", "3 <- 0", "3 <- 1", "3 <- 2"]
        );
        assert_eq!(cnn[13], "5 <- 4");
        assert_eq!(edge_label("recurrent", 0), "1 <- 0");
        assert_eq!(edge_label("recurrent", 2), "2 <- 1");
        assert_eq!(edge_label("recurrent", 35), "8 <- 7");
    }
}
