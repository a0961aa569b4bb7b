//! The accept loop, with the hooks needed to simulate an API server that goes
//! away: while connections are refused the listening socket is closed (so
//! connects fail with ECONNREFUSED), and every accepted connection can be
//! reset at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::faults::Faults;

/// How long to wait before retrying a failed accept or re-bind.
const RETRY_DELAY: Duration = Duration::from_millis(20);

/// An [`axum::serve::Listener`] that honours the refuse-connections fault.
pub struct SimListener {
    addr: SocketAddr,
    listener: Option<TcpListener>,
    refuse: watch::Receiver<Option<Instant>>,
    faults: Arc<Faults>,
}

impl SimListener {
    /// Wraps an already bound listener.
    pub fn new(listener: TcpListener, addr: SocketAddr, faults: Arc<Faults>) -> Self {
        SimListener {
            addr,
            listener: Some(listener),
            refuse: faults.refuse_receiver(),
            faults,
        }
    }

    /// If connections are being refused: closes the socket and waits until
    /// the refusal ends (or is changed).
    async fn wait_while_refusing(&mut self) {
        loop {
            let until = *self.refuse.borrow_and_update();
            match until {
                Some(until) if until > Instant::now() => {
                    if self.listener.take().is_some() {
                        tracing::info!(addr = %self.addr, "listener closed: refusing connections");
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        _ = self.refuse.changed() => {}
                    }
                }
                _ => return,
            }
        }
    }

    /// Re-binds the original address after a refusal.
    async fn ensure_bound(&mut self) {
        while self.listener.is_none() {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    tracing::info!(addr = %self.addr, "listener re-bound: accepting connections");
                    self.listener = Some(listener);
                }
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "re-binding failed; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }
}

impl axum::serve::Listener for SimListener {
    type Io = SimConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            self.wait_while_refusing().await;
            let mut refuse = self.refuse.clone();
            self.ensure_bound().await;
            let Some(listener) = &self.listener else {
                continue;
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let kill = self.faults.connection_token().cancelled_owned();
                        return (SimConn { stream, kill: Box::pin(kill), killed: false }, peer);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                },
                _ = refuse.changed() => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// An accepted connection that fails all I/O, and resets the socket, once its
/// connection generation is cancelled.
pub struct SimConn {
    stream: TcpStream,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
    killed: bool,
}

impl SimConn {
    /// Whether the connection has been killed; arranges a wake-up otherwise.
    fn check_killed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.killed && self.kill.as_mut().poll(cx).is_ready() {
            self.killed = true;
            // Zero linger makes the close an RST, like a crashed server.
            if let Err(e) = self.stream.set_zero_linger() {
                tracing::debug!(error = %e, "setting zero linger failed");
            }
        }
        self.killed
    }
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset by the simulator",
    )
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.check_killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.check_killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.check_killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
