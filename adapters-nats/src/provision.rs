//! Creating or checking the event stream and the dead-letter stream.
//!
//! Provisioning is idempotent: run it at every start. A missing stream is created; an existing one
//! is compared with what the backbone requires. A difference that would silently break a
//! guarantee (events dropped, deduplication shortened, fewer copies, publishes unacknowledged) is
//! an error naming the field: an operator decides. A harmless difference (maximum message size,
//! description) is updated.

use crate::config::NatsConfig;
use crate::wire::{dlq_stream_subjects, is_valid_name, is_valid_prefix, stream_subjects};
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use edupulse_ports::BoxError;
use std::collections::BTreeSet;
use std::time::Duration;
use thiserror::Error;

/// Extra room the dead-letter stream allows over [`NatsConfig::max_message_bytes`] for the
/// reason headers added to a dead letter.
pub const DLQ_HEADER_ROOM: usize = 8 * 1024;

/// Why provisioning failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The configuration itself is invalid (a stream name with a dot, an empty prefix, zero
    /// replicas…). Nothing was sent to the server.
    ///
    /// # Handling
    /// Not retryable: fix the configuration.
    #[error("invalid NATS configuration: {field}: {reason}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The stream exists with a configuration that contradicts what the backbone requires.
    /// Nothing was changed.
    ///
    /// # Handling
    /// Not retryable: an operator fixes the stream (`nats stream edit`) or the configuration.
    #[error(
        "stream {stream} exists with {field} = {existing}, but the backbone requires {required}"
    )]
    Incompatible {
        /// The stream.
        stream: String,
        /// The stream configuration field, as NATS names it (`subjects`, `storage`…).
        field: &'static str,
        /// Its current value.
        existing: String,
        /// What is required.
        required: String,
    },
    /// The stream's subjects overlap those of another stream on the server.
    ///
    /// # Handling
    /// Not retryable: choose another subject prefix or remove the other stream.
    #[error("the subjects of stream {stream} overlap another stream's")]
    SubjectsOverlap {
        /// The stream.
        stream: String,
        /// The server's answer.
        #[source]
        source: jetstream::Error,
    },
    /// The server refused the request for another reason (permissions, account limits, no
    /// suitable peers for the replicas asked for).
    ///
    /// # Handling
    /// Not retryable as is: the server's error code says what to fix.
    #[error("the server refused to provision stream {stream}")]
    Refused {
        /// The stream.
        stream: String,
        /// The server's answer.
        #[source]
        source: jetstream::Error,
    },
    /// JetStream did not answer (connection down, timeout, JetStream not enabled, no leader
    /// elected yet).
    ///
    /// # Handling
    /// Retryable with backoff; if it persists check that the server runs with JetStream enabled.
    #[error("JetStream unavailable while provisioning stream {stream}")]
    Unavailable {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl ProvisionError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProvisionError::Unavailable { .. })
    }
}

/// What provisioning did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamOutcome {
    /// The stream did not exist and was created (by this call, or by a concurrent provisioner
    /// with the identical configuration: JetStream treats that create as a success).
    Created,
    /// The stream existed and satisfied every requirement.
    Unchanged,
    /// The stream existed with harmless differences, now updated.
    Updated {
        /// The fields updated.
        fields: Vec<&'static str>,
    },
}

/// What provisioning did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    /// The event stream.
    pub events: StreamOutcome,
    /// The dead-letter stream.
    pub dead_letters: StreamOutcome,
}

/// Checks the parts of `config` provisioning and publishing rely on.
///
/// # Errors
/// [`ProvisionError::InvalidConfig`] naming the field.
pub fn validate(config: &NatsConfig) -> Result<(), ProvisionError> {
    let invalid = |field, reason: &str| {
        Err(ProvisionError::InvalidConfig {
            field,
            reason: reason.to_owned(),
        })
    };
    if !is_valid_name(&config.stream_name) || !is_valid_name(&config.dlq_stream_name()) {
        return invalid(
            "stream_name",
            "1 to 251 ASCII letters, digits, '_' or '-' expected",
        );
    }
    if !is_valid_prefix(&config.subject_prefix) {
        return invalid(
            "subject_prefix",
            "dot-separated tokens of ASCII letters, digits, '_' or '-' expected",
        );
    }
    if !(1..=5).contains(&config.replicas) {
        return invalid("replicas", "1 to 5 expected");
    }
    if config.duplicate_window.is_zero() {
        return invalid("duplicate_window", "must be positive");
    }
    if config.max_message_bytes == 0
        || i32::try_from(config.max_message_bytes.saturating_add(DLQ_HEADER_ROOM)).is_err()
    {
        return invalid("max_message_bytes", "1 byte to 2 GiB expected");
    }
    if config.max_in_flight == 0 {
        return invalid("max_in_flight", "at least 1 expected");
    }
    if config.ack_timeout.is_zero() {
        return invalid("ack_timeout", "must be positive");
    }
    Ok(())
}

