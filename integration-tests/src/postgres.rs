//! PostgreSQL 15 containers: owned ones for fault tests ([`start_postgres`]),
//! the shared one of the test binary ([`shared_postgres`]) and migrated
//! per-test databases in it ([`fresh_database`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _};
use testcontainers::core::WaitFor;
use testcontainers::{ContainerRequest, GenericImage, ImageExt as _};
use tokio::sync::{Mutex, OnceCell};

use crate::docker::{self, HOST};
use crate::images::{POSTGRES_IMAGE, POSTGRES_TAG};

/// Superuser of the test containers.
pub const PG_USER: &str = "postgres";
/// Password of [`PG_USER`].
pub const PG_PASSWORD: &str = "edupulse-test";
/// Port PostgreSQL listens on inside the container.
pub const PG_PORT: u16 = 5432;
/// The server's readiness line, printed on stderr once per container start.
pub const PG_READY_LINE: &str = "database system is ready to accept connections";
/// Server arguments used by [`start_postgres`] and the shared container:
/// no fsync (test speed; a container stop or kill loses nothing with it).
/// The image itself keeps PostgreSQL's defaults, plus `max_connections=200`.
pub const DEFAULT_PG_ARGS: &[&str] = &["-c", "fsync=off"];
/// Name of the migrated template database in the shared container.
pub const TEMPLATE_DB: &str = "edupulse_template";
/// How long `start()` waits for PostgreSQL to accept queries again.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL container owned by the caller; removed when dropped.
///
/// Its port on 127.0.0.1 is fixed for the container's life: a pool made with
/// [`PgContainer::url`] reconnects by itself after [`PgContainer::start`].
pub struct PgContainer {
    managed: docker::Managed,
    port: AtomicU16,
}

impl std::fmt::Debug for PgContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgContainer")
            .field("id", &self.id())
            .field("port", &self.port())
            .finish()
    }
}

/// Starts a PostgreSQL container of the caller's own, with [`DEFAULT_PG_ARGS`].
///
/// # Panics
///
/// When the image cannot be built or the container does not become ready.
pub async fn start_postgres() -> PgContainer {
    start_postgres_with_args(DEFAULT_PG_ARGS).await
}

/// Starts a PostgreSQL container with these server arguments (e.g.
/// `["-c", "max_connections=20"]`), which replace [`DEFAULT_PG_ARGS`].
///
/// # Panics
///
/// When the image cannot be built or the container does not become ready.
pub async fn start_postgres_with_args(args: &[&str]) -> PgContainer {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    start_postgres_from(|image| image.with_cmd(args.clone())).await
}

/// Starts a PostgreSQL container whose request `finish` completes from the image (readiness
/// line and entrypoint set): it sets the command, and may copy files in or replace the
/// entrypoint. `POSTGRES_USER` and `POSTGRES_PASSWORD` are set after it.
///
/// # Panics
///
/// When the image cannot be built or the container does not become ready.
pub(crate) async fn start_postgres_from(
    finish: impl Fn(GenericImage) -> ContainerRequest<GenericImage>,
) -> PgContainer {
    let (container, ports) = docker::start_container(
        "postgres",
        || {
            finish(
                GenericImage::new(POSTGRES_IMAGE, POSTGRES_TAG)
                    .with_wait_for(WaitFor::message_on_stderr(PG_READY_LINE)),
            )
            .with_env_var("POSTGRES_USER", PG_USER)
            .with_env_var("POSTGRES_PASSWORD", PG_PASSWORD)
        },
        &[PG_PORT],
    )
    .await;
    PgContainer {
        managed: docker::Managed::new("postgres", container),
        port: AtomicU16::new(ports[0]),
    }
}

impl std::ops::Deref for PgContainer {
    type Target = docker::Managed;
    fn deref(&self) -> &docker::Managed {
        &self.managed
    }
}

