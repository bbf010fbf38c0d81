//! The engine thread: takes submissions, runs scheduler steps on the backend, streams tokens.
//!
//! A panic on the engine thread is caught here: the failure is recorded (the handle refuses new
//! requests and the server reports NOT_SERVING), and every request the engine held is dropped,
//! which ends its stream without a `Finished` event, so no caller waits forever.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::scheduler::{Limits, Planned, Scheduler};
use super::sequence::Sequence;
use super::{Control, Event, FailureCell, FinishReason, RuntimeConfig, SharedStats, record_failure};
use crate::backend::{DeviceSample, SampleRow, SeqChunk};
use crate::generate::TokenEvent;
use crate::kv_cache::BlockAllocator;
use crate::model::LoadedModel;
use crate::sampling::{Sampled, TokenLogprob};

/// State owned by the engine thread.
pub(crate) struct Worker {
    model: LoadedModel,
    sched: Scheduler,
    stats: Arc<SharedStats>,
    rx: mpsc::Receiver<Control>,
    logits: Vec<f32>,
    /// Tokens picked on the device in the last step (backends that sample on the device).
    picked: Vec<DeviceSample>,
    /// Scratch: penalised tokens per sampled row.
    penalties: Vec<Vec<(u32, u32)>>,
    /// Set once a shutdown was asked for: the instant after which everything is cancelled.
    shutdown_by: Option<Instant>,
    /// Where a failure of this thread is recorded.
    failure: Arc<FailureCell>,
    /// Test-only: panic once this many steps have run (`VEIL_FAULT_PANIC_AFTER_STEPS`).
    #[cfg(feature = "fault-injection")]
    panic_after_steps: Option<u64>,
}

impl Worker {
    pub(crate) fn new(
        model: LoadedModel,
        cfg: RuntimeConfig,
        num_blocks: usize,
        stats: Arc<SharedStats>,
        rx: mpsc::Receiver<Control>,
        failure: Arc<FailureCell>,
    ) -> Self {
        let limits = Limits {
            max_batched_tokens: cfg.max_batched_tokens,
            max_seqs: cfg.max_seqs,
        };
        let sched = Scheduler::new(limits, BlockAllocator::new(num_blocks, cfg.block_size));
        Self {
            model,
            sched,
            stats,
            rx,
            logits: Vec::new(),
            picked: Vec::new(),
            penalties: Vec::new(),
            shutdown_by: None,
            failure,
            #[cfg(feature = "fault-injection")]
            panic_after_steps: fault_injection_steps(),
        }
    }

