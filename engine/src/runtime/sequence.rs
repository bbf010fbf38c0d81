//! One request inside the engine: its tokens, KV blocks, sampler, output and channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::validate::Prepared;
use super::{Event, FinishReason, Finished, Request, Usage};
use crate::kv_cache::BlockTable;
use crate::output::{OutputStream, StopConditions};
use crate::sampling::Sampler;

/// A request being served.
#[derive(Debug)]
pub(crate) struct Sequence {
    pub(crate) id: u64,
    /// Prompt followed by the tokens generated so far.
    pub(crate) tokens: Vec<u32>,
    pub(crate) prompt_len: usize,
    /// Leading tokens whose K/V are in the cache.
    pub(crate) computed: usize,
    pub(crate) table: BlockTable,
    /// Prompt plus output may not exceed this.
    pub(crate) max_total: usize,
    pub(crate) sampler: Sampler,
    pub(crate) output: OutputStream,
    pub(crate) logprobs: Option<usize>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) arrival: Instant,
    pub(crate) first_token_at: Option<Instant>,
    pub(crate) last_token_at: Option<Instant>,
    /// Queued beyond the queue limit and not admitted yet (see `submit_beyond_limit`).
    pub(crate) beyond_limit: bool,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Sequence {
    pub(crate) fn new(
        id: u64,
        prepared: Prepared,
        req: &Request,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let Prepared {
            mut prompt,
            max_total,
            stop_token_ids,
        } = prepared;
        // Room for the whole generation up front: the buffer never moves (a reallocation would
        // leave a copy of the prompt in freed memory), and is wiped when the sequence ends.
        let mut tokens = Vec::with_capacity(max_total.max(prompt.len()));
        tokens.extend_from_slice(&prompt);
        zeroize::Zeroize::zeroize(&mut prompt);
        Self {
            id,
            prompt_len: tokens.len(),
            sampler: Sampler::new(req.sampling.clone(), &tokens),
            tokens,
            computed: 0,
            table: BlockTable::new(),
            max_total,
            output: OutputStream::new(StopConditions {
                max_tokens: req.stop.max_tokens,
                stop_token_ids,
                stop_strings: req.stop.stop_strings.clone(),
            }),
            logprobs: (req.logprobs || req.top_logprobs > 0).then_some(req.top_logprobs),
            deadline: req.deadline,
            arrival: Instant::now(),
            first_token_at: None,
            last_token_at: None,
            beyond_limit: false,
            events,
            cancel,
        }
    }

    /// Tokens still to be run through the model before the next sample.
    pub(crate) fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Whether the client cancelled or went away.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire) || self.events.is_closed()
    }

    /// Sends an event; a client that went away is noticed by `is_cancelled`.
    pub(crate) fn send(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// Counts and timing so far.
    pub(crate) fn usage(&self) -> Usage {
        let completion = self.tokens.len() - self.prompt_len;
        let tpot = match (self.first_token_at, self.last_token_at) {
            (Some(a), Some(b)) if completion > 1 => Some((b - a) / (completion as u32 - 1)),
            _ => None,
        };
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: completion,
            time_to_first_token: self.first_token_at.map(|t| t - self.arrival),
            time_per_output_token: tpot,
        }
    }

    /// Sends the final event.
    pub(crate) fn finish(&self, reason: FinishReason, error: Option<String>) {
        let usage = self.usage();
        // Counts only: never the prompt or the completion.
        tracing::debug!(
            request = self.id,
            reason = reason.name(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "request finished"
        );
        self.send(Event::Finished(Finished {
            reason,
            error,
            usage: self.usage(),
        }));
    }
}

impl Drop for Sequence {
    /// Wipes the prompt and completion token ids (the text and stop strings are wiped by the
    /// output stream, the prompt's text by the request).
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.tokens.zeroize();
    }
}
