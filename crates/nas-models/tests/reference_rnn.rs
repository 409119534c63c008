//! Our DARTS recurrent language model computes what the reference implementation
//! (quark0/darts `rnn/model.py` and `rnn/model_search.py`) computes, in f64.
//!
//! The fixtures under `tests/fixtures/darts_rnn_*.json` were written by the reference
//! classes themselves, run in float64 (see `fixtures/make_rnn_fixtures.py` for how, and for
//! the three CPU/torch-2 edits it makes to the reference): a 50-word vocabulary, 16 hidden
//! units, 6 time steps of 3 sequences, every parameter drawn from `U(-0.5, 0.5)` so that
//! the comparison is sensitive, and (search model) architecture weights drawn from
//! `N(0, 1)` so that their softmax is far from uniform.
//!
//! Every comparison is normwise: the largest absolute difference over a tensor divided by
//! the largest magnitude of the reference tensor. Both sides compute in f64, so the
//! differences are rounding only (about 1e-15); [`TOL`] leaves room for that while a
//! change of one weight by 1e-5 is caught (`a_perturbed_weight_is_caught_by_every_check`).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use nas_models::{nll, tar, LmMasks, LmOutput, RnnLm, RnnLmConfig, RNN_STEPS};
use nas_search_space::{bundled, Genotype, RnnGenotype};
use nas_train::ParamStore;
use serde_json::Value;

/// Largest normwise relative error accepted.
const TOL: f64 = 1e-12;

/// Names of the search cell's batch-norm buffers in our store (the reference keeps them
/// out of `named_parameters`; the fixtures record them under `bn`).
const BN_MEAN: &str = "rnns.0.bn.running_mean";
const BN_VAR: &str = "rnns.0.bn.running_var";

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The values of a `{shape, values}` entry, flattened row-major.
fn values(v: &Value) -> Vec<f64> {
    serde_json::from_value(v["values"].clone()).unwrap()
}

fn shape(v: &Value) -> Vec<usize> {
    serde_json::from_value(v["shape"].clone()).unwrap()
}

fn tensor(v: &Value) -> Tensor {
    Tensor::from_vec(values(v), shape(v), &Device::Cpu).unwrap()
}

