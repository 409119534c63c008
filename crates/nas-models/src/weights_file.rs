//! An evaluation network's weights as one self-describing file: safetensors whose
//! metadata holds what it takes to rebuild and feed the network (layout, `C`, cells,
//! classes, auxiliary head, the genotype, the input normalisation). `nas import` writes
//! one from a reference checkpoint; `nas eval --checkpoint FILE` evaluates it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use nas_data::Normalize;
use nas_search_space::Genotype;

use crate::error::{Error, Result};
use crate::eval_genotype::EvalGenotype;
use crate::eval_network::{EvalKind, EvalNetConfig};

/// The `format` entry of the metadata.
pub const WEIGHTS_FORMAT: &str = "candle-nas/darts-eval-weights/1";

/// The reference implementation's CIFAR-10 normalisation (`utils.py`: `CIFAR_MEAN`,
/// `CIFAR_STD`), which its published models were trained with.
pub fn reference_cifar_normalize() -> Normalize {
    Normalize {
        mean: vec![0.491_399_7, 0.482_158_3, 0.446_531_2],
        std: vec![0.247_032_3, 0.243_485_05, 0.261_587_7],
    }
}

/// The reference's ImageNet normalisation (`train_imagenet.py`), the standard one the
/// ImageNet loader applies.
pub fn reference_imagenet_normalize() -> Normalize {
    Normalize {
        mean: nas_data::imagenet::IMAGENET_MEAN.to_vec(),
        std: nas_data::imagenet::IMAGENET_STD.to_vec(),
    }
}

/// What a weights file says about its network.
#[derive(Debug, Clone)]
pub struct WeightsFile {
    /// The network.
    pub net: EvalNetConfig,
    /// The genotype its cells are built from.
    pub genotype: EvalGenotype,
    /// The normalisation its inputs were trained with.
    pub normalize: Normalize,
    /// The tensors, by the network's names.
    pub tensors: HashMap<String, Tensor>,
}

/// Writes `tensors` with the metadata of `net`, `genotype` and `normalize` to `path`
/// (through a temporary file and a rename).
pub fn write_weights(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    net: &EvalNetConfig,
    genotype: &EvalGenotype,
    normalize: &Normalize,
) -> Result<()> {
    let kind = match net.kind {
        EvalKind::Cifar => "cifar",
        EvalKind::Imagenet => "imagenet",
    };
    let meta: HashMap<String, String> = [
        ("format", WEIGHTS_FORMAT.to_string()),
        ("model", kind.to_string()),
        ("in_channels", net.in_channels.to_string()),
        ("channels", net.channels.to_string()),
        ("layers", net.layers.to_string()),
        ("classes", net.classes.to_string()),
        ("auxiliary", net.auxiliary.to_string()),
        ("genotype", to_json(&genotype.to_genotype())?),
        ("mean", to_json(&normalize.mean)?),
        ("std", to_json(&normalize.std)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    nas_train::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(sorted.iter().copied(), Some(meta.clone()), tmp)
            .map_err(std::io::Error::other)
    })
    .map_err(Error::from)
}

