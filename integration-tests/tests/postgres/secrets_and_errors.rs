//! The password never shows; errors are classified (retryable or not).

use crate::support::{config, event, store_on};
use edupulse_integration_tests::{fresh_database, shared_postgres};
use edupulse_ports::StoreError;
use edupulse_postgres::PgEventStore;

const PASSWORD: &str = "Sup3r-Secret-Pa55word";

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = format!("{error} / {error:?}");
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(" / {e} / {e:?}"));
        source = e.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears() {
    let pg = shared_postgres().await;
    let db = fresh_database().await;
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{}",
        pg.port(),
        db.name()
    );
    let config = config(&url);
    let shown = format!("{config:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains(db.name()), "the target is shown: {shown}");

    // Wrong password: refused, not retryable, and the message does not quote it.
    let error = PgEventStore::connect(&config)
        .await
        .expect_err("wrong password");
    assert!(matches!(error, StoreError::Internal(_)), "{error:?}");
    let text = chain(&error);
    assert!(!text.contains(PASSWORD), "{text}");

    // Nothing listening: retryable.
    let closed = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/x");
    let error = PgEventStore::connect(&config_for(&closed))
        .await
        .expect_err("nothing listens on port 1");
    assert!(error.is_retryable(), "{error:?}");
    assert!(!chain(&error).contains(PASSWORD));

    // Not a URL at all.
    let error = PgEventStore::connect(&config_for(&format!("postgres://u:{PASSWORD}@h:port/x")))
        .await
        .expect_err("bad url");
    assert!(
        matches!(error, StoreError::InvalidInput { .. }),
        "{error:?}"
    );
    assert!(!chain(&error).contains(PASSWORD));
}

fn config_for(url: &str) -> edupulse_postgres::PgStoreConfig {
    let mut c = config(url);
    c.acquire_timeout = std::time::Duration::from_secs(2);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_does_not_decode_is_reported_as_corrupted_with_its_position() {
    use edupulse_domain::{EventId, StreamId};
    use edupulse_ports::EventReader;

    let db = fresh_database().await;
    let store = crate::support::store_on(&db).await;
    let id = EventId::new();
    let stream = StreamId::from_uuid(*id.as_uuid());
    // Written behind the store's back: a LessonPublished whose title breaks the domain's rule.
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (commit_key, event_id, stream_id, stream_version, event_type, \
                             schema_version, occurred_at, metadata, payload) \
         VALUES (pg_current_xact_id()::text::int8, $1, $1, 1, 'LessonPublished', 1, now(), '{}', \
                 jsonb_build_object('lesson_id', $1, 'author_id', $1, 'title', '')) \
         RETURNING position",
    )
    .bind(id.as_uuid())
    .fetch_one(store.pool())
    .await
    .expect("insert a bad row");
    match store.read_stream(stream, 1, 10).await {
        Err(StoreError::Corrupted { position: p, .. }) => assert_eq!(p as i64, position),
        other => panic!("expected corrupted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_its_schema_says_to_migrate() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    // As before `migrate`: the table the append needs does not exist.
    sqlx::query("ALTER TABLE events RENAME TO events_elsewhere")
        .execute(store.pool())
        .await
        .expect("rename");
    let stream = edupulse_domain::StreamId::new();
    let error = edupulse_ports::EventAppender::append(
        &store,
        stream,
        edupulse_domain::ExpectedVersion::Any,
        vec![event(stream)],
    )
    .await
    .expect_err("no table");
    assert!(matches!(error, StoreError::SchemaMissing(_)), "{error:?}");
    assert!(!error.is_retryable());
    let text = chain(&error);
    assert!(text.contains("edupulse-events migrate"), "{text}");
    assert!(text.contains("events"), "the cause names the table: {text}");
}
