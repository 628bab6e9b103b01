//! The projections' side of the checker: what the shipped projections must show after a run,
//! computed from the events in the store, and a probe projection that records what it applied
//! so that suites can count events applied twice or out of order.

use edupulse_domain::achievements::QuizAceRule;
use edupulse_domain::{DomainEvent, EventEnvelope, EventId, StreamId, Uuid};
use edupulse_ports::projection::{Applying, Projection, ProjectionId, ProjectionUnit};
use edupulse_ports::{Cursor, EventReader, HandlerError};
use edupulse_postgres::PgProjectionStore;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::workload::RUN_KEY;

/// The metadata key that makes the probe fail on an event, for good (a poison event).
pub const POISON_KEY: &str = "edupulse_poison";

/// Every event of the store, in commit order (after the writers stopped).
///
/// # Panics
/// When the store cannot be read.
pub async fn stored_events<R: EventReader + ?Sized>(store: &R) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    let mut cursor = Cursor::START;
    loop {
        let page = store.read_all(cursor, 5_000).await.expect("read_all");
        let Some(last) = page.last() else {
            return all;
        };
        cursor = last.cursor;
        all.extend(page.into_iter().map(|r| r.envelope));
    }
}

/// Whether `event` belongs to run `run` (every event when `run` is `None`).
fn of_run(event: &EventEnvelope, run: Option<&str>) -> bool {
    run.is_none_or(|run| event.metadata.extra.get(RUN_KEY).and_then(|v| v.as_str()) == Some(run))
}

/// What the shipped projections show, against what the run's events call for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionFigures {
    /// Events of the run in the store.
    pub events: u64,
    /// Learners meeting the quiz-ace rule with the run's submissions.
    pub badges_expected: u64,
    /// Badges the achievements projection awarded (events in the learners' badge streams).
    pub badges_awarded: u64,
    /// Awards that should not be there: to a learner who does not meet the rule, more than one
    /// per learner, or caused by an event that is not one of the learner's qualifying
    /// submissions.
    pub badges_wrong: u64,
    /// Awards of the run that reached the broker's stream.
    pub badges_published: u64,
    /// Lessons the run published.
    pub lessons_expected: u64,
    /// Catalogue rows matching the lesson's last publication (id, author, title).
    pub catalogue_rows: u64,
    /// Catalogue rows missing or differing.
    pub catalogue_wrong: u64,
}

impl ProjectionFigures {
    /// Whether the projections show exactly what the events call for.
    pub fn consistent(&self) -> bool {
        self.badges_awarded == self.badges_expected
            && self.badges_wrong == 0
            && self.badges_published == self.badges_awarded
            && self.catalogue_rows == self.lessons_expected
            && self.catalogue_wrong == 0
    }

    /// The figures as a table.
    pub fn table(&self) -> String {
        let rows = [
            ("events of the run", self.events),
            ("badges expected by the rule", self.badges_expected),
            ("badges awarded", self.badges_awarded),
            ("badges wrong (must be 0)", self.badges_wrong),
            ("badges published to the broker", self.badges_published),
            ("lessons published", self.lessons_expected),
            ("catalogue rows", self.catalogue_rows),
            ("catalogue rows wrong (must be 0)", self.catalogue_wrong),
        ];
        let mut out = String::from("| projections                        |      count |\n");
        out.push_str("|------------------------------------|-----------:|\n");
        for (what, n) in rows {
            out.push_str(&format!("| {what:<34} | {n:>10} |\n"));
        }
        out
    }
}

/// Judges the achievements and catalogue projections against `events` (the store's, see
/// [`stored_events`]) for run `run`; `published` holds the ids the broker's stream has.
///
/// # Panics
/// When the projection store cannot be read.
pub async fn judge_projections(
    events: &[EventEnvelope],
    run: Option<&str>,
    catalogue: (&PgProjectionStore, &ProjectionId),
    published: &HashSet<EventId>,
) -> ProjectionFigures {
    let ours: Vec<&EventEnvelope> = events.iter().filter(|e| of_run(e, run)).collect();
    let mut figures = ProjectionFigures {
        events: ours.len() as u64,
        ..ProjectionFigures::default()
    };
    judge_badges(events, &ours, published, &mut figures);
    judge_catalogue(&ours, catalogue, &mut figures).await;
    figures
}

