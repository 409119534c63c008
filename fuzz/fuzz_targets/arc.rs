//! Fuzzes the ENAS arc-string readers: byte 0 picks the kind (`% 3`: micro, macro, rnn, so ASCII `0`/`1`/`2`),
//! the rest is the arc; what is accepted prints back to the same genotype and draws.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use nas_search_space::{Genotype, GenotypeKind};

const KINDS: [GenotypeKind; 3] = [
    GenotypeKind::EnasMicro,
    GenotypeKind::EnasMacro,
    GenotypeKind::EnasRnn,
];

fuzz_target!(|data: &[u8]| {
    common::restore_panic_hook();
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(selector) % KINDS.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(genotype) = Genotype::from_arc(kind, text) else {
        return;
    };
    assert_eq!(genotype.kind(), kind);
    let printed = genotype
        .to_arc()
        .expect("read from an arc string, so it prints as one");
    let reread = Genotype::from_arc(kind, &printed)
        .unwrap_or_else(|e| panic!("{printed:?} reads back as: {e}"));
    assert_eq!(reread, genotype, "{printed}");
    common::draw(&genotype);
});
