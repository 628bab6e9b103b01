//! The relay dies: killed with `SIGKILL` (a separate process) mid-run and restarted; and two
//! relays race on one checkpoint, only one publishing, the standby taking over when the active
//! one is killed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edupulse_app::relay::{RelayConfig, RelayStats};
use edupulse_app::wiring::{Backbone, spawn_relay};
use edupulse_integration_tests::{fresh_database, shared_nats};
use edupulse_ports::LeaseProvider;
use tokio::process::Child;

use crate::checker::lock;
use crate::child::{kill_9, spawn_relay_process};
use crate::workload::{Batch, Pace, Run, Until, Workload, soak_factor};

const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the lease `name` is held by `holder`.
pub(crate) async fn wait_holder(run: &Run, holder: &str) {
    let started = Instant::now();
    loop {
        let current = run.backbone.store.holder(&run.name).await.ok().flatten();
        if current.as_deref() == Some(holder) {
            return;
        }
        assert!(
            started.elapsed() < TAKEOVER_TIMEOUT,
            "{holder} never took the lease (holder: {current:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `n` events are acknowledged.
async fn wait_acknowledged(run: &Run, n: usize) {
    let started = Instant::now();
    while run.history.acknowledged_count() < n {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the writers never reached {n} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the relay process `child` holds the lease and publishes (the consumer receives
/// new events), then kills it with `SIGKILL` while it is in the middle of its work.
async fn kill_while_publishing(run: &Run, child: &mut Child) {
    let pid = child.id().expect("the relay process runs");
    wait_holder(run, &format!("pid {pid}")).await;
    let seen = lock(&run.consumed).distinct();
    let started = Instant::now();
    while lock(&run.consumed).distinct() < seen + 10 {
        assert!(
            started.elapsed() < TAKEOVER_TIMEOUT,
            "the relay process {pid} does not publish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill_9(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_with_sigkill_at_a_third_and_at_half_of_the_run() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("relay_kill9", db.url(), vec![nats.url()]).await;
    let appends = 1500 * soak_factor() as usize;
    let workload = Workload {
        batch: Batch::UpTo(3),
        pace: Pace::Closed {
            pause: Duration::from_millis(15),
        },
        // Long enough for the writers to keep appending across both takeovers: a killed
        // relay's lease is taken over once it expires (up to its 10 s TTL), and each new relay
        // must be seen publishing before it is killed.
        until: Until::AppendsPerWriter(appends),
        ..Workload::default()
    };
    // 1 to 3 events per append: 2 on average.
    let expected = workload.writers * appends * 2;

    let mut relay = spawn_relay_process(db.url(), &run.nats, &run.name);
    let writers = run.writers(workload);
    let mut recovery = Duration::ZERO;
    for fraction in [3, 2] {
        wait_acknowledged(&run, expected / fraction).await;
        kill_while_publishing(&run, &mut relay).await;
        let killed = Instant::now();
        relay = spawn_relay_process(db.url(), &run.nats, &run.name);
        let pid = relay.id().expect("the relay process runs");
        wait_holder(&run, &format!("pid {pid}")).await;
        recovery = recovery.max(run.caught_up_since(killed).await.unwrap_or(Duration::MAX));
    }
    writers.finish().await;

    let mut figures = run.finish("relay_sigkill_x2", &HashSet::new()).await;
    kill_9(&mut relay).await;
    figures.recovery = Some(recovery);
    figures.notes = "relay process killed (SIGKILL) at 1/3 and 1/2, restarted".to_owned();
    figures.report_and_check();
}

pub(crate) fn stats(name: &str, stats: &RelayStats) -> String {
    format!(
        "{name}: active {}, published {}, duplicates {}, takeovers {}",
        stats.snapshot().active,
        stats.snapshot().published,
        stats.snapshot().duplicates,
        stats.snapshot().takeovers
    )
}

pub(crate) async fn wait_active(stats: &Arc<RelayStats>) -> Duration {
    let started = Instant::now();
    while !stats.snapshot().active {
        assert!(
            started.elapsed() < TAKEOVER_TIMEOUT,
            "never active: {}",
            self::stats("relay", stats)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_race_on_one_checkpoint_and_the_standby_takes_over() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("relay_race", db.url(), vec![nats.url()]).await;
    // Two relays as two deployments would have them: separate connections, same name.
    let other = Backbone::connect(&run.pg, run.nats.clone())
        .await
        .expect("second backbone");
    let config = |holder: &str| RelayConfig {
        holder: holder.to_owned(),
        ..run.relay_config()
    };
    let a = spawn_relay(run.backbone.relay(config("relay-a")), None)
        .await
        .expect("relay a");
    wait_active(&a.stats).await;
    let b = spawn_relay(other.relay(config("relay-b")), None)
        .await
        .expect("relay b");
    let (a_stats, b_stats) = (a.stats.clone(), b.stats.clone());

    let writers = run.writers(Workload::default());
    tokio::time::sleep(Duration::from_secs(3) * soak_factor()).await;
    // Only the holder publishes; the standby has done nothing at all.
    assert!(
        a_stats.snapshot().active && !b_stats.snapshot().active,
        "{} / {}",
        stats("a", &a_stats),
        stats("b", &b_stats)
    );
    assert!(a_stats.snapshot().published > 0);
    assert_eq!(
        b_stats.snapshot().published + b_stats.snapshot().duplicates,
        0,
        "the standby must not publish"
    );
    assert_eq!(
        run.backbone
            .store
            .holder(&run.name)
            .await
            .expect("holder")
            .as_deref(),
        Some("relay-a")
    );

    // The active relay dies without any clean-up.
    a.abort();
    let killed = Instant::now();
    let takeover = wait_active(&b_stats).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    writers.join().await;
    let recovery = run.caught_up_since(killed).await;

    let mut figures = run.finish("relay_race_takeover", &HashSet::new()).await;
    Run::stop_relay(b).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "takeover after {:.1} s; {}; {}",
        takeover.as_secs_f64(),
        stats("a", &a_stats),
        stats("b", &b_stats)
    );
    figures.report_and_check();
    assert!(b_stats.snapshot().published > 0, "the standby took over");
    assert_eq!(b_stats.snapshot().takeovers, 1);
}
