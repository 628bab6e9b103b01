//! A TCP forwarder on 127.0.0.1: gives one client a path of its own to a server, on a port of
//! its own, so a test can cut that path alone (an `iptables` rule on the forwarder's port, or
//! [`Forwarder::silence`]) while every other client keeps reaching the server directly.
//!
//! Like docker-proxy or a pooler, the forwarder keeps its own connection to the server open
//! whatever happens to the client: a cut client is invisible to the server, which still sees a
//! healthy session. That is the situation a lease must survive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::docker::HOST;

/// Forwards every connection made to [`Forwarder::port`] to `127.0.0.1:<target>`. Dropping it
/// closes the listener and every forwarded connection (both sides).
#[derive(Debug)]
pub struct Forwarder {
    port: u16,
    silenced: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:<target>`.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind((HOST, 0))
            .await
            .unwrap_or_else(|e| panic!("bind a forwarder on {HOST}: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the forwarder's address: {e}"))
            .port();
        let silenced = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(accept(listener, target, silenced.clone()));
        Self {
            port,
            silenced,
            task,
        }
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, nothing passes in either direction; what arrives is discarded, as a network
    /// dropping packets would. Connections stay open on both sides.
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a `JoinSet`): aborting it aborts them,
        // which closes every socket.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: u16, silenced: Arc<AtomicBool>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let silenced = silenced.clone();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect((HOST, target)).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending (a close or an error) ends the connection.
            tokio::select! {
                () = pipe(client_read, server_write, &silenced) => {}
                () = pipe(server_read, client_write, &silenced) => {}
            }
        });
        // Finished connections are reaped as new ones arrive.
        while connections.try_join_next().is_some() {}
    }
}

/// Copies `from` to `to` until either ends, discarding what arrives while silenced.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, silenced: &AtomicBool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silenced.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
