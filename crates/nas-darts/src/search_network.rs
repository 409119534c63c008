//! The DARTS search network (`Network` in the reference `cnn/model_search.py`): a stem,
//! `layers` search cells with reductions at `layers / 3` and `2 layers / 3` that double
//! the channels, global average pooling and a linear classifier. The architecture
//! weights are inputs of the forward pass, kept in their own store.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Init, ModuleT, VarBuilder};
use nas_ops::{
    batch_norm, conv2d, global_avg_pool, BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig,
};
use nas_search_space::{derive_cnn, ArchWeights, CnnGenotype, DARTS_CNN_PRIMITIVES};
use nas_train::ParamStore;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use nas_models::CellShape;

use crate::search_cell::{edge_count, SearchCell};

/// Sizes of a search network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchCnnConfig {
    /// Image channels (3 for CIFAR, 1 for MNIST-like data).
    pub in_channels: usize,
    /// Channels of the first cells' nodes (`C`, 16 in the paper).
    pub channels: usize,
    /// Number of cells (8 in the paper).
    pub layers: usize,
    /// Number of classes.
    pub classes: usize,
    /// Intermediate nodes per cell (4).
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Nodes concatenated into a cell's output (4).
    #[serde(default = "default_steps")]
    pub multiplier: usize,
    /// The stem outputs `stem_multiplier * C` channels (3).
    #[serde(default = "default_stem_multiplier")]
    pub stem_multiplier: usize,
}

fn default_steps() -> usize {
    4
}

fn default_stem_multiplier() -> usize {
    3
}

impl SearchCnnConfig {
    /// The paper's CIFAR-10 search network: C = 16, 8 layers, 10 classes.
    pub fn paper() -> Self {
        SearchCnnConfig {
            in_channels: 3,
            channels: 16,
            layers: 8,
            classes: 10,
            steps: 4,
            multiplier: 4,
            stem_multiplier: 3,
        }
    }

    /// Checks that the sizes make a network.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (self.in_channels > 0, "the data's images must have channels"),
            (
                self.channels >= 2 && self.channels.is_multiple_of(2),
                "model.channels must be even and at least 2 (FactorizedReduce halves them)",
            ),
            (
                self.layers >= 3,
                "model.layers must be at least 3 (two reduction cells and a normal one)",
            ),
            (
                self.classes >= 2,
                "the data set must have at least 2 classes",
            ),
            (self.steps >= 1, "model.steps must be at least 1"),
            (
                self.multiplier >= 1 && self.multiplier <= self.steps + 2,
                "model.multiplier must be between 1 and model.steps + 2",
            ),
            (
                self.stem_multiplier >= 1,
                "model.stem_multiplier must be positive",
            ),
        ];
        Ok(nas_train::check(&checks)?)
    }

    /// The number of parameters, from the sizes alone (what [`count_parameters`] counts
    /// by building the network): the stem, every cell's preprocessing and MixedOps (the
    /// cells' batch norms have no affine parameters), the classifier.
    pub fn parameters(&self) -> u64 {
        let u = |v: usize| v as u64;
        let c_stem = u(self.stem_multiplier * self.channels);
        let mut total = u(self.in_channels) * c_stem * 9 + 2 * c_stem;
        let (mut cpp, mut cp, mut c) = (c_stem, c_stem, u(self.channels));
        for i in 0..self.layers {
            let reduction = self.reductions().contains(&i);
            if reduction {
                c *= 2;
            }
            // preprocess0 (a 1x1 convolution, or FactorizedReduce's two halves) and
            // preprocess1: both cpp (or cp) x c weights.
            total += cpp * c + cp * c;
            // Per MixedOp: two separable 3x3 and 5x5 blocks, dilated 3x3 and 5x5; plus
            // FactorizedReduce for the skip at stride 2.
            let edge = 6 * c * c + 102 * c;
            for node in 0..self.steps {
                let strided = if reduction { 2 } else { 0 };
                total += u(2 + node) * edge + strided * c * c;
            }
            (cpp, cp) = (cp, u(self.multiplier) * c);
        }
        total + cp * u(self.classes) + u(self.classes)
    }

    /// Bytes a search step needs at `batch` images of `h` x `w`, roughly: the weights
    /// with their gradients, momentum and the unrolled copy, and the activations kept
    /// for the backward passes. The latter is `ACTIVATION_FACTOR` floats per element of
    /// every MixedOp's input, measured on `cargo xtask bench darts-step` (C=8, 5 layers,
    /// batch 16, 32x32: 523 MB peak resident, estimated 595 MB).
    pub fn memory_estimate(&self, batch: usize, h: usize, w: usize) -> u64 {
        const ACTIVATION_FACTOR: u64 = 32;
        let (mut c, mut h, mut w) = (self.channels as u64, h as u64, w as u64);
        let mut elements = 0u64;
        for i in 0..self.layers {
            if self.reductions().contains(&i) {
                c *= 2;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
            let edges = (0..self.steps).map(|n| 2 + n as u64).sum::<u64>();
            elements = elements.saturating_add(edges.saturating_mul(c * h * w));
        }
        let activations = elements
            .saturating_mul(batch as u64)
            .saturating_mul(4 * ACTIVATION_FACTOR);
        self.parameters()
            .saturating_mul(4 * 5)
            .saturating_add(activations)
    }

    /// The indices of the reduction cells.
    pub fn reductions(&self) -> [usize; 2] {
        [self.layers / 3, 2 * self.layers / 3]
    }
}

