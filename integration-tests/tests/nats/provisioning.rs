//! Stream provisioning: idempotent, contradictions detected and named, harmless differences
//! updated; connection failures typed.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use edupulse_integration_tests::shared_nats;
use edupulse_nats::{
    ConnectError, NatsConfig, ProvisionError, StreamOutcome, connect, event_stream_config,
    jetstream_context, provision,
};

use crate::support::config;

async fn context(config: &NatsConfig) -> async_nats::jetstream::Context {
    jetstream_context(connect(config).await.expect("connect"), config)
}

#[tokio::test]
async fn provisioning_is_idempotent() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "idem");
    let js = context(&config).await;

    let first = provision(&js, &config).await.unwrap();
    assert_eq!(first.events, StreamOutcome::Created);
    assert_eq!(first.dead_letters, StreamOutcome::Created);
    for _ in 0..2 {
        let again = provision(&js, &config).await.unwrap();
        assert_eq!(again.events, StreamOutcome::Unchanged);
        assert_eq!(again.dead_letters, StreamOutcome::Unchanged);
    }

    let mut info = js.get_stream(&config.stream_name).await.unwrap();
    let info = info.info().await.unwrap();
    assert_eq!(info.config.storage, StorageType::File);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.max_message_size, 1024 * 1024);
    assert_eq!(
        info.config.subjects,
        vec![format!("{}.*.*", config.subject_prefix)]
    );
    let dlq = js.get_stream(config.dlq_stream_name()).await.unwrap();
    assert_eq!(
        dlq.cached_info().config.subjects,
        vec![format!("{}-dlq.>", config.subject_prefix)]
    );
}

#[tokio::test]
async fn concurrent_provisioners_agree() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "race");
    let js = context(&config).await;
    let results = futures::future::join_all((0..4).map(|_| provision(&js, &config))).await;
    // JetStream answers a create with an identical configuration with success, so several
    // racers may each report `Created`; none fails, and there is one stream.
    for r in &results {
        let r = r.as_ref().expect("provisioned");
        assert!(
            matches!(r.events, StreamOutcome::Created | StreamOutcome::Unchanged),
            "{r:?}"
        );
    }
    let again = provision(&js, &config).await.unwrap();
    assert_eq!(again.events, StreamOutcome::Unchanged);
}

/// Creates the event stream by hand with `tweak` applied, then provisions.
async fn provision_over(tweak: impl FnOnce(&mut Config)) -> Result<StreamOutcome, ProvisionError> {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "contra");
    let js = context(&config).await;
    let mut existing = event_stream_config(&config);
    tweak(&mut existing);
    js.create_stream(existing).await.expect("create by hand");
    provision(&js, &config).await.map(|r| r.events)
}

fn field(result: Result<StreamOutcome, ProvisionError>) -> &'static str {
    match result {
        Err(ProvisionError::Incompatible {
            field,
            existing,
            required,
            stream,
        }) => {
            eprintln!("stream {stream}: {field} = {existing}, required {required}");
            field
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
}

#[tokio::test]
async fn memory_storage_is_a_contradiction() {
    let result = provision_over(|c| c.storage = StorageType::Memory).await;
    let shown = format!("{}", result.as_ref().unwrap_err());
    assert!(shown.contains("storage"), "{shown}");
    assert_eq!(field(result), "storage");
}

#[tokio::test]
async fn a_shorter_duplicate_window_is_a_contradiction() {
    let result = provision_over(|c| c.duplicate_window = Duration::from_secs(10)).await;
    assert_eq!(field(result), "duplicate_window");
}

#[tokio::test]
async fn other_subjects_are_a_contradiction() {
    let result = provision_over(|c| {
        c.subjects = vec![format!("{}.>", c.name.to_lowercase())];
    })
    .await;
    assert_eq!(field(result), "subjects");
}

#[tokio::test]
async fn a_limit_that_drops_old_events_is_a_contradiction() {
    let result = provision_over(|c| {
        c.max_messages = 1000;
        c.discard = DiscardPolicy::Old;
    })
    .await;
    assert_eq!(field(result), "max_msgs");
}

#[tokio::test]
async fn harmless_differences_are_updated() {
    let result = provision_over(|c| {
        c.max_message_size = 4096;
        c.description = None;
    })
    .await;
    assert_eq!(
        result.unwrap(),
        StreamOutcome::Updated {
            fields: vec!["max_msg_size", "description"]
        }
    );
}

#[tokio::test]
async fn bad_url_and_unreachable_server_are_typed() {
    let mut config = NatsConfig::new(["nats://user:secret@127.0.0.1:notaport"], "S", "p");
    let err = connect(&config).await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"));

    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    config.servers = vec![format!("nats://127.0.0.1:{port}")];
    config.connect_timeout = Duration::from_secs(1);
    let err = connect(&config).await.unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn wrong_password_is_an_auth_failure() {
    let nats = edupulse_integration_tests::start_nats_with_args(&[
        "-js", "-sd", "/data", "-p", "4222", "-m", "8222", "--user", "app", "--pass", "right",
    ])
    .await;
    let mut config = NatsConfig::new([nats.url()], "S", "p");
    config.auth = edupulse_nats::NatsAuth::UserPassword {
        user: "app".into(),
        password: secrecy::SecretString::from("wrong"),
    };
    let err = connect(&config).await.unwrap_err();
    assert!(matches!(err, ConnectError::AuthFailed(_)), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("wrong"));
    assert!(!format!("{config:?}").contains("wrong"));

    config.auth = edupulse_nats::NatsAuth::UserPassword {
        user: "app".into(),
        password: secrecy::SecretString::from("right"),
    };
    connect(&config).await.expect("right password");
}
