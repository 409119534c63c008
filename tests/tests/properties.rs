//! Property tests for the search space: every genotype survives its formats' round trips,
//! derivation always gives valid genotypes, and invalid genotypes are rejected.

// Test helpers may panic on a broken fixture: that is a failed test, not a bug to handle.
#![allow(clippy::unwrap_used)]

use nas_search_space::{
    bundled, derive_cnn, derive_rnn, parse_python, ArchWeights, CnnCell, CnnEdge, CnnGenotype,
    CnnOp, Concat, EnasMacroArch, EnasMacroLayer, EnasMacroOp, EnasMicroCell, EnasMicroGenotype,
    EnasMicroNode, EnasMicroOp, EnasRnnCell, Genotype, RnnGenotype, RnnOp, BUNDLED,
    ENAS_RNN_ACTIVATIONS,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

/// Every text format the genotype's kind has, and each must give the genotype back.
fn assert_round_trips(g: &Genotype) {
    let json = g.to_json();
    assert_eq!(&Genotype::from_json(&json).unwrap(), g, "json: {json}");
    assert_eq!(&Genotype::parse(&json, None).unwrap(), g);
    if let Ok(py) = g.to_python() {
        assert_eq!(&parse_python(&py).unwrap(), g, "python: {py}");
        assert_eq!(parse_python(&py).unwrap().to_python().unwrap(), py);
    }
    if let Ok(arc) = g.to_arc() {
        assert_eq!(
            &Genotype::from_arc(g.kind(), &arc).unwrap(),
            g,
            "arc: {arc}"
        );
    }
}

#[test]
fn every_bundled_genotype_round_trips() {
    for b in BUNDLED {
        let g = bundled(b.name).unwrap();
        assert_round_trips(&g);
        match g.kind().name() {
            "darts-cnn" | "darts-rnn" => assert!(g.to_python().is_ok(), "{}", b.name),
            _ => assert!(g.to_arc().is_ok(), "{}", b.name),
        }
    }
}

fn concat(states: std::ops::Range<usize>, first_node: usize) -> impl Strategy<Value = Concat> {
    let all: Vec<usize> = states.clone().collect();
    let n = all.len();
    prop_oneof![
        Just(Concat::range(first_node, states.end)),
        subsequence(all, 1..=n).prop_map(Concat::List),
    ]
}

fn cnn_cell(name: &'static str) -> impl Strategy<Value = CnnCell> {
    (1usize..=6).prop_flat_map(move |n| {
        let edges: Vec<_> = (0..n * 2)
            .map(|pos| {
                (select(CnnOp::ALL), 0..pos / 2 + 2).prop_map(|(op, input)| CnnEdge { op, input })
            })
            .collect();
        (edges, concat(0..n + 2, 2))
            .prop_map(move |(edges, concat)| CnnCell::new(name, edges, 2, concat).unwrap())
    })
}

fn cnn_genotype() -> impl Strategy<Value = Genotype> {
    (cnn_cell("normal cell"), cnn_cell("reduce cell"))
        .prop_map(|(n, r)| Genotype::DartsCnn(CnnGenotype::new(n, r).unwrap()))
}

fn rnn_genotype() -> impl Strategy<Value = Genotype> {
    (1usize..=12).prop_flat_map(|n| {
        let edges: Vec<_> = (0..n)
            .map(|pos| (select(RnnOp::ALL), 0..pos + 1).prop_map(|(a, i)| (a, i).into()))
            .collect();
        (edges, concat(0..n + 1, 1))
            .prop_map(|(e, c)| Genotype::DartsRnn(RnnGenotype::new(e, c).unwrap()))
    })
}

fn micro_cell(n: usize, name: &'static str) -> impl Strategy<Value = EnasMicroCell> {
    let nodes: Vec<_> = (0..n)
        .map(|pos| {
            (
                0..pos + 2,
                select(EnasMicroOp::ALL),
                0..pos + 2,
                select(EnasMicroOp::ALL),
            )
                .prop_map(|(x_input, x_op, y_input, y_op)| EnasMicroNode {
                    x_input,
                    x_op,
                    y_input,
                    y_op,
                })
        })
        .collect();
    nodes.prop_map(move |nodes| EnasMicroCell::new(name, nodes).unwrap())
}

fn enas_micro() -> impl Strategy<Value = Genotype> {
    (1usize..=7).prop_flat_map(|n| {
        (micro_cell(n, "normal cell"), micro_cell(n, "reduce cell"))
            .prop_map(|(a, b)| Genotype::EnasMicro(EnasMicroGenotype::new(a, b).unwrap()))
    })
}

fn enas_macro() -> impl Strategy<Value = Genotype> {
    (1usize..=14).prop_flat_map(|n| {
        let layers: Vec<_> = (0..n)
            .map(|k| {
                (
                    select(EnasMacroOp::ALL),
                    subsequence((0..k).collect::<Vec<_>>(), 0..=k),
                )
                    .prop_map(|(op, skips)| EnasMacroLayer { op, skips })
            })
            .collect();
        layers.prop_map(|l| Genotype::EnasMacro(EnasMacroArch::new(l).unwrap()))
    })
}

fn enas_rnn() -> impl Strategy<Value = Genotype> {
    (1usize..=12).prop_flat_map(|n| {
        let nodes: Vec<_> = (0..n)
            .map(|pos| (select(ENAS_RNN_ACTIVATIONS), 0..pos + 1).prop_map(|(a, i)| (a, i).into()))
            .collect();
        (select(ENAS_RNN_ACTIVATIONS), nodes)
            .prop_map(|(first, nodes)| Genotype::EnasRnn(EnasRnnCell::new(first, nodes).unwrap()))
    })
}

/// Raw weights for `rows` edges: sometimes on a coarse grid, so that ties happen.
fn weights(rows: usize, cols: usize) -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-4.0f32..4.0, rows * cols),
        prop::collection::vec((-2i32..=2).prop_map(|v| v as f32), rows * cols),
    ]
}

