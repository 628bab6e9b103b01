//! The achievement rules: what the achievements projection decides, as pure functions.
//!
//! A rule looks at a learner's submissions and says when a badge is earned. The badge it awards
//! is fully determined by the facts: its event id derives from the event that triggered it, its
//! stream derives from the learner and the badge, and its causation id names the trigger. So a
//! projection that applies the same events again (a redelivery, a rebuild) proposes the very
//! same event, which the store accepts once, and a rebuild in which another submission happens
//! to be the trigger still finds the badge's stream taken.

use crate::{BadgeAwarded, ContextId, EventEnvelope, EventId, Metadata, QuizSubmitted, StreamId};
use uuid::Uuid;

/// The namespace of the UUIDs the rules derive (version 5, so anyone can recompute them).
const NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_2f64_90de_4c55_8f55_54a1_7c1e_d0a1);

/// The "quiz ace" rule: a learner who submits `quizzes` quizzes scoring at least `min_ratio` of
/// their maximum earns the badge [`QuizAceRule::BADGE`], once.
///
/// ```
/// use edupulse_domain::achievements::QuizAceRule;
/// use edupulse_domain::{QuizSubmitted, Score, Uuid};
/// let rule = QuizAceRule::default();
/// let quiz = |score| {
///     QuizSubmitted::new(Uuid::new_v4(), Uuid::new_v4(), Score::new(score).unwrap(), Score::new(10.0).unwrap()).unwrap()
/// };
/// assert!(rule.qualifies(&quiz(8.0)));
/// assert!(!rule.qualifies(&quiz(7.5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuizAceRule {
    /// Qualifying submissions needed.
    pub quizzes: u32,
    /// The lowest qualifying score, as a share of the quiz's maximum.
    pub min_ratio: f32,
}

impl Default for QuizAceRule {
    /// Three quizzes at 80% or better.
    fn default() -> Self {
        Self {
            quizzes: 3,
            min_ratio: 0.8,
        }
    }
}

impl QuizAceRule {
    /// The badge this rule awards.
    pub const BADGE: Uuid = Uuid::from_u128(0x0c1e_a5e0_0000_4000_8000_0000_0000_0001);

    /// Whether `quiz` counts towards the badge. A quiz whose maximum is 0 never does.
    pub fn qualifies(&self, quiz: &QuizSubmitted) -> bool {
        let max = quiz.max_score().value();
        max > 0.0 && quiz.score().value() >= self.min_ratio * max
    }

    /// Whether a learner with `qualifying` qualifying submissions has earned the badge.
    pub fn earned(&self, qualifying: u32) -> bool {
        qualifying >= self.quizzes
    }

    /// The stream holding `learner`'s award of this badge: at most one event ever, appended
    /// with `ExpectedVersion::NoStream`.
    pub fn badge_stream(learner: Uuid) -> StreamId {
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(learner.as_bytes());
        name[16..].copy_from_slice(Self::BADGE.as_bytes());
        StreamId::from_uuid(Uuid::new_v5(&NAMESPACE, &name))
    }

    /// The award to `learner`, triggered by `trigger`: an event id derived from the trigger's,
    /// the badge's stream, the trigger's correlation id and the trigger as causation.
    pub fn award(trigger: &EventEnvelope, learner: Uuid) -> EventEnvelope {
        let id = EventId::from_uuid(Uuid::new_v5(&NAMESPACE, trigger.id.as_uuid().as_bytes()));
        let metadata = Metadata {
            correlation_id: trigger.metadata.correlation_id.clone(),
            causation_id: ContextId::new(trigger.id.to_string()).ok(),
            ..Metadata::default()
        };
        EventEnvelope::new(BadgeAwarded {
            badge_id: Self::BADGE,
            recipient_id: learner,
        })
        .with_id(id)
        .with_stream(Self::badge_stream(learner))
        .with_metadata(metadata)
        .with_occurred_at(trigger.occurred_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DomainEvent, Score};

    fn quiz(score: f32, max: f32) -> QuizSubmitted {
        let s = Score::new(score).expect("valid score");
        let m = Score::new(max).expect("valid max");
        QuizSubmitted::new(Uuid::new_v4(), Uuid::new_v4(), s, m).expect("score within max")
    }

    #[test]
    fn qualifying_is_a_share_of_the_maximum() {
        let rule = QuizAceRule::default();
        assert!(rule.qualifies(&quiz(16.0, 20.0)));
        assert!(!rule.qualifies(&quiz(15.5, 20.0)));
        assert!(!rule.qualifies(&quiz(0.0, 0.0)));
        assert!(!rule.earned(2));
        assert!(rule.earned(3));
    }

    #[test]
    fn the_award_is_determined_by_its_trigger_and_learner() {
        let learner = Uuid::new_v4();
        let trigger = EventEnvelope::new(quiz(20.0, 20.0)).with_stream(StreamId::new());
        let first = QuizAceRule::award(&trigger, learner);
        let again = QuizAceRule::award(&trigger, learner);
        assert_eq!(first, again);
        assert_eq!(first.stream_id(), QuizAceRule::badge_stream(learner));
        assert_eq!(
            first.metadata.causation_id.as_ref().map(ContextId::as_str),
            Some(trigger.id.to_string().as_str())
        );
        let other = EventEnvelope::new(quiz(20.0, 20.0));
        assert_ne!(QuizAceRule::award(&other, learner).id, first.id);
        assert_eq!(
            QuizAceRule::award(&other, learner).stream_id(),
            first.stream_id()
        );
        assert!(
            matches!(first.event, DomainEvent::BadgeAwarded(ref b) if b.recipient_id == learner)
        );
        assert_ne!(QuizAceRule::badge_stream(Uuid::new_v4()), first.stream_id());
    }
}
