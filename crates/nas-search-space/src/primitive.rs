//! Primitive vocabularies of the DARTS and ENAS search spaces, each in its published order.
//!
//! The order of a vocabulary's search primitives is also the column order of its
//! architecture weights (DARTS) or the id order of its arc strings (ENAS).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, space = $space:literal,
        [$($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?]
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every member, in the published order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The name of the search space, for messages.
            pub const SPACE: &'static str = $space;

            /// The name used by the reference implementations.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Position in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// Comma-separated list of every name, for error messages.
            pub fn allowed() -> String {
                Self::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|p| p.name() == s)
                    .ok_or_else(|| Error::UnknownPrimitive {
                        space: $space,
                        name: s.to_string(),
                        allowed: Self::allowed(),
                    })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// An operation on an edge of a DARTS-style CNN cell.
    ///
    /// The first eight are the DARTS search primitives (`PRIMITIVES` in the reference
    /// `cnn/genotypes.py`), in their published order; the last two appear only in the
    /// NASNet-A and AmoebaNet-A genotypes that DARTS compares against (`OPS` in
    /// `cnn/operations.py`).
    CnnOp, space = "darts-cnn",
    [
        /// The zero operation (no edge).
        None = "none",
        /// 3x3 max pooling, padding 1.
        MaxPool3x3 = "max_pool_3x3",
        /// 3x3 average pooling, padding 1, padding not counted.
        AvgPool3x3 = "avg_pool_3x3",
        /// Identity, or FactorizedReduce at stride 2.
        SkipConnect = "skip_connect",
        /// Two stacked ReLU-depthwise 3x3-pointwise-BN blocks.
        SepConv3x3 = "sep_conv_3x3",
        /// Two stacked ReLU-depthwise 5x5-pointwise-BN blocks.
        SepConv5x5 = "sep_conv_5x5",
        /// ReLU, depthwise 3x3 with dilation 2, pointwise, BN.
        DilConv3x3 = "dil_conv_3x3",
        /// ReLU, depthwise 5x5 with dilation 2, pointwise, BN.
        DilConv5x5 = "dil_conv_5x5",
        /// Two stacked ReLU-depthwise 7x7-pointwise-BN blocks (NASNet, AmoebaNet).
        SepConv7x7 = "sep_conv_7x7",
        /// ReLU, 1x7 conv, 7x1 conv, BN (AmoebaNet).
        Conv7x1_1x7 = "conv_7x1_1x7",
    ]
}

/// The DARTS CNN search primitives, in the column order of `alphas_normal`/`alphas_reduce`.
pub const DARTS_CNN_PRIMITIVES: &[CnnOp] = CnnOp::ALL.split_at(8).0;

vocabulary! {
    /// An activation on an edge of a recurrent cell (DARTS RNN primitives, also used by ENAS).
    ///
    /// Published order of DARTS's `rnn/genotypes.py`, which is the column order of its
    /// architecture weights.
    RnnOp, space = "darts-rnn",
    [
        /// The zero operation (no edge).
        None = "none",
        /// Hyperbolic tangent.
        Tanh = "tanh",
        /// Rectified linear unit.
        Relu = "relu",
        /// Logistic sigmoid.
        Sigmoid = "sigmoid",
        /// Identity.
        Identity = "identity",
    ]
}

/// The DARTS RNN search primitives, in the column order of the architecture weights.
pub const DARTS_RNN_PRIMITIVES: &[RnnOp] = RnnOp::ALL;

/// ENAS's recurrent-cell activations in the id order of its arc strings
/// (`func_idx` in the reference `src/ptb/ptb_enas_child.py`: 0 tanh, 1 relu, 2 identity, 3 sigmoid).
pub const ENAS_RNN_ACTIVATIONS: &[RnnOp] =
    &[RnnOp::Tanh, RnnOp::Relu, RnnOp::Identity, RnnOp::Sigmoid];

vocabulary! {
    /// An operation in an ENAS micro (CNN cell) search space, in the id order of ENAS's arc
    /// strings (`_enas_cell` in the reference `src/cifar10/micro_child.py`).
    EnasMicroOp, space = "enas-micro",
    [
        /// Separable 3x3 convolution (applied twice).
        SepConv3x3 = "sep_conv_3x3",
        /// Separable 5x5 convolution (applied twice).
        SepConv5x5 = "sep_conv_5x5",
        /// 3x3 average pooling.
        AvgPool3x3 = "avg_pool_3x3",
        /// 3x3 max pooling.
        MaxPool3x3 = "max_pool_3x3",
        /// Identity.
        Identity = "identity",
    ]
}

vocabulary! {
    /// An operation of a layer in ENAS's macro (whole CNN) search space.
    ///
    /// The order is that of ENAS's code, where it is both the controller's logit column
    /// and the id in arc strings (`branch_0..branch_5` in `_enas_layer` of the reference
    /// `src/cifar10/general_child.py`). The paper's prose lists the same six operations
    /// in another order (convolutions, then separable convolutions, then max and average
    /// pooling); the published final architecture is only read correctly with this one.
    EnasMacroOp, space = "enas-macro",
    [
        /// 3x3 convolution.
        Conv3x3 = "conv_3x3",
        /// Separable 3x3 convolution.
        SepConv3x3 = "sep_conv_3x3",
        /// 5x5 convolution.
        Conv5x5 = "conv_5x5",
        /// Separable 5x5 convolution.
        SepConv5x5 = "sep_conv_5x5",
        /// 3x3 average pooling.
        AvgPool3x3 = "avg_pool_3x3",
        /// 3x3 max pooling.
        MaxPool3x3 = "max_pool_3x3",
    ]
}

/// Looks up an arc-string id in a vocabulary.
pub(crate) fn by_id<T: Copy>(all: &[T], space: &'static str, id: usize) -> Result<T, Error> {
    all.get(id).copied().ok_or(Error::UnknownPrimitiveId {
        space,
        id,
        max: all.len() - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_orders() {
        let names = |v: &[&str]| v.join(" ");
        let cnn: Vec<_> = DARTS_CNN_PRIMITIVES.iter().map(|p| p.name()).collect();
        assert_eq!(
            names(&cnn),
            "none max_pool_3x3 avg_pool_3x3 skip_connect sep_conv_3x3 sep_conv_5x5 dil_conv_3x3 dil_conv_5x5"
        );
        let rnn: Vec<_> = DARTS_RNN_PRIMITIVES.iter().map(|p| p.name()).collect();
        assert_eq!(names(&rnn), "none tanh relu sigmoid identity");
        let micro: Vec<_> = EnasMicroOp::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names(&micro),
            "sep_conv_3x3 sep_conv_5x5 avg_pool_3x3 max_pool_3x3 identity"
        );
        let enas_rnn: Vec<_> = ENAS_RNN_ACTIVATIONS.iter().map(|p| p.name()).collect();
        assert_eq!(names(&enas_rnn), "tanh relu identity sigmoid");
    }

    #[test]
    fn unknown_name_lists_allowed() {
        let err = "sep_conv_9x9".parse::<CnnOp>().unwrap_err().to_string();
        assert!(err.contains("\"sep_conv_9x9\""), "{err}");
        assert!(err.contains("dil_conv_5x5"), "{err}");
    }

    #[test]
    fn ids_out_of_range() {
        assert_eq!(
            by_id(EnasMicroOp::ALL, "enas-micro", 4).unwrap(),
            EnasMicroOp::Identity
        );
        let err = by_id(EnasMicroOp::ALL, "enas-micro", 5)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "enas-micro primitive id 5 is out of range; expected 0..=4"
        );
    }
}