impl PgContainer {
    /// The host port (on 127.0.0.1) PostgreSQL is published on.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// URL of the `postgres` database, as the superuser:
    /// `postgres://postgres:edupulse-test@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of `database`, as the superuser.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@{HOST}:{}/{database}",
            self.port()
        )
    }

    /// A pool on the `postgres` database (at most 5 connections).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub async fn pool(&self) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url())
            .await
    }

    /// Starts the stopped container again, re-reads its port and waits until
    /// PostgreSQL answers queries.
    ///
    /// # Panics
    ///
    /// When docker refuses or PostgreSQL is not ready within [`RESTART_TIMEOUT`].
    pub async fn start(&self) {
        let started = std::time::Instant::now();
        let port = self.restart_container(PG_PORT).await;
        self.port.store(port, Ordering::Relaxed);
        self.wait_ready(RESTART_TIMEOUT).await;
        eprintln!(
            "edupulse-test: postgres {} restarted, ready in {:.2?}",
            &self.id()[..12],
            started.elapsed()
        );
    }

    /// Waits until a new connection can run `SELECT 1`.
    ///
    /// # Panics
    ///
    /// On timeout.
    pub async fn wait_ready(&self, timeout: Duration) {
        let url = self.url();
        docker::poll_until("postgres", timeout, || async {
            let mut conn = PgConnection::connect(&url).await?;
            conn.execute("SELECT 1").await?;
            conn.close().await
        })
        .await;
    }
}

/// The shared container and the state of its template database.
struct SharedPostgres {
    pg: PgContainer,
    template: OnceCell<()>,
    create_lock: Mutex<()>,
}

static SHARED: OnceCell<SharedPostgres> = OnceCell::const_new();

async fn shared() -> &'static SharedPostgres {
    SHARED
        .get_or_init(|| async {
            SharedPostgres {
                pg: start_postgres().await,
                template: OnceCell::new(),
                create_lock: Mutex::new(()),
            }
        })
        .await
}

/// The PostgreSQL container shared by all tests of this test binary, started
/// on first use and removed when the process exits.
///
/// Do not pause, stop or kill it (other tests use it): start your own with
/// [`start_postgres`] for that.
///
/// # Panics
///
/// When it cannot be started.
pub async fn shared_postgres() -> &'static PgContainer {
    &shared().await.pg
}

