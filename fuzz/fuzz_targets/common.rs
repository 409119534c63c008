//! What every target checks besides its own round trip.

use nas_search_space::{to_dot, to_svg, Genotype};

/// Puts the standard panic hook back, once.
///
/// libfuzzer-sys installs a hook that aborts on any panic, even one that is caught.
/// `to_svg` deliberately catches panics of the layout engine and turns them into
/// errors, so those must not count as crashes; a panic that escapes the library is
/// still caught by libfuzzer-sys's own wrapper, which aborts and records the input.
pub fn restore_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| drop(std::panic::take_hook()));
}

/// Drawing any parsed genotype must not panic (`to_svg` may fail with an error).
pub fn draw(genotype: &Genotype) {
    assert!(!to_dot(genotype).is_empty());
    let _ = to_svg(genotype);
}
