//! Writing results: to stdout, or atomically to a file (temp file, then rename).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `text` to `path` atomically, or to stdout when `path` is `None`.
pub fn emit(text: &str, path: Option<&Path>) -> Result<()> {
    match path {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                stdout.write_all(b"\n")?;
            }
            stdout.flush()?;
            Ok(())
        }
        Some(path) => write_atomic(path, text.as_bytes()),
    }
}

/// Writes to a temporary file beside `path`, syncs it, then renames it over `path`, so a
/// reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("output path {path:?} names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {tmp:?}"))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {tmp:?}"))?;
        file.sync_all()
            .with_context(|| format!("syncing {tmp:?}"))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {tmp:?} to {path:?}"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
