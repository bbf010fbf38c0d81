#![no_main]
//! Protobuf decoding of every request message of the API (`GenerateRequest`,
//! `GenerateBatchRequest`, `SealedRequest`, `SealedPayload`, `AttestationBundle`,
//! `AttestationClaims`) from the same bytes, each re-encoded to a fixed point; then what the
//! server does next with what decoded: its own conversion of generation requests
//! (`src/server/convert.rs`, compiled in here from the server's source: the server is a binary
//! crate) and the engine's first validation step (`SamplingParams::check`), the `grpc-timeout`
//! header parser, and bundle verification under a policy that admits simulated evidence.

use libfuzzer_sys::fuzz_target;
use prost::Message;
use veil_proto::v1;

#[allow(dead_code)]
#[path = "../../src/server/convert.rs"]
mod convert;

use convert::Site;

/// Decodes `data` as `M`; a message that decodes re-encodes to bytes that decode to the same
/// encoding.
fn decode<M: Message + Default>(data: &[u8]) -> Option<M> {
    let m = M::decode(data).ok()?;
    let once = m.encode_to_vec();
    let again = M::decode(once.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again.encode_to_vec(), once, "re-encoding is not stable");
    Some(m)
}

/// Converts one request as the server does, then checks the sampling parameters as the engine
/// does; a refused field is named by a proto path under the request's site.
fn convert_one(input: Option<&v1::generate_request::Input>, params: &v1::GenerationParams, site: Site<'_>) {
    let conv = match convert::to_engine(input, params, site, 8192, None) {
        Ok(c) => c,
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().contains("input: "), "{}", s.message());
            return;
        }
    };
    assert!(conv.request.top_logprobs == 0 || conv.request.logprobs);
    if let Err(e) = conv.request.sampling.check() {
        let path = convert::field_path(e.field, conv.kind, site);
        assert!(path.ends_with(e.field), "{path} does not name {}", e.field);
    }
    for field in [
        "prompt",
        "messages",
        "messages.role",
        "token_ids",
        "max_tokens",
        "stop",
    ] {
        let path = convert::field_path(field, conv.kind, site);
        assert!(!path.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(req) = decode::<v1::GenerateRequest>(data) {
        convert_one(req.input.as_ref(), &req.params.unwrap_or_default(), Site::Single);
    }
    if let Some(batch) = decode::<v1::GenerateBatchRequest>(data) {
        for (index, item) in batch.items.iter().enumerate().take(64) {
            let params = convert::merge_params(batch.params.as_ref(), item.params.as_ref());
            let site = Site::BatchItem {
                index,
                item_params: item.params.as_ref(),
            };
            convert_one(item.input.as_ref(), &params, site);
        }
    }
    let _ = decode::<v1::SealedRequest>(data);
    let _ = decode::<v1::SealedPayload>(data);
    if let Some(claims) = decode::<v1::AttestationClaims>(data) {
        let _ = veil_attest::bundle::claims_digest(&claims.encode_to_vec());
    }
    if let Some(bundle) = decode::<v1::AttestationBundle>(data) {
        let policy = veil_attest::policy::Policy {
            allow_simulated: true,
            ..Default::default()
        };
        let _ = veil_attest::bundle::verify_bundle(&bundle, None, &policy, 1_900_000_000);
    }
    // The call's deadline header, when the bytes make one.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(v) = text.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
    {
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert("grpc-timeout", v);
        let _ = convert::grpc_timeout(&meta);
    }
});
