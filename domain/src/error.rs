use thiserror::Error;

/// A value was refused by a constructor: the input breaks a rule of the domain.
///
/// # Handling
/// Never retryable: the same input fails again. Report it to whoever produced the value (an HTTP
/// API answers 422).
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A required text is empty (or only whitespace).
    #[error("{field} must not be empty")]
    Empty {
        /// The field that was empty.
        field: &'static str,
    },
    /// A text is longer than its limit, counted in characters.
    #[error("{field} is {len} characters long, the limit is {max}")]
    TooLong {
        /// The field that was too long.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text holds a control character (line breaks included), which would break headers and logs.
    #[error("{field} contains a control character")]
    ControlCharacter {
        /// The field concerned.
        field: &'static str,
    },
    /// A number is NaN or infinite.
    #[error("{field} must be a finite number")]
    NotFinite {
        /// The field concerned.
        field: &'static str,
    },
    /// A number is below zero.
    #[error("{field} must not be negative")]
    Negative {
        /// The field concerned.
        field: &'static str,
    },
    /// A quiz score is above the quiz's maximum score.
    #[error("score {score} is above the maximum score {max_score}")]
    ScoreAboveMaximum {
        /// The score.
        score: f32,
        /// The maximum.
        max_score: f32,
    },
    /// A value does not have the required format (W3C traceparent, identifiers).
    #[error("{field} is malformed: {reason}")]
    Malformed {
        /// The field concerned.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Bytes could not be decoded into an [`crate::EventEnvelope`].
///
/// # Handling
/// Never retryable: the bytes are what they are. A consumer should dead-letter the message (with
/// this error's text as the reason) rather than drop it, and move on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than the decoder's size limit; it was not parsed.
    #[error("envelope is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The JSON nests deeper than the decoder's limit; it was not parsed.
    #[error("envelope nests deeper than {max} levels")]
    TooDeep {
        /// The nesting limit.
        max: usize,
    },
    /// The input is not UTF-8, not JSON, or not an envelope (missing or ill-typed fields).
    #[error("malformed envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The payload of a known event type does not have the shape of its schema version.
    #[error("payload of {event_type} v{version} does not match its schema: {source}")]
    Payload {
        /// The event type named in the envelope.
        event_type: String,
        /// The schema version named in the envelope.
        version: u16,
        /// What did not match.
        #[source]
        source: serde_json::Error,
    },
    /// The schema version is newer than this build knows for that event type (or zero).
    #[error(
        "{event_type} schema version {version} is not supported (this build knows up to {known})"
    )]
    UnsupportedVersion {
        /// The event type.
        event_type: String,
        /// The version found.
        version: u16,
        /// The newest version this build knows.
        known: u16,
    },
}
