//! A checkpoint written by the reference implementation's `NetworkCIFAR` (DARTS-V2, C=4,
//! 3 cells, no auxiliary head, weights perturbed and BN statistics updated; see
//! `fixtures/make_fixture.py`) loads by name, and our network computes the reference's
//! logits from it in evaluation mode.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use nas_models::{
    import_reference, read_weights, reference_cifar_normalize, write_weights, EvalGenotype,
    EvalKind, EvalNetConfig, EvalNetwork,
};
use nas_search_space::{bundled, Genotype};
use nas_train::ParamStore;
use rand::SeedableRng;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn darts_v2() -> nas_search_space::CnnGenotype {
    match bundled("darts-v2").unwrap() {
        Genotype::DartsCnn(g) => g,
        other => panic!("{other:?}"),
    }
}

fn cfg(auxiliary: bool) -> EvalNetConfig {
    EvalNetConfig {
        kind: EvalKind::Cifar,
        in_channels: 3,
        channels: 4,
        layers: 3,
        classes: 10,
        auxiliary,
    }
}

#[test]
fn reference_weights_give_the_reference_logits() {
    let weights = import_reference(&fixture("darts_v2_c4_l3.pt"), &darts_v2(), cfg(false)).unwrap();
    check_logits(&EvalGenotype::Darts(darts_v2()), cfg(false), &weights);
}

#[test]
fn a_weights_file_rebuilds_the_network_that_gives_the_reference_logits() {
    // What `nas import` writes and `nas eval --checkpoint FILE` reads: the network is
    // rebuilt from the file's metadata alone.
    let weights = import_reference(&fixture("darts_v2_c4_l3.pt"), &darts_v2(), cfg(false)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write_weights(
        &path,
        &weights,
        &cfg(false),
        &EvalGenotype::Darts(darts_v2()),
        &reference_cifar_normalize(),
    )
    .unwrap();
    let file = read_weights(&path, &Device::Cpu).unwrap();
    check_logits(&file.genotype, file.net, &file.tensors);
}

/// Builds the network, loads `weights` and compares its logits on the fixture's input
/// with the reference implementation's.
fn check_logits(
    genotype: &EvalGenotype,
    cfg: EvalNetConfig,
    weights: &std::collections::HashMap<String, Tensor>,
) {
    let store = ParamStore::new(0);
    let net = EvalNetwork::new(genotype, cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    store.set_all(weights).unwrap();
    let n = 2 * 3 * 32 * 32;
    let x: Vec<f32> = (0..n).map(|i| (0.01 * i as f64).sin() as f32).collect();
    let x = Tensor::from_vec(x, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (logits, _) = net.forward(&x, false, 0.0, &mut rng).unwrap();
    let got: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("darts_v2_c4_l3.json")).unwrap()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(json["logits"].clone()).unwrap();
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!(
            (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn a_checkpoint_for_another_network_is_refused_by_name() {
    let err = import_reference(&fixture("darts_v2_c4_l3.pt"), &darts_v2(), cfg(true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auxiliary_head") && err.contains("missing"),
        "{err}"
    );
    let other = match bundled("darts-v1").unwrap() {
        Genotype::DartsCnn(g) => g,
        other => panic!("{other:?}"),
    };
    let err = import_reference(&fixture("darts_v2_c4_l3.pt"), &other, cfg(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("darts_v2_c4_l3.pt"), "{err}");
    let err = import_reference(&fixture("darts_v2_c4_l3.json"), &darts_v2(), cfg(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable PyTorch checkpoint"), "{err}");
    // A pre-1.6 `torch.save` file: a bare pickle stream, named as such.
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy.pt");
    std::fs::write(&legacy, b"\x80\x02\x8a\x0alo\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    let err = import_reference(&legacy, &darts_v2(), cfg(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("legacy (pre-1.6, non-zip) format"), "{err}");
}
