//! The publishing window: which events are out, and how far the checkpoint may go.
//!
//! Events are handed to the streaming publisher in the store's order and come back acknowledged
//! in any order. The checkpoint moves through the contiguous settled prefix, across page
//! boundaries: to an event below the store's horizon once it and everything handed out before it
//! is settled (acknowledged, parked or held), or to a page's mark (every row read up to there was
//! handed out or left out on purpose). Never to an event above the horizon.

use edupulse_ports::Cursor;
use std::collections::{HashSet, VecDeque};

/// One entry of the window, in the order events were handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// An event below the horizon handed to the publisher: once it and everything before it is
    /// settled, the checkpoint may move to it.
    Settled(Cursor),
    /// An event above the horizon handed to the publisher: the checkpoint waits for it, but may
    /// not move to it.
    Ahead(Cursor),
    /// Every row up to this cursor was read and handed out (or left out on purpose): once the
    /// entries before it are settled, the checkpoint may move here.
    Through(Cursor),
}

/// The events handed out and not yet passed by the checkpoint.
#[derive(Debug, Default)]
pub(super) struct Window {
    entries: VecDeque<Entry>,
    /// Events settled while an earlier one is still out.
    settled: HashSet<Cursor>,
    /// Events handed out and not settled.
    outstanding: usize,
}

impl Window {
    /// `cursor`'s event, below the horizon, was handed to the publisher.
    pub(super) fn sent(&mut self, cursor: Cursor) {
        self.entries.push_back(Entry::Settled(cursor));
        self.outstanding += 1;
    }

    /// `cursor`'s event, above the horizon, was handed to the publisher.
    pub(super) fn sent_ahead(&mut self, cursor: Cursor) {
        self.entries.push_back(Entry::Ahead(cursor));
        self.outstanding += 1;
    }

    /// Every row up to `cursor` has been handed out.
    pub(super) fn through(&mut self, cursor: Cursor) {
        self.entries.push_back(Entry::Through(cursor));
    }

    /// `cursor`'s event is settled (acknowledged, parked, or held behind a parked one).
    pub(super) fn settled(&mut self, cursor: Cursor) {
        self.settled.insert(cursor);
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// An event will not settle in this session (its publish failed, or was never
    /// attempted): the checkpoint stays before it, and it no longer counts as outstanding.
    pub(super) fn abandoned(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// Events handed out and not settled.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Moves past the settled prefix; returns the furthest mark passed, if any: the new
    /// checkpoint.
    pub(super) fn advance(&mut self) -> Option<Cursor> {
        let mut checkpoint = None;
        while let Some(entry) = self.entries.front() {
            match *entry {
                Entry::Settled(cursor) | Entry::Through(cursor)
                    if matches!(entry, Entry::Through(_)) || self.settled.remove(&cursor) =>
                {
                    checkpoint = Some(cursor);
                }
                Entry::Ahead(cursor) if self.settled.remove(&cursor) => {}
                _ => break,
            }
            self.entries.pop_front();
        }
        checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(position: u64) -> Cursor {
        Cursor {
            commit: position,
            position,
        }
    }

    #[test]
    fn the_checkpoint_waits_for_the_oldest_event_out() {
        let mut w = Window::default();
        for p in 1..=3 {
            w.sent(c(p));
        }
        w.through(c(3));
        w.sent(c(5));
        w.through(c(6));
        // Acknowledged out of order: nothing moves while 1 is out.
        w.settled(c(2));
        w.settled(c(3));
        w.settled(c(5));
        assert_eq!(w.advance(), None);
        assert_eq!(w.outstanding(), 1);
        w.settled(c(1));
        // Both marks passed: the furthest one.
        assert_eq!(w.advance(), Some(c(6)));
        assert_eq!(w.outstanding(), 0);
        assert_eq!(w.advance(), None);
    }

    #[test]
    fn the_checkpoint_follows_settled_events_within_a_page() {
        let mut w = Window::default();
        for p in 1..=3 {
            w.sent(c(p));
        }
        w.through(c(3));
        w.settled(c(1));
        assert_eq!(w.advance(), Some(c(1)));
        w.abandoned();
        w.settled(c(3));
        assert_eq!(w.advance(), None);
    }

    #[test]
    fn an_abandoned_event_holds_the_checkpoint_for_good() {
        let mut w = Window::default();
        w.sent(c(1));
        w.through(c(1));
        w.sent(c(2));
        w.through(c(2));
        w.abandoned();
        w.settled(c(2));
        assert_eq!(w.outstanding(), 0);
        assert_eq!(w.advance(), None);
    }

    #[test]
    fn events_above_the_horizon_are_waited_for_but_never_a_checkpoint() {
        // A page whose settled part ends at 2 and whose rows 4 and 5 are above the horizon, with
        // the mark for 2 after them: it waits for them too (conservative, never early), and
        // neither is ever the checkpoint.
        let mut w = Window::default();
        w.sent(c(1));
        w.sent_ahead(c(4));
        w.sent_ahead(c(5));
        w.through(c(2));
        w.settled(c(1));
        w.settled(c(5));
        assert_eq!(w.advance(), Some(c(1)));
        w.settled(c(4));
        assert_eq!(w.advance(), Some(c(2)));
    }

    #[test]
    fn a_page_with_nothing_to_send_moves_the_checkpoint_at_once() {
        let mut w = Window::default();
        w.through(c(9));
        assert_eq!(w.advance(), Some(c(9)));
    }
}
