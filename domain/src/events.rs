use crate::{AmountCents, LessonTitle, Score, ValidationError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stable names of the event types, as written in `event.type` and used as NATS subject tokens.
///
/// These are a public contract: renaming one breaks every stored event and every consumer.
pub mod event_types {
    /// A lesson was published by its author.
    pub const LESSON_PUBLISHED: &str = "LessonPublished";
    /// A student submitted a quiz and got a score.
    pub const QUIZ_SUBMITTED: &str = "QuizSubmitted";
    /// A badge was awarded to a learner.
    pub const BADGE_AWARDED: &str = "BadgeAwarded";
    /// A payment went through.
    pub const PAYMENT_PROCESSED: &str = "PaymentProcessed";
    /// Every event type this build knows.
    pub const ALL: [&str; 4] = [
        LESSON_PUBLISHED,
        QUIZ_SUBMITTED,
        BADGE_AWARDED,
        PAYMENT_PROCESSED,
    ];

    /// Whether `name` is a valid event type name: an identifier of 1 to 64 ASCII letters,
    /// digits, `_` and `-`, so that it can name the event on any transport (a subject, a header,
    /// a file name) without escaping.
    ///
    /// ```
    /// use edupulse_domain::event_types::is_identifier;
    /// assert!(is_identifier("LessonPublished"));
    /// assert!(!is_identifier("lesson.published"));
    /// ```
    pub fn is_identifier(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

/// Why serializing an event to JSON cannot fail, checked by `expect`: serde_json fails only on
/// map keys that are not strings, on a writer's I/O error, or on a `Serialize` impl that
/// returns an error. Events hold validated strings, UUIDs, numbers (serde_json writes a
/// non-finite float as `null`), timestamps and `serde_json::Value` trees (string keys); the
/// writers are in-memory buffers and a counter that never fail.
pub(crate) const INFALLIBLE_JSON: &str =
    "serializing an event to JSON cannot fail (string keys, in-memory writers)";

/// Implemented by every event payload type: its stable name and current schema version.
pub trait EventKind: Into<DomainEvent> {
    /// The stable type name (one of [`event_types`]).
    const EVENT_TYPE: &'static str;
    /// The schema version this build writes. Older versions are upcast on read.
    const SCHEMA_VERSION: u16;
}

/// A lesson was published. Schema v1 (unchanged since the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "A lesson was published by its author.")]
pub struct LessonPublished {
    /// The lesson.
    pub lesson_id: Uuid,
    /// Its author.
    pub author_id: Uuid,
    /// Its title (validated).
    pub title: LessonTitle,
}

/// A quiz was submitted. Schema v2: v1 (the seed's) had no `max_score`; see [`crate::upcast`].
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(
    description = "A student submitted a quiz and got a score (v2: with the best possible score)."
)]
pub struct QuizSubmitted {
    /// The quiz.
    quiz_id: Uuid,
    /// The student.
    student_id: Uuid,
    /// The score obtained; never above `max_score`.
    score: Score,
    /// The best possible score.
    max_score: Score,
}

impl QuizSubmitted {
    /// A submission; the score must not exceed the maximum.
    ///
    /// # Errors
    /// [`ValidationError::ScoreAboveMaximum`].
    pub fn new(
        quiz_id: Uuid,
        student_id: Uuid,
        score: Score,
        max_score: Score,
    ) -> Result<Self, ValidationError> {
        if score.value() > max_score.value() {
            return Err(ValidationError::ScoreAboveMaximum {
                score: score.value(),
                max_score: max_score.value(),
            });
        }
        Ok(Self {
            quiz_id,
            student_id,
            score,
            max_score,
        })
    }

    /// The quiz.
    pub fn quiz_id(&self) -> Uuid {
        self.quiz_id
    }
    /// The student.
    pub fn student_id(&self) -> Uuid {
        self.student_id
    }
    /// The score obtained.
    pub fn score(&self) -> Score {
        self.score
    }
    /// The best possible score.
    pub fn max_score(&self) -> Score {
        self.max_score
    }
}

impl<'de> Deserialize<'de> for QuizSubmitted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            quiz_id: Uuid,
            student_id: Uuid,
            score: Score,
            max_score: Score,
        }
        let raw = Raw::deserialize(d)?;
        Self::new(raw.quiz_id, raw.student_id, raw.score, raw.max_score)
            .map_err(serde::de::Error::custom)
    }
}

/// A badge was awarded. Schema v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "A badge was awarded to a learner.")]
pub struct BadgeAwarded {
    /// The badge.
    pub badge_id: Uuid,
    /// Who received it.
    pub recipient_id: Uuid,
}

/// A payment was processed. Schema v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "A payment went through.")]
pub struct PaymentProcessed {
    /// The invoice paid.
    pub invoice_id: Uuid,
    /// Who paid.
    pub user_id: Uuid,
    /// How much, in cents (validated: not negative).
    pub amount_cents: AmountCents,
}

/// An event of a type (or schema version) this build does not know, kept as it was read.
///
/// A consumer built against an older crate gets this instead of an error, and can skip it or
/// forward it unchanged: re-encoding writes the same type, version and payload back.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownEvent {
    pub(crate) event_type: String,
    pub(crate) schema_version: u16,
    pub(crate) payload: serde_json::Value,
}

impl UnknownEvent {
    /// The raw type name.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The raw schema version.
    pub fn schema_version(&self) -> u16 {
        self.schema_version
    }
    /// The raw payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.payload
    }
}

