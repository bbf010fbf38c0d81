//! The gRPC codec of the generated client and server: prost's, except that a request message
//! that does not decode is the client's mistake, not the server's.
//!
//! tonic's `ProstCodec` turns every decode error into INTERNAL. For the messages a server
//! receives (the RPCs' requests) that is wrong: invalid UTF-8 in a string field, a field of the
//! wrong wire type or a truncated message is an invalid request, which `veil.v1` answers with
//! INVALID_ARGUMENT naming the field (`chat.messages.content: invalid string value: ...`).
//! Messages a client receives (the responses) keep INTERNAL: a server that sends one that does
//! not decode is broken. Which is which is a property of the message type ([`DecodeStatus`]).

use std::marker::PhantomData;

use prost::{DecodeError, Message};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::v1;

/// The status of a message of this type that does not decode.
pub trait DecodeStatus {
    /// The status for `e`.
    fn decode_status(e: &DecodeError) -> Status;
}

/// Request messages: INVALID_ARGUMENT naming the field ([`request_decode_status`]).
macro_rules! request {
    ($($t:ty),*) => {$(
        impl DecodeStatus for $t {
            fn decode_status(e: &DecodeError) -> Status {
                request_decode_status(e)
            }
        }
    )*};
}

/// Response messages: INTERNAL, as tonic gives it.
macro_rules! response {
    ($($t:ty),*) => {$(
        impl DecodeStatus for $t {
            fn decode_status(e: &DecodeError) -> Status {
                Status::internal(e.to_string())
            }
        }
    )*};
}

request!(
    v1::GenerateRequest,
    v1::GenerateBatchRequest,
    v1::SealedRequest,
    v1::ModelInfoRequest,
    v1::GetAttestationRequest,
    v1::ListReplicasRequest
);
response!(
    v1::GenerateResponse,
    v1::GenerateBatchResponse,
    v1::SealedResponse,
    v1::ModelInfoResponse,
    v1::GetAttestationResponse,
    v1::ListReplicasResponse
);

/// The INVALID_ARGUMENT status of a request that does not decode: `PATH: WHAT (the request does
/// not decode)`, where `PATH` is the offending field's path as in the `.proto` files
/// ([`decode_error_path`]).
pub fn request_decode_status(e: &DecodeError) -> Status {
    let (path, what) = decode_error_path(e);
    Status::invalid_argument(format!("{path}: {what} (the request does not decode)"))
}

/// The path of the field a decode error is in (`chat.messages.content`, `params.stop`, ...;
/// `request` when the message itself is malformed) and what is wrong with it.
///
/// prost names the field by each enclosing message's Rust name and field, innermost first; a
/// repeated field's index is not known (`items.prompt` for a batch item's prompt). The oneof
/// `GenerateRequest.input` is named by its variant when the error is inside one.
pub fn decode_error_path(e: &DecodeError) -> (String, String) {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    // Leading `Message.field: ` segments are the stack; the rest is the description.
    let mut stack = Vec::new();
    let mut rest = text;
    while let Some((segment, tail)) = rest.split_once(": ") {
        let Some((message, field)) = segment.split_once('.') else {
            break;
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ident(message) || !ident(field) {
            break;
        }
        stack.push((message, field));
        rest = tail;
    }
    stack.reverse();
    let mut path: Vec<&str> = Vec::new();
    for (i, &(message, field)) in stack.iter().enumerate() {
        let segment = match (message, field) {
            ("GenerateRequest", "input") => match stack.get(i + 1).map(|s| s.0) {
                Some("ChatInput") => "chat",
                Some("TokenInput") => "tokens",
                _ if rest.starts_with("invalid string value") => "prompt",
                _ => "input",
            },
            _ => field,
        };
        path.push(segment);
    }
    let path = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    (path, rest.to_owned())
}

/// prost's codec with [`DecodeStatus`] statuses: the `codec_path` of the generated code.
#[derive(Debug, Clone)]
pub struct VeilCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for VeilCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for VeilCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeStatus + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = VeilDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        VeilDecoder { _type: PhantomData }
    }
}

/// Decodes `U` with prost; errors get `U`'s [`DecodeStatus`].
#[derive(Debug, Clone)]
pub struct VeilDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default + DecodeStatus> Decoder for VeilDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| U::decode_status(&e))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1;

    /// A length-delimited field.
    fn ld(field: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn path_of<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> (String, String) {
        decode_error_path(&M::decode(bytes).expect_err("must not decode"))
    }

    #[test]
    fn decode_errors_name_the_field() {
        let bad = b"\xff\xfehi";
        // prompt (GenerateRequest field 1).
        let (path, what) = path_of::<v1::GenerateRequest>(&ld(1, bad));
        assert_eq!(path, "prompt");
        assert!(what.starts_with("invalid string value"), "{what}");
        // chat.messages.content and .role.
        let msg = [ld(1, b"user"), ld(2, bad)].concat();
        let chat = ld(2, &ld(1, &msg));
        assert_eq!(path_of::<v1::GenerateRequest>(&chat).0, "chat.messages.content");
        let chat = ld(2, &ld(1, &ld(1, bad)));
        assert_eq!(path_of::<v1::GenerateRequest>(&chat).0, "chat.messages.role");
        // params.stop, and a batch item's.
        let stop = [ld(1, b"hi"), ld(4, &ld(10, bad))].concat();
        assert_eq!(path_of::<v1::GenerateRequest>(&stop).0, "params.stop");
        assert_eq!(
            path_of::<v1::GenerateBatchRequest>(&ld(1, &stop)).0,
            "items.params.stop"
        );
        assert_eq!(
            path_of::<v1::GenerateBatchRequest>(&ld(2, &ld(10, bad))).0,
            "params.stop"
        );
        // Token ids of the wrong wire type: tokens.token_ids.
        let tokens = ld(3, &[0x0d, 1, 2, 3, 4]);
        assert_eq!(path_of::<v1::GenerateRequest>(&tokens).0, "tokens.token_ids");
        // A field cut short is named; a key or varint cut short, or field number 0, is the
        // request itself.
        assert_eq!(path_of::<v1::GenerateRequest>(&[0x0a, 5, b'a']).0, "input");
        assert_eq!(path_of::<v1::GenerateRequest>(&[0x22, 5, 0x48]).0, "params");
        assert_eq!(path_of::<v1::GenerateRequest>(&[0x48]).0, "request");
        assert_eq!(path_of::<v1::ModelInfoRequest>(&[0x00]).0, "request");
        // Deep nesting of unknown groups stops at prost's recursion limit, as an error.
        let deep = [vec![0x7b; 200], vec![0x7c; 200]].concat();
        let (path, what) = path_of::<v1::GenerateRequest>(&deep);
        assert_eq!(path, "request");
        assert!(what.contains("recursion limit"), "{what}");
    }

    #[test]
    fn request_statuses_are_invalid_argument_and_responses_internal() {
        let e = v1::GenerateRequest::decode(&ld(1, b"\xff")[..]).expect_err("invalid UTF-8");
        let s = v1::GenerateRequest::decode_status(&e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message().starts_with("prompt: invalid string value"),
            "{}",
            s.message()
        );
        let s = v1::GenerateResponse::decode_status(&e);
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
