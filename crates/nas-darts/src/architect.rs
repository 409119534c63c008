//! The architecture step of DARTS (the reference `cnn/architect.py`), generic over the
//! model: anything with a loss on a batch whose weights an [`Sgd`] optimizes and whose
//! architecture weights are separate variables.
//!
//! First order: `dalpha = grad_alpha L_val(w, alpha)`.
//!
//! Second order (paper eqs. 7-8), with `xi` the weights' current learning rate:
//! ```text
//! w'    = w - xi (momentum buf + grad_w L_train(w, alpha) + wd w)
//! v     = grad_w' L_val(w', alpha)
//! eps   = 0.01 / ||v||
//! w+-   = w +- eps v
//! dalpha = grad_alpha L_val(w', alpha)
//!        - xi (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)
//! ```
//! The finite difference divides by `2 eps`; ports that write `/ 2 * eps` are wrong by a
//! factor of `eps^2`, which the tests would catch. The weights are restored exactly
//! afterwards (set back from a copy, not by adding and subtracting).

use candle_core::{Tensor, Var};
use nas_train::{grads, Adam, AdamConfig, Sgd};
use serde::{Deserialize, Serialize};

use crate::Result;

/// First- or second-order approximation of the architecture gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// `xi = 0`: the validation gradient at the current weights.
    First,
    /// One unrolled weight step and a finite-difference Hessian-vector product.
    Second,
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "first" => Ok(Order::First),
            "second" => Ok(Order::Second),
            other => Err(format!("unknown order {other:?}; expected first or second")),
        }
    }
}

/// A model the architect can differentiate: a scalar loss for a batch, in training mode.
pub trait Objective {
    /// A batch of data.
    type Batch;
    /// The mean loss on `batch`.
    fn loss(&self, batch: &Self::Batch) -> Result<Tensor>;
}

/// Figures of one architecture step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchStep {
    /// The validation loss the gradient came from (at `w'` for second order).
    pub val_loss: f64,
}

/// Updates the architecture weights with Adam.
#[derive(Debug)]
pub struct Architect {
    opt: Adam,
    order: Order,
    unrolled_clip: Option<f64>,
}

impl Architect {
    /// An architect over `arch` (named variables).
    pub fn new(arch: Vec<(String, Var)>, cfg: AdamConfig, order: Order) -> Result<Self> {
        Ok(Architect {
            opt: Adam::new(arch, cfg)?,
            order,
            unrolled_clip: None,
        })
    }

    /// Clips the gradients of the unrolled step to `max_norm`, as the reference's
    /// recurrent architect (`rnn/architect.py`) does: the training gradient that makes
    /// `w'` is clipped (by `clip_coef`), so is `v`, and the finite-difference term is
    /// scaled by `xi * clip_coef`. The CNN architect does not clip.
    pub fn with_unrolled_clip(mut self, max_norm: f64) -> Self {
        self.unrolled_clip = Some(max_norm);
        self
    }

