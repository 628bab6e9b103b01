//! The commands other than `demo` and `bench`: thin layers over the use cases and the wiring.

use crate::cli::{AppendArgs, NatsArgs, PgArgs, ReadArgs, RelayArgs};
use crate::input::{AppendRequest, InputError, parse_expected, parse_line};
use crate::relay::{RelayConfig, ReplayMode};
use crate::wiring::{Backbone, WiringError, spawn_relay};
use chrono::Utc;
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId};
use edupulse_ports::{
    CheckpointStore, EventAppender, EventConsumer, EventReader, LeaseProvider, ParkedEvent,
    RecordedEvent, Release, Settlement, StoreError,
};
use edupulse_postgres::PgEventStore;
use futures::StreamExt;
use serde_json::json;
use std::io::{BufRead, Write};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

mod projections;

pub use projections::{
    activate, parked as projection_parked, project, retry, skip, status as projection_status,
};

/// Connects the store only (for commands that do not need NATS).
///
/// # Errors
/// [`WiringError`].
pub async fn connect_store(pg: &PgArgs) -> Result<PgEventStore, WiringError> {
    Ok(PgEventStore::connect(&pg.store_config()?).await?)
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("shutdown requested");
        cancel.cancel();
    });
    token
}

/// `migrate`.
///
/// # Errors
/// [`WiringError`].
pub async fn migrate(pg: &PgArgs) -> Result<(), WiringError> {
    let store = connect_store(pg).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

fn relay_config(name: &str, batch_size: usize, poll_ms: u64) -> RelayConfig {
    RelayConfig {
        name: name.to_owned(),
        holder: format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id()
        ),
        batch_size: batch_size.max(1),
        poll_interval: Duration::from_millis(poll_ms.max(1)),
        ..RelayConfig::default()
    }
}

/// `relay`: runs until SIGINT/SIGTERM, then stops gracefully.
///
/// # Errors
/// [`WiringError`] at start; the relay itself retries every failure.
pub async fn relay(args: &RelayArgs) -> Result<(), WiringError> {
    let backbone = Backbone::connect(&args.store_config()?, args.nats.nats_config()?).await?;
    let relay = backbone.relay(relay_config(&args.name, args.batch_size, args.poll_ms));
    let running = spawn_relay(relay, Some(args.listen)).await?;
    if let Some(addr) = running.http {
        info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
    }
    let signals = shutdown_on_signals();
    let relay_shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        signals.cancelled().await;
        relay_shutdown.cancel();
    });
    running.wait().await;
    Ok(())
}

/// `replay`.
///
/// # Errors
/// [`WiringError`].
pub async fn replay(
    pg: &PgArgs,
    nats: &NatsArgs,
    range: std::ops::RangeInclusive<u64>,
    mode: ReplayMode,
) -> Result<(), WiringError> {
    let (from, to) = (*range.start(), *range.end());
    if from > to {
        return Err(WiringError::Config(format!(
            "--from {from} is after --to {to}"
        )));
    }
    let backbone = Backbone::connect(&pg.store_config()?, nats.nats_config()?).await?;
    let relay = backbone.relay(relay_config("replay", 2048, 500));
    let report = relay.replay(from, to, mode, shutdown_on_signals()).await?;
    println!(
        "{}",
        json!({
            "events": report.events,
            "republished": report.republished,
            "already_in_broker": report.duplicates,
            "stored_again_forced": report.forced,
            "refused_earlier_version_not_in_broker": report.refused_earlier_missing,
            "refused_later_version_in_broker": report.refused_later_present,
            "refused_by_broker": report.failed,
        })
    );
    Ok(())
}

/// The JSON line printed for an event.
pub fn event_json(e: &RecordedEvent) -> serde_json::Value {
    json!({
        "position": e.position(),
        "commit": e.cursor.commit,
        "stream_id": e.stream_id,
        "stream_version": e.stream_version,
        "recorded_at": e.recorded_at,
        "envelope": e.envelope,
    })
}

