//! Configuration files: TOML with `deny_unknown_fields`, the run settings every run has,
//! and `key=value` overrides by dotted path (`model.channels=8`), shared by every kind of
//! run through [`ConfigFile`].

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runner::RunSettings;

/// Run settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Epochs.
    pub epochs: usize,
    /// The seed of initialisation, split, shuffling and augmentation.
    pub seed: u64,
    /// Checkpoints kept besides the best one.
    pub keep_checkpoints: usize,
    /// Write a step line to `metrics.jsonl` every this many steps (0: never).
    pub log_every: usize,
}

impl RunConfig {
    /// What the run loop needs of these settings.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            epochs: self.epochs,
            seed: self.seed,
            log_every: self.log_every,
        }
    }
}

/// A configuration read from and written to TOML, checked by [`ConfigFile::validate`]
/// whenever it is read or changed.
pub trait ConfigFile: Serialize + DeserializeOwned {
    /// The error of [`ConfigFile::validate`].
    type Error: From<Error> + std::fmt::Display;

    /// Keys that may be absent from the serialized form (unset options) and may still be
    /// set by an override.
    const OPTIONAL: &'static [&'static str] = &[];

    /// Checks ranges; the message names the key.
    fn validate(&self) -> std::result::Result<(), Self::Error>;

    /// Parses TOML and checks the values.
    fn from_toml(text: &str) -> std::result::Result<Self, Self::Error> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config(one_line(&e)))?;
        check_floats(&cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a configuration file; errors name the file.
    fn from_file(path: &Path) -> std::result::Result<Self, Self::Error> {
        let text = crate::atomic::read_text(path)?;
        let cfg: Self = toml::from_str(&text).map_err(|e| Error::format(path, one_line(&e)))?;
        check_floats(&cfg).map_err(|e| Error::format(path, e.to_string()))?;
        cfg.validate()
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The configuration as TOML.
    fn to_toml(&self) -> std::result::Result<String, Self::Error> {
        Ok(toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?)
    }

    /// Applies `key=value` overrides; `key` is a dotted path (`run.epochs`), `value` a
    /// TOML value (a bare word is taken as a string).
    fn with_overrides(&self, overrides: &[String]) -> std::result::Result<Self, Self::Error> {
        let cfg: Self = apply_overrides(self, overrides, Self::OPTIONAL)?;
        check_floats(&cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Every number of a configuration must be finite and fit in f32, the precision the
/// tensors train in (1e308 would silently become infinity); the error names the key.
fn check_floats<T: Serialize>(cfg: &T) -> Result<()> {
    fn walk(v: &toml::Value, key: &str) -> Result<()> {
        match v {
            toml::Value::Float(f) if !f.is_finite() || f.abs() > f32::MAX as f64 => {
                Err(Error::Config(format!(
                    "{key} = {f:e} is out of range: values train in f32, whose largest is about 3.4e38"
                )))
            }
            toml::Value::Table(t) => t.iter().try_for_each(|(k, v)| {
                let key = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                walk(v, &key)
            }),
            toml::Value::Array(a) => a.iter().try_for_each(|v| walk(v, key)),
            _ => Ok(()),
        }
    }
    let tree = toml::Value::try_from(cfg).map_err(|e| Error::Config(e.to_string()))?;
    walk(&tree, "")
}

/// The error for an unknown preset `name`, naming the known `presets` (name,
/// description).
pub fn unknown_preset(name: &str, presets: &[(&str, &str)]) -> Error {
    let names: Vec<_> = presets.iter().map(|(n, _)| *n).collect();
    Error::Config(format!(
        "unknown preset {name:?}; expected one of: {}",
        names.join(", ")
    ))
}

/// The first failed check's message as an error.
pub fn check(checks: &[(bool, &str)]) -> Result<()> {
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, message)) => Err(Error::Config((*message).to_string())),
        None => Ok(()),
    }
}

/// Applies `key=value` overrides (dotted keys, TOML values, bare words as strings) to a
/// serializable configuration. Keys must exist, except the `optional` ones, which may be
/// absent from the serialized form (unset options).
fn apply_overrides<T: Serialize + serde::de::DeserializeOwned>(
    cfg: &T,
    overrides: &[String],
    optional: &[&str],
) -> Result<T> {
    let mut tree = toml::Value::try_from(cfg).map_err(|e| Error::Config(e.to_string()))?;
    for item in overrides {
        let (key, raw) = item.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "override {:?} is not of the form key=value",
                clip(item)
            ))
        })?;
        set_path(&mut tree, key.trim(), parse_value(raw.trim()), optional)?;
        // Check after each override, so that a wrong value is reported with its key.
        tree.clone().try_into::<T>().map_err(|e: toml::de::Error| {
            Error::Config(format!("{}: {}", clip(item.trim()), one_line(&e)))
        })?;
    }
    tree.try_into()
        .map_err(|e: toml::de::Error| Error::Config(one_line(&e)))
}

/// The longest piece of user input an error message repeats.
const CLIP: usize = 200;

/// `text`, cut to its first [`CLIP`] characters (and its length) when longer: an error
/// line repeats what was given, not megabytes of it.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP) {
        Some((end, _)) => format!("{}... ({} bytes in all)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// A TOML error on one line: its message, without the source excerpt it draws (and
/// clipped, since it may quote the value).
pub fn one_line(e: &toml::de::Error) -> String {
    let message = clip(e.message().trim());
    match e.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message,
    }
}

fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(
    tree: &mut toml::Value,
    key: &str,
    value: toml::Value,
    optional: &[&str],
) -> Result<()> {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| {
            Error::Config(format!("{key}: {} is not a section", parts[..i].join(".")))
        })?;
        let last = i + 1 == parts.len();
        if last && !table.contains_key(*part) && optional.contains(&key) {
            table.insert((*part).to_string(), value);
            return Ok(());
        }
        if !table.contains_key(*part) {
            let mut known: Vec<&String> = table.keys().collect();
            known.sort();
            let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
            return Err(Error::Config(format!(
                "unknown key {key:?}; {} has: {}",
                if i == 0 {
                    "the configuration".to_string()
                } else {
                    parts[..i].join(".")
                },
                known.join(", ")
            )));
        }
        let child = table
            .get_mut(*part)
            .ok_or_else(|| Error::Config(key.to_string()))?;
        if last {
            *child = value;
            return Ok(());
        }
        node = child;
    }
    Ok(())
}