const DESCRIPTION: &str =
    "EduPulse domain events, published by the relay (managed by edupulse-nats)";
const DLQ_DESCRIPTION: &str = "EduPulse dead letters of event consumers (managed by edupulse-nats)";

/// The configuration the event stream must have.
pub fn event_stream_config(config: &NatsConfig) -> Config {
    base_config(
        config.stream_name.clone(),
        stream_subjects(&config.subject_prefix),
        config,
        config.max_message_bytes,
        DESCRIPTION,
    )
}

/// The configuration the dead-letter stream must have.
pub fn dlq_stream_config(config: &NatsConfig) -> Config {
    base_config(
        config.dlq_stream_name(),
        dlq_stream_subjects(&config.dlq_subject_prefix()),
        config,
        config.max_message_bytes.saturating_add(DLQ_HEADER_ROOM),
        DLQ_DESCRIPTION,
    )
}

pub(crate) fn base_config(
    name: String,
    subjects: Vec<String>,
    config: &NatsConfig,
    max_message_bytes: usize,
    description: &str,
) -> Config {
    Config {
        name,
        subjects,
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        max_message_size: i32::try_from(max_message_bytes).unwrap_or(i32::MAX),
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_age: Duration::ZERO,
        description: Some(description.to_owned()),
        ..Config::default()
    }
}

