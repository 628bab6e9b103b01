//! Security: the application role, as a LOGIN role with its own password, runs the whole
//! backbone but cannot rewrite history; a writer's login and a relay's login each do their job
//! and nothing else, and no INSERT can break the rules the relay relies on; and a password given in `DATABASE_URL` (or in the NATS
//! URL) never appears in the output of the `relay` command, even at `RUST_LOG=debug`, whatever
//! goes wrong (the CLI runs in a child process whose stdout and stderr are captured).

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser as _;
use edupulse_app::cli::{Cli, Command};
use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_integration_tests::{fresh_database, shared_nats, shared_postgres, unique_name};
use sqlx::{Connection as _, PgConnection};

use crate::child;
use crate::workload::{Run, append_until_acknowledged, event};

const SENTINEL: &str = "S3ntinel-Pa55w0rd-7f3a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_as_a_login_runs_everything_but_cannot_rewrite_events() {
    let pg = shared_postgres().await;
    let db = fresh_database().await;
    let role = unique_name("edupulse_login").to_lowercase();
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(db.url()).await.expect("connect");
    sqlx::query(&format!(
        r#"CREATE ROLE "{role}" LOGIN PASSWORD '{password}' IN ROLE edupulse_app"#
    ))
    .execute(&mut admin)
    .await
    .expect("create the login role");
    let url = format!(
        "postgres://{role}:{password}@127.0.0.1:{}/{}",
        pg.port(),
        db.name()
    );

    // The whole backbone as that role: appends, relay (lease, hints, checkpoints), consumer.
    let nats = shared_nats().await;
    let run = Run::start("app_role", &url, vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    run.append_some(2, 50).await;
    let stream = StreamId::new();
    append_until_acknowledged(
        &*run.backbone.store,
        &run.history,
        stream,
        ExpectedVersion::NoStream,
        vec![event(stream, &run.name, 1)],
        Duration::from_secs(30),
    )
    .await
    .expect("append as the role");

    let mut figures = run.finish("app_login_role", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.notes = "everything as a LOGIN role member of edupulse_app".into();
    figures.report_and_check();

    // ...but history cannot be rewritten: privileges refuse before any trigger runs.
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect as the role");
    for sql in [
        "UPDATE events SET payload = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
        "DELETE FROM relay_dead_letters",
        "UPDATE relay_dead_letters SET reason = ''",
    ] {
        match sqlx::query(sql).execute(&mut conn).await {
            Err(sqlx::Error::Database(e)) => {
                assert_eq!(e.code().as_deref(), Some("42501"), "{sql}: {e}");
            }
            other => panic!("{sql}: expected insufficient_privilege, got {other:?}"),
        }
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut conn)
        .await
        .expect("the role reads");
    assert_eq!(count as u64, figures.acknowledged);
}

/// The child: the `relay` command of the CLI, configured from the environment only, as a
/// deployment would run it; prints the error chain on one line like `main` does.
pub(crate) async fn cli_relay_child() {
    let cli = Cli::try_parse_from(["edupulse-events", "relay"]).unwrap_or_else(|e| e.exit());
    edupulse_app::telemetry::init_tracing(cli.global.log_format, "info");
    let Command::Relay(args) = cli.command else {
        unreachable!("parsed as relay")
    };
    match edupulse_app::commands::relay(&args).await {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            // As `main` does: the chain on one line, a cause repeated by its parent skipped.
            let mut line = format!("relay: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !line.ends_with(&text) {
                    line.push_str(": ");
                    line.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("error: {line}");
            std::process::exit(1);
        }
    }
}

/// Runs the CLI's `relay` in a child process with these URLs, at `RUST_LOG=debug`; returns its
/// exit success and its whole output (stdout then stderr).
async fn run_relay_command(database_url: &str, nats_url: &str) -> (bool, String, String) {
    let name = unique_name("sentinel");
    let mut cmd = child::command("cli-relay");
    cmd.env("DATABASE_URL", database_url)
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "debug")
        .env("EDUPULSE_NATS_STREAM", name.to_uppercase())
        .env("EDUPULSE_SUBJECT_PREFIX", &name)
        .env("EDUPULSE_RELAY_NAME", &name)
        .env("EDUPULSE_METRICS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the relay command gives up in time")
        .expect("run the relay command");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_urls_never_appears_in_the_output() {
    let pg = shared_postgres().await;
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let cases = [
        (
            "nothing listening",
            format!("postgres://app:{SENTINEL}@127.0.0.1:1/edupulse"),
            nats.url(),
            "PostgreSQL",
        ),
        (
            "unknown host",
            format!("postgres://app:{SENTINEL}@db.invalid:5432/edupulse"),
            nats.url(),
            "PostgreSQL",
        ),
        (
            "wrong password",
            format!(
                "postgres://postgres:{SENTINEL}@127.0.0.1:{}/{}",
                pg.port(),
                db.name()
            ),
            nats.url(),
            "PostgreSQL",
        ),
        (
            "malformed URL",
            format!("postgres://app:{SENTINEL}@127.0.0.1:notaport/edupulse"),
            nats.url(),
            "PostgreSQL",
        ),
        (
            "NATS password, nothing listening",
            db.url().to_owned(),
            format!("nats://app:{SENTINEL}@127.0.0.1:1"),
            "NATS",
        ),
    ];
    for (what, database_url, nats_url, names) in cases {
        let (success, stdout, stderr) = run_relay_command(&database_url, &nats_url).await;
        let all = format!("{stdout}{stderr}");
        assert!(!success, "{what}: the relay must fail");
        assert!(
            !all.contains(SENTINEL),
            "{what}: the password leaked:\n{all}"
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error line:\n{stderr}");
        assert!(
            errors[0].contains(names),
            "{what}: the error names {names}: {}",
            errors[0]
        );
        eprintln!(
            "{what}: {} ({} lines of debug output checked)",
            errors[0],
            all.lines().count()
        );
    }
}

/// Creates a LOGIN role member of `group` in the cluster; returns its URL to `db`.
async fn login_in(db: &edupulse_integration_tests::TestDb, group: &str) -> String {
    let pg = shared_postgres().await;
    let role = unique_name(group).to_lowercase();
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(db.url()).await.expect("connect");
    sqlx::query(&format!(
        r#"CREATE ROLE "{role}" LOGIN PASSWORD '{password}' IN ROLE {group}"#
    ))
    .execute(&mut admin)
    .await
    .expect("create the login role");
    format!(
        "postgres://{role}:{password}@127.0.0.1:{}/{}",
        pg.port(),
        db.name()
    )
}

/// One refusal: who tried what, and the SQLSTATE the server answered (`None`: accepted).
struct Attempt {
    login: &'static str,
    what: &'static str,
    sql: String,
    expected: &'static str,
}

/// Runs each attempt on its own connection as its login; returns the table rows, asserting
/// each was refused with its SQLSTATE.
async fn refusals(urls: &[(&'static str, &str)], attempts: Vec<Attempt>) -> Vec<String> {
    let mut rows = Vec::new();
    for attempt in attempts {
        let url = urls
            .iter()
            .find(|(login, _)| *login == attempt.login)
            .map(|(_, url)| *url)
            .expect("a known login");
        let mut conn = PgConnection::connect(url).await.expect("connect");
        let code = match sqlx::query(&attempt.sql).execute(&mut conn).await {
            Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            Err(e) => panic!("{}: {e}", attempt.what),
            Ok(_) => None,
        };
        assert_eq!(
            code.as_deref(),
            Some(attempt.expected),
            "{} as {}: {}",
            attempt.what,
            attempt.login,
            attempt.sql
        );
        rows.push(format!(
            "| {} | {} | refused, SQLSTATE {} |",
            attempt.login, attempt.what, attempt.expected
        ));
    }
    rows
}

/// A raw row for `stream` at `version` with `commit_key` (an SQL expression).
fn raw_insert(stream: uuid::Uuid, version: i64, commit_key: &str) -> String {
    format!(
        "INSERT INTO events (commit_key, event_id, stream_id, stream_version, aggregate_id, \
                             event_type, schema_version, occurred_at, payload) \
         VALUES ({commit_key}, '{}', '{stream}', {version}, '{stream}', 'BadgeAwarded', 1, now(), \
                 jsonb_build_object('badge_id', '{stream}', 'recipient_id', '{stream}'))",
        uuid::Uuid::new_v4()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_job_and_nothing_else() {
    let db = fresh_database().await;
    let writer = login_in(&db, "edupulse_writer").await;
    let relay_url = login_in(&db, "edupulse_relay").await;

    // The backbone with a writer's login for the services and a relay's login for the relay.
    let nats = shared_nats().await;
    let run = Run::start("roles", &writer, vec![nats.url()]).await;
    let relay_backbone = edupulse_app::wiring::Backbone::connect(
        &crate::workload::pg_config(&relay_url),
        run.nats.clone(),
    )
    .await
    .expect("the relay's login connects");
    let relay = edupulse_app::wiring::spawn_relay(relay_backbone.relay(run.relay_config()), None)
        .await
        .expect("spawn the relay as its login");
    run.append_some(2, 50).await;
    // The relay's login cannot append through the store either, with a typed error.
    let stream = StreamId::new();
    let refused = edupulse_ports::EventAppender::append(
        &*relay_backbone.store,
        stream,
        ExpectedVersion::NoStream,
        vec![event(stream, &run.name, 1)],
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(edupulse_ports::StoreError::PermissionDenied(_))
        ),
        "{refused:?}"
    );
    let mut figures = run
        .finish("roles_writer_and_relay_logins", &HashSet::new())
        .await;
    Run::stop_relay(relay).await;
    figures.notes =
        "services as an edupulse_writer login, the relay as an edupulse_relay login".into();
    figures.report_and_check();

    // Everything outside each role's job is refused, with the SQLSTATE a caller sees.
    let (old, fresh) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let mut conn = PgConnection::connect(&writer).await.expect("connect");
    sqlx::query(&raw_insert(old, 1, "pg_current_xact_id()::text::int8"))
        .execute(&mut conn)
        .await
        .expect("a hand-written row that keeps the rules is stored");
    let forged = |what, sql: String, expected| Attempt {
        login: "writer",
        what,
        sql,
        expected,
    };
    let mut attempts = vec![
        forged(
            "INSERT a commit key below the transaction's (0)",
            raw_insert(fresh, 1, "0"),
            "EP003",
        ),
        forged(
            "INSERT a commit key far above it (i64::MAX)",
            raw_insert(fresh, 1, "9223372036854775807"),
            "EP003",
        ),
        forged(
            "INSERT version 2 with the commit key of a transaction long gone",
            raw_insert(old, 2, "1"),
            "EP003",
        ),
        forged(
            "INSERT version 5 of a stream at version 1 (a gap)",
            raw_insert(old, 5, "pg_current_xact_id()::text::int8"),
            "EP002",
        ),
        forged(
            "INSERT version 1 again (a forged version)",
            raw_insert(old, 1, "pg_current_xact_id()::text::int8"),
            "23505",
        ),
        forged(
            "UPDATE the relay's checkpoint",
            "UPDATE relay_checkpoints SET position = position + 1000".into(),
            "42501",
        ),
        forged(
            "INSERT a lease",
            "INSERT INTO leases (name, holder, epoch, expires_at) \
             VALUES ('x', 'writer', 1, now())"
                .into(),
            "42501",
        ),
        forged(
            "DELETE parked streams",
            "DELETE FROM relay_parked_streams".into(),
            "42501",
        ),
        forged(
            "read the dead letters",
            "SELECT * FROM relay_dead_letters".into(),
            "42501",
        ),
        forged(
            "UPDATE an event",
            "UPDATE events SET payload = '{}'::jsonb".into(),
            "42501",
        ),
    ];
    attempts.push(Attempt {
        login: "relay",
        what: "INSERT an event that keeps the rules",
        sql: raw_insert(fresh, 1, "pg_current_xact_id()::text::int8"),
        expected: "42501",
    });
    attempts.push(Attempt {
        login: "relay",
        what: "DELETE an event",
        sql: "DELETE FROM events".into(),
        expected: "42501",
    });
    let rows = refusals(&[("writer", &writer), ("relay", &relay_url)], attempts).await;
    println!(
        "| login | attempt | answer |\n|---|---|---|\n{}",
        rows.join("\n")
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = ANY($1)")
        .bind(vec![old, fresh])
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(stored, 1, "nothing refused was stored");
}
