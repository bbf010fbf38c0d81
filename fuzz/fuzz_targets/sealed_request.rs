#![no_main]
//! Opening a sealed request: key id, encapsulated key and ciphertext from the input, against a
//! fixed session key (the key id is replaced by the real one when the first byte is even, so
//! the HPKE and envelope paths are reached).

use libfuzzer_sys::fuzz_target;
use veil_seal::{ReplayCache, SealedRequestParts, SealedRpc, SessionKeyPair, open_request};

fuzz_target!(|data: &[u8]| {
    let kp = SessionKeyPair::from_secret_bytes(&[7; 32]);
    let mut key_id = [0u8; 8];
    let take = data.len().min(8);
    key_id[..take].copy_from_slice(&data[..take]);
    if data.first().is_some_and(|b| b % 2 == 0) {
        key_id = kp.key_id();
    }
    let rest = data.get(8..).unwrap_or_default();
    let split = rest.len().min(32);
    let parts = SealedRequestParts {
        key_id,
        encapsulated_key: rest[..split].to_vec(),
        ciphertext: rest[split..].to_vec(),
    };
    let info = SealedRpc::Generate.info(&[0; 32]);
    let _ = open_request(&kp, &parts, &info, 1_900_000_000, &mut ReplayCache::new(4), 60);
});
