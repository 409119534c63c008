//! Drawing genotypes: Graphviz DOT text, and SVG laid out in Rust (no Graphviz install).
//!
//! The pictures follow the reference `visualize.py`: cell inputs `c_{k-2}`, `c_{k-1}`
//! (or `x_{t}`, `h_{t-1}`), intermediate nodes numbered from 0, the output `c_{k}`
//! (or `h_{t}`), left to right, every edge labelled by its operation.

use std::fmt::Write as _;

use crate::enas_macro::EnasMacroArch;
use crate::error::{Error, Result};
use crate::genotype::Genotype;

const INPUT_FILL: &str = "#b4eeb4";
const NODE_FILL: &str = "#add8e6";
const OUTPUT_FILL: &str = "#eee8aa";
const OP_FILL: &str = "#f5f5f5";

/// One drawn graph: a cell, or a whole macro architecture.
#[derive(Debug)]
struct Panel {
    /// Short identifier ("normal").
    id: String,
    /// Caption ("normal cell").
    title: String,
    /// `(id, label, fill)`.
    nodes: Vec<(String, String, &'static str)>,
    /// `(from, to, label, dashed)`.
    edges: Vec<(String, String, String, bool)>,
}

impl Panel {
    fn new(id: &str, title: &str) -> Self {
        Panel {
            id: id.to_string(),
            title: title.to_string(),
            nodes: Vec::new(),
            edges: Vec::new(),
        }
    }

    fn node(&mut self, id: impl Into<String>, fill: &'static str) {
        let id = id.into();
        self.nodes.push((id.clone(), id, fill));
    }

    fn edge(&mut self, from: impl Into<String>, to: impl Into<String>, label: impl Into<String>) {
        self.edges
            .push((from.into(), to.into(), label.into(), false));
    }

    /// A cell with two inputs, `ops[i]` = `(op, input)` edges of intermediate node `i`,
    /// and the states in `concat` joined into `output`.
    fn cell(
        id: &str,
        title: &str,
        inputs: [&str; 2],
        output: &str,
        nodes: &[Vec<(String, usize)>],
        concat: &[usize],
    ) -> Self {
        let mut panel = Panel::new(id, title);
        let state = |i: usize| match i {
            0 | 1 => inputs[i].to_string(),
            n => (n - 2).to_string(),
        };
        panel.node(inputs[0], INPUT_FILL);
        panel.node(inputs[1], INPUT_FILL);
        for i in 0..nodes.len() {
            panel.node(i.to_string(), NODE_FILL);
        }
        panel.node(output, OUTPUT_FILL);
        for (i, edges) in nodes.iter().enumerate() {
            for (op, input) in edges {
                panel.edge(state(*input), i.to_string(), op.clone());
            }
        }
        for &c in concat {
            panel.edge(state(c), output, "");
        }
        panel
    }

