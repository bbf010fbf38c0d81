#![no_main]
//! configfs-tsm auxblob certificate table (SNP).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::collect::tsm::parse_cert_table(data);
});
