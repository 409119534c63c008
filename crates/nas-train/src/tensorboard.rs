//! TensorBoard event files: every line of `metrics.jsonl` as scalar summaries.
//!
//! An event file is a sequence of TFRecords (`u64` length, masked CRC-32C of the length,
//! the bytes, masked CRC-32C of the bytes; all little-endian) each holding one `Event`
//! protobuf (`tensorflow/core/util/event.proto`). Only the fields TensorBoard's scalar
//! dashboard reads are written: `wall_time` (1, double), `step` (2, int64), and either
//! `file_version` (3, string; the first record, `"brain.Event:2"`) or `summary` (5) with
//! `Summary.Value`s of `tag` (1) and `simple_value` (2, float). That is three message
//! types of two to four fields, so the encoding is written here rather than generated.
//!
//! A metrics line `{"kind": K, "phase": P, "step": .., "global_step": G, "loss": x, ..}`
//! becomes one event at step `G` (an epoch line: its `epoch`) with a scalar `K/P/loss` (no
//! `/P` without a phase) per numeric field; counters (`epoch`, `step`, `global_step`) are
//! the x axis, not scalars, and strings, arrays and objects are left out.

use std::time::{SystemTime, UNIX_EPOCH};

/// The event file's name in a run directory (TensorBoard reads every file whose name
/// contains `tfevents`).
pub const EVENTS_FILE: &str = "events.out.tfevents.candle-nas";

/// The CRC-32C (Castagnoli) table, reflected polynomial `0x82F63B78`.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The start of an `Event`: wall time and step.
fn event_head(wall_time: f64, step: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, (1 << 3) | 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    varint(&mut out, 2 << 3);
    varint(&mut out, step as u64);
    out
}

/// The first event of a file: its version.
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut out = event_head(wall_time, 0);
    bytes_field(&mut out, 3, b"brain.Event:2");
    out
}

/// An event with one scalar summary value per `(tag, value)`.
pub fn scalars_event(wall_time: f64, step: i64, values: &[(String, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in values {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        varint(&mut v, (2 << 3) | 5);
        v.extend_from_slice(&value.to_le_bytes());
        bytes_field(&mut summary, 1, &v);
    }
    let mut out = event_head(wall_time, step);
    bytes_field(&mut out, 5, &summary);
    out
}

/// The step and scalars of one metrics line (`None`: nothing to plot).
pub fn scalars_of_line(line: &serde_json::Value) -> Option<(i64, Vec<(String, f32)>)> {
    let obj = line.as_object()?;
    let kind = obj
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("metrics");
    let prefix = match obj.get("phase").and_then(|p| p.as_str()) {
        Some(phase) => format!("{kind}/{phase}"),
        None => kind.to_string(),
    };
    let counter = |k: &str| obj.get(k).and_then(|v| v.as_i64());
    let step = if kind == "epoch" {
        counter("epoch")
    } else {
        counter("global_step").or_else(|| counter("epoch"))
    }
    .unwrap_or(0);
    let values: Vec<(String, f32)> = obj
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "epoch" | "step" | "global_step"))
        .filter_map(|(k, v)| {
            let x = match v {
                serde_json::Value::Number(n) => n.as_f64()?,
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                _ => return None,
            };
            Some((format!("{prefix}/{k}"), x as f32))
        })
        .collect();
    (!values.is_empty()).then_some((step, values))
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The framed event of one metrics line, if it has scalars.
pub fn line_record(line: &serde_json::Value, wall_time: f64) -> Option<Vec<u8>> {
    let (step, values) = scalars_of_line(line)?;
    Some(record(&scalars_event(wall_time, step, &values)))
}

/// A whole event file for the lines of a `metrics.jsonl` (lines that are not JSON are
/// skipped), every event stamped `wall_time`: what a run's file is rebuilt from when
/// its own is missing.
pub fn events_of_metrics(text: &str, wall_time: f64) -> Vec<u8> {
    let mut out = record(&file_version_event(wall_time));
    for line in text.lines() {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(r) = line_record(&value, wall_time) {
                out.extend_from_slice(&r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC catalogue's check value for CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_line_becomes_tagged_scalars_at_its_step() {
        let line = serde_json::json!({
            "kind": "step", "phase": "controller", "epoch": 0, "step": 9, "global_step": 310,
            "loss": 0.5, "reward": 0.25, "arc": "0 1", "ok": true
        });
        let (step, mut values) = scalars_of_line(&line).unwrap_or_default();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(step, 310);
        assert_eq!(
            values,
            [
                ("step/controller/loss".to_string(), 0.5),
                ("step/controller/ok".to_string(), 1.0),
                ("step/controller/reward".to_string(), 0.25),
            ]
        );
        let epoch = serde_json::json!({"kind": "epoch", "epoch": 3, "val_accuracy": 0.75});
        assert_eq!(
            scalars_of_line(&epoch),
            Some((3, vec![("epoch/val_accuracy".to_string(), 0.75)]))
        );
        assert_eq!(scalars_of_line(&serde_json::json!({"kind": "epoch"})), None);
    }

    #[test]
    fn records_frame_their_bytes() {
        let r = record(b"abc");
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
    }
}
