//! The lesson catalogue: a read model of published lessons.

use edupulse_domain::{DomainEvent, Uuid};
use edupulse_ports::HandlerError;
use edupulse_ports::projection::{Applying, Projection, ProjectionUnit};
use serde::{Deserialize, Serialize};

/// One published lesson (document `lesson/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueEntry {
    /// The lesson.
    pub lesson_id: Uuid,
    /// Its author.
    pub author_id: Uuid,
    /// Its title.
    pub title: String,
}

/// Keeps one [`CatalogueEntry`] per published lesson; a lesson published again replaces its
/// entry. Every other event is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct LessonCatalogue;

impl LessonCatalogue {
    /// The document key of `lesson`.
    pub fn key(lesson: Uuid) -> String {
        format!("lesson/{lesson}")
    }
}

#[async_trait::async_trait]
impl<U: ProjectionUnit> Projection<U> for LessonCatalogue {
    async fn apply(&self, unit: &mut U, event: Applying<'_>) -> Result<(), HandlerError> {
        let DomainEvent::LessonPublished(lesson) = &event.envelope.event else {
            return Ok(());
        };
        let entry = CatalogueEntry {
            lesson_id: lesson.lesson_id,
            author_id: lesson.author_id,
            title: lesson.title.as_str().to_owned(),
        };
        let document =
            serde_json::to_value(&entry).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        Ok(unit.save(&Self::key(lesson.lesson_id), document).await?)
    }
}
