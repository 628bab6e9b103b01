use crate::{DecodeError, DomainEvent, event_types};
use serde_json::Value;

/// Lifts a payload written with an older schema version to the current version of its type.
///
/// Stored events are never rewritten: every reader upcasts on the fly. Each step documents the
/// default it fills in. Unknown types, and versions newer than this build knows, are returned as
/// they are (the caller turns them into [`DomainEvent::Unknown`]).
///
/// Steps:
/// - `QuizSubmitted` v1 → v2 adds `max_score`. Seed-era scores were percentages, so the default is
///   `100.0`; a v1 score above 100 (v1 never capped scores) gets its own score as the maximum, so
///   every stored v1 event stays readable.
///
/// # Errors
/// [`DecodeError::UnsupportedVersion`] for version 0, which was never written.
///
/// ```
/// use edupulse_domain::upcast;
/// let (v, payload) = upcast("QuizSubmitted", 1, serde_json::json!({"score": 87.5})).unwrap();
/// assert_eq!(v, 2);
/// assert_eq!(payload["max_score"], 100.0);
/// ```
pub fn upcast(event_type: &str, version: u16, payload: Value) -> Result<(u16, Value), DecodeError> {
    let Some(current) = DomainEvent::current_version_of(event_type) else {
        return Ok((version, payload));
    };
    if version == 0 {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_owned(),
            version,
            known: current,
        });
    }
    let (mut version, mut payload) = (version, payload);
    while version < current {
        payload = match (event_type, version) {
            (event_types::QUIZ_SUBMITTED, 1) => quiz_submitted_v1_to_v2(payload),
            // Every type's history is listed above; a missing step is a bug of this crate, and
            // the payload will then fail to decode with a typed error rather than panic.
            _ => payload,
        };
        version += 1;
    }
    Ok((version, payload))
}

fn quiz_submitted_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(map) = &mut payload {
        let score = map.get("score").and_then(Value::as_f64).unwrap_or(0.0);
        map.entry("max_score")
            .or_insert_with(|| Value::from(score.max(100.0)));
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quiz_v1_gets_a_maximum() {
        let (v, p) = upcast("QuizSubmitted", 1, json!({"score": 120.0})).unwrap();
        assert_eq!((v, p["max_score"].as_f64()), (2, Some(120.0)));
        let (v, p) = upcast("QuizSubmitted", 2, json!({"score": 1.0, "max_score": 5.0})).unwrap();
        assert_eq!((v, p["max_score"].as_f64()), (2, Some(5.0)));
    }

    #[test]
    fn unknown_and_newer_versions_pass_through() {
        assert_eq!(upcast("Other", 7, json!(1)).unwrap(), (7, json!(1)));
        assert_eq!(upcast("QuizSubmitted", 9, json!(1)).unwrap(), (9, json!(1)));
        assert!(upcast("QuizSubmitted", 0, json!({})).is_err());
    }
}
