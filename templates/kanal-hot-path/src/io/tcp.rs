//! Lines from TCP clients: the fan-in of many connections into one pipeline.
//!
//! A [`Listener`] is bound once and shared. Each producer owns one
//! [`Connections`]: it accepts a client, reads that client's lines until the
//! client disconnects, then accepts the next one. So at most as many clients
//! are read at once as there are producers (`--max-connections`); further
//! clients wait in the kernel's listen backlog until a producer is free, and
//! the log says so when it happens.
//!
//! A client that stalls (connected, sending nothing, or half a line) holds
//! only its own producer. A shutdown does not wait for it: accepting and
//! reading are both cancel safe, so the producer's wait is simply dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};

use super::lines::{LineError, LineReader};

/// How long a producer waits before accepting again after `accept` failed
/// (out of file descriptors, say), so a persistent error is not retried in
/// a busy loop.
const ACCEPT_RETRY_AFTER: Duration = Duration::from_millis(100);

/// A bound TCP listener shared by the producers.
#[derive(Debug)]
pub struct Listener {
    socket: TcpListener,
    max_connections: usize,
    max_line_bytes: usize,
    open_connections: AtomicUsize,
}

impl Listener {
    /// Binds `addr` for at most `max_connections` clients at once, each line
    /// at most `max_line_bytes` long. Binding happens here, before the
    /// pipeline starts, so an address in use is a start-up error.
    pub fn bind(
        addr: SocketAddr,
        max_connections: usize,
        max_line_bytes: usize,
    ) -> anyhow::Result<Self> {
        let socket = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        socket.set_nonblocking(true)?;
        let socket = TcpListener::from_std(socket)?;
        tracing::info!(addr = %socket.local_addr()?, max_connections, "listening");
        Ok(Self {
            socket,
            max_connections,
            max_line_bytes,
            open_connections: AtomicUsize::new(0),
        })
    }

    /// How many clients are read at once, at most.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

/// One producer's side of the listener: the client it is reading, if any.
#[derive(Debug)]
pub struct Connections {
    listener: Arc<Listener>,
    client: Option<Client>,
}

#[derive(Debug)]
struct Client {
    peer: SocketAddr,
    lines: LineReader<TcpStream>,
}

impl Connections {
    /// A producer's share of `listener`, not connected yet.
    pub fn new(listener: Arc<Listener>) -> Self {
        Self {
            listener,
            client: None,
        }
    }

    /// The next line from a client, accepting one first when this producer
    /// has none. Never ends by itself: a listener has no end of input, so
    /// the run goes on until a shutdown request.
    ///
    /// A bad line (too long, not UTF-8) is returned as an error and the
    /// client stays connected; a failed read disconnects the client.
    ///
    /// Cancel safe: `accept` and [`LineReader::next_line`] are, and the
    /// client is stored in `self` as soon as it is accepted.
    pub async fn next_line(&mut self) -> anyhow::Result<String> {
        loop {
            let client = match self.client.take() {
                Some(client) => client,
                None => self.accept().await?,
            };
            let client = self.client.insert(client);
            match client.lines.next_line().await {
                Ok(Some(line)) => return Ok(line),
                Ok(None) => self.disconnect("client disconnected"),
                Err(LineError::Bad(bad)) => {
                    let peer = client.peer;
                    return Err(anyhow::Error::new(bad).context(format!("from {peer}")));
                }
                Err(LineError::Io(error)) => {
                    let peer = client.peer;
                    self.disconnect("client connection failed");
                    return Err(anyhow::Error::new(error).context(format!("reading from {peer}")));
                }
            }
        }
    }

    async fn accept(&self) -> anyhow::Result<Client> {
        let listener = &self.listener;
        let (stream, peer) = match listener.socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tokio::time::sleep(ACCEPT_RETRY_AFTER).await;
                return Err(anyhow::Error::new(error).context("accepting a connection"));
            }
        };
        let open = listener.open_connections.fetch_add(1, Relaxed) + 1;
        tracing::info!(%peer, open, "client connected");
        if open == listener.max_connections {
            tracing::warn!(
                max_connections = listener.max_connections,
                "every connection slot is taken: new clients wait in the listen backlog until one disconnects"
            );
        }
        Ok(Client {
            peer,
            lines: LineReader::new(stream, listener.max_line_bytes),
        })
    }

    fn disconnect(&mut self, why: &'static str) {
        if let Some(client) = self.client.take() {
            let open = self.listener.open_connections.fetch_sub(1, Relaxed) - 1;
            tracing::info!(peer = %client.peer, open, "{why}");
        }
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.disconnect("connection closed: the producer stopped");
    }
}