    /// The approximation in use.
    pub fn order(&self) -> Order {
        self.order
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &Adam {
        &self.opt
    }

    /// The optimizer, mutably (to restore checkpoints).
    pub fn optimizer_mut(&mut self) -> &mut Adam {
        &mut self.opt
    }

    /// One architecture step: the gradient, then an Adam update.
    pub fn step<M: Objective>(
        &mut self,
        model: &M,
        train: &M::Batch,
        val: &M::Batch,
        w_opt: &Sgd,
    ) -> Result<ArchStep> {
        let (grads, stats) = self.gradient(model, train, val, w_opt)?;
        self.opt
            .step(&grads.into_iter().map(Some).collect::<Vec<_>>())?;
        Ok(stats)
    }

    /// The architecture gradient, without updating anything (the weights are as before).
    pub fn gradient<M: Objective>(
        &self,
        model: &M,
        train: &M::Batch,
        val: &M::Batch,
        w_opt: &Sgd,
    ) -> Result<(Vec<Tensor>, ArchStep)> {
        let arch = self.opt.vars();
        match self.order {
            Order::First => {
                let loss = model.loss(val)?;
                let store = loss.backward()?;
                let g = or_zeros(grads::collect(&store, arch), arch)?;
                Ok((
                    g,
                    ArchStep {
                        val_loss: scalar(&loss)?,
                    },
                ))
            }
            Order::Second => {
                let weights = w_opt.vars();
                let saved: Vec<Tensor> = weights
                    .iter()
                    .map(|(_, v)| v.as_tensor().copy())
                    .collect::<candle_core::Result<_>>()?;
                let result =
                    second_order(model, train, val, w_opt, arch, &saved, self.unrolled_clip);
                // Whatever happened, put the weights back exactly.
                for ((_, var), w) in weights.iter().zip(&saved) {
                    var.set(w)?;
                }
                result
            }
        }
    }
}

fn second_order<M: Objective>(
    model: &M,
    train: &M::Batch,
    val: &M::Batch,
    w_opt: &Sgd,
    arch: &[(String, Var)],
    w: &[Tensor],
    clip: Option<f64>,
) -> Result<(Vec<Tensor>, ArchStep)> {
    let weights = w_opt.vars();
    let cfg = w_opt.config();
    // w' = w - xi (momentum buf + clip_coef grad + wd w)
    let store = model.loss(train)?.backward()?;
    let mut g_train = or_zeros(grads::collect(&store, weights), weights)?;
    let clip_coef = match clip {
        Some(max_norm) => clip_in_place(&mut g_train, max_norm)?,
        None => 1.0,
    };
    let xi = cfg.lr;
    for (i, ((_, var), (w, g))) in weights.iter().zip(w.iter().zip(&g_train)).enumerate() {
        let mut d = (g + (w * cfg.weight_decay)?)?;
        if let Some(buf) = w_opt.momentum_buffer(i) {
            d = (d + (buf * cfg.momentum)?)?;
        }
        var.set(&(w - (d * xi)?)?)?;
    }
    // At w': dalpha and v. The loss (and with it the graph of every activation of the
    // forward pass) is dropped here, before the two passes at w+ and w-: kept alive to the
    // end, it had doubled the step's peak memory.
    let (val_loss, dalpha, mut v) = {
        let loss = model.loss(val)?;
        let val_loss = scalar(&loss)?;
        let store = loss.backward()?;
        drop(loss);
        let dalpha = or_zeros(grads::collect(&store, arch), arch)?;
        let v = or_zeros(grads::collect(&store, weights), weights)?;
        (val_loss, dalpha, v)
    };
    if let Some(max_norm) = clip {
        clip_in_place(&mut v, max_norm)?;
    }
    let norm = grads::global_norm(&v.iter().cloned().map(Some).collect::<Vec<_>>())?;
    if norm == 0.0 || xi == 0.0 {
        return Ok((dalpha, ArchStep { val_loss }));
    }
    let eps = 0.01 / norm;
    let arch_grad_at = |sign: f64| -> Result<Vec<Tensor>> {
        for ((_, var), (w, v)) in weights.iter().zip(w.iter().zip(&v)) {
            var.set(&(w + (v * (sign * eps))?)?)?;
        }
        let store = model.loss(train)?.backward()?;
        or_zeros(grads::collect(&store, arch), arch)
    };
    let plus = arch_grad_at(1.0)?;
    let minus = arch_grad_at(-1.0)?;
    let grads = dalpha
        .iter()
        .zip(plus.iter().zip(&minus))
        .map(|(d, (p, m))| d - ((p - m)? * (xi * clip_coef / (2.0 * eps)))?)
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((grads, ArchStep { val_loss }))
}

/// Scales `grads` to global norm `max_norm` when above it, as the reference's `_clip`
/// (`max_norm / (norm + 1e-6)`); returns the factor (at most 1).
fn clip_in_place(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = grads::global_norm(&grads.iter().cloned().map(Some).collect::<Vec<_>>())?;
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return Ok(1.0);
    }
    for g in grads.iter_mut() {
        *g = (&*g * coef)?;
    }
    Ok(coef)
}

