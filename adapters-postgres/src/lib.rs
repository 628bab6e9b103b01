//! Placeholder: the PostgreSQL adapter (see issue 4).

/// The embedded schema migrations; run with `MIGRATOR.run(&pool)`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