/// A database of the test's own, in the shared container, with the
/// workspace's migrations (`edupulse_postgres::MIGRATOR`) applied.
///
/// It is created as a copy of a template database that is migrated once per
/// container ([`TEMPLATE_DB`]; connections to it are then disallowed, so no
/// session can make `CREATE DATABASE … TEMPLATE` fail). Creations are
/// serialized within the process. Costs ~0.2 s.
///
/// # Panics
///
/// When the container cannot be started, the migrations fail, or the database
/// cannot be created.
pub async fn fresh_database() -> TestDb {
    let shared = shared().await;
    let pg = &shared.pg;
    shared.template.get_or_init(|| create_template(pg)).await;

    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    {
        let _serialized = shared.create_lock.lock().await;
        let mut conn = PgConnection::connect(&pg.url())
            .await
            .unwrap_or_else(|e| panic!("connect to the shared postgres: {e}"));
        let sql = format!(r#"CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}""#);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match conn.execute(sql.as_str()).await {
                Ok(_) => break,
                // 55006: source database is being accessed by other users
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("55006") && attempt < 5 =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
        let _ = conn.close().await;
    }
    TestDb {
        url: pg.url_for(&name),
        admin_url: pg.url(),
        name,
    }
}

/// Creates and migrates [`TEMPLATE_DB`]; panics on failure (the `OnceCell`
/// then stays empty and the next test tries again).
async fn create_template(pg: &PgContainer) {
    let started = std::time::Instant::now();
    let mut admin = PgConnection::connect(&pg.url())
        .await
        .unwrap_or_else(|e| panic!("connect to the shared postgres: {e}"));
    // leftovers of a failed attempt
    for sql in [
        format!(r#"ALTER DATABASE "{TEMPLATE_DB}" WITH IS_TEMPLATE false"#),
        format!(r#"DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)"#),
    ] {
        let _ = admin.execute(sql.as_str()).await;
    }
    admin
        .execute(format!(r#"CREATE DATABASE "{TEMPLATE_DB}""#).as_str())
        .await
        .unwrap_or_else(|e| panic!("create the template database: {e}"));

    // One connection, closed before any copy is made (a connected session
    // makes CREATE DATABASE ... TEMPLATE fail).
    let mut conn = PgConnection::connect(&pg.url_for(TEMPLATE_DB))
        .await
        .unwrap_or_else(|e| panic!("connect to the template database: {e}"));
    edupulse_postgres::MIGRATOR
        .run(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("migrating the template database: {e}"));
    conn.close()
        .await
        .unwrap_or_else(|e| panic!("closing the template connection: {e}"));

    admin
        .execute(
            format!(
                r#"ALTER DATABASE "{TEMPLATE_DB}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"#
            )
            .as_str(),
        )
        .await
        .unwrap_or_else(|e| panic!("freeze the template database: {e}"));
    let _ = admin.close().await;
    eprintln!(
        "edupulse-test: template database migrated in {:.2?}",
        started.elapsed()
    );
}

/// A migrated database of one test, in the shared container (see
/// [`fresh_database`]). It is not dropped automatically (the container goes
/// at process exit); [`TestDb::drop_database`] drops it early.
#[derive(Debug, Clone)]
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    /// The database name (`test_<32 hex digits>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `postgres://postgres:edupulse-test@127.0.0.1:PORT/<name>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on this database (at most 5 connections).
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub async fn pool(&self) -> PgPool {
        self.pool_with(PgPoolOptions::new().max_connections(5))
            .await
    }

    /// A pool on this database with these options.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub async fn pool_with(&self, options: PgPoolOptions) -> PgPool {
        options
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// Drops the database, disconnecting its sessions (`WITH (FORCE)`).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or refuses.
    pub async fn drop_database(self) -> Result<(), sqlx::Error> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        conn.execute(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str())
            .await?;
        conn.close().await
    }
}

/// Picks a random active backend of the current database (not the caller's own, and whose
/// `application_name` starts with `$1`) and cancels its running statement.
const CANCEL_ONE_SQL: &str = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' \
       AND starts_with(application_name, $1) \
     ORDER BY random() LIMIT 1";

/// A task cancelling statements at random, started by [`cancel_statements_at_random`].
#[derive(Debug)]
pub struct StatementCanceller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl StatementCanceller {
    /// Stops the task and returns how many statements it cancelled.
    ///
    /// # Panics
    ///
    /// When the task failed (its queries are expected to succeed).
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the statement canceller failed")
    }
}

/// Starts a task that, every 1 to `max_pause` ms (uniform, drawn from `seed`), cancels the
/// running statement of one random active backend of the database at `url`, its own connection
/// excluded, among those whose `application_name` starts with `application` (all of them when
/// it is empty). A cancelled statement fails with SQLSTATE 57014 (`query_canceled`), as on a
/// `statement_timeout`; in a transaction, the transaction is aborted.
///
/// # Panics
///
/// When the database cannot be reached.
pub async fn cancel_statements_at_random(
    url: &str,
    application: &str,
    max_pause: Duration,
    seed: u64,
) -> StatementCanceller {
    let mut conn = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect the statement canceller: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let application = application.to_owned();
    let max_pause_ms = max_pause.as_millis().max(1) as u64;
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut state = seed;
            let mut cancelled = 0;
            while !stop.load(Ordering::SeqCst) {
                // SplitMix64: enough randomness for pauses, and no dependency.
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let pause = 1 + (z ^ (z >> 31)) % max_pause_ms;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let hit: Option<bool> = sqlx::query_scalar(CANCEL_ONE_SQL)
                    .bind(&application)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("cancel a statement: {e}"));
                cancelled += u64::from(hit == Some(true));
            }
            let _ = conn.close().await;
            cancelled
        }
    });
    StatementCanceller { stop, task }
}
