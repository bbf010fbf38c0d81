#![no_main]
//! The verifier's policy file (`--policy FILE` of the client and the CLI).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::policy::Policy::from_toml(&String::from_utf8_lossy(data));
});
