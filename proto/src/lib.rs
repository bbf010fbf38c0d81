//! # veil-proto: Veil's gRPC API
//!
//! The public contract lives in `proto/veil/v1/inference.proto` (package `veil.v1`); this crate
//! compiles it (with the pure-Rust `protox`, no `protoc`) into Rust messages, a tonic client
//! ([`v1::inference_client::InferenceClient`]) and server
//! ([`v1::inference_server::InferenceServer`]), and exposes the encoded file descriptor set
//! ([`FILE_DESCRIPTOR_SET`]) for gRPC server reflection. Client and server use
//! [`codec::VeilCodec`], prost's codec except that a request message that does not decode is
//! INVALID_ARGUMENT naming the field, as the API's conventions ask.

/// Package `veil.v1`: messages, client and server generated from `veil/v1/inference.proto`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod v1 {
    tonic::include_proto!("veil.v1");
}

pub mod codec;
pub mod routing;

/// The encoded `google.protobuf.FileDescriptorSet` of `veil/v1/inference.proto`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("veil_descriptor");

/// The `veil/v1/inference.proto` source, for tools and clients that generate stubs at run time.
pub const INFERENCE_PROTO: &str = include_str!("../veil/v1/inference.proto");

/// The `veil/v1/attestation.proto` source: the composite quote (`AttestationBundle`).
pub const ATTESTATION_PROTO: &str = include_str!("../veil/v1/attestation.proto");

/// The full gRPC name of the inference service.
pub const INFERENCE_SERVICE: &str = "veil.v1.Inference";

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_names_the_service() {
        // The package and service names appear as length-delimited strings in the encoding.
        let text = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        assert!(text.contains("veil.v1") && text.contains("Inference"));
        assert!(text.contains("GenerateBatch") && text.contains("ModelInfo"));
    }

    #[test]
    fn messages_round_trip() {
        let req = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Prompt("hello".into())),
            params: Some(v1::GenerationParams {
                temperature: Some(0.0),
                max_tokens: Some(8),
                ..Default::default()
            }),
        };
        let bytes = req.encode_to_vec();
        let back = v1::GenerateRequest::decode(bytes.as_slice()).expect("decode");
        assert_eq!(req, back);
    }
}
