//! ENAS arc strings: the space-separated integers that ENAS's published scripts pass as
//! `--child_fixed_arc`.

use crate::error::{Error, Result};

const FORMAT: &str = "arc string";

/// Splits an arc string into non-negative integers; any whitespace (also newlines) separates.
pub fn parse_ints(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let mut rest = line;
        let mut offset = 0;
        while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
            let token_and_after = &rest[start..];
            let len = token_and_after
                .find(char::is_whitespace)
                .unwrap_or(token_and_after.len());
            let token = &token_and_after[..len];
            let value = token.parse::<usize>().map_err(|_| Error::Syntax {
                format: FORMAT,
                line: line_idx + 1,
                column: line[..offset + start].chars().count() + 1,
                message: format!("expected a non-negative integer, found {token:?}"),
            })?;
            out.push(value);
            offset += start + len;
            rest = &token_and_after[len..];
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid {
            format: FORMAT,
            message: "the arc string is empty".to_string(),
        });
    }
    Ok(out)
}

/// Joins integers with single spaces.
pub fn to_string(ints: &[usize]) -> String {
    ints.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An [`Error::Invalid`] for arc strings.
pub(crate) fn invalid(message: String) -> Error {
    Error::Invalid {
        format: FORMAT,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multiline() {
        assert_eq!(parse_ints(" 0 2\n 1\t3 \n").unwrap(), vec![0, 2, 1, 3]);
        assert_eq!(to_string(&[0, 2, 1]), "0 2 1");
    }

    #[test]
    fn points_at_bad_token() {
        let err = parse_ints("0 1\n2 x3 4").unwrap_err();
        assert_eq!(
            err.to_string(),
            "arc string at line 2, column 3: expected a non-negative integer, found \"x3\""
        );
        assert!(parse_ints("0 -1").is_err());
        assert_eq!(
            parse_ints("  \n").unwrap_err().to_string(),
            "arc string: the arc string is empty"
        );
    }
}
