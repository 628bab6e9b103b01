//! TLS and authentication against servers that require them, with certificates and keys made at
//! test time (`edupulse_integration_tests::tls`).
//!
//! PostgreSQL serves TLS only (`hostssl` lines, SCRAM passwords; one role also needs a client
//! certificate). The backbone runs with `sslmode=verify-full`; each misconfiguration (wrong CA,
//! wrong host name, no TLS, wrong password, missing client certificate) is refused with one line,
//! printed as a row of the refusals table (`target/faults-refusals.md`).

use std::collections::HashSet;
use std::path::Path;

use edupulse_integration_tests::postgres::PG_PASSWORD;
use edupulse_integration_tests::tls::{Issued, Pki, Role, start_postgres_tls};
use edupulse_integration_tests::{PgContainer, shared_nats, unique_name};
use edupulse_ports::StoreError;
use edupulse_postgres::PgEventStore;
use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::workload::{Run, Until, Workload, nats_config, pg_config};

/// A role that must also present a client certificate whose common name is its own name.
const CERT_ROLE: &str = "edupulse_cert_login";

/// Every TCP connection must be TLS with a SCRAM password; [`CERT_ROLE`] also needs a client
/// certificate the server's CA signed, naming it (`clientcert=verify-full`). The first matching
/// line wins, so the role's line comes first.
fn hba() -> String {
    format!(
        "local all all trust\n\
         hostssl all {CERT_ROLE} all scram-sha-256 clientcert=verify-full\n\
         hostssl all all all scram-sha-256\n"
    )
}

/// The error and its causes on one line, a cause its parent already quotes skipped, as the
/// binary's `main` prints it.
pub(crate) fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// Prints a row of the refusals table and appends it to `target/faults-refusals.md`.
pub(crate) fn report_refusal(what: &str, line: &str) {
    use std::io::Write as _;
    const HEADER: &str = "| refused | error line |\n|---|---|\n";
    let row = format!("| {what} | `{}` |", line.replace('|', "\\|"));
    println!("{HEADER}{row}");
    eprintln!("faults: refusal {row}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let path = target.join("faults-refusals.md");
    let _ = std::fs::create_dir_all(&target);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        let _ = f.write_all(HEADER.as_bytes());
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path) {
        let _ = f.write_all(format!("{row}\n").as_bytes());
    }
}

/// A PostgreSQL URL of the TLS container.
struct PgUrl<'a> {
    pg: &'a PgContainer,
    user: &'a str,
    password: &'a str,
    host: &'a str,
    database: &'a str,
}

impl PgUrl<'_> {
    /// The URL with these query parameters (`sslmode=…&sslrootcert=…`).
    fn with(&self, query: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}?{query}",
            self.user,
            self.password,
            self.host,
            self.pg.port(),
            self.database
        )
    }
}

fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", ca.display())
}

/// The server's certificate names `localhost` only: `127.0.0.1`, the same server, is then a
/// host name the certificate does not cover.
fn pg_server_certificate(pki: &Pki) -> Issued {
    pki.issue("pg-server", "localhost", &["localhost"], Role::Server)
}

