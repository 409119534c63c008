//! A named store of variables that a [`VarBuilder`] fills, with seeded initialisation.
//!
//! candle's CPU device cannot be seeded, so `VarMap` initialises differently on every
//! run. [`ParamStore`] draws each variable from a generator seeded by the store's seed
//! and the variable's name: the same seed gives the same network whatever the order in
//! which its modules are built. Batch-norm running statistics (`*.running_mean`,
//! `*.running_var`) live in the same store, under PyTorch's state-dict names, so that
//! checkpoints hold them; they are buffers, not trainable parameters.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::atomic::write_atomic_with;
use crate::error::{Error, Result};

/// Name suffixes of buffers: state that is saved but not trained.
pub const BUFFER_SUFFIXES: &[&str] = &["running_mean", "running_var"];

/// True when `name` is a buffer rather than a trainable parameter.
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BUFFER_SUFFIXES.contains(&last)
}

/// Variables by name (sorted), created on first request with seeded values.
#[derive(Clone)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("seed", &self.seed)
            .field("vars", &self.lock().len())
            .finish()
    }
}

impl ParamStore {
    /// An empty store whose variables will be drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        ParamStore {
            vars: Arc::default(),
            seed,
        }
    }

    /// A [`VarBuilder`] that creates its variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// A [`VarBuilder`] over the variables this store already holds, handing out
    /// detached views of them: a module built from it computes without recording a graph
    /// (so a forward pass keeps no activations for a backward pass that never comes),
    /// and sees every update of the variables, whose storage it shares. Asking it for a
    /// variable the store does not hold is an error.
    pub fn detached_var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Detached(self.clone())), dtype, device.clone())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is intact.
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every variable, buffers included, sorted by name.
    pub fn all(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The trainable parameters (not buffers), sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.all()
            .into_iter()
            .filter(|(name, _)| !is_buffer(name))
            .collect()
    }

    /// The number of trainable scalars whose name passes `keep`.
    pub fn count(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.trainable()
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Copies of every variable's current value.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        self.all()
            .into_iter()
            .map(|(name, var)| Ok((name, var.as_tensor().copy()?)))
            .collect()
    }

    /// Writes every variable to a safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.snapshot()?;
        write_atomic_with(path, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other)?;
            std::fs::File::open(tmp)?.sync_all()
        })
    }

    /// Sets every variable from a safetensors file written by [`ParamStore::save`]. The
    /// file must hold exactly this store's names, with the same shapes.
    pub fn load(&self, path: &Path) -> Result<()> {
        let device = match self.lock().values().next() {
            Some(v) => v.device().clone(),
            None => Device::Cpu,
        };
        let tensors = candle_core::safetensors::load(path, &device)
            .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
        self.set_all(&tensors)
            .map_err(|e| Error::format(path, e.to_string()))
    }

    /// Sets every variable from `tensors`, which must match names and shapes exactly.
    pub fn set_all(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.try_set_all(tensors).map_err(Error::Mismatch)
    }

    fn try_set_all(&self, tensors: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
        let vars = self.lock();
        // The first extra name in sorted order, so the message does not depend on hashing.
        if let Some(extra) = tensors.keys().filter(|k| !vars.contains_key(*k)).min() {
            return Err(format!("tensor {extra:?} is not a variable of this model"));
        }
        for (name, var) in vars.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("tensor {name:?} is missing"))?;
            if t.shape() != var.shape() {
                return Err(format!(
                    "tensor {name:?} has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ));
            }
            let t = t.to_dtype(var.dtype()).map_err(|e| e.to_string())?;
            var.set(&t).map_err(|e| format!("tensor {name:?}: {e}"))?;
        }
        Ok(())
    }

    fn init(
        &self,
        shape: &Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Var> {
        let n = shape.elem_count();
        let mut rng = StdRng::seed_from_u64(name_seed(self.seed, name));
        let values: Vec<f64> = match init {
            Init::Const(c) => vec![c; n],
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up)).collect(),
            Init::Randn { mean, stdev } => {
                (0..n).map(|_| mean + stdev * normal(&mut rng)).collect()
            }
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = fan.for_shape(shape) as f64;
                let std = non_linearity.gain() / fan.sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Normal => {
                        (0..n).map(|_| std * normal(&mut rng)).collect()
                    }
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                    }
                }
            }
        };
        let t = Tensor::from_vec(values, shape.clone(), dev)?.to_dtype(dtype)?;
        Ok(Var::from_tensor(&t)?)
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(var) = self.lock().get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "variable {name:?} was created with shape {:?}, now requested as {:?}",
                    var.dims(),
                    s.dims()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let var = self
            .init(&s, name, h, dtype, dev)
            .map_err(candle_core::Error::wrap)?;
        let t = var.as_tensor().clone();
        self.lock().insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("variable {name:?} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

/// The backend of [`ParamStore::detached_var_builder`].
struct Detached(ParamStore);

impl SimpleBackend for Detached {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.0.lock().get(name) {
            Some(var) if var.shape() == &s => Ok(var.as_tensor().detach()),
            Some(var) => candle_core::bail!(
                "variable {name:?} has shape {:?}, requested as {:?}",
                var.dims(),
                s.dims()
            ),
            None => candle_core::bail!("variable {name:?} does not exist (detached views only)"),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.0.lock().get(name) {
            Some(var) => Ok(var.as_tensor().detach()),
            None => candle_core::bail!("variable {name:?} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().contains_key(name)
    }
}

/// A seed for `name` under `seed` (FNV-1a over the name, mixed with SplitMix64).
fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(store: &ParamStore, order_flipped: bool) {
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let names = if order_flipped {
            ["b", "a"]
        } else {
            ["a", "b"]
        };
        for n in names {
            vb.get_with_hints((3, 4), n, Init::Uniform { lo: -1.0, up: 1.0 })
                .unwrap();
        }
        vb.get_with_hints(5, "bn.running_mean", Init::Const(0.0))
            .unwrap();
    }

    #[test]
    fn detached_views_share_updates_and_record_no_graph() {
        let store = ParamStore::new(1);
        build(&store, false);
        let vb = store.detached_var_builder(DType::F32, &Device::Cpu);
        let a = vb.get((3, 4), "a").unwrap();
        assert!(!a.track_op());
        let var = store.all().into_iter().find(|(n, _)| n == "a").unwrap().1;
        var.set(&Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let sum = a.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(sum, 12.0);
        assert!(!(&a * 2.0).unwrap().track_op());
        assert!(vb.get((3, 4), "missing").is_err());
        assert!(vb.get((4, 3), "a").is_err());
    }

    #[test]
    fn same_seed_same_values_whatever_the_build_order() {
        let (s1, s2, s3) = (ParamStore::new(7), ParamStore::new(7), ParamStore::new(8));
        build(&s1, false);
        build(&s2, true);
        build(&s3, false);
        let (a, b, c) = (
            s1.snapshot().unwrap(),
            s2.snapshot().unwrap(),
            s3.snapshot().unwrap(),
        );
        for name in ["a", "b"] {
            let x: Vec<f32> = a[name].flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
            let z: Vec<f32> = c[name].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y);
            assert_ne!(x, z);
            assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
        }
        assert_ne!(
            a["a"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            a["b"].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn buffers_are_kept_apart_from_parameters() {
        let s = ParamStore::new(1);
        build(&s, false);
        let names: Vec<_> = s.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.all().len(), 3);
        assert_eq!(s.count(|_| true), 24);
        assert!(is_buffer("cells.0.bn.running_var"));
        assert!(!is_buffer("cells.0.bn.weight"));
    }

    #[test]
    fn save_and_load_round_trip_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let s = ParamStore::new(1);
        build(&s, false);
        s.save(&path).unwrap();
        let t = ParamStore::new(2);
        build(&t, false);
        t.load(&path).unwrap();
        assert_eq!(
            s.snapshot().unwrap()["a"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            t.snapshot().unwrap()["a"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        let u = ParamStore::new(2);
        u.var_builder(DType::F32, &Device::Cpu)
            .get_with_hints((4, 3), "a", Init::Const(0.0))
            .unwrap();
        let err = u.load(&path).unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("\"b\""),
            "{err}"
        );
        std::fs::write(&path, b"garbage").unwrap();
        let err = t.load(&path).unwrap_err().to_string();
        assert!(err.contains("not a readable safetensors"), "{err}");
    }

    #[test]
    fn normal_draws_have_the_requested_moments() {
        let s = ParamStore::new(3);
        let t = s
            .var_builder(DType::F64, &Device::Cpu)
            .get_with_hints(
                20_000,
                "x",
                Init::Randn {
                    mean: 1.0,
                    stdev: 2.0,
                },
            )
            .unwrap();
        let v: Vec<f64> = t.to_vec1().unwrap();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "{var}");
    }
}
