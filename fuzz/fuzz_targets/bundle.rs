#![no_main]
//! AttestationBundle decoding and verification under the strict default policy.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = veil_attest::bundle::decode_bundle(data) {
        let _ = veil_attest::bundle::verify_bundle(
            &b,
            None,
            &veil_attest::policy::Policy::default(),
            1_900_000_000,
        );
    }
});
