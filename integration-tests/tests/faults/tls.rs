//! TLS and authentication against servers that require them, with certificates and keys made at
//! test time (`edupulse_integration_tests::tls`).
//!
//! PostgreSQL serves TLS only (`hostssl` lines, SCRAM passwords; one role also needs a client
//! certificate). The backbone runs with `sslmode=verify-full`; each misconfiguration (wrong CA,
//! wrong host name, no TLS, wrong password, missing client certificate) is refused with one line,
//! printed as a row of the refusals table (`target/faults-refusals.md`).
//!
//! NATS requires TLS of every client and knows nkey users only, each with its permissions. The
//! backbone runs with the relay's and a consumer's least permissions (the README's example,
//! proven here); a relay whose user may not publish events retries without busy-looping and
//! loses nothing; a consumer's user cannot publish events; a wrong CA, a server without TLS, an
//! unknown key and missing credentials are each refused with one line.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use edupulse_app::wiring::{Backbone, spawn_relay};
use edupulse_nats::{ConnectError, NatsAuth, NatsConfig};
use secrecy::{ExposeSecret as _, SecretString};

use edupulse_integration_tests::postgres::PG_PASSWORD;
use edupulse_integration_tests::tls::{
    Issued, NATS_CONFIG_DIR, NatsOperator, NatsUser, Pki, Role, start_nats_with_config,
    start_postgres_tls,
};
use edupulse_integration_tests::{PgContainer, fresh_database, shared_nats, unique_name};
use edupulse_ports::StoreError;
use edupulse_postgres::PgEventStore;
use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::workload::{Run, nats_config, pg_config};

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
    run.append_some(2, 50).await;
    let mut figures = run.finish("pg_tls_verify_full", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.notes = "sslmode=verify-full, hostssl + scram-sha-256 only".into();
    figures.report_and_check();
}

/// What a connection attempt of the store gave: its one line and its error.
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
        // A configuration mistake, not an outage: retrying would not help.
        assert!(!error.is_retryable(), "{what}: {line}");
    }

    // The same role with its certificate (and its password) gets in.
    store_connect(&as_cert_role.with(&with_client_cert))
        .await
        .unwrap_or_else(|(line, _)| panic!("with the client certificate: {line}"));
}

// ---- NATS: TLS, nkey users, least permissions ----

/// What the relay's user may do, for event stream `stream` and subject prefix `prefix`:
/// publish events (`<prefix>.<type>.<stream id>`), and the JetStream API calls of the relay:
/// account info, stream info, create and update (provisioning, both streams), and the last
/// message of a subject (the publish fence). Replies come on `_INBOX.>`.
fn relay_permissions(stream: &str, prefix: &str) -> String {
    format!(
        r#"{{
      publish: {{ allow: [
        "{prefix}.*.*",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.{stream}", "$JS.API.STREAM.INFO.{stream}_DLQ",
        "$JS.API.STREAM.CREATE.{stream}", "$JS.API.STREAM.CREATE.{stream}_DLQ",
        "$JS.API.STREAM.UPDATE.{stream}", "$JS.API.STREAM.UPDATE.{stream}_DLQ",
        "$JS.API.STREAM.MSG.GET.{stream}", "$JS.API.DIRECT.GET.{stream}.>"
      ] }}
      subscribe: {{ allow: ["_INBOX.>"] }}
    }}"#
    )
}

/// What a consumer's user may do, for durable consumer `durable`: read stream info, create and
/// read its own consumer, acknowledge, and publish dead letters under its own name. No event
/// subject.
fn consumer_permissions(stream: &str, prefix: &str, durable: &str) -> String {
    format!(
        r#"{{
      publish: {{ allow: [
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.{stream}", "$JS.API.STREAM.INFO.{stream}_DLQ",
        "$JS.API.CONSUMER.CREATE.{stream}.{durable}", "$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        "$JS.API.CONSUMER.INFO.{stream}.{durable}",
        "$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        "$JS.ACK.{stream}.{durable}.>",
        "{prefix}-dlq.{durable}.>"
      ] }}
      subscribe: {{ allow: ["_INBOX.>"] }}
    }}"#
    )
}

