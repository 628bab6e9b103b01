//! Logging (tracing, text or JSON, filtered by `RUST_LOG`) and Prometheus metrics.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber, writing to stderr (stdout carries command output).
/// The filter comes from `RUST_LOG`, defaulting to `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: redirected logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(FmtSpan::NONE);
    // A second initialisation (tests building several apps) is harmless: keep the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Latency as a Prometheus histogram (buckets can be aggregated across relays and
            // over time; the default summary cannot), from 0.5 ms to 30 s.
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "edupulse_relay_published_total",
        "Events newly stored by the broker."
    );
    describe_counter!(
        "edupulse_relay_duplicates_total",
        "Events the broker already had (deduplicated re-publishes)."
    );
    describe_counter!(
        "edupulse_relay_retries_total",
        "Publish rounds retried after a failure."
    );
    describe_counter!(
        "edupulse_relay_parked_total",
        "Streams parked: an event could not be decoded or the broker refused it for good."
    );
    describe_counter!(
        "edupulse_relay_held_total",
        "Events held back behind a parked event of their stream."
    );
    describe_gauge!(
        "edupulse_relay_parked_streams",
        "Streams parked now (see `edupulse-events parked`)."
    );
    describe_gauge!(
        "edupulse_relay_blocked",
        "1 while the broker refuses the whole stream (sealed, deleted): nothing is published."
    );
    describe_counter!(
        "edupulse_relay_store_errors_total",
        "Failed store calls (retried)."
    );
    describe_counter!(
        "edupulse_relay_lease_lost_total",
        "Times the relay lost its lease and stopped publishing."
    );
    describe_gauge!(
        "edupulse_relay_active",
        "1 when this relay holds the lease."
    );
    describe_gauge!(
        "edupulse_relay_lag_events",
        "Approximate events committed but not yet published."
    );
    describe_gauge!(
        "edupulse_relay_checkpoint_position",
        "Global position of the last saved checkpoint."
    );
    describe_histogram!("edupulse_relay_batch_size", "Events per publish batch.");
    describe_histogram!(
        "edupulse_relay_commit_to_ack_seconds",
        "Time from the store recording an event to the broker acknowledging it."
    );
    describe_counter!(
        "edupulse_append_events_total",
        "Events appended by this process."
    );
    describe_counter!("edupulse_append_errors_total", "Failed appends, by kind.");
    describe_counter!(
        "edupulse_projection_applied_total",
        "Events applied by this process's projection workers."
    );
    describe_counter!(
        "edupulse_projection_parked_total",
        "Events parked by this process's projection workers (failed, early, or behind one)."
    );
    describe_gauge!(
        "edupulse_projection_lag_messages",
        "Messages of the projection's feed not read yet, over its buckets."
    );
    describe_gauge!(
        "edupulse_projection_applied",
        "Events applied or skipped by the projection, all workers."
    );
    describe_gauge!(
        "edupulse_projection_parked_aggregates",
        "Aggregates parked now (see `edupulse-events projections parked`)."
    );
    describe_gauge!(
        "edupulse_projection_parked_events",
        "Events parked now: the failed ones and those waiting behind them."
    );
    describe_gauge!(
        "edupulse_projection_workers",
        "Workers of the projection seen alive."
    );
}

/// An error and its causes on one line ("relay: PostgreSQL: event store unavailable: …"), for a
/// binary's last word. Drivers often repeat their source in their own message; a cause already at
/// the end of the line is skipped.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}
