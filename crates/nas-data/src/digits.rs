//! The UCI optical handwritten digits as scikit-learn ships them (1,797 images, 8x8,
//! values 0..16), embedded so that `nas` can run its main job with no download.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::ImageSet;

const EMBEDDED: &[u8] = include_bytes!("../data/digits.csv.gz");
const NAME: &str = "<embedded digits.csv.gz>";

/// The embedded data set.
pub fn embedded() -> Result<ImageSet> {
    parse_gz(Path::new(NAME), EMBEDDED)
}

/// Reads a `digits.csv.gz` (or plain CSV) file: 64 pixel values then the label per line.
pub fn read(path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_gz(path, &bytes)
}

fn parse_gz(path: &Path, bytes: &[u8]) -> Result<ImageSet> {
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|e| {
                Error::format(
                    path,
                    "gzip stream",
                    format!("valid gzip'd UTF-8 text ({e})"),
                )
            })?;
    } else {
        text = String::from_utf8(bytes.to_vec()).map_err(|e| {
            Error::format(
                path,
                format!("byte {}", e.utf8_error().valid_up_to()),
                "UTF-8 text",
            )
        })?;
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 65 {
            return Err(Error::format(
                path,
                format!("line {}", i + 1),
                format!("65 comma-separated values, found {}", fields.len()),
            ));
        }
        for (j, f) in fields.iter().enumerate() {
            // Values may be written as integers or as floats ("16.0").
            let v = f
                .parse::<f64>()
                .ok()
                .filter(|v| v.fract() == 0.0 && (0.0..=16.0).contains(v));
            let limit = if j == 64 { 9.0 } else { 16.0 };
            match v {
                Some(v) if v <= limit => {
                    if j == 64 {
                        labels.push(v as u32);
                    } else {
                        pixels.push(v as u8);
                    }
                }
                _ => {
                    return Err(Error::format(
                        path,
                        format!("line {}, field {}", i + 1, j + 1),
                        format!("a whole number in 0..={limit}, found {f:?}"),
                    ))
                }
            }
        }
    }
    ImageSet::new(pixels, labels, [1, 8, 8], 10, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_set_has_the_published_class_counts() {
        let set = embedded().unwrap();
        assert_eq!(set.len(), 1797);
        assert_eq!(
            set.class_counts(),
            vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // The embedded copy is the shared mirror's file.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/digits/digits.csv.gz");
        assert_eq!(read(&shared).unwrap(), set);
    }

    #[test]
    fn bad_lines_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let mut line: Vec<String> = (0..64).map(|_| "0".to_string()).collect();
        line.push("3".into());
        let good = line.join(",");
        line[5] = "17".into();
        std::fs::write(&path, format!("{good}\n{}\n", line.join(","))).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("at line 2, field 6: a whole number in 0..=16, found \"17\""),
            "{err}"
        );
        std::fs::write(&path, "1,2,3\n").unwrap();
        assert!(read(&path)
            .unwrap_err()
            .to_string()
            .contains("65 comma-separated values, found 3"));
    }
}