/// The relay's permissions without the event subjects: the JetStream API answers, publishes
/// are refused.
fn relay_permissions_without_events(stream: &str, prefix: &str) -> String {
    relay_permissions(stream, prefix).replace(&format!("\"{prefix}.*.*\","), "")
}

/// A NATS server of the test's own: TLS required of every client (`tls` block, the server's
/// certificate naming `localhost` and `127.0.0.1`), nkey users only, each with its permissions
/// (`None`: everything).
struct SecureNats {
    pki: Pki,
    nats: edupulse_integration_tests::NatsContainer,
}

impl SecureNats {
    async fn start(users: &[(&NatsUser, Option<String>)]) -> Self {
        let users: Vec<String> = users
            .iter()
            .map(|(user, permissions)| match permissions {
                None => format!("{{ nkey: \"{}\" }}", user.public_key()),
                Some(p) => format!("{{ nkey: \"{}\", permissions: {p} }}", user.public_key()),
            })
            .collect();
        Self::start_with_auth(&format!(
            "authorization {{\n  users = [\n    {}\n  ]\n}}\n",
            users.join("\n    ")
        ))
        .await
    }

    /// The server with `auth` as its authentication lines (`authorization {…}`, or an
    /// operator's).
    async fn start_with_auth(auth: &str) -> Self {
        let pki = Pki::new("nats-ca");
        let server = pki.issue(
            "nats-server",
            "localhost",
            &["localhost", "127.0.0.1"],
            Role::Server,
        );
        let config = format!(
            "tls {{\n  cert_file: \"{dir}/server.crt\"\n  key_file: \"{dir}/server.key\"\n  \
             timeout: 2\n}}\n{auth}",
            dir = NATS_CONFIG_DIR
        );
        let nats = start_nats_with_config(
            &config,
            &[
                ("server.crt", server.cert_pem.clone()),
                ("server.key", server.key_pem.clone()),
            ],
        )
        .await;
        Self { pki, nats }
    }

    /// `tls://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.nats.port())
    }

    /// The run's NATS configuration as `user`, TLS required, trusting this server's CA.
    fn config(&self, name: &str, user: &NatsUser) -> NatsConfig {
        let mut config = nats_config(vec![self.url()], name);
        config.tls.require_tls = true;
        config.tls.root_ca = Some(self.pki.ca_file().to_owned());
        config.auth = NatsAuth::NkeySeed(SecretString::from(user.seed()));
        config
    }
}

/// Publishes one message to `subject` as `config` says and returns the refusal: the publish's
/// error and the server's error line (a permissions violation is only reported there).
async fn refused_publish(config: &NatsConfig, subject: String) -> String {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let NatsAuth::NkeySeed(seed) = &config.auth else {
        unreachable!("nkey users only")
    };
    let client = async_nats::ConnectOptions::with_nkey(seed.expose_secret().to_owned())
        .require_tls(true)
        .add_root_certificates(config.tls.root_ca.clone().expect("a CA"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(config.servers.clone())
        .await
        .expect("connect");
    let js = edupulse_nats::jetstream_context(client, config);
    let published = match js.publish(subject, "{}".into()).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| one_line(&e)),
        Err(e) => Err(one_line(&e)),
    };
    let publish_error = published.expect_err("the publish was acknowledged");
    let server = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "(no server error)".to_owned());
    format!("{publish_error}; server: {server}")
}

