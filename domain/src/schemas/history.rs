//! Frozen payload shapes of event versions this build no longer writes. Stored events of these
//! versions are upcast on read (see [`crate::upcast`]); their schemas stay published, unchanged,
//! for consumers and archives that hold them. Never edit a shape here: a change is a new version.

use crate::Score;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The payload of a `QuizSubmitted` event at schema version 1 (the seed's): no maximum score.
/// Readers upcast it to version 2 with a maximum of 100, or the score itself when above 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    description = "A student submitted a quiz and got a score (v1, the seed's: no maximum score; readers upcast it to v2 with a maximum of 100, or the score itself when above 100)."
)]
pub struct QuizSubmittedV1 {
    /// The quiz.
    pub quiz_id: Uuid,
    /// The student.
    pub student_id: Uuid,
    /// The score obtained.
    pub score: Score,
}
