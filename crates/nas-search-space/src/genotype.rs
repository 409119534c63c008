//! Any genotype of the five search spaces, with format detection and conversion.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::cnn::CnnGenotype;
use crate::enas_macro::EnasMacroArch;
use crate::enas_micro::EnasMicroGenotype;
use crate::enas_rnn::EnasRnnCell;
use crate::error::{Error, Result};
use crate::python;
use crate::rnn::RnnGenotype;

/// The search space a genotype belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenotypeKind {
    /// DARTS CNN cells (normal + reduce).
    DartsCnn,
    /// DARTS recurrent cell.
    DartsRnn,
    /// ENAS micro CNN cells.
    EnasMicro,
    /// ENAS macro whole-network architecture.
    EnasMacro,
    /// ENAS recurrent cell.
    EnasRnn,
}

impl GenotypeKind {
    /// Every kind.
    pub const ALL: &'static [GenotypeKind] = &[
        GenotypeKind::DartsCnn,
        GenotypeKind::DartsRnn,
        GenotypeKind::EnasMicro,
        GenotypeKind::EnasMacro,
        GenotypeKind::EnasRnn,
    ];

    /// The name used in JSON's `kind` field and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GenotypeKind::DartsCnn => "darts-cnn",
            GenotypeKind::DartsRnn => "darts-rnn",
            GenotypeKind::EnasMicro => "enas-micro",
            GenotypeKind::EnasMacro => "enas-macro",
            GenotypeKind::EnasRnn => "enas-rnn",
        }
    }

    fn allowed() -> String {
        GenotypeKind::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for GenotypeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GenotypeKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        GenotypeKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::Invalid {
                format: "genotype kind",
                message: format!(
                    "unknown kind {s:?}; expected one of: {}",
                    GenotypeKind::allowed()
                ),
            })
    }
}

/// A genotype of any of the five search spaces.
///
/// JSON: the genotype's own fields plus `"kind"` (`darts-cnn`, `darts-rnn`, `enas-micro`,
/// `enas-macro`, `enas-rnn`). When reading, a missing `kind` is inferred from the fields,
/// so `json.dumps(genotype._asdict())` of a DARTS genotype reads as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Genotype {
    /// DARTS CNN cells.
    DartsCnn(CnnGenotype),
    /// DARTS recurrent cell.
    DartsRnn(RnnGenotype),
    /// ENAS micro cells.
    EnasMicro(EnasMicroGenotype),
    /// ENAS macro architecture.
    EnasMacro(EnasMacroArch),
    /// ENAS recurrent cell.
    EnasRnn(EnasRnnCell),
}

/// A text format for genotypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// The DARTS reference's Python notation.
    Python,
    /// JSON with a `kind` field.
    Json,
    /// ENAS's arc string.
    Arc,
}

impl Genotype {
    /// The search space.
    pub fn kind(&self) -> GenotypeKind {
        match self {
            Genotype::DartsCnn(_) => GenotypeKind::DartsCnn,
            Genotype::DartsRnn(_) => GenotypeKind::DartsRnn,
            Genotype::EnasMicro(_) => GenotypeKind::EnasMicro,
            Genotype::EnasMacro(_) => GenotypeKind::EnasMacro,
            Genotype::EnasRnn(_) => GenotypeKind::EnasRnn,
        }
    }

    /// The format a person of this search space expects: Python for DARTS, arcs for ENAS.
    pub fn native_format(&self) -> TextFormat {
        match self {
            Genotype::DartsCnn(_) | Genotype::DartsRnn(_) => TextFormat::Python,
            _ => TextFormat::Arc,
        }
    }

    /// Python notation (DARTS genotypes only).
    pub fn to_python(&self) -> Result<String> {
        match self {
            Genotype::DartsCnn(g) => g.to_python(),
            Genotype::DartsRnn(g) => Ok(g.to_python()),
            other => Err(Error::Unsupported(format!(
                "{} genotypes have no Python notation; use the arc or json format",
                other.kind()
            ))),
        }
    }

    /// ENAS arc string (ENAS genotypes only).
    pub fn to_arc(&self) -> Result<String> {
        match self {
            Genotype::EnasMicro(g) => Ok(g.to_arc()),
            Genotype::EnasMacro(g) => Ok(g.to_arc()),
            Genotype::EnasRnn(g) => Ok(g.to_arc()),
            other => Err(Error::Unsupported(format!(
                "{} genotypes have no arc string; use the python or json format",
                other.kind()
            ))),
        }
    }

    /// Pretty JSON with a `kind` field.
    pub fn to_json(&self) -> String {
        // Serialising plain data to a string cannot fail.
        serde_json::to_string_pretty(self).expect("genotypes serialise to JSON")
    }

    /// Writes the genotype in `format`.
    pub fn to_text(&self, format: TextFormat) -> Result<String> {
        match format {
            TextFormat::Python => self.to_python(),
            TextFormat::Json => Ok(self.to_json()),
            TextFormat::Arc => self.to_arc(),
        }
    }