/// The search network.
#[derive(Debug, Clone)]
pub struct SearchCnn {
    stem_conv: Conv2d,
    stem_bn: BatchNorm,
    cells: Vec<SearchCell>,
    classifier: candle_nn::Linear,
    cfg: SearchCnnConfig,
}

impl SearchCnn {
    /// Builds the network under `vb` with the reference's parameter names (`stem.0`,
    /// `stem.1`, `cells.{i}`, `classifier`).
    pub fn new(cfg: SearchCnnConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c_stem = cfg.stem_multiplier * cfg.channels;
        let stem_conv = conv2d(
            cfg.in_channels,
            c_stem,
            Conv2dConfig::same(3),
            vb.pp("stem.0"),
        )?;
        let stem_bn = batch_norm(c_stem, BatchNormConfig::default(), vb.pp("stem.1"))?;
        let (mut c_prev_prev, mut c_prev, mut c) = (c_stem, c_stem, cfg.channels);
        let mut cells = Vec::with_capacity(cfg.layers);
        let mut reduction_prev = false;
        for i in 0..cfg.layers {
            let reduction = cfg.reductions().contains(&i);
            if reduction {
                c *= 2;
            }
            let shape = CellShape {
                c_prev_prev,
                c_prev,
                c,
                steps: cfg.steps,
                multiplier: cfg.multiplier,
                reduction,
                reduction_prev,
            };
            cells.push(SearchCell::new(shape, vb.pp(format!("cells.{i}")))?);
            reduction_prev = reduction;
            (c_prev_prev, c_prev) = (c_prev, cfg.multiplier * c);
        }
        let bound = 1.0 / (c_prev as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let vb_cls = vb.pp("classifier");
        let classifier = candle_nn::Linear::new(
            vb_cls.get_with_hints((cfg.classes, c_prev), "weight", init)?,
            Some(vb_cls.get_with_hints(cfg.classes, "bias", init)?),
        );
        Ok(SearchCnn {
            stem_conv,
            stem_bn,
            cells,
            classifier,
            cfg,
        })
    }

    /// The sizes.
    pub fn config(&self) -> SearchCnnConfig {
        self.cfg
    }

    /// Logits `[n, classes]` for images `x` `[n, in_channels, h, w]`, with the raw
    /// architecture weights (softmaxed here, per edge).
    pub fn forward(&self, x: &Tensor, alphas: &Alphas, train: bool) -> Result<Tensor> {
        // `candle_nn::ops::softmax` is built from differentiable ops; the fused
        // `softmax_last_dim` has no backward pass and would leave the alphas untrained.
        let normal = candle_nn::ops::softmax(alphas.normal.as_tensor(), D::Minus1)?;
        let reduce = candle_nn::ops::softmax(alphas.reduce.as_tensor(), D::Minus1)?;
        let stem = self
            .stem_bn
            .forward_t(&self.stem_conv.forward_t(x, train)?, train)?;
        let (mut s0, mut s1) = (stem.clone(), stem);
        for cell in &self.cells {
            let w = if cell.shape().reduction {
                &reduce
            } else {
                &normal
            };
            let out = cell.forward(&s0, &s1, w, train)?;
            (s0, s1) = (s1, out);
        }
        let pooled = global_avg_pool(&s1)?;
        Ok(self.classifier.forward_t(&pooled, train)?)
    }
}

/// The architecture weights: `alphas_normal` and `alphas_reduce`, each
/// `[edges, primitives]`, in a store of their own.
#[derive(Debug, Clone)]
pub struct Alphas {
    store: ParamStore,
    normal: Var,
    reduce: Var,
}

impl Alphas {
    /// New weights drawn from `1e-3 N(0, 1)` with `seed`, for cells of `steps` nodes.
    pub fn new(steps: usize, seed: u64, device: &Device) -> Result<Self> {
        Self::with_dtype(steps, seed, DType::F32, device)
    }

