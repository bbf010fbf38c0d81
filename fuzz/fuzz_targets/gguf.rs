#![no_main]
//! GGUF reader: any bytes give a value or an error, never a panic or a huge allocation.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_engine::gguf::GgufFile::parse(data);
});
