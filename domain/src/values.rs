use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Checks a required, single-line text: not blank, at most `max` characters, no control characters.
pub(crate) fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::Empty { field });
    }
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::TooLong { field, len, max });
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter { field });
    }
    Ok(())
}

/// The title of a lesson: 1 to [`LessonTitle::MAX_CHARS`] characters, not blank, one line.
///
/// ```
/// use edupulse_domain::LessonTitle;
/// assert_eq!(LessonTitle::new("Ownership 101").unwrap().as_str(), "Ownership 101");
/// assert!(LessonTitle::new("   ").is_err());
/// assert!(LessonTitle::new("two\nlines").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct LessonTitle(String);

impl LessonTitle {
    /// The longest title accepted, in characters (not bytes: titles are often not ASCII).
    pub const MAX_CHARS: usize = 200;

    /// Validates a title.
    ///
    /// # Errors
    /// [`ValidationError::Empty`], [`ValidationError::TooLong`] or
    /// [`ValidationError::ControlCharacter`].
    pub fn new(title: impl Into<String>) -> Result<Self, ValidationError> {
        let title = title.into();
        check_text("title", &title, Self::MAX_CHARS)?;
        Ok(Self(title))
    }

    /// The title as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LessonTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LessonTitle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A quiz score or maximum score: a finite, non-negative number.
///
/// ```
/// use edupulse_domain::Score;
/// assert_eq!(Score::new(0.8).unwrap().value(), 0.8);
/// assert!(Score::new(-1.0).is_err());
/// assert!(Score::new(f32::NAN).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Score(f32);

impl Score {
    /// Validates a score.
    ///
    /// # Errors
    /// [`ValidationError::NotFinite`] for NaN or infinities, [`ValidationError::Negative`] below 0.
    pub fn new(value: f32) -> Result<Self, ValidationError> {
        Self::named("score", value)
    }

    pub(crate) fn named(field: &'static str, value: f32) -> Result<Self, ValidationError> {
        if !value.is_finite() {
            return Err(ValidationError::NotFinite { field });
        }
        if value < 0.0 {
            return Err(ValidationError::Negative { field });
        }
        // Normalise -0.0, so equal scores serialize equally.
        Ok(Self(value + 0.0))
    }

    /// The value.
    pub fn value(self) -> f32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(f32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An amount of money in cents: never negative (refunds are events of their own).
///
/// ```
/// use edupulse_domain::AmountCents;
/// assert_eq!(AmountCents::new(4_990).unwrap().cents(), 4_990);
/// assert!(AmountCents::new(-1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AmountCents(i64);

impl AmountCents {
    /// Validates an amount.
    ///
    /// # Errors
    /// [`ValidationError::Negative`] below zero.
    pub fn new(cents: i64) -> Result<Self, ValidationError> {
        if cents < 0 {
            return Err(ValidationError::Negative {
                field: "amount_cents",
            });
        }
        Ok(Self(cents))
    }

    /// The amount in cents.
    pub fn cents(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for AmountCents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_validated() {
        assert!(LessonTitle::new("Ownership in Rust — Ünïcode ✓").is_ok());
        assert_eq!(
            LessonTitle::new("  "),
            Err(ValidationError::Empty { field: "title" })
        );
        assert!(matches!(
            LessonTitle::new("a".repeat(201)),
            Err(ValidationError::TooLong { len: 201, .. })
        ));
        assert!(LessonTitle::new("é".repeat(200)).is_ok());
        assert!(matches!(
            LessonTitle::new("line\nbreak"),
            Err(ValidationError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn scores_are_validated() {
        assert!(Score::new(f32::NAN).is_err());
        assert!(Score::new(f32::INFINITY).is_err());
        assert!(Score::new(-0.5).is_err());
        assert_eq!(
            Score::new(-0.0).unwrap().value().to_bits(),
            0.0f32.to_bits()
        );
        assert_eq!(Score::new(87.5).unwrap().value(), 87.5);
    }

    #[test]
    fn amounts_are_validated() {
        assert!(AmountCents::new(-1).is_err());
        assert_eq!(AmountCents::new(0).unwrap().cents(), 0);
        assert!(serde_json::from_str::<AmountCents>("-5").is_err());
    }
}