    /// Runs until shut down (or every handle is gone). A panic is caught: the failure is
    /// recorded and every request held is dropped (see the module docs).
    pub(crate) fn run(mut self) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.serve()));
        if let Err(payload) = outcome {
            let what = panic_message(payload.as_ref());
            tracing::error!(
                error = %what,
                "the engine thread panicked; failing every request and refusing new ones"
            );
            record_failure(&self.failure, format!("the engine thread panicked: {what}"));
            self.abandon_all();
        }
    }

    /// After a failure: drops every request held (their streams end without a final event)
    /// and every submission still in the channel.
    fn abandon_all(&mut self) {
        let sched = &mut self.sched;
        let (mut waiting, mut beyond) = (0, 0);
        for mut s in sched.running.drain(..) {
            s.table.release(&mut sched.alloc);
        }
        for mut s in sched.waiting.drain(..) {
            s.table.release(&mut sched.alloc);
            waiting += 1;
            beyond += usize::from(s.beyond_limit);
        }
        while let Ok(msg) = self.rx.try_recv() {
            if let Control::Submit(s) = msg {
                waiting += 1;
                beyond += usize::from(s.beyond_limit);
            }
        }
        let sub = |counter: &std::sync::atomic::AtomicUsize, n: usize| {
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(n)));
        };
        sub(&self.stats.queued, waiting);
        sub(&self.stats.queued_beyond, beyond);
        self.publish();
    }

    /// Test-only fault injection: panics once the configured number of steps has run.
    #[cfg(feature = "fault-injection")]
    fn inject_faults(&self) {
        if let Some(n) = self.panic_after_steps
            && self.stats.steps_total.load(Ordering::Relaxed) >= n
        {
            panic!("fault injection: VEIL_FAULT_PANIC_AFTER_STEPS={n} reached");
        }
    }

    /// The engine loop.
    fn serve(&mut self) {
        loop {
            if !self.take_messages() {
                break;
            }
            if let Some(by) = self.shutdown_by {
                if self.sched.is_idle() {
                    break;
                }
                if Instant::now() >= by {
                    self.cancel_all();
                    break;
                }
            }
            self.reap();
            if self.sched.is_idle() {
                continue;
            }
            #[cfg(feature = "fault-injection")]
            self.inject_faults();
            self.step();
            self.publish();
        }
        self.cancel_all();
        self.publish();
    }

    /// Takes pending messages; blocks while there is nothing to do. Returns false when all
    /// handles are gone and no work is left.
    fn take_messages(&mut self) -> bool {
        if self.sched.is_idle() && self.shutdown_by.is_none() {
            match self.rx.recv() {
                Ok(msg) => self.handle(msg),
                Err(_) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(msg) => self.handle(msg),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return !self.sched.is_idle() || self.shutdown_by.is_some();
                }
            }
        }
    }

    fn handle(&mut self, msg: Control) {
        match msg {
            Control::Submit(seq) => {
                self.stats
                    .prompt_tokens_total
                    .fetch_add(seq.prompt_len as u64, Ordering::Relaxed);
                self.sched.waiting.push_back(*seq);
            }
            Control::Shutdown { grace } => {
                let by = Instant::now() + grace;
                self.shutdown_by = Some(self.shutdown_by.map_or(by, |b| b.min(by)));
            }
        }
    }

    /// Ends cancelled and expired requests and frees their blocks.
    fn reap(&mut self) {
        let now = Instant::now();
        let verdict = |s: &Sequence| {
            if s.is_cancelled() {
                Some(FinishReason::Cancelled)
            } else if s.deadline.is_some_and(|d| now >= d) {
                Some(FinishReason::DeadlineExceeded)
            } else {
                None
            }
        };
        let sched = &mut self.sched;
        let mut ended = Vec::new();
        let mut i = 0;
        while i < sched.running.len() {
            if let Some(reason) = verdict(&sched.running[i]) {
                let mut s = sched.running.remove(i);
                s.table.release(&mut sched.alloc);
                ended.push((s, reason));
            } else {
                i += 1;
            }
        }
        let mut kept = std::collections::VecDeque::with_capacity(sched.waiting.len());
        let (mut removed, mut beyond) = (0, 0);
        for mut s in sched.waiting.drain(..) {
            match verdict(&s) {
                Some(reason) => {
                    s.table.release(&mut sched.alloc);
                    beyond += usize::from(s.beyond_limit);
                    ended.push((s, reason));
                    removed += 1;
                }
                None => kept.push_back(s),
            }
        }
        sched.waiting = kept;
        if ended.is_empty() {
            return;
        }
        self.stats.queued.fetch_sub(removed, Ordering::AcqRel);
        self.stats.queued_beyond.fetch_sub(beyond, Ordering::AcqRel);
        self.publish();
        for (s, reason) in ended {
            s.finish(reason, None);
        }
    }

    fn cancel_all(&mut self) {
        let sched = &mut self.sched;
        for mut s in sched.running.drain(..) {
            s.table.release(&mut sched.alloc);
            s.finish(FinishReason::Cancelled, None);
        }
        let n = sched.waiting.len();
        let mut beyond = 0;
        for mut s in sched.waiting.drain(..) {
            s.table.release(&mut sched.alloc);
            beyond += usize::from(s.beyond_limit);
            s.finish(FinishReason::Cancelled, None);
        }
        self.stats.queued.fetch_sub(n, Ordering::AcqRel);
        self.stats.queued_beyond.fetch_sub(beyond, Ordering::AcqRel);
    }

    /// One scheduler step: plan, forward, sample, stream, retire.
    fn step(&mut self) {
        let waiting_before = self.sched.waiting.len();
        let preempted_before = self.sched.preemptions;
        let beyond_before = self.sched.admitted_beyond;
        let plan = self.sched.schedule();
        let beyond_admitted = (self.sched.admitted_beyond - beyond_before) as usize;
        self.stats
            .queued_beyond
            .fetch_sub(beyond_admitted, Ordering::AcqRel);
        // Admitted sequences leave the queue; preempted ones re-enter it.
        let admitted = (waiting_before + (self.sched.preemptions - preempted_before) as usize)
            .saturating_sub(self.sched.waiting.len());
        let requeued = self.sched.preemptions - preempted_before;
        self.stats.queued.fetch_add(requeued as usize, Ordering::AcqRel);
        self.stats.queued.fetch_sub(admitted, Ordering::AcqRel);
        self.stats
            .preemptions_total
            .fetch_add(requeued, Ordering::Relaxed);
        if plan.is_empty() {
            // Nothing fits right now (cannot happen with a correctly sized cache); avoid spinning.
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let on_device = self.model.backend.samples_on_device();
        let result = {
            let running = &self.sched.running;
            let batch: Vec<SeqChunk<'_>> = plan
                .iter()
                .map(|p| {
                    let s = &running[p.index];
                    SeqChunk {
                        tokens: &s.tokens[s.computed..s.computed + p.n],
                        start_pos: s.computed,
                        block_table: s.table.blocks(),
                        want_logits: s.computed + p.n == s.tokens.len(),
                    }
                })
                .collect();
            if on_device {
                // The device picks the tokens: describe each sampled row.
                let sampled: Vec<usize> = plan
                    .iter()
                    .zip(&batch)
                    .filter(|(_, c)| c.want_logits)
                    .map(|(p, _)| p.index)
                    .collect();
                self.penalties.resize_with(sampled.len(), Vec::new);
                for (pen, &i) in self.penalties.iter_mut().zip(&sampled) {
                    running[i].sampler.penalty_pairs(pen);
                }
                let rows: Vec<SampleRow<'_>> = sampled
                    .iter()
                    .zip(&self.penalties)
                    .map(|(&i, pen)| {
                        let s = &running[i];
                        SampleRow {
                            params: s.sampler.params(),
                            seed: s.sampler.device_seed(),
                            counter: s.sampler.picked(),
                            logprobs: s.logprobs,
                            penalties: pen,
                        }
                    })
                    .collect();
                self.model.backend.forward_sample(&batch, &rows, &mut self.picked)
            } else {
                self.model.backend.forward(&batch, &mut self.logits)
            }
        };
        self.stats.steps_total.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::error!(error = %e, "forward step failed; failing the batch");
            let msg = e.to_string();
            self.retire(&plan, |_| Some((FinishReason::Error, Some(msg.clone()))));
            return;
        }
        let vocab = self.model.config.vocab_size;
        let mut row = 0;
        let mut finished: Vec<Option<(FinishReason, Option<String>)>> = vec![None; plan.len()];
        for (k, p) in plan.iter().enumerate() {
            let s = &mut self.sched.running[p.index];
            s.computed += p.n;
            if s.computed < s.tokens.len() {
                continue;
            }
            let sampled = if on_device {
                let Some(d) = self.picked.get(row) else {
                    finished[k] = Some((
                        FinishReason::Error,
                        Some("the backend returned fewer tokens than rows".into()),
                    ));
                    continue;
                };
                s.sampler.record_picked(d.id);
                Sampled {
                    id: d.id,
                    logprob: d.logprob,
                    top_logprobs: d
                        .top_logprobs
                        .iter()
                        .map(|&(id, logprob)| TokenLogprob { id, logprob })
                        .collect(),
                }
            } else {
                let logits = &mut self.logits[row * vocab..(row + 1) * vocab];
                s.sampler.sample(logits, s.logprobs)
            };
            row += 1;
            let now = Instant::now();
            s.first_token_at.get_or_insert(now);
            s.last_token_at = Some(now);
            s.tokens.push(sampled.id);
            self.stats.generated_tokens_total.fetch_add(1, Ordering::Relaxed);
            let (text, mut reason) = match s.output.push(&self.model.tokenizer, sampled.id) {
                Ok(d) => (d.text, d.finished.map(|r| (r, None))),
                Err(e) => (String::new(), Some((FinishReason::Error, Some(e.to_string())))),
            };
            if reason.is_none() && s.tokens.len() >= s.max_total {
                reason = Some((FinishReason::Length, None));
            }
            let mut text = text;
            if reason.as_ref().is_some_and(|(r, _)| *r == FinishReason::Length)
                && let Ok(rest) = s.output.finish(&self.model.tokenizer)
            {
                text.push_str(&rest);
            }
            s.send(Event::Token(TokenEvent {
                id: sampled.id,
                text,
                logprob: sampled.logprob,
                top_logprobs: sampled.top_logprobs,
            }));
            finished[k] = reason;
        }
        self.retire(&plan, |k| finished[k].take());
    }

    /// Removes the planned sequences for which `verdict` returns a reason, sending their end.
    fn retire(
        &mut self,
        plan: &[Planned],
        mut verdict: impl FnMut(usize) -> Option<(FinishReason, Option<String>)>,
    ) {
        let mut done: Vec<(usize, FinishReason, Option<String>)> = plan
            .iter()
            .enumerate()
            .filter_map(|(k, p)| verdict(k).map(|(r, e)| (p.index, r, e)))
            .collect();
        // Remove from the back so earlier indices stay valid.
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        let mut ended = Vec::with_capacity(done.len());
        for (index, reason, error) in done {
            let mut s = self.sched.running.remove(index);
            s.table.release(&mut self.sched.alloc);
            ended.push((s, reason, error));
        }
        // Publish before telling the clients, so a client that saw its end sees the freed blocks.
        self.publish();
        for (s, reason, error) in ended {
            s.finish(reason, error);
        }
    }

    fn publish(&self) {
        self.stats
            .running
            .store(self.sched.running.len(), Ordering::Relaxed);
        self.stats
            .kv_blocks_used
            .store(self.sched.blocks_used(), Ordering::Relaxed);
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// `VEIL_FAULT_PANIC_AFTER_STEPS`, read only in builds with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
fn fault_injection_steps() -> Option<u64> {
    let n = std::env::var("VEIL_FAULT_PANIC_AFTER_STEPS").ok()?.parse().ok()?;
    tracing::warn!(
        steps = n,
        "fault injection: the engine thread will panic after {n} steps"
    );
    Some(n)
}
