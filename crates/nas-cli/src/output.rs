//! Writing results: to stdout, or atomically to a file (`nas_train::write_atomic`: a
//! temporary file, then a rename; through a symbolic link to its target; never over a
//! device, FIFO or directory). A failed write is an error, never a panic.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `text` to `path` atomically, or to stdout when `path` is `None`; a newline
/// ends it.
pub fn emit(text: &str, path: Option<&Path>) -> Result<()> {
    let mut text = text.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    match path {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing to stdout")
        }
        Some(path) => Ok(nas_train::write_atomic(path, text.as_bytes())?),
    }
}
