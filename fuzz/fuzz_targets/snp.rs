#![no_main]
//! AMD SEV-SNP report parser.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::snp::SnpReport::parse(data);
});
