//! `project` and `projections`: running projection workers, and what operators do with them.

use super::{connect_store, shutdown_on_signals};
use crate::cli::{PgArgs, ProjectArgs, ProjectionRef};
use crate::projection::RunnerConfig;
use crate::wiring::{Backbone, WiringError, spawn_shipped};
use edupulse_domain::StreamId;
use edupulse_ports::projection::{ProjectionStore, Skipped};
use serde_json::json;
use std::io::Write;
use std::time::Duration;
use tracing::info;

/// `project`: runs the workers until SIGINT or SIGTERM.
///
/// # Errors
/// [`WiringError`].
pub async fn project(args: &ProjectArgs) -> Result<(), WiringError> {
    let mut pg = args.pg.store_config()?;
    pg.lease = edupulse_postgres::LeaseConfig::new(Duration::from_millis(args.lease_ttl_ms))
        .map_err(|e| WiringError::Config(format!("--lease-ttl-ms: {e}")))?;
    pg.max_connections = pg.max_connections.max(
        u32::try_from(args.workers)
            .unwrap_or(u32::MAX)
            .saturating_mul(2)
            + 2,
    );
    let backbone = Backbone::connect(&pg, args.nats.nats_config()?).await?;
    let feed = backbone.feed(args.buckets).await?;
    let mut config = RunnerConfig::new(
        args.worker
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id())),
    );
    config.batch_size = args.batch_size.max(1);
    let running = spawn_shipped(
        &backbone,
        args.which.projection,
        args.which.generation,
        feed,
        args.workers,
        &config,
    )?;
    if let Some(addr) = args.listen {
        let bound = crate::http::serve(
            addr,
            crate::telemetry::prometheus(),
            std::sync::Arc::new(crate::http::AlwaysReady),
            running.shutdown(),
        )
        .await
        .map_err(|source| WiringError::Listen { addr, source })?;
        info!(%bound, "metrics on http://{bound}/metrics");
    }
    info!(
        projection = args.which.projection.name(),
        generation = args.which.generation,
        workers = args.workers,
        "projection workers started"
    );
    let signals = shutdown_on_signals();
    let shutdown = running.shutdown();
    tokio::spawn(async move {
        signals.cancelled().await;
        shutdown.cancel();
    });
    running.wait().await;
    Ok(())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

fn parse_stream(stream: &str) -> Result<StreamId, WiringError> {
    stream
        .parse()
        .map_err(|e| WiringError::Config(format!("--stream is not a UUID: {e}")))
}

/// `projections status`.
///
/// # Errors
/// [`WiringError`].
pub async fn status(pg: &PgArgs, which: &ProjectionRef) -> Result<(), WiringError> {
    let store = connect_store(pg).await?.projections();
    let projection = which.projection.id(which.generation)?;
    let progress = store.progress(&projection).await?;
    let active = store.active_generation(projection.name()).await?;
    println!(
        "{}",
        json!({
            "projection": projection.name(),
            "generation": projection.generation(),
            "active_generation": active,
            "applied": progress.applied,
            "lag_messages": progress.pending,
            "parked_aggregates": progress.parked_aggregates,
            "parked_events": progress.parked_events,
            "workers": progress.workers,
        })
    );
    Ok(())
}

/// `projections parked`.
///
/// # Errors
/// [`WiringError`].
pub async fn parked(pg: &PgArgs, which: &ProjectionRef) -> Result<(), WiringError> {
    let store = connect_store(pg).await?.projections();
    let projection = which.projection.id(which.generation)?;
    let mut out = std::io::stdout().lock();
    for aggregate in store.parked(&projection).await? {
        let events: Vec<serde_json::Value> = aggregate
            .events
            .iter()
            .map(|e| {
                json!({
                    "version": e.version,
                    "bucket": e.bucket,
                    "reason": e.reason,
                    "body": String::from_utf8_lossy(&e.body),
                })
            })
            .collect();
        let line = json!({
            "stream_id": aggregate.stream,
            "applied": aggregate.applied,
            "retry_requested": aggregate.retry_requested,
            "events": events,
        });
        let _ = writeln!(out, "{line}");
    }
    Ok(())
}

/// `projections retry`.
///
/// # Errors
/// [`WiringError::Config`] when the aggregate is not parked.
pub async fn retry(pg: &PgArgs, which: &ProjectionRef, stream: &str) -> Result<(), WiringError> {
    let stream = parse_stream(stream)?;
    let store = connect_store(pg).await?.projections();
    let projection = which.projection.id(which.generation)?;
    if !store.retry(&projection, stream).await? {
        return Err(WiringError::Config(format!(
            "stream {stream} is not parked in {projection} (see `edupulse-events projections parked`)"
        )));
    }
    println!(
        "{}",
        json!({"stream_id": stream, "retry_requested": true,
               "note": "the bucket's worker applies it again within a heartbeat"})
    );
    Ok(())
}

/// `projections skip`.
///
/// # Errors
/// [`WiringError::Config`] when the aggregate is not parked.
pub async fn skip(pg: &PgArgs, which: &ProjectionRef, stream: &str) -> Result<(), WiringError> {
    let stream = parse_stream(stream)?;
    let store = connect_store(pg).await?.projections();
    let projection = which.projection.id(which.generation)?;
    let skipped = match store.skip(&projection, stream).await? {
        Skipped::Event { version } => json!({"stream_id": stream, "skipped_version": version}),
        Skipped::Gap { until } => json!({"stream_id": stream, "skipped_gap_until": until}),
        Skipped::NothingParked => {
            return Err(WiringError::Config(format!(
                "stream {stream} is not parked in {projection}"
            )));
        }
    };
    println!("{skipped}");
    Ok(())
}

/// `projections activate`.
///
/// # Errors
/// [`WiringError`].
pub async fn activate(pg: &PgArgs, which: &ProjectionRef) -> Result<(), WiringError> {
    let store = connect_store(pg).await?.projections();
    let projection = which.projection.id(which.generation)?;
    store.activate(&projection).await?;
    println!(
        "{}",
        json!({"projection": projection.name(), "active_generation": projection.generation()})
    );
    Ok(())
}
