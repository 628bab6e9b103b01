//! Following the store ahead of its commit-safe horizon, without skipping or repeating.
//!
//! A commit-safe read ([`EventReader::follow`]) stops at the horizon: below it every transaction
//! has ended, so nothing can ever appear behind a cursor once read. Above it, rows already
//! committed are visible, but an older transaction still open may yet commit rows ordered
//! before them. Waiting for the horizon is correct but makes every event wait for the slowest
//! transaction anywhere in the database (a service's long transaction, a group commit waiting
//! for its WAL flush).
//!
//! [`EventReader::follow_visible`] returns both parts: the settled prefix, and the committed rows
//! above the horizon. [`ReadAhead`] is the follower's side of it:
//!
//! - rows above the horizon are handed out once, as soon as they are visible, and remembered;
//! - the follower's checkpoint only ever moves through the settled part, so a row that commits
//!   late, ordered before rows already handed out, is still read (the next read starts from the
//!   checkpoint, before it);
//! - a remembered row read again is not handed out again, and is forgotten once the checkpoint
//!   passes it;
//! - at most `limit` rows are remembered, so memory is bounded however long an old transaction
//!   stays open; beyond it the follower waits for the horizon, as a commit-safe follower does.
//!
//! Per-stream order holds: an event is appended only after its stream's previous version is
//! committed (or in the same transaction), so whenever an event is visible, its predecessor is
//! visible too, ordered before it in the same read or already behind the checkpoint. Rows are
//! handed out in read order, and a row left for later (the limit) leaves every row after it for
//! later too.
//!
//! After a restart the memory is gone, so rows handed out above the horizon are handed out once
//! more: a publisher must deduplicate them (the relay's publisher does, by event id and a
//! per-subject fence).

#[cfg(doc)]
use crate::EventReader;
use crate::{Cursor, FollowedRow};

/// A page of [`EventReader::follow_visible`]: committed rows after a cursor, in commit-safe
/// order, the settled ones first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FollowedPage {
    /// The rows, in commit-safe order (ascending [`Cursor`]).
    pub rows: Vec<FollowedRow>,
    /// How many of `rows`, from the first, are settled: below the horizon, where no row can
    /// ever appear between them. The others are committed, but a transaction still open may
    /// yet commit rows ordered before them.
    pub settled: usize,
}

impl FollowedPage {
    /// A page whose rows are all settled (a commit-safe read).
    pub fn settled(rows: Vec<FollowedRow>) -> Self {
        Self {
            settled: rows.len(),
            rows,
        }
    }

    /// The cursor of the last settled row: where a follower's checkpoint may go once every
    /// settled row is handled.
    pub fn settled_to(&self) -> Option<Cursor> {
        self.rows[..self.settled.min(self.rows.len())]
            .last()
            .map(FollowedRow::cursor)
    }
}

/// The rows of one page a follower is to handle now ([`ReadAhead::plan`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Planned {
    /// The rows to handle, in commit-safe order: settled rows not handled yet, then rows above
    /// the horizon not handed out before (up to the limit).
    pub rows: Vec<FollowedRow>,
    /// Where the follower's checkpoint goes once every row of `rows` at or before it is
    /// handled (`None`: it stays).
    pub settled_to: Option<Cursor>,
}

impl Planned {
    /// Whether `cursor` (of one of [`Planned::rows`]) is above the horizon: once handled, it
    /// must be reported to [`ReadAhead::handled`].
    pub fn is_ahead(&self, cursor: Cursor) -> bool {
        self.settled_to.is_none_or(|settled| cursor > settled)
    }

    /// Nothing to handle and nowhere to move the checkpoint: the follower may wait for news.
    pub fn is_idle(&self) -> bool {
        self.rows.is_empty() && self.settled_to.is_none()
    }
}

/// What a follower handled above the horizon (see the module documentation).
#[derive(Debug, Clone)]
pub struct ReadAhead {
    handled: std::collections::BTreeSet<Cursor>,
    limit: usize,
}

impl ReadAhead {
    /// Remembers at most `limit` rows above the horizon (0: never reads ahead). Keep it below
    /// the page size of the reads, so that a page always has room for rows not handled yet.
    pub fn new(limit: usize) -> Self {
        Self {
            handled: std::collections::BTreeSet::new(),
            limit,
        }
    }

    /// The rows above the horizon handed out and not yet passed by the checkpoint.
    pub fn len(&self) -> usize {
        self.handled.len()
    }

    /// Whether no row above the horizon is remembered.
    pub fn is_empty(&self) -> bool {
        self.handled.is_empty()
    }

    /// Splits `page` (read from the follower's checkpoint) into what to handle now.
    pub fn plan(&mut self, page: FollowedPage) -> Planned {
        let settled_to = page.settled_to();
        let settled = page.settled.min(page.rows.len());
        // Rows at or before the new checkpoint are never read again: forget them (after this
        // page, which may hold them among its settled rows).
        let passed = match settled_to {
            Some(through) => {
                let kept = self.handled.split_off(&just_after(through));
                std::mem::replace(&mut self.handled, kept)
            }
            None => std::collections::BTreeSet::new(),
        };
        let mut room = self.limit.saturating_sub(self.handled.len());
        let mut rows = Vec::with_capacity(page.rows.len());
        for (i, row) in page.rows.into_iter().enumerate() {
            let cursor = row.cursor();
            if i < settled {
                // A settled row handed out earlier, above the horizon, is done.
                if !passed.contains(&cursor) {
                    rows.push(row);
                }
                continue;
            }
            if self.handled.contains(&cursor) {
                continue;
            }
            if room == 0 {
                // Every later row waits too, so each stream's order holds.
                break;
            }
            room -= 1;
            rows.push(row);
        }
        Planned { rows, settled_to }
    }

