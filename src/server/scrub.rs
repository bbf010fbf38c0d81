//! Wiping request and response content from memory once a call no longer needs it.
//!
//! A sealed request is opened into a [`zeroize::Zeroizing`] buffer; the protocol messages
//! decoded from it, the engine request converted from those (wiped by the engine on drop) and
//! the response messages sealed back are plain Rust values, whose heap buffers the allocator
//! would otherwise hand out again with their content intact. [`Scrub`] overwrites the text and
//! token ids of those messages, and [`Wiped`] does it when a value goes out of scope, on every
//! path (early returns and errors included).

use std::ops::{Deref, DerefMut};

use veil_proto::v1::{self, generate_request::Input, generate_response::Event, sealed_payload::Body};
use zeroize::Zeroize;

/// Overwrites the content a message carries (text, token ids, stop strings).
pub(crate) trait Scrub {
    /// Overwrites the content in place.
    fn scrub(&mut self);
}

/// A value scrubbed when dropped.
#[derive(Debug)]
pub(crate) struct Wiped<T: Scrub>(pub(crate) T);

impl<T: Scrub> Deref for Wiped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Scrub> DerefMut for Wiped<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Scrub> Drop for Wiped<T> {
    fn drop(&mut self) {
        self.0.scrub();
    }
}

impl<T: Scrub> Scrub for Option<T> {
    fn scrub(&mut self) {
        if let Some(v) = self {
            v.scrub();
        }
    }
}

impl<T: Scrub> Scrub for Vec<T> {
    fn scrub(&mut self) {
        self.iter_mut().for_each(Scrub::scrub);
    }
}

impl Scrub for v1::GenerationParams {
    fn scrub(&mut self) {
        self.stop.iter_mut().for_each(Zeroize::zeroize);
        self.stop_token_ids.zeroize();
    }
}

impl Scrub for v1::GenerateRequest {
    fn scrub(&mut self) {
        match &mut self.input {
            Some(Input::Prompt(text)) => text.zeroize(),
            Some(Input::Chat(chat)) => {
                for m in &mut chat.messages {
                    m.role.zeroize();
                    m.content.zeroize();
                }
            }
            Some(Input::Tokens(t)) => t.token_ids.zeroize(),
            None => {}
        }
        self.params.scrub();
    }
}

impl Scrub for v1::GenerateBatchRequest {
    fn scrub(&mut self) {
        self.items.scrub();
        self.params.scrub();
    }
}

impl Scrub for v1::Token {
    fn scrub(&mut self) {
        self.id = 0;
        self.logprob = None;
        for t in &mut self.top_logprobs {
            t.id = 0;
            t.logprob = 0.0;
        }
    }
}

impl Scrub for v1::GenerateResponse {
    fn scrub(&mut self) {
        match &mut self.event {
            Some(Event::Delta(d)) => {
                d.text.zeroize();
                d.tokens.scrub();
            }
            Some(Event::Finished(f)) => f.error.zeroize(),
            None => {}
        }
    }
}

impl Scrub for v1::GenerateBatchResponse {
    fn scrub(&mut self) {
        self.text.zeroize();
        self.tokens.scrub();
        if let Some(f) = &mut self.finished {
            f.error.zeroize();
        }
    }
}

impl Scrub for v1::SealedPayload {
    fn scrub(&mut self) {
        self.body.scrub();
    }
}

impl Scrub for Body {
    fn scrub(&mut self) {
        match self {
            Body::Response(r) => r.scrub(),
            Body::BatchItem(r) => r.scrub(),
            // An error message may quote the request.
            Body::Error(e) => e.message.zeroize(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_request_content() {
        let mut req = v1::GenerateBatchRequest {
            items: vec![
                v1::GenerateRequest {
                    input: Some(Input::Prompt("secret prompt".into())),
                    params: Some(v1::GenerationParams {
                        stop: vec!["secret stop".into()],
                        stop_token_ids: vec![7],
                        ..Default::default()
                    }),
                },
                v1::GenerateRequest {
                    input: Some(Input::Chat(v1::ChatInput {
                        messages: vec![v1::ChatMessage {
                            role: "user".into(),
                            content: "secret message".into(),
                        }],
                    })),
                    params: None,
                },
                v1::GenerateRequest {
                    input: Some(Input::Tokens(v1::TokenInput {
                        token_ids: vec![1, 2],
                    })),
                    params: None,
                },
            ],
            params: None,
        };
        req.scrub();
        let text = format!("{req:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("1, 2"), "{text}");
    }

    #[test]
    fn scrubs_response_content() {
        let mut body = Body::BatchItem(v1::GenerateBatchResponse {
            index: 0,
            text: "secret completion".into(),
            tokens: vec![v1::Token {
                id: 42,
                logprob: Some(-1.0),
                top_logprobs: vec![],
            }],
            finished: None,
        });
        body.scrub();
        let text = format!("{body:?}");
        assert!(!text.contains("secret") && !text.contains("42"), "{text}");
    }
}