/// Every domain event of EduPulse, plus [`DomainEvent::Unknown`] for the tolerant reader.
///
/// ```
/// use edupulse_domain::{DomainEvent, EventEnvelope, QuizSubmitted, Score, Uuid};
/// let quiz = QuizSubmitted::new(
///     Uuid::new_v4(),
///     Uuid::new_v4(),
///     Score::new(8.0).unwrap(),
///     Score::new(10.0).unwrap(),
/// )
/// .unwrap();
/// let envelope = EventEnvelope::new(quiz);
/// // A consumer decodes what it reads and matches on the type; unknown types are kept, not lost.
/// match EventEnvelope::decode(&envelope.encode()).unwrap().event {
///     DomainEvent::QuizSubmitted(q) => assert_eq!(q.score().value(), 8.0),
///     DomainEvent::Unknown(u) => println!("kept {} as it was", u.event_type()),
///     _ => {}
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DomainEvent {
    /// See [`LessonPublished`].
    LessonPublished(LessonPublished),
    /// See [`QuizSubmitted`].
    QuizSubmitted(QuizSubmitted),
    /// See [`BadgeAwarded`].
    BadgeAwarded(BadgeAwarded),
    /// See [`PaymentProcessed`].
    PaymentProcessed(PaymentProcessed),
    /// An event this build does not know; see [`UnknownEvent`].
    Unknown(UnknownEvent),
}

macro_rules! kinds {
    ($($ty:ident => $name:path, version $version:literal;)*) => {
        $(
            impl EventKind for $ty {
                const EVENT_TYPE: &'static str = $name;
                const SCHEMA_VERSION: u16 = $version;
            }
            impl From<$ty> for DomainEvent {
                fn from(e: $ty) -> Self {
                    DomainEvent::$ty(e)
                }
            }
        )*

        impl DomainEvent {
            /// The stable type name written in `event.type`.
            pub fn event_type(&self) -> &str {
                match self {
                    $(DomainEvent::$ty(_) => $name,)*
                    DomainEvent::Unknown(u) => &u.event_type,
                }
            }

            /// The schema version of the payload as this value holds it.
            pub fn schema_version(&self) -> u16 {
                match self {
                    $(DomainEvent::$ty(_) => $version,)*
                    DomainEvent::Unknown(u) => u.schema_version,
                }
            }

            /// The payload as JSON, in the shape of [`DomainEvent::schema_version`].
            pub fn payload(&self) -> serde_json::Value {
                match self {
                    $(DomainEvent::$ty(e) => serde_json::to_value(e)
                        .expect(INFALLIBLE_JSON),)*
                    DomainEvent::Unknown(u) => u.payload.clone(),
                }
            }

            /// Serializes the payload, as [`DomainEvent::payload`] would produce it.
            pub(crate) fn serialize_payload<S: serde::Serializer>(
                &self,
                s: S,
            ) -> Result<S::Ok, S::Error> {
                match self {
                    $(DomainEvent::$ty(e) => e.serialize(s),)*
                    DomainEvent::Unknown(u) => u.payload.serialize(s),
                }
            }

            /// Decodes a payload of the current schema version of a known type; `None` if the
            /// type is not known to this build.
            pub(crate) fn decode_current(
                event_type: &str,
                payload: serde_json::Value,
            ) -> Option<Result<Self, serde_json::Error>> {
                match event_type {
                    $($name => Some(serde_json::from_value::<$ty>(payload).map(DomainEvent::$ty)),)*
                    _ => None,
                }
            }

            /// As [`DomainEvent::decode_current`], from JSON text: no intermediate `Value`.
            pub(crate) fn decode_current_str(
                event_type: &str,
                payload: &str,
            ) -> Option<Result<Self, serde_json::Error>> {
                match event_type {
                    $($name => Some(serde_json::from_str::<$ty>(payload).map(DomainEvent::$ty)),)*
                    _ => None,
                }
            }

            /// The current schema version of a known type.
            pub fn current_version_of(event_type: &str) -> Option<u16> {
                match event_type {
                    $($name => Some($version),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    LessonPublished => event_types::LESSON_PUBLISHED, version 1;
    QuizSubmitted => event_types::QUIZ_SUBMITTED, version 2;
    BadgeAwarded => event_types::BADGE_AWARDED, version 1;
    PaymentProcessed => event_types::PAYMENT_PROCESSED, version 1;
}

impl DomainEvent {
    /// Whether this build knows the event's type and version.
    pub fn is_known(&self) -> bool {
        !matches!(self, DomainEvent::Unknown(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_subject_tokens() {
        for name in event_types::ALL {
            assert!(event_types::is_identifier(name), "{name}");
            assert!(DomainEvent::current_version_of(name).is_some());
        }
        assert!(!event_types::is_identifier("a.b"));
        assert!(!event_types::is_identifier("a*"));
        assert!(!event_types::is_identifier(""));
    }

    #[test]
    fn quiz_score_cannot_exceed_maximum() {
        let s = |v| Score::new(v).unwrap();
        let id = Uuid::nil();
        assert!(QuizSubmitted::new(id, id, s(10.0), s(10.0)).is_ok());
        assert!(matches!(
            QuizSubmitted::new(id, id, s(11.0), s(10.0)),
            Err(ValidationError::ScoreAboveMaximum { .. })
        ));
    }
}
