//! Consuming published events downstream (projections: search indexing, achievements, e-mails).
//!
//! An adapter implements [`EventConsumer`] over a durable subscription; a projection implements
//! [`EventHandler`]; [`run_handler`] drives one with the other under a [`RetryPolicy`]. Delivery
//! is at least once: a handler must be idempotent (the event id is the natural key).

use crate::{BoxError, StoreError};
use async_trait::async_trait;
use edupulse_domain::EventEnvelope;
use std::future::Future;
use std::time::Duration;
use thiserror::Error;

/// An opaque handle on one delivery, used to settle it. Adapter-defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryToken(u64);

impl DeliveryToken {
    /// Wraps an adapter's handle.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The adapter's handle.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// One event delivered to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event. An event type the consumer does not know arrives as
    /// [`edupulse_domain::DomainEvent::Unknown`], not as an error.
    pub envelope: EventEnvelope,
    /// The event's version in its stream, when the publisher sent it.
    pub stream_version: Option<u64>,
    /// The event's global position in the store, when the publisher sent it.
    pub position: Option<u64>,
    /// 1 for the first delivery, then 2, 3…
    pub attempt: u64,
    /// Settle with this.
    pub token: DeliveryToken,
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Done; never deliver again.
    Ack,
    /// Deliver again after `delay`.
    Retry {
        /// How long to wait before the next delivery.
        delay: Duration,
    },
    /// Give up: move the event to the dead-letter destination with `reason`, then ack it.
    DeadLetter {
        /// Why (kept with the dead letter).
        reason: String,
    },
}

/// Why consuming failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The broker cannot be reached.
    ///
    /// # Handling
    /// Retryable with backoff; unsettled deliveries will be redelivered.
    #[error("broker unavailable")]
    Unavailable(#[source] BoxError),
    /// The subscription does not exist or cannot be created (missing stream, permissions).
    ///
    /// # Handling
    /// Not retryable without an operator.
    #[error("consumer misconfigured: {reason}")]
    Misconfigured {
        /// What is wrong.
        reason: String,
    },
    /// The token does not belong to an unsettled delivery of this consumer.
    ///
    /// # Handling
    /// A bug of the caller; nothing to retry.
    #[error("unknown delivery token")]
    UnknownDelivery,
}

/// A durable subscription to published events.
#[async_trait]
pub trait EventConsumer: Send {
    /// Waits up to `wait` for at most `max` deliveries. Messages that cannot be decoded are
    /// dead-lettered by the adapter itself and never returned.
    ///
    /// # Errors
    /// [`ConsumeError::Unavailable`], [`ConsumeError::Misconfigured`].
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ConsumeError>;

    /// Settles one delivery.
    ///
    /// # Errors
    /// [`ConsumeError::Unavailable`] (the delivery will be redelivered),
    /// [`ConsumeError::UnknownDelivery`].
    async fn settle(
        &mut self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), ConsumeError>;
}

/// Why a handler could not process an event.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Might work later (a dependency is down): retried with backoff, dead-lettered after the
    /// policy's last attempt.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never work (the event breaks an assumption of the projection): dead-lettered now.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The store the handler writes through failed under it (a lost connection, a deadlock, a
    /// timeout, a missing privilege): nothing is wrong with the event.
    ///
    /// # Handling
    /// A projection's unit is rolled back and run again from the committed position, with
    /// backoff, for as long as it takes; the event is never parked for it. A consumer treats
    /// it as [`HandlerError::Transient`]. `?` on a [`StoreError`] gives this variant for
    /// failures of the store, and [`HandlerError::Permanent`] for refusals of the event
    /// (conflict, duplicate id, invalid input).
    #[error("store: {0}")]
    Store(#[source] StoreError),
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { .. }
            | StoreError::DuplicateEventId { .. }
            | StoreError::EventTooLarge { .. }
            | StoreError::InvalidInput { .. } => HandlerError::Permanent(error.to_string()),
            other => HandlerError::Store(other),
        }
    }
}

/// Processes delivered events.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles one event. Must be idempotent: an event can be delivered more than once.
    ///
    /// # Errors
    /// [`HandlerError`] decides between retry and dead letter.
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;
}

/// When to retry and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries after which a transient failure is dead-lettered.
    pub max_deliveries: u64,
    /// Delay before the second delivery; doubled each time.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The settlement for a handler outcome on delivery number `attempt`.
    pub fn settle(&self, attempt: u64, outcome: Result<(), HandlerError>) -> Settlement {
        match outcome {
            Ok(()) => Settlement::Ack,
            Err(HandlerError::Permanent(reason)) => Settlement::DeadLetter { reason },
            Err(error @ (HandlerError::Transient(_) | HandlerError::Store(_)))
                if attempt >= self.max_deliveries =>
            {
                let reason = match error {
                    HandlerError::Transient(reason) => reason,
                    other => other.to_string(),
                };
                Settlement::DeadLetter {
                    reason: format!("gave up after {attempt} deliveries: {reason}"),
                }
            }
            Err(HandlerError::Transient(_) | HandlerError::Store(_)) => {
                let shift = u32::try_from(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX)
                    .min(20);
                let delay = self.base_delay.saturating_mul(1u32 << shift);
                Settlement::Retry {
                    delay: delay.min(self.max_delay),
                }
            }
        }
    }
}