    /// `cursor`, above the horizon when planned, was handled: it is not handed out again.
    pub fn handled(&mut self, cursor: Cursor) {
        self.handled.insert(cursor);
    }
}

/// The smallest cursor after `cursor` (positions are unique, so no row lies between).
fn just_after(cursor: Cursor) -> Cursor {
    Cursor {
        commit: cursor.commit,
        position: cursor.position.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordedEvent;
    use edupulse_domain::{BadgeAwarded, EventEnvelope, StreamId};

    fn row(commit: u64, position: u64) -> FollowedRow {
        let stream = StreamId::new();
        FollowedRow::Event(RecordedEvent {
            envelope: EventEnvelope::new(BadgeAwarded {
                badge_id: *stream.as_uuid(),
                recipient_id: *stream.as_uuid(),
            })
            .with_stream(stream),
            stream_id: stream,
            stream_version: 1,
            cursor: at(commit, position),
            recorded_at: chrono::Utc::now(),
            body: None,
        })
    }

    fn at(commit: u64, position: u64) -> Cursor {
        Cursor { commit, position }
    }

    fn page(rows: &[(u64, u64)], settled: usize) -> FollowedPage {
        FollowedPage {
            rows: rows.iter().map(|&(c, p)| row(c, p)).collect(),
            settled,
        }
    }

    fn cursors(planned: &Planned) -> Vec<(u64, u64)> {
        planned
            .rows
            .iter()
            .map(|r| (r.cursor().commit, r.cursor().position))
            .collect()
    }

    fn handle_all(ahead: &mut ReadAhead, planned: &Planned) {
        for row in &planned.rows {
            if planned.is_ahead(row.cursor()) {
                ahead.handled(row.cursor());
            }
        }
    }

    #[test]
    fn rows_above_the_horizon_go_once_and_the_checkpoint_stays_settled() {
        let mut ahead = ReadAhead::new(10);
        // (5,1) settled; (9,3) and (9,4) committed above the horizon (an open transaction 7).
        let first = ahead.plan(page(&[(5, 1), (9, 3), (9, 4)], 1));
        assert_eq!(cursors(&first), [(5, 1), (9, 3), (9, 4)]);
        assert_eq!(first.settled_to, Some(at(5, 1)));
        assert!(!first.is_ahead(at(5, 1)));
        assert!(first.is_ahead(at(9, 3)));
        handle_all(&mut ahead, &first);
        assert_eq!(ahead.len(), 2);

        // Still open: the same rows again, nothing to do.
        let again = ahead.plan(page(&[(9, 3), (9, 4)], 0));
        assert!(again.is_idle());

        // Transaction 7 commits, late, ordered before the rows handed out: it is read, and the
        // rows handed out are not handed out again.
        let late = ahead.plan(page(&[(7, 2), (9, 3), (9, 4), (11, 5)], 3));
        assert_eq!(cursors(&late), [(7, 2), (11, 5)]);
        assert_eq!(late.settled_to, Some(at(9, 4)));
        assert!(late.is_ahead(at(11, 5)));
        handle_all(&mut ahead, &late);
        // Passed by the checkpoint: forgotten.
        assert_eq!(ahead.len(), 1);
    }

    #[test]
    fn the_limit_bounds_memory_and_keeps_later_rows_for_later() {
        let mut ahead = ReadAhead::new(2);
        let first = ahead.plan(page(&[(9, 1), (9, 2), (9, 3), (10, 4)], 0));
        assert_eq!(cursors(&first), [(9, 1), (9, 2)]);
        assert_eq!(first.settled_to, None);
        handle_all(&mut ahead, &first);
        // Full: nothing more until the horizon moves.
        assert!(ahead.plan(page(&[(9, 1), (9, 2), (9, 3)], 0)).is_idle());
        let moved = ahead.plan(page(&[(9, 1), (9, 2), (9, 3), (10, 4)], 2));
        assert_eq!(cursors(&moved), [(9, 3), (10, 4)]);
        assert_eq!(ahead.len(), 0);
    }

    #[test]
    fn without_a_limit_nothing_is_read_ahead() {
        let mut ahead = ReadAhead::new(0);
        let planned = ahead.plan(page(&[(1, 1), (3, 2)], 1));
        assert_eq!(cursors(&planned), [(1, 1)]);
        assert!(ahead.plan(page(&[(3, 2)], 0)).is_idle());
    }

    #[test]
    fn a_row_not_handled_is_handed_out_again() {
        // A row above the horizon that the follower could not handle (its stream parked, a
        // publish interrupted) is not remembered, so it comes again.
        let mut ahead = ReadAhead::new(4);
        let first = ahead.plan(page(&[(9, 1)], 0));
        assert_eq!(cursors(&first), [(9, 1)]);
        let again = ahead.plan(page(&[(9, 1)], 0));
        assert_eq!(cursors(&again), [(9, 1)]);
    }
}
