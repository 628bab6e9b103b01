//! PostgreSQL: migrated per-test databases, pause/unpause, stop/start.

use std::time::Duration;

use edupulse_integration_tests::{fresh_database, start_postgres};
use sqlx::postgres::PgConnection;
use sqlx::{Connection as _, Executor as _, Row as _};

#[tokio::test]
async fn fresh_database_is_migrated_and_private() {
    let (a, b) = tokio::join!(fresh_database(), fresh_database());
    assert_ne!(a.name(), b.name());
    assert!(a.url().starts_with("postgres://postgres:"));
    assert!(a.url().contains("@127.0.0.1:"), "{}", a.url());

    let pool_a = a.pool().await;
    let pool_b = b.pool().await;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool_a)
        .await
        .unwrap();
    assert_eq!(db, a.name());

    // the migrations ran: one row per migration of edupulse_postgres::MIGRATOR
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool_a)
        .await
        .unwrap();
    assert_eq!(applied as usize, edupulse_postgres::MIGRATOR.iter().count());

    // what one test does is not seen by another
    pool_a
        .execute("CREATE TABLE smoke_private (id int)")
        .await
        .unwrap();
    let seen_in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('smoke_private')::text")
        .fetch_one(&pool_b)
        .await
        .unwrap();
    assert_eq!(seen_in_b, None);

    pool_a.close().await;
    pool_b.close().await;
    a.drop_database().await.unwrap();
}

#[tokio::test]
async fn many_fresh_databases_in_parallel() {
    let dbs = futures::future::join_all((0..8).map(|_| fresh_database())).await;
    let mut names: Vec<&str> = dbs.iter().map(|d| d.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 8);
    for db in &dbs {
        let mut conn = PgConnection::connect(db.url()).await.unwrap();
        let row = conn.fetch_one("SELECT 1 AS one").await.unwrap();
        assert_eq!(row.get::<i32, _>("one"), 1);
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn postgres_pause_and_unpause() {
    let pg = start_postgres().await;
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    conn.execute("SELECT 1").await.unwrap();

    pg.pause().await;
    let hung = tokio::time::timeout(Duration::from_millis(800), conn.execute("SELECT 1")).await;
    assert!(hung.is_err(), "a paused server must not answer");
    drop(conn);

    pg.unpause().await;
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT 41 + 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 42);
}

#[tokio::test]
async fn postgres_stop_and_start_keeps_data() {
    let pg = start_postgres().await;
    let url_before = pg.url();
    let pool = pg.pool().await.unwrap();
    pool.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')")
        .await
        .unwrap();

    pg.stop().await;
    assert!(
        PgConnection::connect(&pg.url()).await.is_err(),
        "a stopped server must refuse connections"
    );

    pg.start().await;
    assert_eq!(
        pg.url(),
        url_before,
        "the host port is fixed across restarts"
    );
    // the pool made before the restart reconnects by itself
    let v: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(v, "before restart");
}
