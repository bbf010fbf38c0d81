//! Continuous batching in the style of vLLM v1: no prefill or decode phases, just a token budget
//! per step spent on running sequences first (one decode token each, or the next prefill chunk),
//! then on admitting waiting ones. When KV blocks run out, the youngest running sequence is
//! preempted: its blocks are freed and it is recomputed from its tokens later.

use std::collections::VecDeque;

use super::sequence::Sequence;
use crate::kv_cache::BlockAllocator;

/// Limits the scheduler works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_batched_tokens: usize,
    pub(crate) max_seqs: usize,
}

/// A planned piece of work: `n` tokens of `running[index]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub(crate) index: usize,
    pub(crate) n: usize,
}

/// Waiting and running sequences plus the KV block pool.
#[derive(Debug)]
pub(crate) struct Scheduler {
    limits: Limits,
    pub(crate) alloc: BlockAllocator,
    pub(crate) waiting: VecDeque<Sequence>,
    /// In admission order: the last one is the youngest.
    pub(crate) running: Vec<Sequence>,
    pub(crate) preemptions: u64,
    /// Sequences queued beyond the limit that were admitted so far.
    pub(crate) admitted_beyond: u64,
}

impl Scheduler {
    pub(crate) fn new(limits: Limits, alloc: BlockAllocator) -> Self {
        Self {
            limits,
            alloc,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            admitted_beyond: 0,
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Frees a sequence's blocks and puts it back at the head of the queue to be recomputed.
    fn preempt(&mut self, mut seq: Sequence) {
        seq.table.release(&mut self.alloc);
        seq.computed = 0;
        self.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Plans one step. Returns the work per running sequence; sequences not listed wait.
    pub(crate) fn schedule(&mut self) -> Vec<Planned> {
        let mut budget = self.limits.max_batched_tokens;
        let mut plan = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let n = self.running[i].pending().min(budget);
            loop {
                let seq = &mut self.running[i];
                let need = seq.computed + n;
                if seq.table.reserve(&mut self.alloc, need).is_ok() {
                    plan.push(Planned { index: i, n });
                    budget -= n;
                    i += 1;
                    break;
                }
                // Out of blocks: the youngest sequence gives its blocks back (possibly this one).
                let Some(victim) = self.running.pop() else { break };
                let was_self = self.running.len() == i;
                self.preempt(victim);
                if was_self {
                    break;
                }
            }
        }
        // Admit waiting sequences (preempted ones first: they are at the front).
        while budget > 0 && self.running.len() < self.limits.max_seqs {
            let Some(seq) = self.waiting.front_mut() else {
                break;
            };
            let n = seq.pending().min(budget);
            if seq.table.reserve(&mut self.alloc, seq.computed + n).is_err() {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.beyond_limit {
                seq.beyond_limit = false;
                self.admitted_beyond += 1;
            }
            self.running.push(seq);
            plan.push(Planned {
                index: self.running.len() - 1,
                n,
            });
            budget -= n;
        }
        plan
    }

    /// Blocks in use.
    pub(crate) fn blocks_used(&self) -> usize {
        self.alloc.num_blocks() - self.alloc.num_free()
    }
}
