//! The wire body of a stored event, built from the text the store kept rather than from a second
//! encoding of the typed payload.
//!
//! A store that keeps the payload exactly as [`EventEnvelope::payload_json`] wrote it (PostgreSQL's
//! `json` type keeps text as given) can hand a follower the envelope's bytes with the payload
//! copied, not re-encoded: [`StoredEnvelope::into_envelope_and_body`]. The payload is still decoded
//! once, because a follower must refuse a stored row that is not a valid event (one written by
//! hand, or by an older build) instead of sending it on; its encoding is what is saved. The
//! metadata is small and decoded anyway (its values become message headers), so it is written
//! from its typed form, in its one canonical order.

use crate::envelope::{PayloadRef, PayloadSource};
use crate::events::INFALLIBLE_JSON;
use crate::{DecodeError, EventEnvelope, StoredEnvelope};
use serde::Serialize;

impl EventEnvelope {
    /// The payload as [`EventEnvelope::encode`] writes it inside the envelope: compact JSON, fields
    /// in declaration order. A store that keeps exactly this text can serve the envelope's bytes
    /// without encoding the payload again ([`StoredEnvelope::into_envelope_and_body`]).
    pub fn payload_json(&self) -> String {
        serde_json::to_string(&PayloadRef(&self.event)).expect(INFALLIBLE_JSON)
    }

    /// The metadata as [`EventEnvelope::encode`] writes it inside the envelope.
    pub fn metadata_json(&self) -> String {
        serde_json::to_string(&self.metadata).expect(INFALLIBLE_JSON)
    }
}

impl StoredEnvelope<'_> {
    /// Upcasts and validates as [`StoredEnvelope::into_envelope`], and gives the envelope's wire
    /// bytes with it.
    ///
    /// For a known type at its current schema version (nearly every stored event) the bytes carry
    /// the stored payload text as it is: when the store kept [`EventEnvelope::payload_json`], they
    /// are exactly [`EventEnvelope::encode`]'s. Older versions (upcast) and unknown types are
    /// encoded from the decoded envelope.
    ///
    /// # Errors
    /// As [`StoredEnvelope::into_envelope`].
    pub fn into_envelope_and_body(self) -> Result<(EventEnvelope, Vec<u8>), DecodeError> {
        let (envelope, source) = self.decode()?;
        let body = match source {
            PayloadSource::StoredText => self.body_around_payload(&envelope),
            PayloadSource::Converted => envelope.encode(),
        };
        Ok((envelope, body))
    }

    /// The envelope's fields around the stored payload text, in the order and spelling of the
    /// envelope's `Wire` form (a property test holds the two together); `envelope` is this
    /// row decoded, for its metadata.
    fn body_around_payload(&self, envelope: &EventEnvelope) -> Vec<u8> {
        // Enough for the stored metadata's length (its encoding, as stored by the appender) and
        // the rest, so the body neither grows while written nor keeps spare capacity: the fixed
        // keys and punctuation, two ids, a timestamp and a version take at most 208 bytes.
        let mut out = Vec::with_capacity(
            208 + self.metadata.len() + self.event_type.len() + self.payload.len(),
        );
        out.extend_from_slice(b"{\"id\":");
        put(&mut out, &self.id);
        out.extend_from_slice(b",\"aggregate_id\":");
        put(&mut out, &self.aggregate_id);
        out.extend_from_slice(b",\"occurred_at\":");
        put(&mut out, &self.occurred_at);
        out.extend_from_slice(b",\"version\":");
        put(&mut out, &self.version);
        out.extend_from_slice(b",\"metadata\":");
        put(&mut out, &envelope.metadata);
        out.extend_from_slice(b",\"event\":{\"type\":");
        put(&mut out, self.event_type);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.as_bytes());
        out.extend_from_slice(b"}}");
        out
    }
}

fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect(INFALLIBLE_JSON);
}
