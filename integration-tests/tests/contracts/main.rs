//! Contracts suite: a consumer nobody here wrote reads what the backbone publishes.
//!
//! The demo workload runs against real PostgreSQL and NATS in Docker (the relay, concurrent
//! writers, every event type). Then the Python consumer of `integration-tests/python-consumer`, in the
//! virtual environment `scripts/python-consumer-env.sh` prepares, reads the broker's stream
//! using only the published contracts (the committed JSON Schemas, the CloudEvents headers, the
//! subject layout), and prints its counts; the test holds them against what the store holds.
//!
//! Each test gets its own database and its own JetStream stream and subject prefix.

use edupulse_integration_tests::{fresh_database, shared_nats, unique_name};
use edupulse_nats::NatsConfig;
use edupulse_ports::{Cursor, EventReader};
use edupulse_postgres::{PgEventStore, PgStoreConfig};
use secrecy::SecretString;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use tokio::process::Command;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests is a folder of the repository")
        .to_path_buf()
}

/// The venv's python, created or reused by the same script CI runs.
async fn python() -> PathBuf {
    let script = repository_root().join("scripts/python-consumer-env.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .await
        .expect("run scripts/python-consumer-env.sh");
    assert!(
        output.status.success(),
        "{} failed (needs python3 with venv, and PyPI):\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("a path");
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the python path")
            .trim(),
    )
}

/// What the store holds: events per type, and the streams.
async fn appended(pg: &PgStoreConfig) -> (BTreeMap<String, u64>, usize, u64) {
    let store = PgEventStore::connect(pg).await.expect("connect");
    let (mut by_type, mut streams, mut total) = (BTreeMap::new(), HashSet::new(), 0);
    let mut after = Cursor::START;
    loop {
        let page = store.read_all(after, 1_000).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.cursor;
        for event in &page {
            *by_type
                .entry(event.envelope.event_type().to_owned())
                .or_insert(0) += 1;
            streams.insert(event.stream_id);
            total += 1;
        }
    }
    (by_type, streams.len(), total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_consumer_validates_the_demo_workload() {
    let db = fresh_database().await;
    let nats_server = shared_nats().await;
    let python = python().await;
    let pg = PgStoreConfig::new(SecretString::from(db.url().to_owned()));
    let nats = NatsConfig::new(
        [nats_server.url()],
        unique_name("CONTRACTS"),
        unique_name("edupulse").replace('_', "-"),
    );
    let report = edupulse_lab::demo::run_against(&pg, nats.clone(), 1_000, 4)
        .await
        .expect("demo runs");
    assert!(report.passed(), "{report:?}");
    let (by_type, streams, total) = appended(&pg).await;
    // The workload's events, and the badges the achievements projection appended because of
    // them (published like any other event, so the consumer validates those too).
    assert_eq!(total, report.appended + report.projections.badges_awarded);

    let output = Command::new(&python)
        .arg(repository_root().join("integration-tests/python-consumer/consume.py"))
        .args(["--server", &nats_server.url()])
        .args(["--stream", &nats.stream_name])
        .args(["--subject-prefix", &nats.subject_prefix])
        .arg("--schemas")
        .arg(repository_root().join("schemas"))
        .output()
        .await
        .expect("run the Python consumer");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let counts: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}):\n{stdout}\nstderr:\n{stderr}"));
    println!("python consumer: {counts}");

    assert_eq!(counts["error_count"], 0, "{counts:#}");
    assert_eq!(counts["messages"], total, "{counts:#}");
    assert_eq!(counts["valid"], total, "{counts:#}");
    assert_eq!(counts["out_of_order"], 0);
    assert_eq!(counts["duplicates"], 0);
    assert_eq!(counts["streams"], streams);
    assert_eq!(
        counts["by_type"],
        serde_json::to_value(&by_type).expect("counts as JSON")
    );
    assert_eq!(
        counts["sources"],
        serde_json::json!({ edupulse_nats::CE_SOURCE: total })
    );
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
}
