//! The shared-weight child: its parameter count against the reference's shapes, and a
//! step that computes (and moves) only the sampled child's weights.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use candle_core::{DType, Device, Tensor};
use nas_enas::{arc_genotype, uniform_arc, MicroChild, MicroChildConfig};
use nas_train::ParamStore;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn parameters_match_the_reference_search_child() {
    // tests/fixtures/reference_counts.py, from micro_child.py's shapes at the CIFAR-10
    // search script's settings (F = 20, 6 + 2 layers, 5 nodes): the body the reference
    // prints ("Model has ... params") and the aux head ("Aux head uses ... params").
    let (body, with_aux) = MicroChildConfig::reference().parameters().unwrap();
    assert_eq!(body, 5_373_140);
    assert_eq!(with_aux - body, 412_928);
}

#[test]
fn counted_parameters_are_those_the_child_builds() {
    for cfg in [
        MicroChildConfig::reference(),
        small(),
        MicroChildConfig {
            aux_head: false,
            ..small()
        },
        MicroChildConfig {
            in_channels: 3,
            filters: 6,
            layers: 4,
            nodes: 2,
            ..small()
        },
    ] {
        let store = ParamStore::new(0);
        MicroChild::new(cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let built_body = store.count(|n| !n.starts_with(nas_enas::AUX_PREFIX));
        let built_all = store.count(|_| true);
        assert_eq!(
            cfg.parameters().unwrap(),
            (built_body, built_all),
            "{cfg:?}"
        );
    }
}

fn small() -> MicroChildConfig {
    MicroChildConfig {
        in_channels: 1,
        classes: 3,
        filters: 4,
        layers: 3,
        nodes: 3,
        aux_head: true,
        keep_prob: 0.9,
    }
}

#[test]
fn a_step_reaches_only_the_sampled_child() {
    let dev = Device::Cpu;
    let cfg = small();
    let store = ParamStore::new(4);
    let child = MicroChild::new(cfg, store.var_builder(DType::F32, &dev)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 1, 20, 20), &dev).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 1], &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..3 {
        let arc = uniform_arc(cfg.nodes, &mut rng);
        let g = arc_genotype(&arc).unwrap();
        let out = child.forward(&x, &g, true, &mut rng).unwrap();
        assert_eq!(out.logits.dims(), [4, 3]);
        assert_eq!(out.aux_logits.as_ref().unwrap().dims(), [4, 3]);
        let loss = candle_nn::loss::cross_entropy(&out.logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        let reached: HashSet<String> = store
            .trainable()
            .into_iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
            .map(|(n, _)| n)
            .collect();
        // The separable weights that may be reached: per layer, node and branch, the
        // sampled op's module at the sampled input's row.
        let reductions = cfg.reductions();
        let mut allowed = HashSet::new();
        for layer in 0..cfg.layers + 2 {
            let cell = if reductions.contains(&layer) {
                g.reduce()
            } else {
                g.normal()
            };
            for (c, node) in cell.nodes().iter().enumerate() {
                for (branch, input, op) in [
                    ("x", node.x_input, node.x_op),
                    ("y", node.y_input, node.y_op),
                ] {
                    let k = match op.index() {
                        0 => 3,
                        1 => 5,
                        _ => continue,
                    };
                    allowed.insert(format!(
                        "layer_{layer}.cell_{c}.{branch}.conv_{k}x{k}.{input}."
                    ));
                }
            }
        }
        let separable: Vec<&String> = reached.iter().filter(|n| n.contains(".cell_")).collect();
        for name in &separable {
            assert!(
                allowed.iter().any(|p| name.starts_with(p.as_str())),
                "{name} got a gradient but is not in the sampled child"
            );
        }
        // Each allowed module holds 8 trainable tensors (two depthwise, pointwise, BN
        // scale and shift), all reached.
        assert_eq!(separable.len(), 8 * allowed.len(), "{separable:?}");
        // Everything outside the cells' tables is reached (stem, calibrations,
        // reductions, final convolutions, classifier); the aux head is not in this loss.
        for (name, _) in store.trainable() {
            if !name.contains(".cell_") && !name.starts_with("aux_head") {
                assert!(reached.contains(&name), "{name} got no gradient");
            }
        }
    }
}
