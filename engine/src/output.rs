//! Per-request output handling: incremental text, stop tokens, stop strings and max tokens.

use crate::error::Result;
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
    /// The client went away or cancelled.
    Cancelled,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// The engine failed while running the request.
    Error,
}

impl FinishReason {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Error => "error",
        }
    }
}

/// Stop conditions of one request.
#[derive(Debug, Clone, Default)]
pub struct StopConditions {
    /// Generate at most this many tokens.
    pub max_tokens: usize,
    /// Token ids that end the generation (the model's EOS ids are added by the caller).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end the generation; the text is cut before them.
    pub stop_strings: Vec<String>,
}

/// What one new token produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDelta {
    /// Text that became final with this token (may be empty while a character or a possible
    /// stop string is incomplete).
    pub text: String,
    /// Set when this token ends the generation.
    pub finished: Option<FinishReason>,
}

/// Turns sampled tokens into final text, applying the stop conditions.
#[derive(Debug)]
pub struct OutputStream {
    stop: StopConditions,
    detok: IncrementalDetokenizer,
    text: String,
    emitted: usize,
    generated: usize,
    max_stop_len: usize,
}

impl Drop for OutputStream {
    /// Wipes the generated text held back for stop strings and the stop strings themselves.
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.text.zeroize();
        self.stop.stop_strings.iter_mut().for_each(Zeroize::zeroize);
    }
}

impl OutputStream {
    /// A stream with the given stop conditions.
    pub fn new(stop: StopConditions) -> Self {
        let max_stop_len = stop.stop_strings.iter().map(String::len).max().unwrap_or(0);
        Self {
            stop,
            detok: IncrementalDetokenizer::new(),
            text: String::new(),
            emitted: 0,
            generated: 0,
            max_stop_len,
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The final text emitted so far.
    pub fn text(&self) -> &str {
        &self.text[..self.emitted]
    }

    /// Takes the next token.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<OutputDelta> {
        self.generated += 1;
        if self.stop.stop_token_ids.contains(&id) {
            let text = self.finish(tok)?;
            return Ok(OutputDelta {
                text,
                finished: Some(FinishReason::Stop),
            });
        }
        let piece = self.detok.push(tok, id)?;
        self.text.push_str(&piece);
        if let Some(cut) = self.find_stop_string(piece.len()) {
            self.text.truncate(cut);
            let text = self.text[self.emitted..].to_owned();
            self.emitted = self.text.len();
            return Ok(OutputDelta {
                text,
                finished: Some(FinishReason::Stop),
            });
        }
        if self.generated >= self.stop.max_tokens {
            let text = self.finish(tok)?;
            return Ok(OutputDelta {
                text,
                finished: Some(FinishReason::Length),
            });
        }
        let safe = self.text.len() - self.held_back();
        let text = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        Ok(OutputDelta { text, finished: None })
    }

    /// Ends the stream early (context full, cancellation): returns the text still held back.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let rest = self.detok.flush(tok)?;
        self.text.push_str(&rest);
        let text = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        Ok(text)
    }

    /// Byte index where the earliest stop string starts, looking only where `added` new bytes
    /// could have completed one.
    fn find_stop_string(&self, added: usize) -> Option<usize> {
        if self.max_stop_len == 0 || added == 0 {
            return None;
        }
        let mut from = self.text.len().saturating_sub(added + self.max_stop_len - 1);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Bytes at the end of the text that could be the start of a stop string.
    fn held_back(&self) -> usize {
        let pending = &self.text[self.emitted..];
        let mut hold = 0;
        for s in &self.stop.stop_strings {
            for len in (1..s.len().min(pending.len() + 1)).rev() {
                if len > hold && s.is_char_boundary(len) && pending.ends_with(&s[..len]) {
                    hold = len;
                    break;
                }
            }
        }
        hold
    }
}
