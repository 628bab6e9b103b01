//! Commit hints: LISTEN on the channel the events table's trigger notifies at each commit.

use crate::error::map_sqlx;
use edupulse_ports::StoreError;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

/// The channel the `events_notify` trigger notifies (at commit, once per transaction).
pub const HINT_CHANNEL: &str = "edupulse_events";

pub(crate) async fn subscribe(pool: &PgPool) -> Result<BoxStream<'static, ()>, StoreError> {
    let mut listener = PgListener::connect_with(pool).await.map_err(map_sqlx)?;
    // The port's contract: the stream ends when the subscription breaks, and the follower
    // subscribes again (and reads, since hints may have been lost meanwhile). A silent
    // reconnection inside the listener would hide that gap.
    listener.eager_reconnect(false);
    listener.listen(HINT_CHANNEL).await.map_err(map_sqlx)?;
    let stream = futures::stream::unfold(Some(listener), |listener| async move {
        let mut listener = listener?;
        match listener.try_recv().await {
            Ok(Some(_)) => Some(((), Some(listener))),
            // Connection lost (`None`) or failed: end the stream.
            Ok(None) | Err(_) => None,
        }
    });
    Ok(stream.boxed())
}

/// How the commit hint of an append is sent (see migration `0002_hint_after_commit.sql`).
#[derive(Clone, Copy)]
pub(crate) enum HintMode<'a> {
    /// By the trigger, when the transaction commits: for a caller's own transaction, whose
    /// commit only the database sees.
    AtCommit,
    /// By the store, through [`AfterCommit`], once its own transaction has committed.
    AfterCommit(&'a AfterCommit),
}

impl HintMode<'_> {
    /// The setting's value when the store sends the hint after commit.
    pub(crate) const AFTER_COMMIT: &'static str = "on";

    /// The value of `edupulse.hint_after_commit` the append statement sets for its transaction.
    pub(crate) fn setting(self) -> &'static str {
        match self {
            HintMode::AtCommit => "off",
            HintMode::AfterCommit(_) => Self::AFTER_COMMIT,
        }
    }
}

/// Sends the store's commit hints after its commits: one NOTIFY at a time, from a read-only
/// transaction (which holds the notify lock only for an instant, with no WAL flush), and every
/// commit signalled while one is being sent is covered by the next. Hints are lossy by contract,
/// so a failed NOTIFY is dropped (followers also poll).
#[derive(Clone, Debug)]
pub(crate) struct AfterCommit {
    pending: mpsc::Sender<()>,
}

const NOTIFY_SQL: &str = "SELECT pg_notify('edupulse_events', '')";

impl AfterCommit {
    /// Starts the sending task on the current Tokio runtime; it ends when every clone is dropped.
    pub(crate) fn start(pool: &PgPool) -> Self {
        let (pending, mut signals) = mpsc::channel::<()>(1);
        let pool = pool.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                if let Err(error) = sqlx::query(NOTIFY_SQL).execute(&pool).await {
                    tracing::debug!(%error, "commit hint not sent");
                }
            }
        });
        Self { pending }
    }

    /// Signals a commit. Never waits: when a signal is already pending, it covers this one.
    pub(crate) fn committed(&self) {
        let _ = self.pending.try_send(());
    }
}
