//! The events table is append-only, whoever asks: the owner is stopped by triggers, the
//! application role by its privileges.

use crate::support::{event, events, store_on};
use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_integration_tests::fresh_database;
use edupulse_ports::{CheckpointStore, Cursor, EventAppender, EventReader};
use edupulse_postgres::{APPEND_ONLY_SQLSTATE, append_in_transaction};
use sqlx::{Connection, PgConnection};

const MUTATIONS: [&str; 4] = [
    "UPDATE events SET event_type = 'Forged'",
    "UPDATE events SET payload = '{}'::jsonb WHERE stream_version = 1",
    "DELETE FROM events",
    "TRUNCATE events",
];

fn sqlstate(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_cannot_update_delete_or_truncate() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let stream = StreamId::new();
    store
        .append(stream, ExpectedVersion::NoStream, events(stream, 3))
        .await
        .expect("append");
    let mut conn = PgConnection::connect(db.url()).await.expect("connect");
    for sql in MUTATIONS {
        assert_eq!(
            sqlstate(sqlx::query(sql).execute(&mut conn).await),
            APPEND_ONLY_SQLSTATE,
            "{sql}"
        );
    }
    assert_eq!(
        store.read_stream(stream, 1, 10).await.expect("read").len(),
        3,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_may_only_read_and_append() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let stream = StreamId::new();
    store
        .append(stream, ExpectedVersion::NoStream, events(stream, 2))
        .await
        .expect("append");

    let mut conn = PgConnection::connect(db.url()).await.expect("connect");
    sqlx::query("SET ROLE edupulse_app")
        .execute(&mut conn)
        .await
        .expect("set role");
    for sql in MUTATIONS {
        // Privileges are checked before triggers run: 42501 insufficient_privilege.
        assert_eq!(
            sqlstate(sqlx::query(sql).execute(&mut conn).await),
            "42501",
            "{sql}"
        );
    }
    // What the role is for works: appending (in a transaction of the role's session) and reading.
    let mut tx = conn.begin().await.expect("begin");
    let out = append_in_transaction(
        &mut tx,
        stream,
        ExpectedVersion::Exact(2),
        vec![event(stream)],
    )
    .await
    .expect("the role can append");
    assert_eq!(out.last_version(), 3);
    tx.commit().await.expect("commit");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut conn)
        .await
        .expect("the role can read");
    assert_eq!(count, 3);
    // Checkpoints and dead letters: insert and update, nothing else.
    sqlx::query(
        "INSERT INTO relay_checkpoints (name, commit_key, position) VALUES ('r', 1, 1) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )
    .execute(&mut conn)
    .await
    .expect("the role can save checkpoints");
    assert_eq!(
        sqlstate(
            sqlx::query("DELETE FROM relay_checkpoints")
                .execute(&mut conn)
                .await
        ),
        "42501"
    );
    assert_eq!(
        sqlstate(sqlx::query("DROP TABLE events").execute(&mut conn).await),
        "42501"
    );
    assert_eq!(
        store.read_stream(stream, 1, 10).await.expect("read").len(),
        3
    );
    // The store's own checkpoint upsert is within the role's rights too.
    store
        .save(
            "r",
            Cursor {
                commit: 2,
                position: 2,
            },
            0,
        )
        .await
        .expect("save");
}