/// How many messages `stream` holds, asked as `config`'s user.
async fn messages_in(config: &NatsConfig) -> u64 {
    let client = edupulse_nats::connect(config).await.expect("connect");
    let js = edupulse_nats::jetstream_context(client, config);
    let mut stream = js
        .get_stream(&config.stream_name)
        .await
        .expect("the stream");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_with_nkey_users_and_least_permissions() {
    let name = unique_name("nats_tls");
    let stream = name.to_uppercase();
    let (admin, relay_user, consumer_user, no_events) = (
        NatsUser::new(),
        NatsUser::new(),
        NatsUser::new(),
        NatsUser::new(),
    );
    let secure = SecureNats::start(&[
        (&admin, None),
        (&relay_user, Some(relay_permissions(&stream, &name))),
        (
            &consumer_user,
            Some(consumer_permissions(&stream, &name, &name)),
        ),
        (
            &no_events,
            Some(relay_permissions_without_events(&stream, &name)),
        ),
    ])
    .await;
    let db = fresh_database().await;
    let pg = pg_config(db.url());
    // The run's own client (the writers' store, reading the broker's copy back) is the admin;
    // the consumer and the relays have their own users.
    let run = Run::start_with_consumer(
        name.clone(),
        pg.clone(),
        secure.config(&name, &admin),
        Some(secure.config(&name, &consumer_user)),
    )
    .await;

    // First a relay whose user may not publish events: every publish is refused (it times
    // out), the relay retries with backoff, publishes nothing and loses nothing.
    let blocked = Backbone::connect(&pg, secure.config(&name, &no_events))
        .await
        .expect("the relay's user can provision (stream info)");
    let blocked = spawn_relay(blocked.relay(run.relay_config()), None)
        .await
        .expect("spawn relay");
    run.append_some(2, 50).await;
    let window = Duration::from_secs(8);
    tokio::time::sleep(window).await;
    let stuck = blocked.stats.snapshot();
    Run::stop_relay(blocked).await;
    assert_eq!(stuck.published, 0, "{stuck:?}");
    // Each attempt waits for its acknowledgement (2 s) and backs off: a handful of retries,
    // never a busy loop.
    assert!(
        (1..=20).contains(&stuck.retries),
        "retries in {window:?}: {stuck:?}"
    );
    let line = refused_publish(
        &secure.config(&name, &no_events),
        format!("{name}.LessonPublished.{}", uuid::Uuid::new_v4()),
    )
    .await;
    report_refusal(
        &format!(
            "NATS relay user without publish permission on events ({} retries in {window:?}, 0 published)",
            stuck.retries
        ),
        &line,
    );
    assert!(!line.contains('\n'), "{line}");

    // The consumer's user cannot publish events either.
    let before = messages_in(&secure.config(&name, &admin)).await;
    let line = refused_publish(
        &secure.config(&name, &consumer_user),
        format!("{name}.LessonPublished.{}", uuid::Uuid::new_v4()),
    )
    .await;
    report_refusal("NATS consumer user publishing an event", &line);
    assert_eq!(messages_in(&secure.config(&name, &admin)).await, before);

    // Then the relay with its documented permissions: everything is published, once.
    let relay = Backbone::connect(&pg, secure.config(&name, &relay_user))
        .await
        .expect("the relay's user provisions");
    let relay = spawn_relay(relay.relay(run.relay_config()), None)
        .await
        .expect("spawn relay");
    let healed = Instant::now();
    let recovery = run.caught_up_since(healed).await;
    let mut figures = run
        .finish("nats_tls_nkey_permissions", &HashSet::new())
        .await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "tls:// + CA, nkey users; a relay without event permission first ({} retries in {window:?})",
        stuck.retries
    );
    figures.report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refuses_a_wrong_ca_plain_server_or_unknown_key_with_one_line() {
    let name = unique_name("nats_refusals");
    let user = NatsUser::new();
    let secure = SecureNats::start(&[(&user, None)]).await;
    let other = Pki::new("other-ca");
    let plain = shared_nats().await;

    let good = secure.config(&name, &user);
    edupulse_nats::connect(&good)
        .await
        .expect("the right CA and key connect");

    let mut wrong_ca = good.clone();
    wrong_ca.tls.root_ca = Some(other.ca_file().to_owned());
    let mut plain_server = good.clone();
    plain_server.servers = vec![plain.url()];
    let mut unknown_key = good.clone();
    let stranger = NatsUser::new();
    unknown_key.auth = NatsAuth::NkeySeed(SecretString::from(stranger.seed()));
    let mut no_credentials = good.clone();
    no_credentials.auth = NatsAuth::None;
    let cases = [
        ("NATS tls://, CA of another authority", wrong_ca, "tls"),
        (
            "NATS --nats-tls-required, server without TLS",
            plain_server,
            "tls",
        ),
        ("NATS nkey the server does not know", unknown_key, "auth"),
        ("NATS without credentials", no_credentials, "auth"),
    ];
    for (what, config, kind) in cases {
        let error = edupulse_nats::connect(&config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        let line = one_line(&error);
        report_refusal(what, &line);
        assert!(!line.contains('\n'), "{what}: {line}");
        assert!(!line.contains(&user.seed()), "{what}: {line}");
        assert!(!line.contains(&stranger.seed()), "{what}: {line}");
        assert!(!error.is_retryable(), "{what}: {line}");
        match kind {
            "tls" => assert!(matches!(error, ConnectError::Tls(_)), "{what}: {error:?}"),
            _ => assert!(
                matches!(error, ConnectError::AuthFailed(_)),
                "{what}: {error:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_file_of_an_operator_account_runs_the_backbone() {
    let name = unique_name("nats_creds");
    let operator = NatsOperator::new();
    let secure = SecureNats::start_with_auth(&operator.server_config()).await;
    let user = NatsUser::new();
    let creds = secure
        .pki
        .write_file("relay.creds", &operator.credentials(&user, None));
    let mut config = secure.config(&name, &user);
    config.auth = NatsAuth::CredentialsFile(creds);

    // Credentials of another operator's account: refused with one line.
    let stranger = NatsOperator::new();
    let foreign = secure
        .pki
        .write_file("foreign.creds", &stranger.credentials(&user, None));
    let mut refused = config.clone();
    refused.auth = NatsAuth::CredentialsFile(foreign);
    let error = edupulse_nats::connect(&refused)
        .await
        .expect_err("credentials of an unknown account connected");
    let line = one_line(&error);
    report_refusal("NATS credentials file (JWT) of an unknown account", &line);
    assert!(matches!(error, ConnectError::AuthFailed(_)), "{error:?}");
    assert!(!line.contains(&user.seed()), "{line}");

    let db = fresh_database().await;
    let run = Run::start_with(name.clone(), pg_config(db.url()), config).await;
    let relay = run.spawn_relay().await;
    run.append_some(2, 50).await;
    let mut figures = run
        .finish("nats_tls_credentials_jwt", &HashSet::new())
        .await;
    Run::stop_relay(relay).await;
    figures.notes = "tls:// + CA, operator/account/user JWT credentials file".into();
    figures.report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_s_flags_reach_a_tls_server_with_an_nkey() {
    use clap::Parser as _;
    use edupulse_app::cli::{Cli, Command};

    let name = unique_name("nats_cli");
    let stream = name.to_uppercase();
    let relay_user = NatsUser::new();
    let secure = SecureNats::start(&[(&relay_user, Some(relay_permissions(&stream, &name)))]).await;
    let seed_file = secure
        .pki
        .write_file("relay.nk", &format!("{}\n", relay_user.seed()));
    // `nats://`: only `--nats-tls-required` makes the client insist on TLS.
    let url = format!("nats://127.0.0.1:{}", secure.nats.port());
    let ca = secure.pki.ca_file().display().to_string();
    let seed = seed_file.display().to_string();
    let cli = Cli::try_parse_from([
        "edupulse-events",
        "relay",
        "--nats-url",
        url.as_str(),
        "--nats-tls-required",
        "--nats-ca",
        ca.as_str(),
        "--nats-nkey",
        seed.as_str(),
        "--nats-stream",
        stream.as_str(),
        "--subject-prefix",
        name.as_str(),
    ])
    .expect("the flags parse");
    let Command::Relay(args) = cli.command else {
        unreachable!("parsed as relay")
    };
    let config = args.nats.nats_config().expect("a NATS configuration");
    assert!(config.tls.require_tls);
    let client = edupulse_nats::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", one_line(&e)));
    let js = edupulse_nats::jetstream_context(client, &config);
    edupulse_nats::provision(&js, &config)
        .await
        .unwrap_or_else(|e| panic!("the relay's user provisions: {}", one_line(&e)));
}