fn or_zeros(grads: Vec<Option<Tensor>>, vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    grads
        .into_iter()
        .zip(vars)
        .map(|(g, (_, v))| match g {
            Some(g) => Ok(g),
            None => Ok(v.as_tensor().zeros_like()?),
        })
        .collect()
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use nas_train::SgdConfig;

    /// A small model with a nonlinear validation loss and a training loss whose
    /// weight-architecture cross term makes the Hessian-vector product matter:
    /// `L_train(w, a) = 0.5 |A w + B a - y|^2`,
    /// `L_val(w, a) = sum_i tanh(C w)_i tanh(sum_j a_j) + 0.3 |a|^2`.
    struct Toy {
        w: Var,
        a: Var,
        a_mat: Tensor,
        b_mat: Tensor,
        c_mat: Tensor,
        y: Tensor,
    }

    enum Split {
        Train,
        Val,
    }

    impl Toy {
        fn new() -> Self {
            let dev = Device::Cpu;
            let m = |rows: usize, cols: usize, k: f64| {
                let v: Vec<f64> = (0..rows * cols)
                    .map(|i| ((i as f64 + 1.0) * k).sin())
                    .collect();
                Tensor::from_vec(v, (rows, cols), &dev).unwrap()
            };
            Toy {
                w: Var::from_tensor(&m(4, 1, 0.7)).unwrap(),
                a: Var::from_tensor(&m(3, 1, 1.3)).unwrap(),
                a_mat: m(5, 4, 0.37),
                b_mat: m(5, 3, 0.91),
                c_mat: m(2, 4, 0.53),
                y: m(5, 1, 2.1),
            }
        }

        fn train_loss(&self, w: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
            let r = ((self.a_mat.matmul(w)? + self.b_mat.matmul(a)?)? - &self.y)?;
            r.sqr()?.sum_all()? * 0.5
        }

        fn val_loss(&self, w: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
            let h = self.c_mat.matmul(w)?.tanh()?;
            let s = a.sum_keepdim(0)?.tanh()?;
            (h.broadcast_mul(&s)?.sum_all()? + a.sqr()?.sum_all()?.affine(0.3, 0.0)?)?.sum_all()
        }
    }

    impl Objective for Toy {
        type Batch = Split;
        fn loss(&self, batch: &Split) -> Result<Tensor> {
            let (w, a) = (self.w.as_tensor(), self.a.as_tensor());
            Ok(match batch {
                Split::Train => self.train_loss(w, a)?,
                Split::Val => self.val_loss(w, a)?,
            })
        }
    }

    /// The exact hypergradient `d/da L_val(w'(a), a)` by central differences of the whole
    /// function, with `w'(a)` written out in closed form: independent of the architect.
    fn reference(toy: &Toy, xi: f64, momentum: f64, wd: f64, buf: &Tensor) -> Vec<f64> {
        reference_scaled(toy, xi, momentum, wd, buf, 1.0)
    }

    /// As [`reference`], with the training gradient scaled by a constant `coef` in `w'`
    /// (the recurrent architect's `clip_coef`, a constant of the unrolled step).
    fn reference_scaled(
        toy: &Toy,
        xi: f64,
        momentum: f64,
        wd: f64,
        buf: &Tensor,
        coef: f64,
    ) -> Vec<f64> {
        let a0: Vec<f64> = toy.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let w = toy.w.as_tensor();
        let f = |a: &[f64]| -> f64 {
            let a = Tensor::from_slice(a, (3, 1), &Device::Cpu).unwrap();
            // grad_w of 0.5 |A w + B a - y|^2 = A^T (A w + B a - y)
            let r = ((toy.a_mat.matmul(w).unwrap() + toy.b_mat.matmul(&a).unwrap()).unwrap()
                - &toy.y)
                .unwrap();
            let g = toy.a_mat.t().unwrap().matmul(&r).unwrap();
            let d = (((g * coef).unwrap() + (w * wd).unwrap()).unwrap()
                + (buf * momentum).unwrap())
            .unwrap();
            let w1 = (w - (d * xi).unwrap()).unwrap();
            toy.val_loss(&w1, &a).unwrap().to_scalar::<f64>().unwrap()
        };
        let h = 1e-5;
        (0..a0.len())
            .map(|i| {
                let mut p = a0.clone();
                let mut m = a0.clone();
                p[i] += h;
                m[i] -= h;
                (f(&p) - f(&m)) / (2.0 * h)
            })
            .collect()
    }

    fn setup(order: Order) -> (Toy, Sgd, Architect, Tensor) {
        let toy = Toy::new();
        let cfg = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: false,
        };
        let mut sgd = Sgd::new(vec![("w".into(), toy.w.clone())], cfg).unwrap();
        // One weight step first, so that a momentum buffer exists.
        let store = toy.loss(&Split::Train).unwrap().backward().unwrap();
        sgd.step(&grads::collect(&store, sgd.vars())).unwrap();
        let buf = sgd.momentum_buffer(0).unwrap().copy().unwrap();
        let arch = Architect::new(
            vec![("a".into(), toy.a.clone())],
            AdamConfig {
                lr: 3e-4,
                betas: (0.5, 0.999),
                eps: 1e-8,
                weight_decay: 1e-3,
                decoupled: false,
            },
            order,
        )
        .unwrap();
        (toy, sgd, arch, buf)
    }

    #[test]
    fn second_order_gradient_is_the_exact_hypergradient() {
        let (toy, sgd, arch, buf) = setup(Order::Second);
        let w_before: Vec<f64> = toy.w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let (g, _) = arch
            .gradient(&toy, &Split::Train, &Split::Val, &sgd)
            .unwrap();
        let got: Vec<f64> = g[0].flatten_all().unwrap().to_vec1().unwrap();
        let want = reference(&toy, 0.05, 0.9, 0.01, &buf);
        for (x, y) in got.iter().zip(&want) {
            assert!(
                (x - y).abs() < 1e-6 * (1.0 + y.abs()),
                "{got:?} vs {want:?}"
            );
        }
        // The weights are exactly as before.
        let w_after: Vec<f64> = toy.w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(w_before, w_after);
        // The implicit term matters here: the first-order gradient differs clearly, so a
        // wrong scale on the finite difference (e.g. `/ 2 * eps`) could not pass.
        let (_, _, first, _) = setup(Order::First);
        let (g1, _) = first
            .gradient(&toy, &Split::Train, &Split::Val, &sgd)
            .unwrap();
        let g1: Vec<f64> = g1[0].flatten_all().unwrap().to_vec1().unwrap();
        let dist: f64 = g1.iter().zip(&want).map(|(x, y)| (x - y).abs()).sum();
        assert!(dist > 1e-2, "first {g1:?} vs exact {want:?}");
    }

    /// With a clip below the training gradient's norm (and above `v`'s), the recurrent
    /// architect's result is the hypergradient of `w' = w - xi (clip_coef g + ...)`.
    #[test]
    fn clipped_second_order_scales_the_implicit_term_by_clip_coef() {
        let (toy, sgd, arch, buf) = setup(Order::Second);
        let store = toy.loss(&Split::Train).unwrap().backward().unwrap();
        let g = grads::collect(&store, sgd.vars());
        let norm = grads::global_norm(&g).unwrap();
        let clip = norm / 3.0;
        let coef = clip / (norm + 1e-6);
        let arch = arch.with_unrolled_clip(clip);
        let (got, _) = arch
            .gradient(&toy, &Split::Train, &Split::Val, &sgd)
            .unwrap();
        let got: Vec<f64> = got[0].flatten_all().unwrap().to_vec1().unwrap();
        let want = reference_scaled(&toy, 0.05, 0.9, 0.01, &buf, coef);
        for (x, y) in got.iter().zip(&want) {
            assert!(
                (x - y).abs() < 1e-6 * (1.0 + y.abs()),
                "{got:?} vs {want:?}"
            );
        }
        let unclipped = reference(&toy, 0.05, 0.9, 0.01, &buf);
        let dist: f64 = unclipped
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .sum();
        assert!(dist > 1e-3, "clipping made no difference: {want:?}");
    }

    #[test]
    fn first_order_is_the_validation_gradient_and_step_moves_alpha() {
        let (toy, sgd, mut arch, _) = setup(Order::First);
        let (g, stats) = arch
            .gradient(&toy, &Split::Train, &Split::Val, &sgd)
            .unwrap();
        let a = toy.a.as_tensor().clone();
        let w = toy.w.as_tensor().clone();
        // d/da [sum_i h_i tanh(sum a) + 0.3 |a|^2] = sum_i h_i (1 - tanh^2(sum a)) + 0.6 a
        let h = toy
            .c_mat
            .matmul(&w)
            .unwrap()
            .tanh()
            .unwrap()
            .sum_all()
            .unwrap();
        let t = a.sum_all().unwrap().tanh().unwrap();
        let dt =
            (1.0 - t.sqr().unwrap().to_scalar::<f64>().unwrap()) * h.to_scalar::<f64>().unwrap();
        let want = (a.affine(0.6, dt).unwrap())
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let got: Vec<f64> = g[0].flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        assert!(stats.val_loss.is_finite());
        let before: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        arch.step(&toy, &Split::Train, &Split::Val, &sgd).unwrap();
        let after: Vec<f64> = toy.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // Adam's first step moves each coordinate by about lr against the gradient sign
        // (plus the L2 term).
        for ((b, a), g) in before.iter().zip(&after).zip(&got) {
            assert!(((b - a) - 3e-4 * (g + 1e-3 * b).signum()).abs() < 1e-6);
        }
    }
}
