//! Reading a checkpoint of the reference implementation (`torch.save(model.state_dict())`
//! of `NetworkCIFAR` / `NetworkImageNet`): its names are this crate's names, so every
//! tensor maps one to one; shapes and the set of names are checked.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use nas_search_space::CnnGenotype;
use nas_train::ParamStore;

use crate::error::{Error, Result};
use crate::eval_genotype::EvalGenotype;
use crate::eval_network::{EvalNetConfig, EvalNetwork};

/// The tensors of a reference checkpoint for `genotype` in the network `cfg`, by our
/// names, as f32. PyTorch's `num_batches_tracked` counters are dropped; any other name
/// the network does not have, a missing name or a wrong shape is an error that names it.
pub fn import_reference(
    path: &Path,
    genotype: &CnnGenotype,
    cfg: EvalNetConfig,
) -> Result<HashMap<String, Tensor>> {
    let bad = |m: String| Error::file(path, m);
    let tensors = candle_core::pickle::read_all(path).map_err(|e| {
        // `torch.save` writes a zip archive since PyTorch 1.6; before, a bare pickle
        // stream (protocol 2: it starts 0x80 0x02), which candle does not read.
        let mut head = [0u8; 2];
        let legacy = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && head == [0x80, 0x02];
        if legacy {
            bad(
                "a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format; re-save it \
                 with `torch.save(torch.load(path), path)` under PyTorch 1.6 or newer, which \
                 writes the zip format read here"
                    .to_string(),
            )
        } else {
            bad(format!(
                "not a readable PyTorch checkpoint (expected the zip archive `torch.save` \
                 writes): {e}"
            ))
        }
    })?;
    let mut by_name: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        // A model saved whole under DataParallel has a `module.` prefix.
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        by_name.insert(name, t);
    }
    let store = ParamStore::new(0);
    let cells = EvalGenotype::Darts(genotype.clone());
    EvalNetwork::new(&cells, cfg, store.var_builder(DType::F32, &Device::Cpu))?;
    let mut out = HashMap::new();
    for (name, var) in store.all() {
        let t = by_name.remove(&name).ok_or_else(|| {
            bad(format!(
                "tensor {name:?} is missing (is the genotype, C, layers, classes or --auxiliary different?)"
            ))
        })?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}, the network expects {:?}",
                t.dims(),
                var.dims()
            )));
        }
        out.insert(name, t.to_dtype(DType::F32)?);
    }
    if let Some(extra) = by_name.keys().min() {
        return Err(bad(format!(
            "tensor {extra:?} is not part of this network ({} such tensors; is the genotype or --auxiliary different?)",
            by_name.len()
        )));
    }
    Ok(out)
}
