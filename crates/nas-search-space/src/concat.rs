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
    ///
    /// A range is checked by its ends, never listed: `range(0, 10**15)` is read from
    /// untrusted text and must fail as quickly as `range(0, 7)`.
    pub(crate) fn validate(&self, cell: &str, valid: std::ops::Range<usize>) -> Result<()> {
        let outside = |index: usize| Error::BadConcat {
            cell: cell.to_string(),
            index,
            problem: format!(
                "not a state of the cell (expected {}..={})",
                valid.start,
                valid.end.saturating_sub(1)
            ),
        };
        let empty = || Error::EmptyConcat {
            cell: cell.to_string(),
        };
        match self {
            Concat::Range {
                range: [start, end],
            } => {
                if start >= end {
                    return Err(empty());
                }
                // The first entry outside `valid`, in order, as for a list.
                if !valid.contains(start) {
                    return Err(outside(*start));
                }
                if *end > valid.end {
                    return Err(outside(valid.end));
                }
            }
            Concat::List(indices) => {
                if indices.is_empty() {
                    return Err(empty());
                }
                for (pos, &index) in indices.iter().enumerate() {
                    if !valid.contains(&index) {
                        return Err(outside(index));
                    }
                    if indices[..pos].contains(&index) {
                        return Err(Error::BadConcat {
                            cell: cell.to_string(),
                            index,
                            problem: "repeated".to_string(),
                        });
                    }
                }
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

    #[test]
    fn huge_range_is_an_error_not_an_allocation() {
        // Found by reviewing the fuzz targets: validation listed every index of the
        // range, so `range(1, 10**14)` from python notation or JSON asked for ~800 TB.
        let err = Concat::range(1, 100_000_000_000_000)
            .validate("recurrent cell", 0..2)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "recurrent cell: concat entry 2 is not a state of the cell (expected 0..=1)"
        );
        let err = Concat::range(usize::MAX - 1, usize::MAX)
            .validate("normal cell", 0..6)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "normal cell: concat entry {} is not a state of the cell (expected 0..=5)",
                usize::MAX - 1
            )
        );
        let err = Concat::range(usize::MAX, 0)
            .validate("normal cell", 0..6)
            .unwrap_err();
        assert_eq!(err.to_string(), "normal cell: the concat list is empty");
        assert!(Concat::range(0, 6).validate("normal cell", 0..6).is_ok());
        assert!(Concat::range(1, 7).validate("normal cell", 0..6).is_err());
    }
}
