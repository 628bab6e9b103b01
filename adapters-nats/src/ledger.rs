//! What the broker holds of each aggregate, as far as this publisher knows: the fence that makes
//! every event stored at most once, in its stream's order, whoever publishes it and however late.
//!
//! Every event is published with `Nats-Expected-Last-Subject-Sequence`: the broker sequence of
//! the last message on the event's own subject (`<prefix>.<type>.<stream id>`) that precedes it,
//! `0` when none does. The broker stores the message only if that is still the subject's last
//! message. An event already stored (by this relay before a crash, by a deposed relay, by a
//! replay) moved its subject past every expectation computed before it, so a second copy is
//! refused, whatever the time since the first: JetStream's duplicate window is no longer what
//! keeps the stream free of duplicates.
//!
//! The ledger remembers, per aggregate, the sequence of the last stored message of each event
//! type, learned from acknowledgements and from look-ups of the subject's last message. It is a
//! cache: a stale or missing entry only costs a refusal and a look-up, never a wrong store,
//! because the broker checks the expectation itself. It is bounded: past
//! [`Ledger::CAPACITY`] aggregates the oldest entries are forgotten.

use edupulse_domain::StreamId;
use std::collections::{HashMap, VecDeque};

/// What is known of one aggregate at the broker.
#[derive(Debug, Default)]
struct Aggregate {
    /// The version after the highest one known stored.
    next_version: u64,
    /// Whether every version below `next_version` was seen stored by this publisher, so that a
    /// type missing from `last_by_type` has no message at all.
    complete: bool,
    /// The last stored message of each event type: its sequence.
    last_by_type: Vec<(Box<str>, u64)>,
}

impl Aggregate {
    fn last_of(&self, event_type: &str) -> Option<u64> {
        self.last_by_type
            .iter()
            .find(|(t, _)| &**t == event_type)
            .map(|(_, seq)| *seq)
    }
}

/// The expectation to publish an event with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expectation {
    /// The broker holds this version already (it holds a later or the same version of the
    /// aggregate, and each aggregate is stored in order): do not send it again. The sequence is
    /// that of the last known message of the event's subject, at or after the event.
    AlreadyStored(u64),
    /// Publish expecting this sequence as the subject's last (`0`: the subject is empty).
    LastSubjectSequence(u64),
    /// Not known: look the subject's last message up first.
    Unknown,
}

/// Per-aggregate knowledge of the broker's contents (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    aggregates: HashMap<StreamId, Aggregate>,
    /// Insertion order, for eviction.
    order: VecDeque<StreamId>,
}

impl Ledger {
    /// Aggregates remembered at most (about 100 bytes each).
    pub(crate) const CAPACITY: usize = 100_000;

    /// The expectation for version `version` of `stream`, of type `event_type`.
    pub(crate) fn expectation(
        &self,
        stream: StreamId,
        event_type: &str,
        version: u64,
    ) -> Expectation {
        match self.aggregates.get(&stream) {
            Some(aggregate) if version < aggregate.next_version => {
                Expectation::AlreadyStored(aggregate.last_of(event_type).unwrap_or_default())
            }
            Some(aggregate) => match aggregate.last_of(event_type) {
                Some(seq) => Expectation::LastSubjectSequence(seq),
                None if aggregate.complete && aggregate.next_version == version => {
                    Expectation::LastSubjectSequence(0)
                }
                None => Expectation::Unknown,
            },
            // The first event of an aggregate has nothing before it on any subject.
            None if version == 1 => Expectation::LastSubjectSequence(0),
            None => Expectation::Unknown,
        }
    }

