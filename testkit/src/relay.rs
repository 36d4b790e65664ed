//! A TCP relay that puts distance between two loopback sockets: every byte is forwarded after
//! a fixed delay in its direction, so a backend on 127.0.0.1 answers as if it were a WAN
//! round trip away. Tests and the `fleet-faults` scenario put one in front of a mock backend
//! (or a gateway) to measure the gateway on a real far pool rather than adding the distance
//! to the client's stopwatch afterwards.
//!
//! The delay is exact and does not accumulate: each chunk read is stamped with its due time
//! (read time + the direction's current delay) and a writer task sends it at that time, so
//! data in flight is pipelined like on a long link, with no per-chunk serialisation. Both
//! delays can be changed at run time ([`Relay::set_delays`]); the change applies to bytes
//! read from then on. The end of a stream is forwarded after the delay too, in order.
//!
//! A dead upstream: the connection that finds it dead is closed a round trip after it opened,
//! and the relay then stops listening until the upstream accepts again (it checks every
//! 20 ms), so further connects are refused as they would be by the dead host itself.
//!
//! What it cannot do: the TCP handshake with the relay completes at once (the kernel accepts
//! before the relay sees the connection), so connection set-up time, a refusal, and the
//! kernel's smoothed RTT of the socket to the relay stay loopback-small; only data is
//! delayed.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// The two one-way delays, µs (read on every chunk).
#[derive(Debug, Default)]
struct Delays {
    to_upstream_us: AtomicU64,
    to_client_us: AtomicU64,
}

/// A running relay: listens on `addr`, forwards to the upstream with delays.
pub struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    delays: Arc<Delays>,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Listen on an ephemeral loopback port and relay to `upstream`, adding `rtt / 2` in each
    /// direction.
    pub async fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let delays = Arc::new(Delays::default());
        let (stop, mut stopped) = watch::channel(false);
        let relay = Relay {
            addr,
            upstream,
            delays: delays.clone(),
            stop,
        };
        relay.set_rtt(rtt);
        tokio::spawn(async move {
            let dead = Arc::new(Notify::new());
            let mut listener = Some(listener);
            loop {
                let Some(open) = &listener else {
                    // Refusing while the upstream is dead: listen again once it accepts.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = stopped.changed() => break,
                    }
                    if TcpStream::connect(upstream).await.is_ok() {
                        listener = TcpListener::bind(addr).await.ok();
                    }
                    continue;
                };
                let accepted = tokio::select! {
                    a = open.accept() => a,
                    _ = dead.notified() => {
                        listener = None;
                        continue;
                    }
                    _ = stopped.changed() => break,
                };
                match accepted {
                    Ok((client, _)) => {
                        tokio::spawn(connection(client, upstream, delays.clone(), dead.clone()));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "relay accept failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
        Ok(relay)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the relay forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Set the round trip the relay adds (half in each direction).
    pub fn set_rtt(&self, rtt: Duration) {
        self.set_delays(rtt / 2, rtt - rtt / 2);
    }

    /// Set the delay of each direction separately.
    pub fn set_delays(&self, to_upstream: Duration, to_client: Duration) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.delays
            .to_upstream_us
            .store(us(to_upstream), Ordering::Relaxed);
        self.delays
            .to_client_us
            .store(us(to_client), Ordering::Relaxed);
    }

    /// The round trip the relay adds now.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(
            self.delays.to_upstream_us.load(Ordering::Relaxed)
                + self.delays.to_client_us.load(Ordering::Relaxed),
        )
    }

    /// Stop accepting (open connections run until either side closes).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    delays: Arc<Delays>,
    dead: Arc<Notify>,
) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            // The upstream refuses: stop listening (later connects are refused), and close
            // this one once a round trip has passed (the nearest a relay gets to a refusal
            // coming back from far away).
            tracing::debug!(error = %e, %upstream, "relay upstream connect failed");
            dead.notify_one();
            let rtt = delays.to_upstream_us.load(Ordering::Relaxed)
                + delays.to_client_us.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_micros(rtt)).await;
            drop(client);
            return;
        }
    };
    // Small writes must not wait for Nagle: the delay is the relay's, not the kernel's.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = pipe(client_r, server_w, delays.clone(), true);
    let down = pipe(server_r, client_w, delays, false);
    let _ = tokio::join!(up, down);
}

/// One direction: a reader stamps chunks with their due time, a writer sends them then.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delays: Arc<Delays>, up: bool) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Bytes>)>();
    let delay = move || {
        let cell = if up {
            &delays.to_upstream_us
        } else {
            &delays.to_client_us
        };
        Duration::from_micros(cell.load(Ordering::Relaxed))
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = Instant::now() + delay();
            let chunk = (n > 0).then(|| Bytes::copy_from_slice(&buf[..n]));
            let end = chunk.is_none();
            if tx.send((due, chunk)).is_err() || end {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            // Tokio's timer has a 1 ms resolution and rounds a deadline up to the next tick;
            // aiming half a tick early centres the error on zero instead of adding ~0.5 ms
            // per direction and hop.
            let aim = due.checked_sub(Duration::from_micros(500)).unwrap_or(due);
            tokio::time::sleep_until(aim).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_come_back_after_the_round_trip() {
        let echo = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let echo_addr = echo.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            if let Ok((mut s, _)) = echo.accept().await {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let relay = Relay::start(echo_addr, Duration::from_millis(40))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut s = TcpStream::connect(relay.addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf, b"ping");
        // Behaviour, not speed: the relay holds the bytes for its round trip (give or take
        // the timer's half tick per direction).
        assert!(started.elapsed() >= Duration::from_millis(39));
        relay.set_rtt(Duration::ZERO);
        assert_eq!(relay.rtt(), Duration::ZERO);
    }
}
