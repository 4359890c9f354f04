//! The local map scheduler: adaptive batches over a function's pool, results
//! reordered into input order inside a bounded window, per-input retries, and
//! isolation of the input that took a container down.
//!
//! Who is charged an attempt: an input alone in a batch whose container died
//! while running it. A batch of several whose container died is split in
//! halves and run again, so the culprit ends up alone in log2(n) rounds and
//! the other inputs are charged nothing. A batch whose container was lost
//! before it ran (killed while starting, idle, or as the batch was sent) runs
//! again as it was, charging no one (up to [`MAX_LOST`] times per input).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, FuturesUnordered};
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pool::{AttemptError, Pool, MAX_LOST};
use super::protocol::{decode_map_reply, map_request};
use super::write_output;
use crate::compute::{CallContext, MapItem};
use crate::task::TaskError;

/// Batching knobs of the local map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Largest batch sent to one container.
    pub(crate) max_batch: usize,
    /// How long a batch should take; sizes adapt towards it.
    pub(crate) target_batch: Duration,
}

struct InputSlot {
    index: u64,
    input: Value,
    attempts: u32,
    /// Containers lost before this input ran in them.
    lost: u32,
}

enum Outcome {
    Results(Vec<Result<Value, TaskError>>),
    /// The container was lost before the batch ran.
    Lost(TaskError),
    /// The container failed while running the batch (crash, timeout): not
    /// attributable to one input unless the batch held just one.
    Failed(TaskError),
    /// No container may be started for it now (its pool's starts keep
    /// failing): no input ran, each is charged the error (its retries
    /// apply).
    Unstarted(TaskError),
}

struct BatchDone {
    slots: Vec<InputSlot>,
    outcome: Outcome,
    elapsed: Duration,
    /// Bytes of the container's reply (0 when there was none).
    reply_bytes: usize,
}

/// Most bytes of finished results held waiting for an earlier input to
/// finish (results leave in input order): past it no new batch starts until
/// the earliest input is done, so one slow input holds up memory by bytes,
/// not by the count of inputs after it (65,536 results of 32 KB had been
/// 2 GB).
const MAX_HELD_BYTES: usize = 64 << 20;

/// Largest reply a batch is sized for: batches shrink for large results.
const MAX_BATCH_REPLY_BYTES: f64 = (8 << 20) as f64;

/// What an error result is taken to weigh while it is held.
const ERROR_WEIGHT: usize = 1024;

/// Batch size that adapts so each batch takes about `target`.
struct Adaptive {
    size: f64,
    max: f64,
    target: f64,
}

impl Adaptive {
    fn size(&self) -> usize {
        self.size.clamp(1.0, self.max) as usize
    }

    /// Learns from a batch of `n` inputs that took `elapsed` and answered
    /// `bytes`: the next size aims at the target time, and at a reply of at
    /// most [`MAX_BATCH_REPLY_BYTES`].
    fn observe(&mut self, n: usize, elapsed: Duration, bytes: usize) {
        let n = n.max(1) as f64;
        let per_item = elapsed.as_secs_f64() / n;
        let ideal = if per_item > 0.0 {
            self.target / per_item
        } else {
            self.max
        };
        let by_bytes = MAX_BATCH_REPLY_BYTES / (bytes as f64 / n).max(1.0);
        self.size = ideal
            .min(by_bytes)
            .min(self.size * 4.0)
            .clamp(1.0, self.max);
    }
}

/// Batches in flight per container of the pool: one running, one waiting.
const BATCHES_PER_CONTAINER: usize = 2;

