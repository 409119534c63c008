//! Which states of a cell are concatenated (CNN) or averaged (RNN) into its output.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The states that form a cell's output, as the reference code writes them.
///
/// The reference searches print `range(2, 6)`; its hand-written genotypes use lists.
/// Both forms are kept so that printing gives back what was read. In JSON a list is
/// a list (`[2, 3, 4, 5]`) and a range is `{"range": [2, 6]}` (end exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Concat {
    /// `range(start, end)`, end exclusive.
    Range {
        /// `[start, end)`.
        range: [usize; 2],
    },
    /// An explicit list.
    List(Vec<usize>),
}

impl Concat {
    /// `range(start, end)`.
    pub fn range(start: usize, end: usize) -> Self {
        Concat::Range {
            range: [start, end],
        }
    }

    /// The state indices, in order.
    pub fn indices(&self) -> Vec<usize> {
        match self {
            Concat::Range {
                range: [start, end],
            } => (*start..*end).collect(),
            Concat::List(list) => list.clone(),
        }
    }

    /// Python notation: `range(2, 6)` or `[2, 3, 4, 5]`.
    pub fn to_python(&self) -> String {
        match self {
            Concat::Range {
                range: [start, end],
            } => format!("range({start}, {end})"),
            Concat::List(list) => {
                let items: Vec<String> = list.iter().map(|i| i.to_string()).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }

    /// Checks that the concat is non-empty, without repeats, and within `valid`.
    pub(crate) fn validate(&self, cell: &str, valid: std::ops::Range<usize>) -> Result<()> {
        let indices = self.indices();
        if indices.is_empty() {
            return Err(Error::EmptyConcat {
                cell: cell.to_string(),
            });
        }
        for (pos, &index) in indices.iter().enumerate() {
            if !valid.contains(&index) {
                return Err(Error::BadConcat {
                    cell: cell.to_string(),
                    index,
                    problem: format!(
                        "not a state of the cell (expected {}..={})",
                        valid.start,
                        valid.end.saturating_sub(1)
                    ),
                });
            }
            if indices[..pos].contains(&index) {
                return Err(Error::BadConcat {
                    cell: cell.to_string(),
                    index,
                    problem: "repeated".to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let range: Concat = serde_json::from_str(r#"{"range": [2, 6]}"#).unwrap();
        assert_eq!(range, Concat::range(2, 6));
        assert_eq!(range.indices(), vec![2, 3, 4, 5]);
        let list: Concat = serde_json::from_str("[4, 5, 6]").unwrap();
        assert_eq!(list.to_python(), "[4, 5, 6]");
        assert_eq!(range.to_python(), "range(2, 6)");
        assert_eq!(serde_json::to_string(&range).unwrap(), r#"{"range":[2,6]}"#);
    }

    #[test]
    fn validation() {
        assert!(Concat::range(2, 6).validate("normal cell", 0..6).is_ok());
        let err = Concat::range(3, 3)
            .validate("normal cell", 0..6)
            .unwrap_err();
        assert_eq!(err.to_string(), "normal cell: the concat list is empty");
        let err = Concat::List(vec![2, 7])
            .validate("normal cell", 0..6)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "normal cell: concat entry 7 is not a state of the cell (expected 0..=5)"
        );
        let err = Concat::List(vec![2, 2])
            .validate("normal cell", 0..6)
            .unwrap_err();
        assert_eq!(err.to_string(), "normal cell: concat entry 2 is repeated");
    }
}
