//! The achievements projection: counts each learner's qualifying quiz submissions and awards
//! the "quiz ace" badge through the event store, in the projection's own unit.

use edupulse_domain::achievements::QuizAceRule;
use edupulse_domain::{DomainEvent, ExpectedVersion, Uuid};
use edupulse_ports::HandlerError;
use edupulse_ports::StoreError;
use edupulse_ports::projection::{Applying, Projection, ProjectionUnit};
use serde::{Deserialize, Serialize};

/// What the projection keeps per learner (document `learner/<id>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnerProgress {
    /// Qualifying submissions applied so far.
    pub qualifying: u32,
    /// Whether the badge is awarded (by this generation or, for a rebuild, an earlier one).
    pub awarded: bool,
}

/// Awards [`QuizAceRule::BADGE`] when a learner meets the rule.
///
/// The award is a `BadgeAwarded` event appended in the unit's transaction, with an id derived
/// from the triggering submission and the trigger as its causation ([`QuizAceRule::award`]), to
/// the learner's badge stream, expected not to exist. A redelivery never reaches the handler
/// twice; a rebuild that awards again finds the stream taken and records the badge as awarded.
/// Every other event is ignored, unknown types included.
#[derive(Debug, Clone, Copy, Default)]
pub struct Achievements {
    rule: QuizAceRule,
}

impl Achievements {
    /// The projection for `rule`.
    pub fn new(rule: QuizAceRule) -> Self {
        Self { rule }
    }

    /// The document key of `learner`.
    pub fn key(learner: Uuid) -> String {
        format!("learner/{learner}")
    }
}

#[async_trait::async_trait]
impl<U: ProjectionUnit> Projection<U> for Achievements {
    async fn apply(&self, unit: &mut U, event: Applying<'_>) -> Result<(), HandlerError> {
        let DomainEvent::QuizSubmitted(quiz) = &event.envelope.event else {
            return Ok(());
        };
        if !self.rule.qualifies(quiz) {
            return Ok(());
        }
        let learner = quiz.student_id();
        let key = Self::key(learner);
        let mut progress: LearnerProgress = match unit.load(&key).await? {
            Some(document) => serde_json::from_value(document)
                .map_err(|e| HandlerError::Permanent(format!("{key}: {e}")))?,
            None => LearnerProgress::default(),
        };
        progress.qualifying = progress.qualifying.saturating_add(1);
        if !progress.awarded && self.rule.earned(progress.qualifying) {
            award(unit, event, learner).await?;
            progress.awarded = true;
        }
        let document = serde_json::to_value(progress)
            .map_err(|e| HandlerError::Permanent(format!("{key}: {e}")))?;
        Ok(unit.save(&key, document).await?)
    }
}

async fn award<U: ProjectionUnit>(
    unit: &mut U,
    trigger: Applying<'_>,
    learner: Uuid,
) -> Result<(), HandlerError> {
    let badge = QuizAceRule::award(trigger.envelope, learner);
    let stream = badge.stream_id();
    match unit
        .emit(stream, ExpectedVersion::NoStream, vec![badge])
        .await
    {
        // Already awarded: by an earlier generation, or an earlier trigger of this one.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error @ (StoreError::Unavailable(_) | StoreError::Internal(_))) => {
            Err(HandlerError::Store(error))
        }
        Err(error) => Err(HandlerError::Permanent(error.to_string())),
    }
}