/// `read`.
///
/// # Errors
/// [`WiringError`].
pub async fn read(args: &ReadArgs) -> Result<(), WiringError> {
    let store = connect_store(&args.pg).await?;
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let page = 1000usize;
    if let Some(stream) = &args.stream {
        let stream: StreamId = stream
            .parse()
            .map_err(|e| WiringError::Config(format!("--stream is not a UUID: {e}")))?;
        let mut version = args.from_version.max(1);
        while printed < limit {
            let events = store.read_stream(stream, version, page).await?;
            let Some(last) = events.last() else { break };
            version = last.stream_version + 1;
            for e in events.iter().take((limit - printed) as usize) {
                let _ = writeln!(out, "{}", event_json(e));
                printed += 1;
            }
        }
    } else {
        let mut from = args.from_position.saturating_add(1);
        while printed < limit {
            let events = store.read_positions(from, u64::MAX, page).await?;
            let Some(last) = events.last() else { break };
            from = last.position() + 1;
            for e in events.iter().take((limit - printed) as usize) {
                let _ = writeln!(out, "{}", event_json(e));
                printed += 1;
            }
        }
    }
    Ok(())
}

/// `status`.
///
/// # Errors
/// [`WiringError`].
pub async fn status(pg: &PgArgs, nats: &NatsArgs, name: &str) -> Result<(), WiringError> {
    let store = connect_store(pg).await?;
    let head = store.head().await?;
    let checkpoint = store.load(name).await?;
    let holder = store.holder(name).await?;
    let dead = store.dead_letter_count(name).await?;
    let parked = store.parked(name).await?;
    let oldest = store.oldest_open_transaction().await?;
    let published = checkpoint.as_ref().map_or(0, |c| c.cursor.position);
    let report = json!({
        "last_committed_position": head.last_position,
        "events_stored_estimate": head.events,
        "relay": name,
        "last_published_position": published,
        "checkpoint": checkpoint.as_ref().map(|c| c.cursor.to_string()),
        "checkpoint_age_seconds": checkpoint.as_ref()
            .map(|c| (Utc::now() - c.updated_at).num_milliseconds() as f64 / 1e3),
        "lag_events_estimate": head.last_position.saturating_sub(published),
        "relay_holder": holder,
        "broker": match &checkpoint {
            Some(c) if !nats.nats_url.is_empty() => broker_status(&nats.nats_config()?, c).await?,
            _ => serde_json::Value::Null,
        },
        "dead_letters": dead,
        "parked_streams": parked.iter().map(parked_json).collect::<Vec<_>>(),
        "oldest_open_write_transaction": oldest.map(|t| json!({
            "pid": t.pid,
            "age_seconds": t.age.as_secs_f64(),
            "application_name": t.application_name,
            "state": t.state,
            "database": t.database,
            "note": "a transaction holding an xid holds back commit-safe reads until it ends",
        })),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    Ok(())
}

/// The broker's last sequence against the highest one it acknowledged to the relay: below it, the
/// broker lost acknowledged messages (it acknowledged before an fsync and crashed, or the stream
/// was recreated), and consumers miss events until a replay. Part of `status`.
///
/// # Errors
/// [`WiringError`] when NATS cannot be reached.
pub async fn broker_status(
    config: &edupulse_nats::NatsConfig,
    checkpoint: &edupulse_ports::Checkpoint,
) -> Result<serde_json::Value, WiringError> {
    let client = edupulse_nats::connect(config).await?;
    let js = edupulse_nats::jetstream_context(client, config);
    let state = match js.get_stream(&config.stream_name).await {
        Ok(mut stream) => stream.info().await.map(|info| info.state.clone()).ok(),
        Err(_) => None,
    };
    let Some(state) = state else {
        return Ok(json!({
            "stream": config.stream_name,
            "error": "the stream cannot be read (missing, or no leader)",
        }));
    };
    let acknowledged = checkpoint.broker_sequence;
    let went_back = state.last_sequence < acknowledged;
    Ok(json!({
        "stream": config.stream_name,
        "last_sequence": state.last_sequence,
        "messages": state.messages,
        "highest_sequence_acknowledged_to_the_relay": acknowledged,
        "went_back_in_time": went_back,
        "advice": went_back.then(|| format!(
            "the broker holds up to sequence {} but had acknowledged {acknowledged}: it lost \
             acknowledged events (run it with sync_interval: always). Re-publish what it lacks: \
             edupulse-events replay --from 1 --to {} (stores only missing events, in order)",
            state.last_sequence, checkpoint.cursor.position
        )),
    }))
}

fn parked_json(p: &ParkedEvent) -> serde_json::Value {
    json!({
        "stream_id": p.stream_id,
        "stream_version": p.stream_version,
        "event_id": p.event_id,
        "position": p.cursor.position,
        "reason": p.reason,
        "parked_at": p.parked_at,
        "release_requested": p.release.map(Release::as_str),
    })
}

/// `parked`: one JSON line per parked stream, with the stored bytes of its parked event.
///
/// # Errors
/// [`WiringError`].
pub async fn parked(pg: &PgArgs, name: &str) -> Result<(), WiringError> {
    let store = connect_store(pg).await?;
    let mut out = std::io::stdout().lock();
    for p in store.parked(name).await? {
        let mut line = parked_json(&p);
        line["raw"] = serde_json::Value::String(p.raw.clone());
        let _ = writeln!(out, "{line}");
    }
    Ok(())
}

/// `release`: asks the active relay to release a parked stream.
///
/// # Errors
/// [`WiringError::Config`] when the stream is not parked.
pub async fn release(
    pg: &PgArgs,
    name: &str,
    stream: &str,
    release: Release,
) -> Result<(), WiringError> {
    let stream: StreamId = stream
        .parse()
        .map_err(|e| WiringError::Config(format!("--stream is not a UUID: {e}")))?;
    let store = connect_store(pg).await?;
    if !store.request_release(name, stream, release).await? {
        return Err(WiringError::Config(format!(
            "stream {stream} is not parked for relay {name:?} (see `edupulse-events parked`)"
        )));
    }
    println!(
        "{}",
        json!({"stream_id": stream, "release": release.as_str(), "requested": true,
               "note": "the active relay releases it within a second; `parked` shows the outcome"})
    );
    Ok(())
}

/// `tail`: prints events from a durable consumer until SIGINT or `max`.
///
/// # Errors
/// [`WiringError`].
pub async fn tail(
    nats: &NatsArgs,
    durable: &str,
    event_type: Option<&str>,
    max: Option<u64>,
) -> Result<(), WiringError> {
    let config = nats.nats_config()?;
    let client = edupulse_nats::connect(&config).await?;
    let filter = event_type.map(|t| format!("{}.{t}.*", config.subject_prefix));
    let mut options = edupulse_nats::ConsumerOptions::new(durable);
    options.filter_subject = filter;
    let mut consumer = edupulse_nats::NatsConsumer::create(client, &config, options)
        .await
        .map_err(WiringError::Consume)?;
    let stop = shutdown_on_signals();
    let mut seen = 0u64;
    while !stop.is_cancelled() && max.is_none_or(|m| seen < m) {
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            b = consumer.next_batch(256, Duration::from_secs(1)) => b.map_err(WiringError::Consume)?,
        };
        for d in batch {
            println!(
                "{}",
                json!({
                    "stream_version": d.stream_version,
                    "position": d.position,
                    "delivery": d.attempt,
                    "envelope": d.envelope,
                })
            );
            consumer
                .settle(d.token, Settlement::Ack)
                .await
                .map_err(WiringError::Consume)?;
            seen += 1;
            if max.is_some_and(|m| seen >= m) {
                break;
            }
        }
    }
    Ok(())
}

/// What appending one line gave: the event, its stream version and position, or the error.
type LineOutcome = Result<(EventEnvelope, u64, u64), String>;

/// One line's outcome, as printed by `append`.
fn line_result(line: usize, result: LineOutcome) -> serde_json::Value {
    match result {
        Ok((e, version, position)) => json!({
            "line": line, "ok": true, "event_id": e.id, "stream_id": e.stream_id(),
            "stream_version": version, "position": position,
        }),
        Err(error) => json!({"line": line, "ok": false, "error": error}),
    }
}

async fn append_one(store: &PgEventStore, req: AppendRequest) -> LineOutcome {
    let stream = req.envelope.stream_id();
    match store
        .append(stream, req.expected, vec![req.envelope.clone()])
        .await
    {
        Ok(out) => {
            let e = out.events.first().copied();
            Ok((
                req.envelope,
                e.map_or(0, |e| e.stream_version),
                e.map_or(0, |e| e.position),
            ))
        }
        Err(e) => Err(describe_store_error(&e)),
    }
}

/// The error with every cause behind it (what PostgreSQL said), and whether a retry may help.
fn describe_store_error(e: &StoreError) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    if e.is_retryable() {
        msg.push_str(" (retryable)");
    }
    msg
}