    /// As [`Alphas::new`], in `dtype` (f64 for gradient checks).
    pub fn with_dtype(steps: usize, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let store = ParamStore::new(seed);
        let vb = store.var_builder(dtype, device);
        let shape = (edge_count(steps), DARTS_CNN_PRIMITIVES.len());
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1e-3,
        };
        vb.get_with_hints(shape, "alphas_normal", init)?;
        vb.get_with_hints(shape, "alphas_reduce", init)?;
        let vars = store.all();
        let find = |name: &str| {
            vars.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| Error::Config(format!("{name} was not created")))
        };
        Ok(Alphas {
            normal: find("alphas_normal")?,
            reduce: find("alphas_reduce")?,
            store,
        })
    }

    /// The store holding both matrices (for optimizers and checkpoints).
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// `alphas_normal`.
    pub fn normal(&self) -> &Var {
        &self.normal
    }

    /// `alphas_reduce`.
    pub fn reduce(&self) -> &Var {
        &self.reduce
    }

    /// The genotype these weights derive (2 inputs per node, the strongest op that is not
    /// `none` on each).
    pub fn genotype(&self) -> Result<CnnGenotype> {
        Ok(derive_cnn(
            &to_arch_weights("alphas_normal", &self.normal)?,
            &to_arch_weights("alphas_reduce", &self.reduce)?,
            2,
        )?)
    }
}

impl Alphas {
    /// The softmax of each edge's weights, for the epoch line of `metrics.jsonl`:
    /// `{"ops": [names in column order], "normal": [[p; ops]; edges], "reduce": ..}`,
    /// rounded to 5 decimals (what a plot of their evolution needs).
    pub fn softmax_json(&self) -> Result<serde_json::Value> {
        let ops: Vec<&str> = DARTS_CNN_PRIMITIVES.iter().map(|op| op.name()).collect();
        Ok(serde_json::json!({
            "ops": ops,
            "normal": softmax_rows(&self.normal)?,
            "reduce": softmax_rows(&self.reduce)?,
        }))
    }
}

/// The rows of `var` softmaxed and rounded to 5 decimals.
pub(crate) fn softmax_rows(var: &Var) -> Result<Vec<Vec<f64>>> {
    let p = candle_nn::ops::softmax(&var.as_tensor().to_dtype(DType::F64)?, D::Minus1)?;
    let rows: Vec<Vec<f64>> = p.to_vec2()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|x| (x * 1e5).round() / 1e5).collect())
        .collect())
}

fn to_arch_weights(name: &str, var: &Var) -> Result<ArchWeights> {
    let rows: Vec<Vec<f32>> = var.as_tensor().to_dtype(DType::F32)?.to_vec2()?;
    Ok(ArchWeights::from_rows(name, &rows)?)
}

