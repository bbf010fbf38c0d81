#![no_main]
//! safetensors header and tensor ranges.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_engine::weights::check_safetensors(data);
});