/// `append`: from flags, `--json`, or NDJSON on stdin. Returns how many lines failed.
///
/// # Errors
/// [`WiringError`] when the store cannot be used at all.
pub async fn append(args: &AppendArgs) -> Result<u64, WiringError> {
    let store = connect_store(&args.pg).await?;
    let single = if let Some(json_arg) = &args.json {
        Some(parse_line(json_arg.as_bytes()))
    } else if let Some(event_type) = &args.event_type {
        let expected = parse_expected(&args.expected).map_err(WiringError::Config)?;
        let line = json!({
            "type": event_type,
            "payload": serde_json::from_str::<serde_json::Value>(args.payload.as_deref().unwrap_or("{}"))
                .map_err(|e| WiringError::Config(format!("--payload is not JSON: {e}")))?,
            "stream": args.stream,
        });
        Some(parse_line(line.to_string().as_bytes()).map(|mut r| {
            r.expected = expected;
            r
        }))
    } else {
        None
    };
    if let Some(parsed) = single {
        let result = match parsed {
            Ok(req) => append_one(&store, req).await,
            Err(e) => Err(e.to_string()),
        };
        let failed = u64::from(result.is_err());
        println!("{}", line_result(1, result));
        return Ok(failed);
    }
    bulk_append(&store, args.concurrency.max(1)).await
}