/// The number of trainable weights of a search network (architecture weights apart).
pub fn count_parameters(cfg: SearchCnnConfig) -> Result<usize> {
    let store = ParamStore::new(0);
    SearchCnn::new(cfg, store.var_builder(DType::F32, &Device::Cpu))?;
    Ok(store.count(|_| true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter count from the sizes equals the built network's.
    #[test]
    fn parameters_from_the_sizes_match_the_built_network() {
        for (in_channels, channels, layers, steps, multiplier, classes) in [
            (3, 16, 8, 4, 4, 10),
            (1, 4, 3, 2, 3, 5),
            (3, 6, 5, 3, 2, 100),
            (1, 2, 7, 1, 1, 2),
        ] {
            let cfg = SearchCnnConfig {
                in_channels,
                channels,
                layers,
                classes,
                steps,
                multiplier,
                stem_multiplier: 3,
            };
            assert_eq!(
                cfg.parameters(),
                count_parameters(cfg).unwrap() as u64,
                "{cfg:?}"
            );
        }
        let paper = SearchCnnConfig::paper();
        assert_eq!(paper.parameters(), count_parameters(paper).unwrap() as u64);
    }

    #[test]
    fn shapes_through_the_network() {
        let cfg = SearchCnnConfig {
            in_channels: 1,
            channels: 4,
            layers: 3,
            classes: 5,
            ..SearchCnnConfig::paper()
        };
        let store = ParamStore::new(1);
        let net = SearchCnn::new(cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let alphas = Alphas::new(4, 1, &Device::Cpu).unwrap();
        let x = Tensor::zeros((2, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let y = net.forward(&x, &alphas, true).unwrap();
        assert_eq!(y.dims(), [2, 5]);
        assert_eq!(alphas.normal().dims(), [14, 8]);
        // Reduction cells at 1 and 2; cell 2 follows a reduction.
        assert_eq!(cfg.reductions(), [1, 2]);
        let names: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"cells.2.preprocess0.conv_1.weight".to_string()));
        assert!(names.contains(&"cells.1.preprocess0.op.1.weight".to_string()));
        assert!(names.contains(&"cells.0._ops.13._ops.4.op.1.weight".to_string()));
        assert!(names.contains(&"stem.1.weight".to_string()));
        assert!(names.iter().all(|n| !n.contains("running")));
    }

    /// Counts of the reference `model_search.Network(C, classes, layers)` under PyTorch
    /// (the sum of `p.numel()` over `parameters()`, 3 input channels); the first is the
    /// paper's search log line "param size = 1.930618MB".
    #[test]
    fn parameter_counts_match_the_reference() {
        for (channels, layers, classes, want) in [
            (16, 8, 10, 1_930_618),
            (8, 5, 10, 394_210),
            (4, 3, 5, 72_529),
            (16, 8, 100, 1_953_748),
        ] {
            let cfg = SearchCnnConfig {
                channels,
                layers,
                classes,
                ..SearchCnnConfig::paper()
            };
            assert_eq!(count_parameters(cfg).unwrap(), want, "{cfg:?}");
        }
    }

    /// The loss reaches the architecture weights: their gradient through the whole
    /// network equals central differences of the loss (f64, training-mode BN).
    #[test]
    fn the_logged_softmax_is_each_edges_distribution() {
        let dev = Device::Cpu;
        let alphas = Alphas::new(4, 3, &dev).unwrap();
        let a: Vec<f32> = (0..14 * 8).map(|i| (i % 8) as f32 * 0.5).collect();
        alphas
            .reduce()
            .set(&Tensor::from_vec(a, (14, 8), &dev).unwrap())
            .unwrap();
        let json = alphas.softmax_json().unwrap();
        assert_eq!(json["ops"][0], "none");
        assert_eq!(json["ops"][7], "dil_conv_5x5");
        let reduce = json["reduce"].as_array().unwrap();
        assert_eq!(reduce.len(), 14);
        // softmax(0, 0.5, .., 3.5): the last column by hand.
        let z: f64 = (0..8).map(|k| (k as f64 * 0.5).exp()).sum();
        let last = reduce[5][7].as_f64().unwrap();
        assert!((last - 3.5f64.exp() / z).abs() < 1e-5, "{last}");
        for row in json["normal"].as_array().unwrap() {
            let sum: f64 = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            // The 1e-3 start: nearly uniform, and a distribution up to the rounding.
            assert!((sum - 1.0).abs() < 1e-4, "{sum}");
            assert!((row[0].as_f64().unwrap() - 0.125).abs() < 1e-2);
        }
    }

    #[test]
    fn alpha_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let cfg = SearchCnnConfig {
            in_channels: 1,
            channels: 2,
            layers: 3,
            classes: 3,
            ..SearchCnnConfig::paper()
        };
        let store = ParamStore::new(3);
        let net = SearchCnn::new(cfg, store.var_builder(DType::F64, &dev)).unwrap();
        let alphas = Alphas::with_dtype(4, 5, DType::F64, &dev).unwrap();
        // Larger alphas than the 1e-3 start, so the softmax is not flat.
        let a0: Vec<f64> = (0..14 * 8)
            .map(|i| ((i * 7 % 13) as f64 - 6.0) * 0.2)
            .collect();
        alphas
            .normal()
            .set(&Tensor::from_vec(a0.clone(), (14, 8), &dev).unwrap())
            .unwrap();
        let x: Vec<f64> = (0..4 * 8 * 8).map(|i| (i as f64 * 0.37).sin()).collect();
        let x = Tensor::from_vec(x, (4, 1, 8, 8), &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 1], &dev).unwrap();
        let loss = |a: &[f64]| -> Tensor {
            alphas
                .normal()
                .set(&Tensor::from_vec(a.to_vec(), (14, 8), &dev).unwrap())
                .unwrap();
            let logits = net.forward(&x, &alphas, true).unwrap();
            candle_nn::loss::cross_entropy(&logits, &y).unwrap()
        };
        let grads = loss(&a0).backward().unwrap();
        let g: Vec<f64> = grads
            .get(alphas.normal().as_tensor())
            .expect("the alphas get a gradient")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(g.iter().any(|v| v.abs() > 1e-6), "{g:?}");
        let h = 1e-5;
        for i in [0, 9, 17, 50, 77, 111] {
            let (mut p, mut m) = (a0.clone(), a0.clone());
            p[i] += h;
            m[i] -= h;
            let fp = loss(&p).to_scalar::<f64>().unwrap();
            let fm = loss(&m).to_scalar::<f64>().unwrap();
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-6 + 1e-4 * fd.abs(),
                "alpha {i}: {} vs {fd}",
                g[i]
            );
        }
    }

    #[test]
    fn bad_sizes_are_named() {
        let err = SearchCnnConfig {
            channels: 5,
            ..SearchCnnConfig::paper()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("channels must be even"), "{err}");
    }
}
