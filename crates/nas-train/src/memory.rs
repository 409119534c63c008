//! Refusing a run that cannot fit before it allocates: an estimate of the bytes it needs
//! (from its configuration) against what the machine has available.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static CHECK: AtomicBool = AtomicBool::new(true);

/// Turns the check off for this process (the command line's `--no-memory-check`).
pub fn disable_memory_check() {
    CHECK.store(false, Ordering::Relaxed);
}

/// Memory the system could give this process now without swapping (`MemAvailable` of
/// `/proc/meminfo`); `None` where that is unknown (no check is made then).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// An error when `estimate` bytes (what `what` needs) exceed the available memory.
pub fn check_memory(estimate: u64, what: &str) -> Result<()> {
    if !CHECK.load(Ordering::Relaxed) {
        return Ok(());
    }
    match available_memory() {
        Some(available) if estimate > available => Err(Error::TooLarge {
            what: what.to_string(),
            estimate,
            available,
        }),
        _ => Ok(()),
    }
}

/// `bytes` as "12.3 GB".
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e12 {
        format!("{:.1} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_beyond_the_machine_is_refused_with_both_numbers() {
        let Some(available) = available_memory() else {
            return;
        };
        assert!(available > 0);
        let err = check_memory(u64::MAX / 2, "a test network")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a test network needs about"), "{err}");
        assert!(err.contains("--no-memory-check"), "{err}");
        check_memory(1, "a tiny one").unwrap();
        assert_eq!(human_bytes(12_300_000_000), "12.3 GB");
        assert_eq!(human_bytes(5_000_000), "5 MB");
    }
}
