#![no_main]
//! Intel TDX quote parser.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::tdx::TdxQuote::parse(data);
});