/// Starts the map; its outcomes arrive on the returned stream in input order.
pub(crate) fn start(
    pool: Arc<Pool>,
    inputs: BoxStream<'static, Value>,
    ctx: CallContext,
    tuning: Tuning,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> BoxStream<'static, Vec<MapItem>> {
    let (tx, mut rx) = mpsc::channel::<Vec<MapItem>>(16);
    let window = (pool.size * tuning.max_batch * 2).max(1024) as u64;
    let scheduler = Scheduler {
        timeout: pool.timeout(),
        pool,
        shutdown,
        ctx,
        batch: Adaptive {
            size: 1.0,
            max: tuning.max_batch as f64,
            target: tuning.target_batch.as_secs_f64(),
        },
        window,
        fresh: VecDeque::new(),
        again: VecDeque::new(),
        delayed: BTreeMap::new(),
        done: VecDeque::new(),
        head: 0,
        next_index: 0,
        input_ended: false,
        running_inputs: 0,
        held_bytes: 0,
        tasks: tasks.clone(),
    };
    tasks.spawn(scheduler.run(inputs, tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

struct Scheduler {
    pool: Arc<Pool>,
    shutdown: CancellationToken,
    ctx: CallContext,
    timeout: Duration,
    batch: Adaptive,
    window: u64,
    /// Inputs taken from the stream, not yet sent.
    fresh: VecDeque<InputSlot>,
    /// Batches to run before fresh inputs: halves of a batch whose container
    /// died, batches whose container was lost, inputs due for a retry.
    again: VecDeque<Vec<InputSlot>>,
    /// Inputs waiting out a retry backoff, by due time.
    delayed: BTreeMap<(Instant, u64), InputSlot>,
    /// Outcomes from `head` on; `None` where the input is not done yet.
    /// Each with the bytes it is taken to hold.
    done: VecDeque<Option<(MapItem, usize)>>,
    /// Bytes of the finished results in `done`.
    held_bytes: usize,
    head: u64,
    next_index: u64,
    input_ended: bool,
    running_inputs: u64,
    /// Where batches run: the runtime's tracked tasks.
    tasks: tokio_util::task::TaskTracker,
}

impl Scheduler {
    async fn run(mut self, mut inputs: BoxStream<'static, Value>, tx: mpsc::Sender<Vec<MapItem>>) {
        let mut running = FuturesUnordered::new();
        loop {
            // Finished results leave in input order, in messages of about
            // a batch's reply at most: the channel's 16 places then hold
            // 128 MiB at most, not 16 times the held bytes.
            while matches!(self.done.front(), Some(Some(_))) {
                let (mut ready, mut bytes) = (Vec::new(), 0);
                while bytes < MAX_BATCH_REPLY_BYTES as usize
                    && matches!(self.done.front(), Some(Some(_)))
                {
                    let (item, weight) = self.done.pop_front().flatten().expect("checked above");
                    self.held_bytes -= weight;
                    bytes += weight;
                    ready.push(item);
                    self.head += 1;
                }
                if tx.send(ready).await.is_err() {
                    return;
                }
            }
            if self.input_ended && self.head == self.next_index {
                return;
            }
            // Two batches per container: the second is encoded and waiting
            // for the container when the first's reply comes back, so the
            // container does not idle through the runtime's turnaround.
            let in_flight = self.pool.size * BATCHES_PER_CONTAINER;
            while running.len() < in_flight {
                let free = in_flight - running.len();
                let slots = if let Some(batch) = self.again.pop_front() {
                    batch
                } else if self.held_bytes >= MAX_HELD_BYTES {
                    // Held up by an earlier input: only batches to run
                    // again (which hold it) go until it is done.
                    break;
                } else {
                    self.pull_ready(&mut inputs, self.batch.size() * free);
                    if self.fresh.is_empty() {
                        break;
                    }
                    let n = self.batch.size().min(self.fresh.len().div_ceil(free));
                    self.fresh.drain(..n).collect()
                };
                self.running_inputs += slots.len() as u64;
                running.push(run_batch(
                    self.pool.clone(),
                    slots,
                    self.ctx.clone(),
                    self.timeout,
                    self.tasks.clone(),
                ));
            }
            self.publish_meter();
            if self.input_ended && self.head == self.next_index {
                return;
            }
            let want_input = !self.input_ended
                && self.fresh.len() < self.batch.size() * in_flight
                && self.window_open();
            let next_retry = self.delayed.keys().next().map(|(due, _)| *due);
            tokio::select! {
                biased;
                () = self.ctx.cancel.cancelled() => return,
                () = self.shutdown.cancelled() => return,
                () = tx.closed() => return,
                Some(done) = running.next(), if !running.is_empty() => self.finish(done),
                () = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                    self.release_due_retries();
                }
                next = inputs.next(), if want_input => {
                    self.accept(next);
                    let want = self.batch.size() * self.pool.size * BATCHES_PER_CONTAINER;
                    self.pull_ready(&mut inputs, want);
                }
            }
        }
    }

    fn window_open(&self) -> bool {
        self.next_index - self.head < self.window
    }

    fn accept(&mut self, next: Option<Value>) {
        match next {
            Some(input) => {
                self.fresh.push_back(InputSlot {
                    index: self.next_index,
                    input,
                    attempts: 0,
                    lost: 0,
                });
                self.done.push_back(None);
                self.next_index += 1;
            }
            None => self.input_ended = true,
        }
    }

    /// Takes inputs the stream has ready now, up to `want` buffered.
    fn pull_ready(&mut self, inputs: &mut BoxStream<'static, Value>, want: usize) {
        while !self.input_ended && self.fresh.len() < want && self.window_open() {
            match inputs.next().now_or_never() {
                Some(next) => self.accept(next),
                None => break,
            }
        }
    }

    fn publish_meter(&self) {
        let meter = &self.ctx.meter;
        meter.submitted.store(self.next_index, Ordering::Relaxed);
        meter.running.store(self.running_inputs, Ordering::Relaxed);
    }

    fn release_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.again.push_back(vec![entry.remove()]);
        }
    }

    fn finish(&mut self, done: BatchDone) {
        self.running_inputs -= done.slots.len() as u64;
        match done.outcome {
            Outcome::Results(results) => {
                self.batch
                    .observe(done.slots.len(), done.elapsed, done.reply_bytes);
                let weight = done.reply_bytes / done.slots.len().max(1);
                for (slot, result) in done.slots.into_iter().zip(results) {
                    let weight = if result.is_ok() {
                        weight
                    } else {
                        weight.max(ERROR_WEIGHT)
                    };
                    self.settle(slot, result, weight);
                }
            }
            Outcome::Lost(error) => {
                let mut slots = done.slots;
                for slot in &mut slots {
                    slot.lost += 1;
                }
                if slots.iter().any(|s| s.lost > MAX_LOST) {
                    self.failed(slots, error);
                } else {
                    tracing::debug!(
                        function = %self.pool.spec.name,
                        inputs = slots.len(),
                        error = %error,
                        "container lost before the batch ran; running it again"
                    );
                    self.again.push_back(slots);
                }
            }
            Outcome::Failed(error) => self.failed(done.slots, error),
            Outcome::Unstarted(error) => {
                for slot in done.slots {
                    self.settle(slot, Err(error.clone()), ERROR_WEIGHT);
                }
            }
        }
    }

    /// A batch whose container failed while running it: one input is
    /// charged; more are split in halves to find the one at fault.
    fn failed(&mut self, mut slots: Vec<InputSlot>, error: TaskError) {
        if slots.len() == 1 {
            let slot = slots.pop().expect("one slot");
            self.settle(slot, Err(error), ERROR_WEIGHT);
            return;
        }
        tracing::info!(
            function = %self.pool.spec.name,
            inputs = slots.len(),
            error = %error,
            "batch failed; running its halves again"
        );
        let second = slots.split_off(slots.len() / 2);
        self.again.push_back(slots);
        self.again.push_back(second);
    }

    /// Records an attempt's outcome: done, or scheduled for a retry.
    fn settle(&mut self, mut slot: InputSlot, result: Result<Value, TaskError>, weight: usize) {
        slot.attempts += 1;
        let policy = &self.pool.spec.retries;
        if result.is_err() && slot.attempts <= policy.max_retries {
            let due = Instant::now() + policy.delay(slot.attempts);
            self.delayed.insert((due, slot.index), slot);
            return;
        }
        let pos = (slot.index - self.head) as usize;
        self.held_bytes += weight;
        self.done[pos] = Some((
            MapItem {
                index: slot.index,
                result,
                attempts: slot.attempts,
            },
            weight,
        ));
    }
}

