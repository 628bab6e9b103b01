//! Classification of driver errors into [`StoreError`], by SQLSTATE and error kind only (never by
//! message text: messages are localised and change between versions).

use edupulse_ports::StoreError;

/// SQLSTATE raised by the append-only triggers of the `events` table on UPDATE, DELETE and
/// TRUNCATE. Dedicated to this schema, so a refusal is recognised by code.
pub const APPEND_ONLY_SQLSTATE: &str = "EP001";

/// SQLSTATE raised when an INSERT into `events` leaves a gap in a stream's versions (version v
/// with no v - 1 stored). The store numbers versions itself; only a hand-written row meets it.
pub const VERSION_GAP_SQLSTATE: &str = "EP002";

/// SQLSTATE raised when an INSERT into `events` carries a `commit_key` other than the one the
/// store computes (the transaction id, raised to the stream's previous key): a key that would
/// hide the event from the relay or stall its stream.
pub const COMMIT_KEY_SQLSTATE: &str = "EP003";

/// Unique constraint on `events (event_id)`.
pub(crate) const EVENT_ID_KEY: &str = "events_event_id_key";
/// Unique constraint on `events (stream_id, stream_version)`.
pub(crate) const STREAM_VERSION_KEY: &str = "events_stream_version_key";

const UNIQUE_VIOLATION: &str = "23505";

/// A unique violation, by the constraint it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UniqueViolation {
    /// Another transaction appended the same stream version first.
    StreamVersion,
    /// An event id is already stored.
    EventId,
}

/// Which of our unique constraints `error` violated, if it is such a violation.
pub(crate) fn unique_violation(error: &sqlx::Error) -> Option<UniqueViolation> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    if db.code().as_deref() != Some(UNIQUE_VIOLATION) {
        return None;
    }
    match db.constraint() {
        Some(STREAM_VERSION_KEY) => Some(UniqueViolation::StreamVersion),
        Some(EVENT_ID_KEY) => Some(UniqueViolation::EventId),
        _ => None,
    }
}

/// Whether a SQLSTATE means "try again later": the operation was cut short, not refused.
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        // serialization_failure, deadlock_detected: the transaction lost a race.
        "40001" | "40P01"
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is going away or starting.
        | "57P01" | "57P02" | "57P03"
        // query_canceled (statement_timeout), lock_not_available (lock_timeout).
        | "57014" | "55P03"
        // too_many_connections.
        | "53300"
    ) || code.starts_with("08") // connection exceptions
}

/// Maps a driver error to the port's error.
///
/// Retryable: lost or refused connections, pool exhaustion, shutdowns, serialization failures,
/// deadlocks, timeouts. Everything else is [`StoreError::Internal`] (a missing table, a denied
/// privilege, a bug), which an operator must look at.
pub(crate) fn map_sqlx(error: sqlx::Error) -> StoreError {
    if is_tls_refusal(&error) {
        StoreError::Internal(Box::new(TlsRefused(error)))
    } else if is_transient_error(&error) {
        StoreError::Unavailable(Box::new(error))
    } else if is_schema_missing(&error) {
        StoreError::SchemaMissing(Box::new(error))
    } else if is_permission_denied(&error) {
        StoreError::PermissionDenied(Box::new(error))
    } else {
        StoreError::Internal(Box::new(error))
    }
}

/// Whether the error says an object of the schema does not exist: undefined_table,
/// undefined_column, undefined_function (migrations not applied, or older than this build).
fn is_schema_missing(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    matches!(db.code().as_deref(), Some("42P01" | "42703" | "42883"))
}

/// Whether the server refused the login the privilege (insufficient_privilege).
fn is_permission_denied(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.code().as_deref() == Some("42501")
}

/// The same classification for an error several callers share (a failed group append): each
/// gets its own error carrying the driver error's text.
pub(crate) fn shared_failure(error: &sqlx::Error) -> StoreError {
    if is_transient_error(error) {
        unavailable(error.to_string())
    } else if is_schema_missing(error) {
        StoreError::SchemaMissing(Box::new(AdapterError(error.to_string())))
    } else if is_permission_denied(error) {
        StoreError::PermissionDenied(Box::new(AdapterError(error.to_string())))
    } else {
        internal(error.to_string())
    }
}

/// The TLS handshake with the server failed: its certificate is not trusted (`sslrootcert`) or
/// does not name the host (`sslmode=verify-full`), or it refused the client's certificate. A
/// configuration mistake on one side: retrying does not help, so it is not `Unavailable`.
#[derive(Debug, thiserror::Error)]
#[error("TLS with PostgreSQL failed")]
pub(crate) struct TlsRefused(#[source] sqlx::Error);

/// Whether a rustls error is behind `error` (the driver reports a failed handshake as an I/O
/// or a TLS error carrying it). A connection lost during the handshake carries an I/O error
/// instead, and stays retryable.
fn is_tls_refusal(error: &sqlx::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && inner.is::<rustls::Error>()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

fn is_transient_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient(&code)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // A handshake answered with something unexpected: a server restarting behind a port
        // proxy accepts the TCP connection and answers the TLS negotiation (`SSLRequest`, sent
        // whenever `sslmode` is `prefer`, the default) with garbage or nothing. The connection
        // is dropped; a new one succeeds once the server is up.
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// `error` and its causes, as one message (for an error several callers share, each of whom
/// gets its own copy as text).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        cause = e.source();
    }
    message
}

/// A failure of this adapter that is not a driver error (a stored value out of range, a writer
/// task that went away). Its text never contains connection details.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AdapterError(pub(crate) String);

pub(crate) fn internal(message: impl Into<String>) -> StoreError {
    StoreError::Internal(Box::new(AdapterError(message.into())))
}

pub(crate) fn unavailable(message: impl Into<String>) -> StoreError {
    StoreError::Unavailable(Box::new(AdapterError(message.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in [
            "40001", "40P01", "57P01", "08006", "08001", "53300", "57014",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["23505", "42501", "42P01", "EP001", "22P02"] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn shared_messages_carry_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] AdapterError);

        assert_eq!(with_causes(&AdapterError("alone".into())), "alone");
        assert_eq!(
            with_causes(&Outer(AdapterError("inner".into()))),
            "outer: inner"
        );
    }

    #[test]
    fn a_refused_certificate_is_not_retryable() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let error = map_sqlx(sqlx::Error::Io(refused));
        assert!(matches!(error, StoreError::Internal(_)), "{error:?}");
        // (The driver's own message already quotes its cause, which follows it.)
        assert!(
            with_causes(&error).starts_with(
                "event store failure: TLS with PostgreSQL failed: error communicating with \
                 database: invalid peer certificate: UnknownIssuer"
            ),
            "{error:?}"
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(map_sqlx(sqlx::Error::Io(reset)).is_retryable());
    }

    #[test]
    fn a_garbled_handshake_is_retryable() {
        let garbled = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        assert!(map_sqlx(garbled).is_retryable());
    }

    #[test]
    fn pool_errors_are_retryable() {
        assert!(map_sqlx(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(map_sqlx(sqlx::Error::PoolClosed).is_retryable());
        assert!(!map_sqlx(sqlx::Error::RowNotFound).is_retryable());
    }
}