fn judge_badges(
    events: &[EventEnvelope],
    ours: &[&EventEnvelope],
    published: &HashSet<EventId>,
    figures: &mut ProjectionFigures,
) {
    let rule = QuizAceRule::default();
    // Each learner's qualifying submissions of the run.
    let mut qualifying: HashMap<Uuid, HashSet<EventId>> = HashMap::new();
    for event in ours {
        if let DomainEvent::QuizSubmitted(quiz) = &event.event
            && rule.qualifies(quiz)
        {
            qualifying
                .entry(quiz.student_id())
                .or_default()
                .insert(event.id);
        }
    }
    let expected: HashSet<Uuid> = qualifying
        .iter()
        .filter(|(_, ids)| rule.earned(u32::try_from(ids.len()).unwrap_or(u32::MAX)))
        .map(|(learner, _)| *learner)
        .collect();
    figures.badges_expected = expected.len() as u64;
    let causes: HashSet<String> = ours.iter().map(|e| e.id.to_string()).collect();
    let mut awards: HashMap<Uuid, Vec<&EventEnvelope>> = HashMap::new();
    for event in events {
        let DomainEvent::BadgeAwarded(badge) = &event.event else {
            continue;
        };
        let caused_by_run = event
            .metadata
            .causation_id
            .as_ref()
            .is_some_and(|c| causes.contains(c.as_str()));
        if badge.badge_id == QuizAceRule::BADGE && caused_by_run {
            awards.entry(badge.recipient_id).or_default().push(event);
        }
    }
    for (learner, list) in &awards {
        let stream_ok = list
            .iter()
            .all(|e| e.stream_id() == QuizAceRule::badge_stream(*learner));
        let cause_ok = list.iter().all(|e| {
            let cause = e
                .metadata
                .causation_id
                .as_ref()
                .map(|c| c.as_str().to_owned());
            qualifying
                .get(learner)
                .is_some_and(|ids| ids.iter().any(|id| Some(id.to_string()) == cause))
        });
        if !expected.contains(learner) || list.len() != 1 || !stream_ok || !cause_ok {
            figures.badges_wrong += 1;
        }
        figures.badges_awarded += list.len() as u64;
        figures.badges_published +=
            list.iter().filter(|e| published.contains(&e.id)).count() as u64;
    }
}

async fn judge_catalogue(
    ours: &[&EventEnvelope],
    (store, projection): (&PgProjectionStore, &ProjectionId),
    figures: &mut ProjectionFigures,
) {
    // The last publication of each lesson, in commit order.
    let mut lessons: BTreeMap<Uuid, (Uuid, String)> = BTreeMap::new();
    for event in ours {
        if let DomainEvent::LessonPublished(lesson) = &event.event {
            lessons.insert(
                lesson.lesson_id,
                (lesson.author_id, lesson.title.as_str().to_owned()),
            );
        }
    }
    figures.lessons_expected = lessons.len() as u64;
    let rows: HashMap<String, serde_json::Value> = store
        .documents(projection, "lesson/")
        .await
        .expect("catalogue rows")
        .into_iter()
        .collect();
    for (lesson, (author, title)) in &lessons {
        let row = rows.get(&format!("lesson/{lesson}"));
        let matches = row.is_some_and(|row| {
            row["author_id"] == serde_json::json!(author)
                && row["title"] == serde_json::json!(title)
        });
        if matches {
            figures.catalogue_rows += 1;
        } else {
            figures.catalogue_wrong += 1;
        }
    }
}

/// A projection that records, per aggregate, the versions it applied (document
/// `applied/<stream>`, a JSON array), and fails for good on events whose metadata carries
/// [`POISON_KEY`]. What suites count duplicates and order with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe;

impl Probe {
    /// The document key of `stream`.
    pub fn key(stream: StreamId) -> String {
        format!("applied/{stream}")
    }
}

#[async_trait::async_trait]
impl<U: ProjectionUnit> Projection<U> for Probe {
    async fn apply(&self, unit: &mut U, event: Applying<'_>) -> Result<(), HandlerError> {
        if event.envelope.metadata.extra.contains_key(POISON_KEY) {
            return Err(HandlerError::Permanent("a poison event".into()));
        }
        let key = Self::key(event.stream);
        let mut versions: Vec<u64> = match unit.load(&key).await? {
            Some(document) => serde_json::from_value(document)
                .map_err(|e| HandlerError::Permanent(e.to_string()))?,
            None => Vec::new(),
        };
        versions.push(event.version);
        Ok(unit.save(&key, serde_json::json!(versions)).await?)
    }
}

/// What a probe's documents say about the runs that fed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applications {
    /// Versions applied, over all aggregates.
    pub applied: u64,
    /// Versions applied more than once (must be 0).
    pub applied_twice: u64,
    /// Versions applied after a later one of their aggregate (must be 0).
    pub out_of_order: u64,
    /// Versions never applied below the last applied one of their aggregate: skipped by an
    /// operator, or lost (must be exactly the skipped ones).
    pub gaps: u64,
}

/// Reads the probe's documents of `projection`.
///
/// # Panics
/// When the projection store cannot be read.
pub async fn applications(
    store: &PgProjectionStore,
    projection: &ProjectionId,
) -> (Applications, HashMap<StreamId, Vec<u64>>) {
    let documents = store
        .documents(projection, "applied/")
        .await
        .expect("probe documents");
    let mut figures = Applications::default();
    let mut by_stream = HashMap::new();
    for (key, document) in documents {
        let versions: Vec<u64> = serde_json::from_value(document).expect("versions");
        let stream: StreamId = key["applied/".len()..].parse().expect("a stream id");
        let mut seen = HashSet::new();
        let mut highest = 0;
        for v in &versions {
            figures.applied += 1;
            if !seen.insert(*v) {
                figures.applied_twice += 1;
            } else if *v < highest {
                figures.out_of_order += 1;
            }
            highest = highest.max(*v);
        }
        figures.gaps += highest.saturating_sub(seen.len() as u64);
        by_stream.insert(stream, versions);
    }
    (figures, by_stream)
}
