//! Fuzzes the JSON reader: what it accepts prints back to the same genotype and draws.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use nas_search_space::Genotype;

fuzz_target!(|data: &[u8]| {
    common::restore_panic_hook();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(genotype) = Genotype::from_json(text) else {
        return;
    };
    let printed = genotype.to_json();
    let reread =
        Genotype::from_json(&printed).unwrap_or_else(|e| panic!("{printed} reads back as: {e}"));
    assert_eq!(reread, genotype, "{printed}");
    common::draw(&genotype);
});
