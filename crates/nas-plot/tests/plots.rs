//! The pictures of real runs' metrics (the committed ENAS and DARTS searches) and of
//! synthetic DARTS epoch lines with their edge weights.
#![allow(clippy::unwrap_used)]

use nas_plot::{run_plots, Error};

fn results(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/results/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

/// The text of every `<text>` element of `svg`, trimmed and unescaped.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let inner = t
                .split_once('>')
                .unwrap()
                .1
                .split("</text>")
                .next()
                .unwrap();
            inner.trim().replace("&lt;", "<").replace("&gt;", ">")
        })
        .collect()
}

fn has(svg: &str, label: &str) -> bool {
    texts(svg).iter().any(|t| t == label)
}

/// The `points` of every `<polyline>` of `svg`, parsed.
fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .map(|p| {
            let pts = p
                .split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            pts.split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

#[test]
fn an_enas_search_gets_curves_and_controller_plots() {
    let plots = run_plots(&results("enas-fashion-mnist-search-metrics.jsonl"), "m").unwrap();
    let files: Vec<&str> = plots.iter().map(|p| p.file).collect();
    assert_eq!(files, ["curves.svg", "controller.svg"]);
    let controller = &plots[1].svg;
    for label in ["entropy", "baseline", "reward", "reward_accuracy"] {
        assert!(has(controller, label), "{label}");
    }
    // 30 epochs: the entropy curve has 30 points, falling (57.2 -> 50.8: SVG y grows
    // downwards).
    let lines = polylines(controller);
    let entropy = lines.iter().rfind(|l| l.len() == 30).unwrap();
    assert!(entropy[0].0 > 420.0, "the second panel's curve");
    assert!(entropy.last().unwrap().1 > entropy[0].1, "{entropy:?}");
    let curves = &plots[0].svg;
    assert!(has(curves, "train_loss") && has(curves, "train_accuracy"));
    assert!(
        !has(curves, "best_accuracy"),
        "controller keys stay out of the curves"
    );
}

#[test]
fn a_darts_search_without_logged_weights_gets_its_curves_only() {
    let plots = run_plots(&results("fashion-mnist-search-metrics.jsonl"), "m").unwrap();
    assert_eq!(plots.len(), 1);
    let svg = &plots[0].svg;
    for label in [
        "train_loss",
        "val_loss",
        "arch_val_loss",
        "val_accuracy",
        "lr",
    ] {
        assert!(has(svg, label), "{label}");
    }
    let ptb = run_plots(&results("ptb-search-metrics.jsonl"), "m").unwrap();
    assert!(has(&ptb[0].svg, "val_ppl"));
}

#[test]
fn edge_weights_are_drawn_per_edge_and_op() {
    let ops = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"];
    let mut text = String::new();
    for epoch in 0..3 {
        // Edge e moves its weight towards op e % 4 over the epochs.
        let cell: Vec<Vec<f64>> = (0..14)
            .map(|e| {
                let t = epoch as f64 / 2.0;
                (0..4)
                    .map(|o| {
                        if o == e % 4 {
                            0.25 + 0.6 * t
                        } else {
                            0.25 - 0.2 * t
                        }
                    })
                    .collect()
            })
            .collect();
        let line = serde_json::json!({"kind": "epoch", "epoch": epoch, "train_loss": 1.0,
            "alpha_softmax": {"ops": ops, "normal": cell, "reduce": cell}});
        text.push_str(&format!("{line}\n"));
    }
    let plots = run_plots(&text, "m").unwrap();
    let alphas = plots.iter().find(|p| p.file == "alphas.svg").unwrap();
    let labels = texts(&alphas.svg);
    assert_eq!(labels.iter().filter(|t| *t == "2 <- 0").count(), 2);
    assert!(has(&alphas.svg, "5 <- 4") && has(&alphas.svg, "skip_connect"));
    assert!(has(&alphas.svg, "normal cell") && has(&alphas.svg, "reduce cell"));
    // 2 cells x 14 edges x 4 ops, 3 epochs each; the rising op of each edge ends higher
    // on the page than it started.
    let lines: Vec<_> = polylines(&alphas.svg)
        .into_iter()
        .filter(|l| l.len() == 3)
        .collect();
    assert_eq!(lines.len(), 2 * 14 * 4);
    let rising = &lines[0];
    assert!(rising[2].1 < rising[0].1, "{rising:?}");
}

#[test]
fn a_bad_line_is_named_and_a_line_being_written_is_not() {
    let err = run_plots("{\"kind\":\"epoch\"}\n[1]\n", "runs/x/metrics.jsonl").unwrap_err();
    assert!(matches!(err, Error::Metrics { line: 2, .. }));
    assert_eq!(
        err.to_string(),
        "runs/x/metrics.jsonl line 2: expected a JSON object"
    );
    let partial = "{\"kind\":\"epoch\",\"epoch\":0,\"train_loss\":1}\n{\"kind\":\"ep";
    assert_eq!(run_plots(partial, "m").unwrap().len(), 1);
    assert!(run_plots("", "m").unwrap().is_empty());
}
