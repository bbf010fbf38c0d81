#![no_main]
//! PEM/DER certificate parsing.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::x509::parse_certs(data);
});