fn tokens(v: &Value) -> Tensor {
    let data: Vec<u32> = serde_json::from_value(v["values"].clone()).unwrap();
    Tensor::from_vec(data, shape(v), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The model settings of the fixtures: 16 units and no dropout (the eval-mode fixtures
/// were made with the reference's default dropouts, which evaluation ignores).
fn config(json: &Value) -> RnnLmConfig {
    let n = json["nhid"].as_u64().unwrap() as usize;
    assert_eq!(json["ninp"].as_u64().unwrap() as usize, n);
    RnnLmConfig {
        emsize: n,
        nhid: n,
        dropout: 0.0,
        dropouth: 0.0,
        dropoutx: 0.0,
        dropouti: 0.0,
        dropoute: 0.0,
        init_range: 0.04,
    }
}

/// Loads the fixture's parameters (and BN statistics, for the search model) into
/// `store`, which must hold exactly those names. `perturb` adds `delta` to one element
/// of one tensor, for the negative test.
fn load(store: &ParamStore, json: &Value, perturb: Option<(&str, usize, f64)>) {
    assert_eq!(json["tied"]["decoder.weight"], "encoder.weight");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut entries: Vec<(String, &Value)> = json["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v))
        .collect();
    if let Some(bn) = json.get("bn") {
        assert_eq!(bn["eps"].as_f64().unwrap(), 1e-5);
        entries.push((BN_MEAN.to_string(), &bn["running_mean"]));
        entries.push((BN_VAR.to_string(), &bn["running_var"]));
    }
    for (name, v) in entries {
        let mut data = values(v);
        if let Some((target, index, delta)) = perturb {
            if target == name {
                data[index] += delta;
            }
        }
        let t = Tensor::from_vec(data, shape(v), &Device::Cpu).unwrap();
        tensors.insert(name, t);
    }
    store.set_all(&tensors).unwrap();
}

/// The reference's output: `log_softmax(decoder(output))`, `[T * B, vocab]`.
fn log_probs(out: &LmOutput) -> Tensor {
    candle_nn::ops::log_softmax(&out.logits().unwrap().broadcast_add(&out.bias).unwrap(), 1)
        .unwrap()
}

/// Normwise relative errors of named quantities.
#[derive(Debug, Default)]
struct Report {
    rows: Vec<(String, f64)>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, got: &[f64], want: &[f64]) {
        let what = what.into();
        assert_eq!(got.len(), want.len(), "{what}: length");
        assert!(
            got.iter().chain(want).all(|v| v.is_finite()),
            "{what}: not finite"
        );
        // Absolute for a reference of zeros (BN's initial running mean).
        let scale = match want.iter().fold(0.0f64, |m, v| m.max(v.abs())) {
            0.0 => 1.0,
            s => s,
        };
        let diff = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
        self.rows.push((what, diff / scale));
    }

    fn scalar(&mut self, what: &str, got: f64, want: f64) {
        self.add(what, &[got], &[want]);
    }

    fn error(&self, what: &str) -> f64 {
        self.rows
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no check named {what}"))
            .1
    }

    fn assert_within(&self, tol: f64) {
        for (what, err) in &self.rows {
            eprintln!("{what:>28}: {err:.2e}");
        }
        let bad: Vec<_> = self
            .rows
            .iter()
            .filter(|(_, e)| e.is_nan() || *e > tol)
            .collect();
        assert!(bad.is_empty(), "beyond {tol:e}: {bad:?}");
    }
}

fn darts_v2() -> RnnGenotype {
    match bundled("darts-rnn-v2").unwrap() {
        Genotype::DartsRnn(g) => g,
        other => panic!("{other:?}"),
    }
}

fn check_derived(perturb: Option<(&str, usize, f64)>) -> Report {
    let json = fixture("darts_rnn_v2_eval.json");
    // The fixture's genotype is our bundled DARTS-V2.
    let g = darts_v2();
    let edges: Vec<(String, usize)> =
        serde_json::from_value(json["genotype"]["recurrent"].clone()).unwrap();
    let ours: Vec<(String, usize)> = g
        .recurrent()
        .iter()
        .map(|e| (e.activation.name().to_string(), e.input))
        .collect();
    assert_eq!(ours, edges);
    let concat: Vec<usize> = serde_json::from_value(json["genotype"]["concat"].clone()).unwrap();
    assert_eq!(g.concat().indices(), concat);

    let store = ParamStore::new(0);
    let vocab = json["ntoken"].as_u64().unwrap() as usize;
    let model = RnnLm::derived(
        config(&json),
        vocab,
        &g,
        store.var_builder(DType::F64, &Device::Cpu),
    )
    .unwrap();
    load(&store, &json, perturb);
    let h0 = tensor(&json["hidden0"]).squeeze(0).unwrap();
    let out = model
        .forward(
            &tokens(&json["tokens"]),
            &h0,
            None,
            &LmMasks::default(),
            false,
        )
        .unwrap();
    let mut report = Report::default();
    report.add(
        "log_probs",
        &flat(&log_probs(&out)),
        &values(&json["log_probs"]),
    );
    report.add(
        "hidden_final",
        &flat(&out.hidden),
        &values(&json["hidden_final"]),
    );
    report
}

/// The reference model of `RnnLm::derived` with DARTS-V2, in evaluation mode: the
/// log-probabilities of every step and the final hidden state.
#[test]
fn derived_darts_v2_matches_the_reference_in_eval_mode() {
    check_derived(None).assert_within(TOL);
}

fn search_model(json: &Value, perturb: Option<(&str, usize, f64)>) -> (RnnLm, ParamStore, Var) {
    let store = ParamStore::new(0);
    let vocab = json["ntoken"].as_u64().unwrap() as usize;
    let primitives: Vec<String> = serde_json::from_value(json["primitives"].clone()).unwrap();
    let ours: Vec<&str> = nas_search_space::DARTS_RNN_PRIMITIVES
        .iter()
        .map(|p| p.name())
        .collect();
    assert_eq!(primitives, ours);
    let model = RnnLm::search(
        config(json),
        vocab,
        RNN_STEPS,
        store.var_builder(DType::F64, &Device::Cpu),
    )
    .unwrap();
    load(&store, json, perturb);
    let mut alphas = values(&json["weights"]);
    if let Some(("weights", index, delta)) = perturb {
        alphas[index] += delta;
    }
    let alphas =
        Var::from_tensor(&Tensor::from_vec(alphas, shape(&json["weights"]), &Device::Cpu).unwrap())
            .unwrap();
    (model, store, alphas)
}

fn bn_stats(store: &ParamStore) -> (Vec<f64>, Vec<f64>) {
    let all: HashMap<String, Var> = store.all().into_iter().collect();
    (
        flat(all[BN_MEAN].as_tensor()),
        flat(all[BN_VAR].as_tensor()),
    )
}

fn check_search_eval(perturb: Option<(&str, usize, f64)>) -> Report {
    let json = fixture("darts_rnn_search_eval.json");
    let (model, store, alphas) = search_model(&json, perturb);
    let probs = candle_nn::ops::softmax(alphas.as_tensor(), 1).unwrap();
    let h0 = tensor(&json["hidden0"]).squeeze(0).unwrap();
    let out = model
        .forward(
            &tokens(&json["tokens"]),
            &h0,
            Some(&probs),
            &LmMasks::default(),
            false,
        )
        .unwrap();
    // With BN at its default statistics (0 and 1) every node adds to its inputs, so the
    // states roughly double each step and the log-probabilities grow with them: compare
    // each step relative to its own size.
    let t_len = json["T"].as_u64().unwrap() as usize;
    let got = flat(&log_probs(&out));
    let want = values(&json["log_probs"]);
    let per_step = want.len() / t_len;
    let mut report = Report::default();
    for t in 0..t_len {
        let r = t * per_step..(t + 1) * per_step;
        report.add(format!("log_probs t={t}"), &got[r.clone()], &want[r]);
    }
    report.add(
        "hidden_final",
        &flat(&out.hidden),
        &values(&json["hidden_final"]),
    );
    // Evaluation leaves the running statistics alone.
    let (mean, var) = bn_stats(&store);
    report.add(
        "bn running_mean (unchanged)",
        &mean,
        &values(&json["bn"]["running_mean"]),
    );
    report.add(
        "bn running_var (unchanged)",
        &var,
        &values(&json["bn"]["running_var"]),
    );
    report
}

/// The search model (`RnnLm::search`, 8 nodes, one shared BN without affine parameters)
/// in evaluation mode, where BN normalises with its running statistics: every step's
/// log-probabilities and the final hidden state.
#[test]
fn search_model_matches_the_reference_in_eval_mode() {
    check_search_eval(None).assert_within(TOL);
}

fn check_search_train(perturb: Option<(&str, usize, f64)>) -> Report {
    let json = fixture("darts_rnn_search_train.json");
    let (model, store, alphas) = search_model(&json, perturb);
    let probs = candle_nn::ops::softmax(alphas.as_tensor(), 1).unwrap();
    let h0 = tensor(&json["hidden0"]).squeeze(0).unwrap();
    let targets = tokens(&json["targets"]).flatten_all().unwrap();
    let out = model
        .forward(
            &tokens(&json["tokens"]),
            &h0,
            Some(&probs),
            &LmMasks::default(),
            true,
        )
        .unwrap();
    let beta = json["tar_beta"].as_f64().unwrap();
    let nll = nll(&out, &targets).unwrap();
    let tar = tar(&out.raw, beta).unwrap().unwrap();
    let loss = (&nll + &tar).unwrap();

    let mut report = Report::default();
    report.add(
        "log_probs",
        &flat(&log_probs(&out)),
        &values(&json["log_probs"]),
    );
    report.add("raw_output", &flat(&out.raw), &values(&json["raw_output"]));
    report.add(
        "hidden_final",
        &flat(&out.hidden),
        &values(&json["hidden_final"]),
    );
    report.scalar(
        "nll",
        nll.to_scalar().unwrap(),
        json["nll"].as_f64().unwrap(),
    );
    report.scalar(
        "tar",
        tar.to_scalar().unwrap(),
        json["tar"].as_f64().unwrap(),
    );
    report.scalar(
        "loss",
        loss.to_scalar().unwrap(),
        json["loss"].as_f64().unwrap(),
    );

    // Batch norm ran 9 times a step (state 0 and 8 nodes), 54 updates in all.
    let bn_after = &json["bn_after"];
    assert_eq!(
        bn_after["num_batches_tracked"].as_u64().unwrap(),
        (json["T"].as_u64().unwrap()) * (RNN_STEPS as u64 + 1)
    );
    assert_eq!(bn_after["momentum"].as_f64().unwrap(), 0.1);
    let (mean, var) = bn_stats(&store);
    report.add(
        "bn_after running_mean",
        &mean,
        &values(&bn_after["running_mean"]),
    );
    report.add(
        "bn_after running_var",
        &var,
        &values(&bn_after["running_var"]),
    );

    // Gradients of NLL + TAR: every trainable parameter (the encoder's includes the tied
    // decoder's part) and the architecture weights, and nothing else.
    let grads = loss.backward().unwrap();
    let want = json["grads"].as_object().unwrap();
    let mut names: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
    names.push("weights".to_string());
    let mut expected: Vec<String> = want.keys().cloned().collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    let mut vars = store.trainable();
    vars.push(("weights".to_string(), alphas));
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        assert_eq!(g.dims(), shape(&want[&name]), "{name}");
        report.add(format!("grad {name}"), &flat(g), &values(&want[&name]));
    }
    report
}

/// The search model in training mode with every dropout 0 (BN normalises with the batch
/// and updates its running statistics): log-probabilities, raw outputs, NLL, TAR
/// (beta 1e-3) and their sum; the gradients of NLL + TAR for every parameter and the
/// architecture weights; the BN running statistics after the pass.
#[test]
fn search_model_training_pass_matches_the_reference() {
    let report = check_search_train(None);
    assert_eq!(report.rows.len(), 6 + 2 + (3 + RNN_STEPS) + 1);
    report.assert_within(TOL);
}

/// The checks above are not vacuous: moving one weight by 1e-5 (weights are of size about
/// 0.25) takes each compared quantity at least 100 times beyond [`TOL`].
#[test]
fn a_perturbed_weight_is_caught_by_every_check() {
    let beyond = |r: &Report, what: &str| {
        let e = r.error(what);
        eprintln!("perturbed, {what:>28}: {e:.2e}");
        assert!(e > 100.0 * TOL, "{what}: {e:e} after a perturbation");
    };
    let delta = 1e-5;
    // Derived model: a weight of state 0 moves both the output and the state.
    let r = check_derived(Some(("rnns.0._W0", 40, delta)));
    beyond(&r, "log_probs");
    beyond(&r, "hidden_final");
    // Search model, evaluation: an architecture weight of the last node.
    let r = check_search_eval(Some(("weights", 35 * 5 + 2, delta)));
    beyond(&r, "log_probs t=0");
    beyond(&r, "log_probs t=5");
    beyond(&r, "hidden_final");
    // Search model, training: a weight of the first node reaches everything.
    let r = check_search_train(Some(("rnns.0._Ws.0", 3, delta)));
    for (what, _) in &r.rows {
        beyond(&r, what);
    }
    // The decoder bias reaches only the log-probabilities, the NLL and the gradients.
    let r = check_search_train(Some(("decoder.bias", 7, delta)));
    for what in [
        "log_probs",
        "nll",
        "loss",
        "grad decoder.bias",
        "grad weights",
    ] {
        beyond(&r, what);
    }
    // The BN buffers themselves: evaluation reads them, and training's update starts
    // from them.
    let r = check_search_eval(Some((BN_VAR, 0, delta)));
    beyond(&r, "log_probs t=0");
    let r = check_search_train(Some((BN_MEAN, 0, delta)));
    beyond(&r, "bn_after running_mean");
}
