//! Reading `metrics.jsonl`.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Every line of `text` as a JSON object; a line that is not one is an error naming
/// `source` and the line. Blank lines are skipped, and so is a last line without its
/// newline that does not parse (a line being written as the file was read).
pub fn parse_metrics(text: &str, source: &str) -> Result<Vec<Map<String, Value>>> {
    let mut out = Vec::new();
    let complete = text.ends_with('\n');
    let count = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => out.push(map),
            Ok(_) => {
                return Err(Error::Metrics {
                    source_name: source.to_string(),
                    line: i + 1,
                    message: "expected a JSON object".to_string(),
                })
            }
            Err(_) if !complete && i + 1 == count => {}
            Err(e) => {
                return Err(Error::Metrics {
                    source_name: source.to_string(),
                    line: i + 1,
                    message: format!("not JSON: {e}"),
                })
            }
        }
    }
    Ok(out)
}

/// The lines of kind `epoch`, in order.
pub fn epoch_lines(lines: &[Map<String, Value>]) -> Vec<&Map<String, Value>> {
    lines
        .iter()
        .filter(|l| l.get("kind").and_then(Value::as_str) == Some("epoch"))
        .collect()
}