fn softmax64(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Checks one derived node against its rows: `k` distinct earlier inputs, never `none`,
/// each kept op the row's best non-`none` column, kept edges at least as strong as dropped ones.
fn check_node(rows: &[&[f32]], kept: &[(usize, usize)], k: usize) {
    assert_eq!(kept.len(), k);
    let strength = |row: &[f32]| softmax64(row)[1..].iter().copied().fold(f64::MIN, f64::max);
    for (i, &(input, op)) in kept.iter().enumerate() {
        assert!(input < rows.len(), "input {input} is not earlier");
        assert!(
            kept[..i].iter().all(|&(j, _)| j != input),
            "repeated input {input}"
        );
        assert_ne!(op, 0, "none was chosen");
        let row = rows[input];
        let best = (1..row.len()).fold(1, |b, c| if row[c] > row[b] { c } else { b });
        assert_eq!(op, best, "row {row:?}");
    }
    for (input, row) in rows.iter().enumerate() {
        if kept.iter().all(|&(j, _)| j != input) {
            for &(j, _) in kept {
                assert!(
                    strength(rows[j]) + 1e-6 >= strength(row),
                    "dropped {input} beats kept {j}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_genotypes_round_trip(g in prop_oneof![cnn_genotype(), rnn_genotype(), enas_micro(), enas_macro(), enas_rnn()]) {
        assert_round_trips(&g);
    }

    #[test]
    fn cnn_derivation_is_valid((n, k, normal, reduce) in (1usize..=6, 1usize..=2).prop_flat_map(|(n, k)| {
        let rows = n * (n + 3) / 2;
        (Just(n), Just(k), weights(rows, 8), weights(rows, 8))
    })) {
        let rows = n * (n + 3) / 2;
        let normal_w = ArchWeights::new("normal", rows, 8, normal.clone()).unwrap();
        let reduce_w = ArchWeights::new("reduce", rows, 8, reduce).unwrap();
        let g = derive_cnn(&normal_w, &reduce_w, k).unwrap();
        let mut start = 0;
        for (node, edges) in g.normal().nodes().enumerate() {
            let rows: Vec<&[f32]> = (0..node + 2).map(|i| &normal[(start + i) * 8..(start + i + 1) * 8]).collect();
            let kept: Vec<(usize, usize)> = edges.iter().map(|e| (e.input, e.op.index())).collect();
            check_node(&rows, &kept, k);
            start += node + 2;
        }
        prop_assert_eq!(g.normal().concat(), &Concat::range(2, n + 2));
        // What derivation gives is a genotype every format accepts.
        assert_round_trips(&Genotype::DartsCnn(g));
    }

    #[test]
    fn rnn_derivation_is_valid((n, w) in (1usize..=9).prop_flat_map(|n| (Just(n), weights(n * (n + 1) / 2, 5)))) {
        let g = derive_rnn(&ArchWeights::new("recurrent", n * (n + 1) / 2, 5, w.clone()).unwrap()).unwrap();
        let mut start = 0;
        for (node, e) in g.recurrent().iter().enumerate() {
            let rows: Vec<&[f32]> = (0..node + 1).map(|i| &w[(start + i) * 5..(start + i + 1) * 5]).collect();
            check_node(&rows, &[(e.input, e.activation.index())], 1);
            start += node + 1;
        }
        assert_round_trips(&Genotype::DartsRnn(g));
    }

    #[test]
    fn inputs_from_later_nodes_are_rejected(g in cnn_genotype(), pick in any::<prop::sample::Index>(), extra in 0usize..5) {
        let Genotype::DartsCnn(g) = g else { unreachable!() };
        let mut json: serde_json::Value = serde_json::from_str(&Genotype::DartsCnn(g.clone()).to_json()).unwrap();
        let edges = json["normal"].as_array_mut().unwrap();
        let pos = pick.index(edges.len());
        // Node pos / 2 is state pos / 2 + 2: anything from that state on is not earlier.
        edges[pos][1] = serde_json::json!(pos / 2 + 2 + extra);
        let text = json.to_string();
        let err = Genotype::from_json(&text).unwrap_err().to_string();
        prop_assert!(err.contains("but only states"), "{}", err);
        // The same genotype in Python notation is rejected too.
        let py = g.to_python().unwrap();
        let bad_edge = format!("('{}', {})", g.normal().edges()[pos].op, pos / 2 + 2 + extra);
        let mut parts: Vec<String> = g.normal().edges().iter().map(|e| format!("('{}', {})", e.op, e.input)).collect();
        parts[pos] = bad_edge;
        let bad_py = py.replacen(&format!("normal=[{}]", g.normal().edges().iter().map(|e| format!("('{}', {})", e.op, e.input)).collect::<Vec<_>>().join(", ")), &format!("normal=[{}]", parts.join(", ")), 1);
        prop_assert!(parse_python(&bad_py).is_err(), "{}", bad_py);
    }
}