/// Feeds `consumer`'s deliveries to `handler` until `stop` resolves or the consumer fails.
///
/// Each delivery is settled according to `policy`. A handler error never loses an event: it is
/// retried or dead-lettered. Returns the number of deliveries settled.
///
/// # Errors
/// The consumer's [`ConsumeError`]; unsettled deliveries are then redelivered later.
pub async fn run_handler<C, H>(
    consumer: &mut C,
    handler: &H,
    policy: RetryPolicy,
    stop: impl Future<Output = ()>,
) -> Result<u64, ConsumeError>
where
    C: EventConsumer + ?Sized,
    H: EventHandler + ?Sized,
{
    use futures::FutureExt;
    let mut stop = std::pin::pin!(stop.fuse());
    let mut settled = 0;
    loop {
        let batch = futures::select_biased! {
            () = stop.as_mut() => return Ok(settled),
            batch = consumer.next_batch(64, Duration::from_millis(500)).fuse() => batch?,
        };
        for delivery in batch {
            let outcome = handler.handle(&delivery).await;
            consumer
                .settle(delivery.token, policy.settle(delivery.attempt, outcome))
                .await?;
            settled += 1;
        }
    }
}

/// Where a delivery stands in its stream, for a projection that applies events in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPosition {
    /// The next version of its stream: apply it.
    Next,
    /// Already applied (a redelivery): ack it without applying.
    AlreadyApplied,
    /// An earlier version of its stream has not arrived yet (redeliveries after an outage can
    /// overtake): retry it shortly, do not apply it yet.
    Early {
        /// The version the stream is waiting for.
        waiting_for: u64,
    },
}

/// Per-stream order at the consumer.
///
/// The broker stores each stream in order, and a consumer normally receives it in order; but a
/// message redelivered after an outage (an abandoned pull, a lost ack) arrives after later ones.
/// A projection that must apply a stream strictly in order keeps the last version it applied per
/// stream and asks this guard what to do with each delivery. Unbounded memory: one entry per
/// stream seen; a real projection keeps this state in its own store, next to what it projects.
#[derive(Debug, Default, Clone)]
pub struct StreamOrderGuard {
    applied: std::collections::HashMap<edupulse_domain::StreamId, u64>,
}

impl StreamOrderGuard {
    /// Classifies `version` of `stream`. For [`StreamPosition::Next`], call
    /// [`StreamOrderGuard::applied`] once the event is applied.
    ///
    /// A stream this guard has not seen is expected to start at version 1: start a projection
    /// from the beginning of the broker's stream, or seed the guard with what was applied before.
    pub fn classify(&self, stream: edupulse_domain::StreamId, version: u64) -> StreamPosition {
        let last = self.applied.get(&stream).copied().unwrap_or(0);
        if version <= last {
            StreamPosition::AlreadyApplied
        } else if version == last + 1 {
            StreamPosition::Next
        } else {
            StreamPosition::Early {
                waiting_for: last + 1,
            }
        }
    }

    /// Records that `version` of `stream` was applied.
    pub fn applied(&mut self, stream: edupulse_domain::StreamId, version: u64) {
        let last = self.applied.entry(stream).or_insert(0);
        *last = (*last).max(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_guard_applies_in_order_skips_duplicates_and_holds_early_ones() {
        let s = edupulse_domain::StreamId::new();
        let mut guard = StreamOrderGuard::default();
        assert_eq!(guard.classify(s, 1), StreamPosition::Next);
        guard.applied(s, 1);
        assert_eq!(
            guard.classify(s, 3),
            StreamPosition::Early { waiting_for: 2 }
        );
        assert_eq!(guard.classify(s, 1), StreamPosition::AlreadyApplied);
        assert_eq!(guard.classify(s, 2), StreamPosition::Next);
        guard.applied(s, 2);
        assert_eq!(guard.classify(s, 3), StreamPosition::Next);
    }

    #[test]
    fn policy_backs_off_then_dead_letters() {
        let p = RetryPolicy::default();
        let t = || Err(HandlerError::Transient("down".into()));
        assert_eq!(
            p.settle(1, t()),
            Settlement::Retry {
                delay: Duration::from_millis(200)
            }
        );
        assert_eq!(
            p.settle(3, t()),
            Settlement::Retry {
                delay: Duration::from_millis(800)
            }
        );
        assert!(matches!(p.settle(5, t()), Settlement::DeadLetter { .. }));
        assert!(matches!(
            p.settle(1, Err(HandlerError::Permanent("bad".into()))),
            Settlement::DeadLetter { .. }
        ));
        assert_eq!(p.settle(u64::MAX - 1, Ok(())), Settlement::Ack);
        let long = RetryPolicy {
            max_deliveries: u64::MAX,
            ..p
        };
        assert_eq!(
            long.settle(1000, t()),
            Settlement::Retry {
                delay: Duration::from_secs(30)
            }
        );
    }
}
