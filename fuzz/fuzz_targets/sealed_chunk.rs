#![no_main]
//! Opening response chunks: the input split into chunks (length-prefixed by one byte each),
//! opened in order by a client session of a real sealed request.

use libfuzzer_sys::fuzz_target;
use veil_seal::{SealedRpc, SessionKeyPair, seal_request};

fuzz_target!(|data: &[u8]| {
    let kp = SessionKeyPair::from_secret_bytes(&[7; 32]);
    let info = SealedRpc::Generate.info(&[0; 32]);
    let Ok((_, mut client)) = seal_request(&kp.public_key_bytes(), kp.key_id(), b"req", 0, &info) else {
        return;
    };
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (usize::from(n) * 4).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        if client.open_chunk(chunk).is_err() {
            break;
        }
        rest = next;
    }
    let _ = client.finish();
});
