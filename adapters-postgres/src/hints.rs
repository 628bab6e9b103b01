//! Commit hints: LISTEN on the channel the events table's trigger notifies at each commit.

use crate::error::map_sqlx;
use edupulse_ports::StoreError;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

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
