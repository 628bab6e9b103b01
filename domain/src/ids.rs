use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Hyphenated lowercase: also a valid NATS subject token.
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        /// A UUID string in the published JSON Schemas; the field that holds it describes it.
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                Uuid::json_schema(generator)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// The unique id of one event, also its deduplication key at the broker (`Nats-Msg-Id`).
    ///
    /// New ids are UUID v7: time-ordered, so the store's unique index on ids stays append-friendly.
    EventId
);

uuid_id!(
    /// The id of a stream: the aggregate (lesson, quiz, invoice…) whose events it orders.
    ///
    /// ```
    /// use edupulse_domain::{StreamId, Uuid};
    /// // An aggregate's events share its id as their stream: a lesson's, for example.
    /// let lesson = Uuid::new_v4();
    /// let stream = StreamId::from_uuid(lesson);
    /// assert_eq!(stream.as_uuid(), &lesson);
    /// assert_eq!(stream.to_string().parse::<StreamId>().unwrap(), stream);
    /// ```
    StreamId
);

impl EventId {
    /// A new time-ordered (v7) event id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamId {
    /// A new random stream id, for a new aggregate.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for StreamId {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_and_parse_round_trip() {
        let id = EventId::new();
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert!("not-a-uuid".parse::<StreamId>().is_err());
    }
}