    /// A recurrent cell: `x_{t}` and `h_{t-1}` make state 0, node `i` reads one earlier state.
    fn recurrent(
        title: &str,
        first: Option<&str>,
        nodes: &[(String, usize)],
        concat: &[usize],
    ) -> Self {
        let mut panel = Panel::new("recurrent", title);
        panel.node("x_{t}", INPUT_FILL);
        panel.node("h_{t-1}", INPUT_FILL);
        for i in 0..=nodes.len() {
            panel.node(i.to_string(), NODE_FILL);
        }
        panel.node("h_{t}", OUTPUT_FILL);
        let first = first.unwrap_or("");
        panel.edge("x_{t}", "0", first);
        panel.edge("h_{t-1}", "0", first);
        for (i, (op, input)) in nodes.iter().enumerate() {
            panel.edge(input.to_string(), (i + 1).to_string(), op.clone());
        }
        for &c in concat {
            panel.edge(c.to_string(), "h_{t}", "");
        }
        panel
    }
}

fn panels(genotype: &Genotype) -> Vec<Panel> {
    match genotype {
        Genotype::DartsCnn(g) => [("normal", g.normal()), ("reduce", g.reduce())]
            .into_iter()
            .map(|(id, cell)| {
                let nodes: Vec<Vec<(String, usize)>> = cell
                    .nodes()
                    .map(|edges| {
                        edges
                            .iter()
                            .map(|e| (e.op.name().to_string(), e.input))
                            .collect()
                    })
                    .collect();
                Panel::cell(
                    id,
                    &format!("{id} cell"),
                    ["c_{k-2}", "c_{k-1}"],
                    "c_{k}",
                    &nodes,
                    &cell.concat().indices(),
                )
            })
            .collect(),
        Genotype::EnasMicro(g) => [("normal", g.normal()), ("reduce", g.reduce())]
            .into_iter()
            .map(|(id, cell)| {
                let nodes: Vec<Vec<(String, usize)>> = cell
                    .nodes()
                    .iter()
                    .map(|n| {
                        vec![
                            (n.x_op.name().to_string(), n.x_input),
                            (n.y_op.name().to_string(), n.y_input),
                        ]
                    })
                    .collect();
                Panel::cell(
                    id,
                    &format!("{id} cell"),
                    ["c_{k-2}", "c_{k-1}"],
                    "c_{k}",
                    &nodes,
                    &cell.concat(),
                )
            })
            .collect(),
        Genotype::DartsRnn(g) => {
            let nodes: Vec<(String, usize)> = g
                .recurrent()
                .iter()
                .map(|e| (e.activation.name().to_string(), e.input))
                .collect();
            vec![Panel::recurrent(
                "recurrent cell",
                None,
                &nodes,
                &g.concat().indices(),
            )]
        }
        Genotype::EnasRnn(g) => {
            let nodes: Vec<(String, usize)> = g
                .nodes()
                .iter()
                .map(|e| (e.activation.name().to_string(), e.input))
                .collect();
            vec![Panel::recurrent(
                "recurrent cell",
                Some(g.first().name()),
                &nodes,
                &g.concat(),
            )]
        }
        Genotype::EnasMacro(a) => {
            let mut panel = Panel::new("network", "enas macro network");
            panel.node("stem", INPUT_FILL);
            let layer = |k: usize| format!("layer {k}");
            for (k, l) in a.layers().iter().enumerate() {
                panel
                    .nodes
                    .push((layer(k), format!("{k}: {}", l.op), NODE_FILL));
            }
            panel.node("output", OUTPUT_FILL);
            let source = |i: usize| {
                if i == 0 {
                    "stem".to_string()
                } else {
                    layer(i - 1)
                }
            };
            for (k, l) in a.layers().iter().enumerate() {
                panel.edge(source(k), layer(k), "");
                for &s in &l.skips {
                    panel.edges.push((source(s), layer(k), String::new(), true));
                }
            }
            panel.edge(layer(a.layers().len() - 1), "output", "");
            vec![panel]
        }
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write_panel_body(out: &mut String, panel: &Panel, prefix: &str, indent: &str) {
    for (id, label, fill) in &panel.nodes {
        let shape = if fill == &NODE_FILL && !label.contains(':') {
            "circle"
        } else {
            "box"
        };
        let _ = writeln!(
            out,
            "{indent}{} [label={}, shape={shape}, style=filled, fillcolor={}];",
            quote(&format!("{prefix}{id}")),
            quote(label),
            quote(fill)
        );
    }
    for (from, to, label, dashed) in &panel.edges {
        let mut attrs = Vec::new();
        if !label.is_empty() {
            attrs.push(format!("label={}", quote(label)));
        }
        if *dashed {
            attrs.push("style=dashed".to_string());
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" [{}]", attrs.join(", "))
        };
        let _ = writeln!(
            out,
            "{indent}{} -> {}{attrs};",
            quote(&format!("{prefix}{from}")),
            quote(&format!("{prefix}{to}"))
        );
    }
}

/// Graphviz DOT: one `digraph`, with one cluster per cell when there are several.
pub fn to_dot(genotype: &Genotype) -> String {
    let panels = panels(genotype);
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(genotype.kind().name()));
    out.push_str(
        "  rankdir=LR;\n  node [fontname=\"times\", penwidth=2];\n  edge [fontname=\"times\"];\n",
    );
    if let [panel] = &panels[..] {
        write_panel_body(&mut out, panel, "", "  ");
    } else {
        for panel in &panels {
            let _ = writeln!(
                out,
                "  subgraph {} {{",
                quote(&format!("cluster_{}", panel.id))
            );
            let _ = writeln!(out, "    label={};", quote(&panel.title));
            write_panel_body(&mut out, panel, &format!("{}/", panel.id), "    ");
            out.push_str("  }\n");
        }
    }
    out.push_str("}\n");
    out
}

/// The most operations (labelled edges) one cell may have for [`to_svg`].
///
/// layout-rs's crossing reduction grows like the fourth power of a cell's size: at worst
/// a DARTS cell of 12 nodes (24 operations) takes a fifth of a second, one of 16 nodes
/// half a second, one of 32 nodes ten seconds, one of 100 nodes minutes. Published cells
/// have at most 13 operations (ENAS's recurrent cell); larger ones can be drawn from
/// [`to_dot`] by Graphviz.
pub const MAX_SVG_OPS_PER_CELL: usize = 24;

/// A standalone SVG document: each cell laid out by `layout-rs`, stacked with captions.
///
/// Fails with [`Error::Layout`] for a cell of more than [`MAX_SVG_OPS_PER_CELL`]
/// operations (use [`to_dot`] and Graphviz), or when the layout engine fails.
pub fn to_svg(genotype: &Genotype) -> Result<String> {
    const MARGIN: f64 = 20.0;
    const CAPTION: f64 = 36.0;
    if let Genotype::EnasMacro(arch) = genotype {
        return Ok(macro_svg(arch));
    }
    let panels = panels(genotype);
    for panel in &panels {
        let ops = panel.edges.iter().filter(|e| !e.2.is_empty()).count();
        if ops > MAX_SVG_OPS_PER_CELL {
            return Err(Error::Layout(format!(
                "the {} has {ops} operations, more than the {MAX_SVG_OPS_PER_CELL} that can be laid out in reasonable time; write DOT and use Graphviz instead",
                panel.title
            )));
        }
    }
    let mut parts = Vec::new();
    for panel in panels {
        parts.push((panel.title.clone(), render_one(&layout_dot(&panel))?));
    }
    let width = parts.iter().map(|(_, (_, w, _))| *w).fold(0.0, f64::max) + 2.0 * MARGIN;
    let height: f64 = parts.iter().map(|(_, (_, _, h))| h + CAPTION).sum::<f64>() + MARGIN;
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n<title>{} genotype</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        genotype.kind()
    );
    let mut y = 0.0;
    for (title, (body, w, h)) in parts {
        let _ = writeln!(
            out,
            "<text x=\"{MARGIN}\" y=\"{}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"20\" font-weight=\"bold\">{title}</text>",
            y + CAPTION - 10.0
        );
        let _ = writeln!(
            out,
            "<svg x=\"{MARGIN}\" y=\"{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">{body}</svg>",
            y + CAPTION
        );
        y += CAPTION + h;
    }
    out.push_str("</svg>\n");
    Ok(out)
}