/// Creates or checks both streams.
///
/// # Errors
/// Every [`ProvisionError`] variant; [`ProvisionError::Incompatible`] names the first
/// contradicting field.
pub async fn provision(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<ProvisionReport, ProvisionError> {
    validate(config)?;
    let events = ensure_stream(js, event_stream_config(config)).await?;
    let dead_letters = ensure_stream(js, dlq_stream_config(config)).await?;
    Ok(ProvisionReport {
        events,
        dead_letters,
    })
}

/// Creates the stream, or checks and updates it.
///
/// # Errors
/// As [`provision`].
pub async fn ensure_stream(
    js: &jetstream::Context,
    required: Config,
) -> Result<StreamOutcome, ProvisionError> {
    let name = required.name.clone();
    // Two attempts: a concurrent provisioner may create the stream between our look-up and our
    // create (the create then fails with "already exists" and we compare instead).
    for _ in 0..2 {
        match js.get_stream(&name).await {
            Ok(stream) => {
                let existing = &stream.cached_info().config;
                let Some(update) = reconcile(existing, &required)? else {
                    return Ok(StreamOutcome::Unchanged);
                };
                let fields = update.fields;
                js.update_stream(&update.config)
                    .await
                    .map_err(|e| create_error(&name, e))?;
                tracing::info!(stream = %name, ?fields, "updated JetStream stream");
                return Ok(StreamOutcome::Updated { fields });
            }
            Err(e) if is_not_found(&e) => match js.create_stream(required.clone()).await {
                Ok(_) => {
                    tracing::info!(stream = %name, "created JetStream stream");
                    return Ok(StreamOutcome::Created);
                }
                Err(e) if is_already_exists(&e) => continue,
                Err(e) => return Err(create_error(&name, e)),
            },
            Err(e) => return Err(get_error(&name, e)),
        }
    }
    Err(ProvisionError::Unavailable {
        stream: name,
        source: "the stream was concurrently created and deleted".into(),
    })
}

/// A harmless update to apply.
#[derive(Debug)]
pub(crate) struct Update {
    pub(crate) config: Config,
    pub(crate) fields: Vec<&'static str>,
}

/// Compares an existing stream's configuration with the required one.
///
/// Returns `Ok(None)` when nothing needs changing, `Ok(Some(update))` for harmless differences,
/// and [`ProvisionError::Incompatible`] for the first contradiction.
pub(crate) fn reconcile(
    existing: &Config,
    required: &Config,
) -> Result<Option<Update>, ProvisionError> {
    let incompatible = |field, have: String, want: String| {
        Err(ProvisionError::Incompatible {
            stream: required.name.clone(),
            field,
            existing: have,
            required: want,
        })
    };
    let have: BTreeSet<&String> = existing.subjects.iter().collect();
    let want: BTreeSet<&String> = required.subjects.iter().collect();
    if have != want {
        return incompatible(
            "subjects",
            format!("{:?}", existing.subjects),
            format!("{:?}", required.subjects),
        );
    }
    if existing.storage != StorageType::File {
        return incompatible(
            "storage",
            format!("{:?}", existing.storage),
            "File (events must survive a restart)".into(),
        );
    }
    if existing.retention != RetentionPolicy::Limits {
        return incompatible(
            "retention",
            format!("{:?}", existing.retention),
            "Limits (consuming must not delete events)".into(),
        );
    }
    if existing.num_replicas < required.num_replicas {
        return incompatible(
            "num_replicas",
            existing.num_replicas.to_string(),
            format!("at least {}", required.num_replicas),
        );
    }
    if existing.duplicate_window < required.duplicate_window {
        return incompatible(
            "duplicate_window",
            format!("{:?}", existing.duplicate_window),
            format!(
                "at least {:?} (the relay's retry horizon)",
                required.duplicate_window
            ),
        );
    }
    if existing.no_ack {
        return incompatible(
            "no_ack",
            "true".into(),
            "false (every publish is acknowledged)".into(),
        );
    }
    if existing.sealed {
        return incompatible("sealed", "true".into(), "false".into());
    }
    if existing.mirror.is_some() {
        return incompatible(
            "mirror",
            "set".into(),
            "none (a mirror cannot be published to)".into(),
        );
    }
    if !existing.max_age.is_zero() {
        return incompatible(
            "max_age",
            format!("{:?}", existing.max_age),
            "0 (events are kept until an operator removes them)".into(),
        );
    }
    let limits = [
        ("max_msgs", existing.max_messages),
        ("max_bytes", existing.max_bytes),
        ("max_msgs_per_subject", existing.max_messages_per_subject),
    ];
    for (field, value) in limits {
        if value > 0 {
            if existing.discard == DiscardPolicy::Old {
                return incompatible(
                    field,
                    format!("{value} with discard = old"),
                    "unlimited (discard old would silently drop events)".into(),
                );
            }
            // With discard = new, a full stream refuses publishes: loud, not lossy.
            tracing::warn!(
                stream = %existing.name, field, value,
                "stream has a limit with discard = new: publishes will fail when it is reached"
            );
        }
    }

    let mut config = existing.clone();
    let mut fields = Vec::new();
    if existing.max_message_size != required.max_message_size {
        config.max_message_size = required.max_message_size;
        fields.push("max_msg_size");
    }
    if existing.description != required.description {
        config.description.clone_from(&required.description);
        fields.push("description");
    }
    Ok((!fields.is_empty()).then_some(Update { config, fields }))
}

fn is_not_found(e: &GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_already_exists(e: &CreateStreamError) -> bool {
    matches!(e.kind(), CreateStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

fn get_error(stream: &str, e: GetStreamError) -> ProvisionError {
    match e.kind() {
        GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
            ProvisionError::InvalidConfig {
                field: "stream_name",
                reason: e.to_string(),
            }
        }
        GetStreamErrorKind::JetStream(source) => api_error(stream, source),
        GetStreamErrorKind::Request => ProvisionError::Unavailable {
            stream: stream.to_owned(),
            source: Box::new(e),
        },
    }
}

fn create_error(stream: &str, e: CreateStreamError) -> ProvisionError {
    match e.kind() {
        CreateStreamErrorKind::JetStream(source) => api_error(stream, source),
        CreateStreamErrorKind::EmptyStreamName | CreateStreamErrorKind::InvalidStreamName => {
            ProvisionError::InvalidConfig {
                field: "stream_name",
                reason: e.to_string(),
            }
        }
        CreateStreamErrorKind::DomainAndExternalSet
        | CreateStreamErrorKind::JetStreamUnavailable
        | CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::Response
        | CreateStreamErrorKind::NotFound
        | CreateStreamErrorKind::ResponseParse => ProvisionError::Unavailable {
            stream: stream.to_owned(),
            source: Box::new(e),
        },
    }
}

fn api_error(stream: &str, source: jetstream::Error) -> ProvisionError {
    let stream = stream.to_owned();
    match source.error_code() {
        ErrorCode::STREAM_SUBJECT_OVERLAP => ProvisionError::SubjectsOverlap { stream, source },
        ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_ACTIVE
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::CLUSTER_INCOMPLETE
        | ErrorCode::CLUSTER_NOT_ASSIGNED => ProvisionError::Unavailable {
            stream,
            source: Box::new(source),
        },
        _ => ProvisionError::Refused { stream, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NatsConfig {
        NatsConfig::new(["nats://h"], "EVENTS", "edu")
    }

    fn field_of(r: Result<Option<Update>, ProvisionError>) -> &'static str {
        match r {
            Err(ProvisionError::Incompatible { field, .. }) => field,
            other => panic!("expected Incompatible, got {other:?}"),
        }
    }

    #[test]
    fn required_configs() {
        let c = event_stream_config(&config());
        assert_eq!(c.subjects, vec!["edu.*.*"]);
        assert_eq!(c.storage, StorageType::File);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.max_message_size, 1024 * 1024);
        let d = dlq_stream_config(&config());
        assert_eq!(d.name, "EVENTS_DLQ");
        assert_eq!(d.subjects, vec!["edu-dlq.>"]);
        assert_eq!(d.max_message_size, 1024 * 1024 + 8 * 1024);
    }

    #[test]
    fn identical_stream_needs_nothing() {
        let required = event_stream_config(&config());
        assert!(reconcile(&required, &required).unwrap().is_none());
        // More replicas and a longer window than required are fine.
        let mut better = required.clone();
        better.num_replicas = 3;
        better.duplicate_window = Duration::from_secs(600);
        assert!(reconcile(&better, &required).unwrap().is_none());
    }

    #[test]
    fn harmless_differences_are_updated() {
        let required = event_stream_config(&config());
        let mut existing = required.clone();
        existing.max_message_size = -1;
        existing.description = None;
        let update = reconcile(&existing, &required).unwrap().unwrap();
        assert_eq!(update.fields, vec!["max_msg_size", "description"]);
        assert_eq!(update.config.max_message_size, required.max_message_size);
    }

    #[test]
    fn contradictions_name_the_field() {
        let required = event_stream_config(&config());
        let with = |f: &dyn Fn(&mut Config)| {
            let mut c = required.clone();
            f(&mut c);
            field_of(reconcile(&c, &required))
        };
        assert_eq!(with(&|c| c.subjects = vec!["other.>".into()]), "subjects");
        assert_eq!(with(&|c| c.storage = StorageType::Memory), "storage");
        assert_eq!(
            with(&|c| c.retention = RetentionPolicy::WorkQueue),
            "retention"
        );
        assert_eq!(
            with(&|c| c.duplicate_window = Duration::from_secs(10)),
            "duplicate_window"
        );
        assert_eq!(with(&|c| c.no_ack = true), "no_ack");
        assert_eq!(with(&|c| c.max_age = Duration::from_secs(3600)), "max_age");
        assert_eq!(with(&|c| c.max_messages = 1000), "max_msgs");
        assert_eq!(with(&|c| c.max_bytes = 1 << 30), "max_bytes");

        let mut r3 = config();
        r3.replicas = 3;
        let required3 = event_stream_config(&r3);
        let mut existing = required3.clone();
        existing.num_replicas = 1;
        assert_eq!(field_of(reconcile(&existing, &required3)), "num_replicas");
    }

    #[test]
    fn discard_new_limits_are_loud_not_lossy() {
        let required = event_stream_config(&config());
        let mut existing = required.clone();
        existing.discard = DiscardPolicy::New;
        existing.max_bytes = 1 << 30;
        assert!(reconcile(&existing, &required).unwrap().is_none());
    }

    #[test]
    fn config_validation() {
        assert!(validate(&config()).is_ok());
        let check = |f: &dyn Fn(&mut NatsConfig)| {
            let mut c = config();
            f(&mut c);
            match validate(&c) {
                Err(ProvisionError::InvalidConfig { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(check(&|c| c.stream_name = "a.b".into()), "stream_name");
        assert_eq!(
            check(&|c| c.subject_prefix = "a.*".into()),
            "subject_prefix"
        );
        assert_eq!(check(&|c| c.replicas = 0), "replicas");
        assert_eq!(
            check(&|c| c.duplicate_window = Duration::ZERO),
            "duplicate_window"
        );
        assert_eq!(check(&|c| c.max_message_bytes = 0), "max_message_bytes");
        assert_eq!(check(&|c| c.max_in_flight = 0), "max_in_flight");
    }

    #[test]
    fn api_errors_are_classified_by_code() {
        let js_error = |code: u64| -> jetstream::Error {
            serde_json::from_value(serde_json::json!({
                "code": 400, "err_code": code, "description": "x"
            }))
            .unwrap()
        };
        assert!(matches!(
            api_error("S", js_error(10065)),
            ProvisionError::SubjectsOverlap { .. }
        ));
        assert!(api_error("S", js_error(10008)).is_retryable());
        assert!(matches!(
            api_error("S", js_error(10005)),
            ProvisionError::Refused { .. }
        ));
    }
}
