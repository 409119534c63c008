//! Process-wide settings for programs that run these kernels: the binaries (`nas`, the
//! benchmarks) call [`configure_process`] first thing in `main`. (Running a step on a pool
//! thread, `in_pool`, is `nas-train`'s, beside the run loop that does it.)
//!
//! - **Threads.** candle runs element-wise ops on a pool of spin-waiting threads sized by
//!   `CANDLE_NUM_THREADS` (default: every core), next to rayon's pool that the fused
//!   kernels and matrix products use. On few cores the two fight; one candle thread
//!   measured about 15% faster per DARTS search epoch on 2 cores.
//! - **Allocator.** candle's backward pass allocates a fresh zeroed buffer for every
//!   gradient it accumulates, so a training step frees and allocates gigabytes of large
//!   blocks. mimalloc (the binaries' global allocator) returns freed memory to the OS after
//!   a delay, and the kernel then zeroes every page again when it is touched: on the DARTS
//!   training step that page clearing was a third of all cycles (`perf`). With purging
//!   off, freed blocks are reused; the peak resident size is unchanged.
//!
//! A variable the user set (`CANDLE_NUM_THREADS`, `MIMALLOC_PURGE_DELAY`) wins.

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_t` of mimalloc v3's
/// `mimalloc.h`; `libmimalloc-sys` does not export the constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the settings above. Call it before any thread exists (it may set an
/// environment variable).
pub fn configure_process() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        set_mimalloc_purge_delay(-1);
    }
}

/// The purge delay mimalloc uses now (milliseconds; -1: never).
pub fn mimalloc_purge_delay() -> i64 {
    // SAFETY: reads an option; any index below `_mi_option_last` is valid.
    #[allow(unsafe_code)]
    let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    value as i64
}

fn set_mimalloc_purge_delay(ms: i64) {
    // SAFETY: sets an option (a relaxed atomic store inside mimalloc); valid index.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_we_set() {
        // mimalloc's documented default purge delay is 1000 ms in v3 (10 in v2): a wrong
        // index would most likely read some other option's default.
        let before = mimalloc_purge_delay();
        assert!(
            before == 1000 || before == -1 || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some(),
            "unexpected default purge delay {before}"
        );
        set_mimalloc_purge_delay(-1);
        assert_eq!(mimalloc_purge_delay(), -1);
        set_mimalloc_purge_delay(before);
        assert_eq!(mimalloc_purge_delay(), before);
    }
}