/// A macro network as a column of layers, with every skip connection an arc on the right
/// whose width grows with the distance it spans (as ENAS's paper draws it); a general
/// layered layout of 24 densely connected layers is unreadable.
fn macro_svg(arch: &EnasMacroArch) -> String {
    const BOX_W: f64 = 190.0;
    const BOX_H: f64 = 28.0;
    const STEP: f64 = 46.0;
    const LEFT: f64 = 20.0;
    const TOP: f64 = 56.0;
    let labels: Vec<String> = std::iter::once("stem".to_string())
        .chain(
            arch.layers()
                .iter()
                .enumerate()
                .map(|(k, l)| format!("layer {k}: {}", l.op)),
        )
        .chain(std::iter::once("output".to_string()))
        .collect();
    let y = |i: usize| TOP + i as f64 * STEP;
    let arc_width = |span: usize| 24.0 + span as f64 * 11.0;
    let max_span = arch
        .layers()
        .iter()
        .enumerate()
        .flat_map(|(k, l)| l.skips.iter().map(move |&s| k + 1 - s))
        .max()
        .unwrap_or(0);
    let width = (LEFT + BOX_W + arc_width(max_span) + 40.0).max(640.0);
    let height = y(labels.len()) + 10.0;
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n<title>enas-macro genotype</title>\n<defs><marker id=\"arrow\" markerWidth=\"10\" markerHeight=\"7\" refX=\"10\" refY=\"3.5\" orient=\"auto\"><polygon points=\"0 0, 10 3.5, 0 7\"/></marker></defs>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"30\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"20\" font-weight=\"bold\">enas macro network ({} layers, dashed: skip connections)</text>\n",
        arch.layers().len()
    );
    for (i, label) in labels.iter().enumerate() {
        let fill = match i {
            0 => INPUT_FILL,
            i if i == labels.len() - 1 => OUTPUT_FILL,
            _ => NODE_FILL,
        };
        let _ = writeln!(
            out,
            "<rect x=\"{LEFT}\" y=\"{}\" width=\"{BOX_W}\" height=\"{BOX_H}\" fill=\"{fill}\" stroke=\"black\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"middle\" font-family=\"Times, serif\" font-size=\"15\">{label}</text>",
            y(i),
            LEFT + BOX_W / 2.0,
            y(i) + BOX_H / 2.0
        );
        if i > 0 {
            let _ = writeln!(
                out,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"black\" marker-end=\"url(#arrow)\"/>",
                y(i - 1) + BOX_H,
                y(i),
                x = LEFT + BOX_W / 2.0
            );
        }
    }
    let right = LEFT + BOX_W;
    for (k, layer) in arch.layers().iter().enumerate() {
        for &s in &layer.skips {
            // Source `s` indexes [stem, layer 0, ...], which is row `s`; layer k is row k + 1.
            let (y0, y1) = (y(s) + BOX_H / 2.0, y(k + 1) + BOX_H / 2.0);
            let w = arc_width(k + 1 - s);
            let _ = writeln!(
                out,
                "<path d=\"M {right} {y0} C {c} {y0}, {c} {y1}, {right} {y1}\" fill=\"none\" stroke=\"#555555\" stroke-dasharray=\"5,3\" marker-end=\"url(#arrow)\"/>",
                c = right + w
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The DOT that the SVG layout gets: every labelled edge becomes a box of its own
/// between its ends, so that no label can drift away from its edge.
fn layout_dot(panel: &Panel) -> String {
    let mut boxed = Panel::new(&panel.id, &panel.title);
    boxed.nodes = panel.nodes.clone();
    for (i, (from, to, label, dashed)) in panel.edges.iter().enumerate() {
        if label.is_empty() {
            boxed
                .edges
                .push((from.clone(), to.clone(), String::new(), *dashed));
        } else {
            let op = format!("op {i}");
            boxed.nodes.push((op.clone(), label.clone(), OP_FILL));
            boxed
                .edges
                .push((from.clone(), op.clone(), String::new(), *dashed));
            boxed.edges.push((op, to.clone(), String::new(), *dashed));
        }
    }
    let mut dot = String::from("digraph g {\n  rankdir=LR;\n");
    write_panel_body(&mut dot, &boxed, "", "  ");
    dot.push_str("}\n");
    dot
}

/// Lays one graph out; returns the SVG body (without the outer element) and its size.
fn render_one(dot: &str) -> Result<(String, f64, f64)> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};

    let graph = DotParser::new(dot).process().map_err(Error::Layout)?;
    // layout-rs asserts on its own invariants; keep a failure there an error, not a crash.
    let svg = std::panic::catch_unwind(|| {
        let mut builder = GraphBuilder::new();
        builder.visit_graph(&graph);
        let mut visual = builder.get();
        // layout-rs re-checks that its DAG is acyclic after every edge it adds, with a
        // depth-first search that forgets visited nodes when it backtracks, so it walks
        // every path: exponential time in a cell whose nodes share inputs (an ENAS micro
        // cell of 50 nodes took minutes). The graphs built here are acyclic by
        // construction (every node reads earlier states only), so skip those checks.
        visual.dag.set_validate(false);
        let mut writer = SVGWriter::new();
        visual.do_it(false, false, false, &mut writer);
        writer.finalize()
    })
    .map_err(|_| Error::Layout("the layout engine failed on this graph".to_string()))?;
    let open_end = svg
        .find("<svg")
        .and_then(|start| svg[start..].find('>').map(|end| start + end + 1))
        .ok_or_else(|| Error::Layout("the layout engine wrote no <svg> element".to_string()))?;
    let close = svg.rfind("</svg>").unwrap_or(svg.len());
    let attr = |name: &str| -> Option<f64> {
        let head = &svg[..open_end];
        let start = head.find(&format!(" {name}=\""))? + name.len() + 3;
        head[start..].split('"').next()?.parse().ok()
    };
    let (w, h) = attr("width")
        .zip(attr("height"))
        .ok_or_else(|| Error::Layout("the layout engine wrote no size".to_string()))?;
    Ok((svg[open_end..close].to_string(), w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundled::bundled;

    #[test]
    fn dot_snapshot_rnn() {
        let dot = to_dot(&bundled("darts-rnn-v2").unwrap());
        expect_test::expect_file!["../tests/snapshots/darts-rnn-v2.dot"].assert_eq(&dot);
    }

    #[test]
    fn dot_snapshot_cnn() {
        let dot = to_dot(&bundled("darts-v2").unwrap());
        expect_test::expect_file!["../tests/snapshots/darts-v2.dot"].assert_eq(&dot);
    }

    #[test]
    fn svg_has_every_edge_label() {
        for name in [
            "darts-v2",
            "nasnet-a",
            "darts-rnn-v2",
            "enas-micro",
            "enas-macro",
        ] {
            let g = bundled(name).unwrap();
            let svg = to_svg(&g).unwrap();
            assert!(svg.starts_with("<?xml"), "{name}");
            assert!(svg.trim_end().ends_with("</svg>"), "{name}");
            if let Genotype::DartsCnn(c) = &g {
                for e in c.normal().edges().iter().chain(c.reduce().edges()) {
                    assert!(svg.contains(e.op.name()), "{name}: {}", e.op);
                }
                assert!(svg.contains("normal cell") && svg.contains("reduce cell"));
            }
        }
    }

    /// An ENAS recurrent arc whose node `i` reads state `f(i)`.
    fn enas_rnn(nodes: usize, input: impl Fn(usize) -> usize) -> Genotype {
        let mut arc = String::from("0");
        for i in 0..nodes {
            arc.push_str(&format!(" {} 0", input(i)));
        }
        Genotype::from_arc(crate::GenotypeKind::EnasRnn, &arc).unwrap()
    }

    #[test]
    fn layout_of_cells_with_many_paths_finishes() {
        // Found while setting up the fuzz targets, which draw what they read: node k of
        // each cell reads state k - 2 twice, so the number of paths doubles every second
        // node, and layout-rs's validation walked them all (50 nodes per cell: 283 s).
        let mut arc = String::new();
        for _ in 0..2 {
            for i in 0..50 {
                arc.push_str(&format!("{i} 0 {i} 0 "));
            }
        }
        let g = Genotype::from_arc(crate::GenotypeKind::EnasMicro, &arc).unwrap();
        let normal = &panels(&g)[0];
        // Before the fix this call took minutes; it is not timed here (speed belongs in
        // benchmarks), but a regression makes the test suite visibly hang.
        let (body, _, _) = render_one(&layout_dot(normal)).unwrap();
        assert!(body.contains("sep_conv_3x3"));
        // Through to_svg, such a cell is over the size limit.
        assert!(to_svg(&g).is_err());
    }

    #[test]
    fn svg_refuses_cells_too_large_to_lay_out() {
        let g = enas_rnn(MAX_SVG_OPS_PER_CELL - 2, |i| i);
        assert!(to_svg(&g).is_ok());
        let g = enas_rnn(MAX_SVG_OPS_PER_CELL - 1, |i| i);
        assert_eq!(
            to_svg(&g).unwrap_err().to_string(),
            "svg layout: the recurrent cell has 25 operations, more than the 24 that can be laid out in reasonable time; write DOT and use Graphviz instead"
        );
        // The costliest CNN shape found: every node reads c_{k-2} and the node before it,
        // and the output concatenates every state. At the limit it is still drawn.
        let cnn = |nodes: usize| {
            let edges: Vec<String> = (0..nodes)
                .map(|i| format!("('sep_conv_3x3', 0), ('skip_connect', {})", i + 1))
                .collect();
            let edges = edges.join(", ");
            crate::parse_python(&format!(
                "Genotype(normal=[{edges}], normal_concat=range(0, {n}), reduce=[{edges}], reduce_concat=range(0, {n}))",
                n = nodes + 2
            ))
            .unwrap()
        };
        assert!(to_svg(&cnn(MAX_SVG_OPS_PER_CELL / 2)).is_ok());
        assert!(to_svg(&cnn(MAX_SVG_OPS_PER_CELL / 2 + 1)).is_err());
        // DOT has no such limit.
        assert!(to_dot(&enas_rnn(1000, |i| i / 2)).contains("\"499\" -> \"1000\""));
    }
}
