//! Fuzzes the DARTS Python-notation reader: what it accepts prints back to the same genotype and draws.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use nas_search_space::parse_python;

fuzz_target!(|data: &[u8]| {
    common::restore_panic_hook();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(genotype) = parse_python(text) else {
        return;
    };
    let printed = genotype
        .to_python()
        .expect("read from python notation, so it prints in it");
    let reread =
        parse_python(&printed).unwrap_or_else(|e| panic!("{printed:?} reads back as: {e}"));
    assert_eq!(reread, genotype, "{printed}");
    common::draw(&genotype);
});
