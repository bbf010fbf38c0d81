#![no_main]
//! Intel TDX quote collateral in its JSON form (from a PCCS, or `--collateral FILE`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::tdx::TdxCollateral::from_json(data);
});
