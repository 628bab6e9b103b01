//! Bench smoke suite: `edupulse-lab bench --quick` runs end to end against the harness's
//! PostgreSQL and NATS and writes its outputs. It checks that the command works, never how fast:
//! figures from a quick run on a shared CI machine mean nothing.

use edupulse_app::cli::{NatsArgs, PgArgs};
use edupulse_integration_tests::{fresh_database, shared_nats, unique_name};
use edupulse_lab::bench::{self, BenchOptions, RelayMode};
use edupulse_lab::cli::{BenchArgs, BenchDatabase};
use secrecy::SecretString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_bench_runs_and_writes_its_outputs() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let out = std::env::temp_dir().join(unique_name("edupulse-bench"));
    let args = BenchArgs {
        only: Vec::new(),
        pg: PgArgs {
            database_url: Some(SecretString::from(db.url().to_owned())),
            pg_max_connections: 16,
            pg_keepalives_idle_s: 5,
            pg_keepalives_interval_s: 2,
            pg_keepalives_count: 3,
            pg_tcp_user_timeout_ms: 10_000,
        },
        nats: NatsArgs {
            nats_url: vec![nats.url()],
            // The bench replaces both with names of its own run.
            nats_stream: "UNUSED".into(),
            subject_prefix: "unused".into(),
            nats_replicas: 1,
            nats_creds: None,
            nats_nkey: None,
            nats_ca: None,
            nats_tls_required: false,
            nats_duplicate_window_secs: 120,
        },
        quick: true,
        repeat: 2,
        backlog: 5_000,
        out: out.clone(),
        bench_database: BenchDatabase::Own,
    };
    // In process: the test binary is not `edupulse-events`, so it cannot run the `relay` command.
    let options = BenchOptions {
        relay: RelayMode::InProcess,
    };
    let report = bench::run_with(&args, &options).await.expect("bench runs");

    for key in [
        "raw_pg",
        "raw_js",
        "ceiling",
        "seed_c1",
        "seed_c16",
        "store_b1_c1",
        "store_b1_c64",
        "store_b1000_c64",
        "catchup",
        "e2e",
        "projection",
    ] {
        let row = report
            .row(key)
            .unwrap_or_else(|| panic!("row {key} missing"));
        assert!(row.events > 0 && row.rate > 0.0, "{key}: {row:?}");
    }
    assert_eq!(report.row("catchup").map(|r| r.events > 0), Some(true));
    // 1k events/s once, 5k events/s `repeat` times, summarised as a distribution.
    assert_eq!(report.latency.len(), 3);
    assert_eq!(report.p99_distributions().len(), 1);
    assert!(report.latency.iter().all(|l| l.samples > 0));
    // Five targets and the projection row's ratio to the relay's catch-up.
    assert_eq!(report.targets.len(), 6);
    assert!(report.relay_peak_rss_bytes.is_some());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    assert_eq!(
        json["rows"].as_array().map(Vec::len),
        Some(report.rows.len())
    );
    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(out);
}
