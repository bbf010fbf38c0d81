#![no_main]
//! A model's `config.json` (models come from outside: the cache, a directory, a wheel).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_engine::config::ModelConfig::from_json(&String::from_utf8_lossy(data));
});