/// Reads NDJSON from stdin and appends line by line, many at once. Lines of one stream keep
/// their order: they are appended one after the other, by one task per stream.
async fn bulk_append(store: &PgEventStore, concurrency: usize) -> Result<u64, WiringError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Result<AppendRequest, InputError>)>(4096);
    // Reading stdin is blocking: keep it off the async workers.
    let reader = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        let mut lines = 0usize;
        for (i, line) in stdin.lock().split(b'\n').enumerate() {
            let Ok(line) = line else { break };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines += 1;
            if tx.blocking_send((i + 1, parse_line(&line))).is_err() {
                break;
            }
        }
        lines
    });
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    progress.set_message("appending");
    let mut failed = 0u64;
    let mut out = std::io::stdout().lock();
    // Group consecutive lines by stream so that one stream's lines stay in order, while
    // different streams are appended concurrently.
    let mut lines = tokio_stream_from(rx).ready_chunks(concurrency * 4);
    while let Some(chunk) = lines.next().await {
        let mut per_stream: Vec<(StreamId, Vec<(usize, AppendRequest)>)> = Vec::new();
        for (line, parsed) in chunk {
            match parsed {
                Ok(req) => {
                    let stream = req.envelope.stream_id();
                    match per_stream.iter_mut().find(|(s, _)| *s == stream) {
                        Some((_, reqs)) => reqs.push((line, req)),
                        None => per_stream.push((stream, vec![(line, req)])),
                    }
                }
                Err(e) => {
                    failed += 1;
                    let _ = writeln!(out, "{}", line_result(line, Err(e.to_string())));
                }
            }
        }
        let results: Vec<Vec<(usize, LineOutcome)>> = futures::stream::iter(per_stream)
            .map(|(_, reqs)| async move {
                let mut results = Vec::with_capacity(reqs.len());
                for (line, req) in reqs {
                    results.push((line, append_one(store, req).await));
                }
                results
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut flat: Vec<_> = results.into_iter().flatten().collect();
        flat.sort_by_key(|(line, _)| *line);
        for (line, result) in flat {
            failed += u64::from(result.is_err());
            let _ = writeln!(out, "{}", line_result(line, result));
            progress.inc(1);
        }
    }
    let total = reader.await.unwrap_or(0);
    progress.finish_and_clear();
    eprintln!("{total} lines read, {failed} failed");
    Ok(failed)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The expected version an aggregate's next append should carry.
pub fn expected_after(version: Option<u64>) -> ExpectedVersion {
    version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
}
