//! Reading raw architecture weights for `nas genotype derive`: JSON or safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nas_search_space::ArchWeights;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// Named weight matrices read from a file.
pub struct Alphas {
    matrices: BTreeMap<String, ArchWeights>,
    path: String,
}

impl Alphas {
    /// Reads JSON (`{"normal": [[...], ...], ...}`) or safetensors, by content.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading alphas {path:?}"))?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let matrices = if first == Some(&b'{') {
            from_json(&bytes).with_context(|| format!("reading alphas {path:?} as JSON"))?
        } else {
            from_safetensors(&bytes)
                .with_context(|| format!("reading alphas {path:?} as safetensors"))?
        };
        Ok(Alphas {
            matrices,
            path: path.display().to_string(),
        })
    }

    /// The matrix called `name`, or an error listing what the file holds.
    pub fn take(&mut self, name: &str, space: &str) -> Result<ArchWeights> {
        match self.matrices.remove(name) {
            Some(m) => Ok(m),
            None => bail!(
                "{}: --space {space} needs a matrix named `{name}`, found: {}",
                self.path,
                if self.matrices.is_empty() {
                    "nothing else".to_string()
                } else {
                    self.matrices.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlphasJson {
    normal: Option<Vec<Vec<f32>>>,
    reduce: Option<Vec<Vec<f32>>>,
    recurrent: Option<Vec<Vec<f32>>>,
}

fn from_json(bytes: &[u8]) -> Result<BTreeMap<String, ArchWeights>> {
    let parsed: AlphasJson = serde_json::from_slice(bytes)?;
    let mut out = BTreeMap::new();
    for (name, rows) in [
        ("normal", parsed.normal),
        ("reduce", parsed.reduce),
        ("recurrent", parsed.recurrent),
    ] {
        if let Some(rows) = rows {
            out.insert(name.to_string(), ArchWeights::from_rows(name, &rows)?);
        }
    }
    Ok(out)
}

fn from_safetensors(bytes: &[u8]) -> Result<BTreeMap<String, ArchWeights>> {
    let tensors = SafeTensors::deserialize(bytes)
        .context("not a JSON object nor a valid safetensors file")?;
    let mut out = BTreeMap::new();
    // The plain names, and the names our searches (and the reference's state) use:
    // `alphas_normal`, `alphas_reduce` (CNN), `weights` (recurrent).
    for (name, alias) in [
        ("normal", "alphas_normal"),
        ("reduce", "alphas_reduce"),
        ("recurrent", "weights"),
    ] {
        let Ok(view) = tensors.tensor(name).or_else(|_| tensors.tensor(alias)) else {
            continue;
        };
        let shape = view.shape();
        let [rows, cols] = shape[..] else {
            bail!("tensor `{name}` has shape {shape:?}, expected 2 dimensions [edges, primitives]");
        };
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
            other => bail!("tensor `{name}` has dtype {other:?}, expected F32 or F64"),
        };
        out.insert(
            name.to_string(),
            ArchWeights::new(name, rows, cols, values)?,
        );
    }
    if out.is_empty() {
        let names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
        bail!(
            "no tensor named normal, reduce or recurrent; the file holds: {}",
            if names.is_empty() {
                "no tensors".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(out)
}