async fn run_batch(
    pool: Arc<Pool>,
    slots: Vec<InputSlot>,
    ctx: CallContext,
    timeout: Duration,
    tasks: tokio_util::task::TaskTracker,
) -> BatchDone {
    // Each input has the function's timeout, enforced in the container (an
    // input past it fails alone, the batch goes on); this bound on the whole
    // batch is only the backstop for a container that stops answering.
    let timeout = timeout
        .saturating_mul(u32::try_from(slots.len()).unwrap_or(u32::MAX))
        .saturating_add(timeout)
        .saturating_add(Duration::from_secs(10));
    let attempt = |e| match e {
        AttemptError::Lost(e) => Outcome::Lost(e),
        AttemptError::Failed(e) => Outcome::Failed(e),
        AttemptError::Refused(e) => Outcome::Unstarted(e),
    };
    // Containers are taken here, in the order the scheduler made the
    // batches (the earliest inputs first).
    let mut lease = match pool.acquire(&ctx.cancel).await {
        Ok(lease) => lease,
        Err(e) => {
            return BatchDone {
                slots,
                outcome: attempt(e),
                elapsed: Duration::ZERO,
                reply_bytes: 0,
            }
        }
    };
    // The batch's encoding, exchange and decoding run as a task of their
    // own, on whichever worker thread is free, while the scheduler's settles
    // results and hands out the other batches (run on its task, the
    // containers sat idle a third of the time). Dropped with its map, the
    // batch is aborted and its lease with it.
    let exchange = tasks.spawn(async move {
        // Timed from when a container has it: the wait for one is not the
        // batch's cost (batch sizes adapt to this).
        let started = Instant::now();
        let request = map_request(slots.iter().map(|s| &s.input), ctx.inputs_as);
        let mut reply_bytes = 0;
        let outcome = match lease
            .request(&request, slots.len(), timeout, &ctx.logs)
            .await
        {
            Err(e) => attempt(e),
            Ok(reply) => {
                reply_bytes = reply.len();
                match decode_map_reply(&reply, slots.len()) {
                    Ok((results, output)) => {
                        write_output(&ctx.logs, output);
                        Outcome::Results(results)
                    }
                    Err(e) => {
                        lease.discard();
                        Outcome::Failed(e)
                    }
                }
            }
        };
        BatchDone {
            slots,
            outcome,
            elapsed: started.elapsed(),
            reply_bytes,
        }
    });
    match tokio_util::task::AbortOnDropHandle::new(exchange).await {
        Ok(done) => done,
        // A batch that panicked takes its map down, as it did on the
        // scheduler's task (the job reports it).
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Aborted only when the runtime itself goes: so does the map.
        Err(e) => panic!("a map batch was stopped under its map: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Adaptive {
        Adaptive {
            size: 1.0,
            max: 1024.0,
            target: 0.010,
        }
    }

    #[test]
    fn batches_grow_at_most_fourfold_towards_the_target() {
        let mut a = adaptive();
        // 10 µs per input: the ideal is 1,000 (999 after the float's
        // rounding down), reached in steps of at most 4x.
        let mut sizes = Vec::new();
        for _ in 0..7 {
            let n = a.size();
            sizes.push(n);
            a.observe(n, Duration::from_micros(10 * n as u64), 8 * n);
        }
        assert_eq!(sizes, [1, 4, 16, 64, 256, 999, 999]);
    }

    #[test]
    fn slow_inputs_shrink_batches_to_one_and_the_cap_holds() {
        let mut a = adaptive();
        a.size = 512.0;
        // 50 ms per input, five times the target: one at a time.
        a.observe(512, Duration::from_millis(50 * 512), 8 * 512);
        assert_eq!(a.size(), 1);
        // Instant inputs: never past the cap.
        for _ in 0..10 {
            let n = a.size();
            a.observe(n, Duration::ZERO, 8 * n);
        }
        assert_eq!(a.size(), 1024);
    }

    /// Large results make small batches: a batch's reply aims at 8 MiB.
    #[test]
    fn large_results_shrink_batches_to_a_reply_of_8_mib() {
        let mut a = adaptive();
        a.size = 1024.0;
        // 1 MiB each, instantly: 8 per batch.
        a.observe(1024, Duration::ZERO, 1024 << 20);
        assert_eq!(a.size(), 8);
        // 100 MiB each: one at a time.
        a.observe(8, Duration::ZERO, 800 << 20);
        assert_eq!(a.size(), 1);
    }
}
