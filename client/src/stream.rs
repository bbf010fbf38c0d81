//! Opening sealed response streams: chunk by chunk ([`ResponseOpener`]) and over gRPC
//! ([`SealedStream`]).

use std::marker::PhantomData;

use prost::Message;
use veil_proto::v1::sealed_payload::Body;
use veil_proto::v1::{CallError, GenerateBatchResponse, GenerateResponse, SealedPayload, SealedResponse};
use veil_seal::{ClientSession, Opened, Receipt, SealError};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// One opened chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenedChunk {
    /// A data chunk's payload.
    Payload(Body),
    /// The final chunk; its receipt verified.
    End(Receipt),
}

/// Opens the chunks of one sealed response stream in order and checks the receipt at the end.
/// Any reordered, dropped, duplicated, modified or foreign chunk fails to open.
#[derive(Debug)]
pub struct ResponseOpener {
    session: ClientSession,
    receipt_key: [u8; 32],
    model_digest: [u8; 32],
    bundle_digest: [u8; 32],
}

impl ResponseOpener {
    pub(crate) fn new(
        session: ClientSession,
        receipt_key: [u8; 32],
        model_digest: [u8; 32],
        bundle_digest: [u8; 32],
    ) -> Self {
        Self {
            session,
            receipt_key,
            model_digest,
            bundle_digest,
        }
    }

    /// Opens the next chunk.
    pub fn open(&mut self, chunk: &[u8]) -> Result<OpenedChunk> {
        match self.session.open_chunk(chunk)? {
            Opened::Data(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let payload = SealedPayload::decode(bytes.as_slice()).map_err(|e| {
                    ClientError::Protocol(format!("a sealed chunk is not a SealedPayload: {e}"))
                })?;
                let body = payload
                    .body
                    .ok_or_else(|| ClientError::Protocol("a sealed chunk carries nothing".into()))?;
                Ok(OpenedChunk::Payload(body))
            }
            Opened::Final => Ok(OpenedChunk::End(self.session.verify_receipt(
                &self.receipt_key,
                self.model_digest,
                self.bundle_digest,
            )?)),
        }
    }

    /// Call when the transport stream ends: fails unless the final chunk was opened.
    pub fn finish(&self) -> Result<()> {
        Ok(self.session.finish()?)
    }
}

/// The message type a sealed stream carries.
pub trait SealedMessage: Sized {
    /// The message inside a data chunk's body, if the body holds this type.
    fn from_body(body: Body) -> Option<Self>;
}

impl SealedMessage for GenerateResponse {
    fn from_body(body: Body) -> Option<Self> {
        match body {
            Body::Response(r) => Some(r),
            _ => None,
        }
    }
}

impl SealedMessage for GenerateBatchResponse {
    fn from_body(body: Body) -> Option<Self> {
        match body {
            Body::BatchItem(r) => Some(r),
            _ => None,
        }
    }
}

/// A sealed call's response stream: yields the opened messages, then ends once the final chunk
/// and its receipt verified. An error the engine sealed into the stream is returned as
/// [`ClientError::Server`] after the receipt verified.
#[derive(Debug)]
pub struct SealedStream<T> {
    inner: tonic::Streaming<SealedResponse>,
    opener: ResponseOpener,
    error: Option<CallError>,
    receipt: Option<Receipt>,
    _message: PhantomData<fn() -> T>,
}

impl<T: SealedMessage> SealedStream<T> {
    pub(crate) fn new(inner: tonic::Streaming<SealedResponse>, opener: ResponseOpener) -> Self {
        Self {
            inner,
            opener,
            error: None,
            receipt: None,
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` once the stream ended complete with a valid receipt.
    pub async fn message(&mut self) -> Result<Option<T>> {
        if self.receipt.is_some() {
            return Ok(None);
        }
        loop {
            let chunk = match self.inner.message().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    self.opener.finish()?;
                    return Err(SealError::Truncated.into());
                }
                Err(s) => return Err(ClientError::Status(s)),
            };
            match self.opener.open(&chunk.chunk)? {
                OpenedChunk::Payload(Body::Error(e)) => {
                    if self.error.is_some() {
                        return Err(ClientError::Protocol("two errors in one sealed stream".into()));
                    }
                    self.error = Some(e);
                }
                OpenedChunk::Payload(body) => {
                    if self.error.is_some() {
                        return Err(ClientError::Protocol("a message after the sealed error".into()));
                    }
                    return T::from_body(body)
                        .map(Some)
                        .ok_or_else(|| ClientError::Protocol("a payload of another call's type".into()));
                }
                OpenedChunk::End(receipt) => {
                    self.receipt = Some(receipt);
                    // Nothing may follow the final chunk.
                    match self.inner.message().await {
                        Ok(None) => {}
                        Ok(Some(_)) => return Err(SealError::AfterFinal.into()),
                        Err(s) => return Err(ClientError::Status(s)),
                    }
                    return match self.error.take() {
                        None => Ok(None),
                        Some(e) => Err(ClientError::Server {
                            code: tonic::Code::from_i32(e.code),
                            message: e.message,
                        }),
                    };
                }
            }
        }
    }

    /// The verified receipt, once the stream ended.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref()
    }
}