    /// The broker stored (or already had) version `version` of `stream`, of type `event_type`,
    /// as message `sequence` on its subject; or a look-up found that message the subject's last.
    pub(crate) fn stored(&mut self, stream: StreamId, event_type: &str, version: u64, seq: u64) {
        if !self.aggregates.contains_key(&stream) {
            self.evict_if_full();
            self.order.push_back(stream);
        }
        let aggregate = self.aggregates.entry(stream).or_default();
        if version == 1 && aggregate.next_version <= 1 {
            aggregate.complete = true;
        } else if version != aggregate.next_version {
            // A gap in what this publisher saw: other types may have messages it never learnt.
            aggregate.complete = aggregate.complete && version < aggregate.next_version;
        }
        aggregate.next_version = aggregate.next_version.max(version + 1);
        match aggregate
            .last_by_type
            .iter_mut()
            .find(|(t, _)| &**t == event_type)
        {
            Some((_, last)) => *last = (*last).max(seq),
            None => aggregate.last_by_type.push((event_type.into(), seq)),
        }
    }

    /// A look-up found the subject of `event_type` in `stream` empty.
    pub(crate) fn subject_empty(&mut self, stream: StreamId, event_type: &str) {
        if let Some(aggregate) = self.aggregates.get_mut(&stream) {
            aggregate.last_by_type.retain(|(t, _)| &**t != event_type);
        }
    }

    fn evict_if_full(&mut self) {
        while self.aggregates.len() >= Self::CAPACITY {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.aggregates.remove(&oldest);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.aggregates.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_events_need_no_look_up() {
        let mut ledger = Ledger::default();
        let s = StreamId::new();
        assert_eq!(
            ledger.expectation(s, "A", 1),
            Expectation::LastSubjectSequence(0)
        );
        assert_eq!(ledger.expectation(s, "A", 2), Expectation::Unknown);
        ledger.stored(s, "A", 1, 10);
        assert_eq!(
            ledger.expectation(s, "A", 2),
            Expectation::LastSubjectSequence(10)
        );
        // Seen from version 1 on: a type never stored has an empty subject.
        assert_eq!(
            ledger.expectation(s, "B", 2),
            Expectation::LastSubjectSequence(0)
        );
        ledger.stored(s, "B", 2, 11);
        assert_eq!(
            ledger.expectation(s, "A", 3),
            Expectation::LastSubjectSequence(10)
        );
        assert_eq!(ledger.expectation(s, "C", 4), Expectation::Unknown);
    }

    #[test]
    fn joining_an_aggregate_midway_looks_up_every_type() {
        let mut ledger = Ledger::default();
        let s = StreamId::new();
        ledger.stored(s, "A", 7, 70);
        assert_eq!(
            ledger.expectation(s, "A", 8),
            Expectation::LastSubjectSequence(70)
        );
        assert_eq!(ledger.expectation(s, "B", 8), Expectation::Unknown);
        ledger.subject_empty(s, "A");
        assert_eq!(ledger.expectation(s, "A", 8), Expectation::Unknown);
    }

    #[test]
    fn a_version_known_stored_is_never_sent_again() {
        let mut ledger = Ledger::default();
        let s = StreamId::new();
        ledger.stored(s, "A", 1, 10);
        ledger.stored(s, "B", 2, 11);
        // A retry of version 1 after version 2 was acknowledged: the subject of A still ends
        // with version 1, so the broker's check alone would let a second copy in.
        assert_eq!(
            ledger.expectation(s, "A", 1),
            Expectation::AlreadyStored(10)
        );
        assert_eq!(
            ledger.expectation(s, "B", 2),
            Expectation::AlreadyStored(11)
        );
        // Learnt from a look-up: version 7 is the subject's last, so 1..=7 are all there.
        let t = StreamId::new();
        ledger.stored(t, "A", 7, 70);
        assert_eq!(ledger.expectation(t, "B", 5), Expectation::AlreadyStored(0));
    }

    #[test]
    fn sequences_only_move_forward() {
        let mut ledger = Ledger::default();
        let s = StreamId::new();
        ledger.stored(s, "A", 1, 50);
        ledger.stored(s, "A", 1, 20);
        assert_eq!(
            ledger.expectation(s, "A", 2),
            Expectation::LastSubjectSequence(50)
        );
    }

    #[test]
    fn bounded() {
        let mut ledger = Ledger::default();
        for i in 0..Ledger::CAPACITY + 10 {
            ledger.stored(StreamId::new(), "A", 1, i as u64);
        }
        assert_eq!(ledger.len(), Ledger::CAPACITY);
    }
}
