#![no_main]
//! NVIDIA SPDM GET_MEASUREMENTS request||response parser.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::nvidia::GpuReport::parse(data);
});