/// Creates a migrated database over a verified TLS connection; returns its name.
async fn create_database(admin_url: &str, url_of: impl Fn(&str) -> String) -> String {
    let name = unique_name("tls").to_lowercase();
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("connect over TLS as the superuser");
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .expect("create the database");
    let _ = admin.close().await;
    let mut conn = PgConnection::connect(&url_of(&name))
        .await
        .expect("connect to the new database");
    edupulse_postgres::MIGRATOR
        .run(&mut conn)
        .await
        .expect("migrate");
    let _ = conn.close().await;
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_scram_runs_the_backbone() {
    let pki = Pki::new("pg-ca");
    let server = pg_server_certificate(&pki);
    let pg = start_postgres_tls(&server, &pki.ca_pem(), &hba()).await;
    let ca = pki.ca_file().to_owned();
    let url = |database: &str| {
        PgUrl {
            pg: &pg,
            user: "postgres",
            password: PG_PASSWORD,
            host: "localhost",
            database,
        }
        .with(&verify_full(&ca))
    };
    let database = create_database(&url("postgres"), url).await;

    // The backbone's own sessions are TLS.
    let mut conn = PgConnection::connect(&url(&database))
        .await
        .expect("connect");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the session is not encrypted");
    let _ = conn.close().await;

    let nats = shared_nats().await;
    let name = unique_name("pg_tls");
    let run = Run::start_with(
        name.clone(),
        pg_config(&url(&database)),
        nats_config(vec![nats.url()], &name),
    )
    .await;
    let relay = run.spawn_relay().await;
    run.writers(Workload {
        writers: 2,
        until: Until::AppendsPerWriter(50),
        ..Workload::default()
    })
    .finish()
    .await;
    let mut figures = run.finish("pg_tls_verify_full", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.notes = "sslmode=verify-full, hostssl + scram-sha-256 only".into();
    figures.report_and_check();
}

/// What a connection attempt of the store gave: its one line, and whether it was refused as
/// a retryable outage.
async fn store_connect(url: &str) -> Result<(), (String, StoreError)> {
    match PgEventStore::connect(&pg_config(url)).await {
        Ok(store) => {
            drop(store);
            Ok(())
        }
        Err(e) => Err((one_line(&e), e)),
    }
}

/// The SQLSTATE behind a store error, if the server refused.
fn sqlstate(error: &StoreError) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() {
            return db.code().map(|c| c.into_owned());
        }
        source = cause.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_wrong_ca_host_password_or_missing_client_certificate() {
    let pki = Pki::new("pg-ca");
    let other = Pki::new("other-ca");
    let server = pg_server_certificate(&pki);
    let client = pki.issue("pg-client", CERT_ROLE, &[], Role::Client);
    let pg = start_postgres_tls(&server, &pki.ca_pem(), &hba()).await;
    let cert_password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let admin = PgUrl {
        pg: &pg,
        user: "postgres",
        password: PG_PASSWORD,
        host: "localhost",
        database: "postgres",
    };
    let mut conn = PgConnection::connect(&admin.with(&verify_full(pki.ca_file())))
        .await
        .expect("connect as the superuser");
    conn.execute(format!("CREATE ROLE {CERT_ROLE} LOGIN PASSWORD '{cert_password}'").as_str())
        .await
        .expect("create the certificate role");
    let _ = conn.close().await;
    let wrong_password = "not-the-password-9c1e";
    let as_cert_role = PgUrl {
        user: CERT_ROLE,
        password: &cert_password,
        ..admin
    };
    let with_client_cert = format!(
        "{}&sslcert={}&sslkey={}",
        verify_full(pki.ca_file()),
        client.cert_file.display(),
        client.key_file.display()
    );

    // (what, URL, expected SQLSTATE when the server itself refuses)
    let refusals: Vec<(&str, String, Option<&str>)> = vec![
        (
            "PostgreSQL verify-full, CA of another authority",
            admin.with(&verify_full(other.ca_file())),
            None,
        ),
        (
            "PostgreSQL verify-full, host not named by the certificate (127.0.0.1)",
            PgUrl {
                host: "127.0.0.1",
                ..admin
            }
            .with(&verify_full(pki.ca_file())),
            None,
        ),
        (
            "PostgreSQL without TLS (sslmode=disable) where pg_hba has hostssl only",
            admin.with("sslmode=disable"),
            Some("28000"),
        ),
        (
            "PostgreSQL verify-full, wrong SCRAM password",
            PgUrl {
                password: wrong_password,
                ..admin
            }
            .with(&verify_full(pki.ca_file())),
            Some("28P01"),
        ),
        (
            "PostgreSQL clientcert=verify-full, no client certificate",
            as_cert_role.with(&verify_full(pki.ca_file())),
            Some("28000"),
        ),
    ];
    for (what, url, code) in refusals {
        let (line, error) = store_connect(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        report_refusal(what, &line);
        assert!(!line.contains('\n'), "{what}: more than one line: {line}");
        assert!(!line.contains(wrong_password), "{what}: {line}");
        assert!(!line.contains(PG_PASSWORD), "{what}: {line}");
        assert!(!line.contains(&cert_password), "{what}: {line}");
        assert_eq!(sqlstate(&error).as_deref(), code, "{what}: {line}");
    }

    // The same role with its certificate (and its password) gets in.
    store_connect(&as_cert_role.with(&with_client_cert))
        .await
        .unwrap_or_else(|(line, _)| panic!("with the client certificate: {line}"));
}