/// Reads a file [`write_weights`] wrote; an error names the file and what is wrong with it.
pub fn read_weights(path: &Path, device: &Device) -> Result<WeightsFile> {
    let bad = |m: String| Error::file(path, m);
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("format") {
        Some(f) if f == WEIGHTS_FORMAT => {}
        other => {
            return Err(bad(format!(
                "metadata format {other:?}, expected {WEIGHTS_FORMAT:?} (a file written by \
                 `nas import`; a training run is evaluated by its directory)"
            )))
        }
    }
    let field = |k: &str| -> Result<&String> {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata has no {k:?}")))
    };
    let number = |k: &str| -> Result<usize> {
        field(k)?
            .parse()
            .map_err(|_| bad(format!("metadata {k:?} is {:?}, not a count", meta[k])))
    };
    let kind = match field("model")?.as_str() {
        "cifar" => EvalKind::Cifar,
        "imagenet" => EvalKind::Imagenet,
        other => {
            return Err(bad(format!(
                "metadata model {other:?}, expected cifar or imagenet"
            )))
        }
    };
    let auxiliary = match field("auxiliary")?.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(bad(format!(
                "metadata auxiliary {other:?}, expected true or false"
            )))
        }
    };
    let parse = |k: &str| -> Result<serde_json::Value> {
        serde_json::from_str(field(k)?).map_err(|e| bad(format!("metadata {k:?}: {e}")))
    };
    // JSON with a `kind` (files before ENAS cells had none: the kind is then inferred).
    let genotype = Genotype::from_json(field("genotype")?)
        .map_err(|e| bad(format!("metadata genotype: {e}")))
        .and_then(|g| {
            EvalGenotype::from_genotype(g).map_err(|e| bad(format!("metadata genotype: {e}")))
        })?;
    let channels_of = |k: &str| -> Result<Vec<f32>> {
        serde_json::from_value(parse(k)?).map_err(|e| bad(format!("metadata {k:?}: {e}")))
    };
    let normalize = Normalize {
        mean: channels_of("mean")?,
        std: channels_of("std")?,
    };
    let net = EvalNetConfig {
        kind,
        in_channels: number("in_channels")?,
        channels: number("channels")?,
        layers: number("layers")?,
        classes: number("classes")?,
        auxiliary,
    };
    if normalize.mean.len() != net.in_channels || normalize.std.len() != net.in_channels {
        return Err(bad(format!(
            "metadata mean and std need {} values each",
            net.in_channels
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(format!("reading the tensors: {e}")))?;
    Ok(WeightsFile {
        net,
        genotype,
        normalize,
        tensors,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Config(format!("metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use nas_search_space::bundled;

    use super::*;

    fn darts_v2() -> EvalGenotype {
        EvalGenotype::from_genotype(bundled("darts-v2").expect("bundled")).expect("cells")
    }

    /// ENAS cells round trip, and a genotype written without a `kind` (files written
    /// before ENAS cells were supported) still reads as DARTS cells.
    #[test]
    fn genotypes_of_both_families_read_back() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        let net = EvalNetConfig {
            channels: 4,
            layers: 5,
            auxiliary: false,
            ..EvalNetConfig::cifar_paper()
        };
        let tensors = HashMap::from([(
            "classifier.weight".to_string(),
            Tensor::zeros((10, 8), DType::F32, &Device::Cpu)?,
        )]);
        let enas = EvalGenotype::from_genotype(bundled("enas-micro").expect("bundled"))?;
        let norm = reference_cifar_normalize();
        write_weights(&path, &tensors, &net, &enas, &norm)?;
        assert_eq!(read_weights(&path, &Device::Cpu)?.genotype, enas);

        let EvalGenotype::Darts(plain) = darts_v2() else {
            unreachable!()
        };
        let mut meta: HashMap<String, String> =
            safetensors::SafeTensors::read_metadata(&std::fs::read(&path).expect("read"))
                .expect("metadata")
                .1
                .metadata()
                .clone()
                .expect("metadata");
        meta.insert(
            "genotype".into(),
            serde_json::to_string(&plain).expect("json"),
        );
        assert!(!meta["genotype"].contains("kind"));
        let data: Vec<(String, Tensor)> = tensors.into_iter().collect();
        safetensors::serialize_to_file(
            data.iter().map(|(k, v)| (k.as_str(), v)),
            Some(meta),
            &path,
        )
        .expect("write");
        assert_eq!(read_weights(&path, &Device::Cpu)?.genotype, darts_v2());
        Ok(())
    }

    #[test]
    fn a_written_file_reads_back() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        let net = EvalNetConfig {
            channels: 4,
            layers: 3,
            auxiliary: false,
            ..EvalNetConfig::cifar_paper()
        };
        let mut tensors = HashMap::new();
        tensors.insert(
            "classifier.weight".to_string(),
            Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?,
        );
        write_weights(
            &path,
            &tensors,
            &net,
            &darts_v2(),
            &reference_cifar_normalize(),
        )?;
        let back = read_weights(&path, &Device::Cpu)?;
        assert_eq!(back.genotype, darts_v2());
        assert_eq!(back.normalize, reference_cifar_normalize());
        assert_eq!(
            (
                back.net.kind,
                back.net.channels,
                back.net.layers,
                back.net.classes,
                back.net.auxiliary
            ),
            (EvalKind::Cifar, 4, 3, 10, false)
        );
        let w = &back.tensors["classifier.weight"];
        assert_eq!(w.dtype(), DType::F32);
        assert_eq!(
            w.flatten_all()?.to_vec1::<f32>()?,
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        Ok(())
    }

    #[test]
    fn a_file_without_our_metadata_is_refused_by_name() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plain.safetensors");
        let mut tensors = HashMap::new();
        tensors.insert("x".to_string(), Tensor::zeros(3, DType::F32, &Device::Cpu)?);
        candle_core::safetensors::save(&tensors, &path)?;
        let e = read_weights(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("plain.safetensors") && e.contains("nas import"),
            "{e}"
        );
        let e = read_weights(&dir.path().join("none"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        Ok(())
    }
}