    /// Reads JSON, inferring `kind` from the fields when it is missing (a leading UTF-8
    /// byte-order mark, as some editors write, is skipped).
    pub fn from_json(text: &str) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut value: serde_json::Value = serde_json::from_str(text)?;
        let Some(object) = value.as_object_mut() else {
            return Err(Error::Invalid {
                format: "json",
                message: "expected a JSON object describing a genotype".to_string(),
            });
        };
        let kind = match object.remove("kind") {
            Some(serde_json::Value::String(name)) => name.parse()?,
            Some(other) => {
                return Err(Error::Invalid {
                    format: "json",
                    message: format!("field `kind` must be a string, got {other}"),
                })
            }
            None => {
                let has = |key: &str| object.contains_key(key);
                if has("normal_concat") {
                    GenotypeKind::DartsCnn
                } else if has("recurrent") {
                    GenotypeKind::DartsRnn
                } else if has("layers") {
                    GenotypeKind::EnasMacro
                } else if has("first") {
                    GenotypeKind::EnasRnn
                } else if has("normal") {
                    GenotypeKind::EnasMicro
                } else {
                    return Err(Error::Invalid {
                        format: "json",
                        message: format!(
                            "missing field `kind` (one of {}), and the fields do not tell",
                            GenotypeKind::allowed()
                        ),
                    });
                }
            }
        };
        Ok(match kind {
            GenotypeKind::DartsCnn => Genotype::DartsCnn(serde_json::from_value(value)?),
            GenotypeKind::DartsRnn => Genotype::DartsRnn(serde_json::from_value(value)?),
            GenotypeKind::EnasMicro => Genotype::EnasMicro(serde_json::from_value(value)?),
            GenotypeKind::EnasMacro => Genotype::EnasMacro(serde_json::from_value(value)?),
            GenotypeKind::EnasRnn => Genotype::EnasRnn(serde_json::from_value(value)?),
        })
    }

    /// Reads an arc string of the given ENAS kind.
    pub fn from_arc(kind: GenotypeKind, text: &str) -> Result<Self> {
        match kind {
            GenotypeKind::EnasMicro => EnasMicroGenotype::from_arc(text).map(Genotype::EnasMicro),
            GenotypeKind::EnasMacro => EnasMacroArch::from_arc(text).map(Genotype::EnasMacro),
            GenotypeKind::EnasRnn => EnasRnnCell::from_arc(text).map(Genotype::EnasRnn),
            other => Err(Error::Unsupported(format!(
                "{other} genotypes have no arc string"
            ))),
        }
    }

    /// Reads any text format: JSON (starts with `{`), an arc string (starts with a digit;
    /// needs `arc_kind`), or Python notation.
    pub fn parse(text: &str, arc_kind: Option<GenotypeKind>) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            Genotype::from_json(text)
        } else if trimmed.starts_with(|c: char| c.is_ascii_digit()) {
            match arc_kind {
                Some(kind) => Genotype::from_arc(kind, text),
                None => Err(Error::Invalid {
                    format: "arc string",
                    message: "an arc string does not say its search space; name it (enas-micro, enas-macro or enas-rnn)".to_string(),
                }),
            }
        } else {
            python::parse(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_kind_is_inferred_when_missing() {
        let json = r#"{"recurrent": [["tanh", 0], ["relu", 1]], "concat": [1, 2]}"#;
        let g = Genotype::from_json(json).unwrap();
        assert_eq!(g.kind(), GenotypeKind::DartsRnn);
        let written = g.to_json();
        assert!(
            written.starts_with("{\n  \"kind\": \"darts-rnn\""),
            "{written}"
        );
        assert_eq!(Genotype::from_json(&written).unwrap(), g);
    }

    #[test]
    fn json_errors() {
        let err = Genotype::from_json(r#"{"kind": "darts-cnm"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown kind \"darts-cnm\""),
            "{err}"
        );
        let err = Genotype::from_json("[1, 2]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "json: expected a JSON object describing a genotype"
        );
        let err = Genotype::from_json(r#"{"x": 1}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `kind`"), "{err}");
        assert!(Genotype::from_json("{").is_err());
    }

    #[test]
    fn parse_detects_the_format() {
        let g = Genotype::parse("0 0 0", Some(GenotypeKind::EnasRnn)).unwrap();
        assert_eq!(g.kind(), GenotypeKind::EnasRnn);
        assert!(Genotype::parse("0 0 0", None).is_err());
        assert!(g.to_python().is_err());
        assert_eq!(g.to_text(TextFormat::Arc).unwrap(), "0 0 0");
    }

    #[test]
    fn json_huge_concat_range_is_an_error() {
        // Used to list all 10**15 states of the range before checking them (out of memory).
        let json = r#"{"recurrent": [["tanh", 0]], "concat": {"range": [0, 1000000000000000]}}"#;
        let err = Genotype::from_json(json).unwrap_err();
        assert!(
            err.to_string()
                .contains("concat entry 2 is not a state of the cell (expected 0..=1)"),
            "{err}"
        );
    }
}
