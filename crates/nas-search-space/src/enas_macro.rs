//! ENAS macro search space: a whole CNN, one operation per layer plus skip connections
//! (ENAS paper, section 2.3).
//!
//! Layer `k` reads the output of layer `k - 1` (the stem for layer 0), applies its
//! operation, and adds the outputs named by its skip connections. As in the reference
//! `src/cifar10/general_child.py`, skip index `i` of layer `k` (`0 <= i < k`) names the
//! `i`-th entry of `[stem, layer 0, layer 1, ...]`.

use serde::{Deserialize, Serialize};

use crate::arc;
use crate::error::{Error, Result};
use crate::primitive::{by_id, EnasMacroOp};

/// One layer of an ENAS macro architecture.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnasMacroLayer {
    /// The layer's operation.
    pub op: EnasMacroOp,
    /// Indices into `[stem, layer 0, layer 1, ...]` whose outputs are added, ascending.
    pub skips: Vec<usize>,
}

/// A validated ENAS macro architecture.
///
/// JSON: `{"layers": [{"op": "conv_3x3", "skips": []}, {"op": "sep_conv_5x5", "skips": [0]}, ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "EnasMacroRepr", into = "EnasMacroRepr")]
pub struct EnasMacroArch {
    layers: Vec<EnasMacroLayer>,
}

impl EnasMacroArch {
    /// Validates that layer `k` has ascending, distinct skips below `k`.
    pub fn new(layers: Vec<EnasMacroLayer>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::EmptyCell {
                cell: "enas macro architecture".to_string(),
            });
        }
        for (k, layer) in layers.iter().enumerate() {
            for (pos, &skip) in layer.skips.iter().enumerate() {
                if skip >= k {
                    return Err(Error::Invalid {
                        format: "enas macro architecture",
                        message: format!(
                            "layer {k}: skip {skip} does not name an earlier output (expected 0..{k}, indexing [stem, layer 0, ...])"
                        ),
                    });
                }
                if pos > 0 && layer.skips[pos - 1] >= skip {
                    return Err(Error::Invalid {
                        format: "enas macro architecture",
                        message: format!(
                            "layer {k}: skips must be ascending and distinct, got {:?}",
                            layer.skips
                        ),
                    });
                }
            }
        }
        Ok(EnasMacroArch { layers })
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[EnasMacroLayer] {
        &self.layers
    }

    /// Parses ENAS's arc string: per layer `k`, the op id then `k` skip bits (0 or 1).
    pub fn from_arc(text: &str) -> Result<Self> {
        let ints = arc::parse_ints(text)?;
        // Layers L use L (L + 1) / 2 integers.
        let mut n_layers = 0;
        while n_layers * (n_layers + 1) / 2 < ints.len() {
            n_layers += 1;
        }
        if n_layers * (n_layers + 1) / 2 != ints.len() {
            return Err(arc::invalid(format!(
                "an enas-macro arc for L layers has L(L+1)/2 integers (1, 3, 6, 10, ...), got {}",
                ints.len()
            )));
        }
        let mut layers = Vec::with_capacity(n_layers);
        let mut pos = 0;
        for k in 0..n_layers {
            let op = by_id(EnasMacroOp::ALL, EnasMacroOp::SPACE, ints[pos])?;
            let bits = &ints[pos + 1..pos + 1 + k];
            let mut skips = Vec::new();
            for (i, &bit) in bits.iter().enumerate() {
                match bit {
                    0 => {}
                    1 => skips.push(i),
                    other => {
                        return Err(arc::invalid(format!(
                            "layer {k}: skip bit {i} is {other}, expected 0 or 1"
                        )))
                    }
                }
            }
            layers.push(EnasMacroLayer { op, skips });
            pos += 1 + k;
        }
        EnasMacroArch::new(layers)
    }

    /// The arc string, as ENAS's scripts write it.
    pub fn to_arc(&self) -> String {
        let mut ints = Vec::new();
        for (k, layer) in self.layers.iter().enumerate() {
            ints.push(layer.op.index());
            ints.extend((0..k).map(|i| usize::from(layer.skips.contains(&i))));
        }
        arc::to_string(&ints)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnasMacroRepr {
    layers: Vec<EnasMacroLayer>,
}

impl TryFrom<EnasMacroRepr> for EnasMacroArch {
    type Error = Error;

    fn try_from(r: EnasMacroRepr) -> Result<Self> {
        EnasMacroArch::new(r.layers)
    }
}

impl From<EnasMacroArch> for EnasMacroRepr {
    fn from(a: EnasMacroArch) -> Self {
        EnasMacroRepr { layers: a.layers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arc_round_trip() {
        let arch = EnasMacroArch::from_arc("0 3 0 0 1 0").unwrap();
        assert_eq!(arch.layers().len(), 3);
        assert_eq!(arch.layers()[1].op, EnasMacroOp::SepConv5x5);
        assert_eq!(arch.layers()[2].skips, vec![0]);
        assert_eq!(arch.to_arc(), "0 3 0 0 1 0");
    }

    #[test]
    fn arc_errors() {
        let err = EnasMacroArch::from_arc("0 3 0 0 1").unwrap_err();
        assert!(err.to_string().contains("L(L+1)/2 integers"), "{err}");
        let err = EnasMacroArch::from_arc("0 3 2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "arc string: layer 1: skip bit 0 is 2, expected 0 or 1"
        );
        let err = EnasMacroArch::from_arc("6").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enas-macro primitive id 6 is out of range; expected 0..=5"
        );
    }

    #[test]
    fn rejects_forward_skips() {
        let layers = vec![
            EnasMacroLayer {
                op: EnasMacroOp::Conv3x3,
                skips: vec![],
            },
            EnasMacroLayer {
                op: EnasMacroOp::Conv3x3,
                skips: vec![1],
            },
        ];
        let err = EnasMacroArch::new(layers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "enas macro architecture: layer 1: skip 1 does not name an earlier output (expected 0..1, indexing [stem, layer 0, ...])"
        );
    }
}
