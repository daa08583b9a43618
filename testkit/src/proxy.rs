//! [`FaultProxy`]: a TCP proxy on loopback that a test puts between a component and Redis,
//! NATS, Postgres or another gRPC server, to cut, delay and drop that one hop's traffic while
//! both ends keep running.
//!
//! The fault is the proxy's, set with [`FaultProxy::set`] at any moment; it applies to every
//! connection, the open ones included, from their next bytes on:
//!
//! | [`Fault`] | requests (client → server) | replies (server → client) |
//! |---|---|---|
//! | `Pass` | forwarded | forwarded |
//! | `Delay(d)` | forwarded | each chunk held `d` first (past the caller's timeout) |
//! | `Hold(d)` | each chunk held `d` first (the server acts late) | forwarded |
//! | `Blackhole` | swallowed | swallowed; connections stay open while it lasts (one that lost bytes is reset when it ends: a TCP stream never goes on past a gap) |
//! | `LoseReplies` | forwarded (the server acts) | dropped, and the connection closed |
//! | `LoseNextReply` | forwarded | the next chunk dropped and its connection closed; then `Pass` |
//! | `Bandwidth(b)` | forwarded | trickled at `b` bytes a second |
//! | `Reset` | connections reset (RST), new ones too | |
//! | `Cut` | open connections reset, new ones refused (reset at once): the node is cut off | |
//!
//! `LoseReplies` is the partial failure that matters most: the server ran the command, the
//! caller never hears and may send it again.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does to the traffic (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Hold each reply chunk this long.
    Delay(Duration),
    /// Hold each request chunk this long.
    Hold(Duration),
    /// Swallow everything; connections stay open.
    Blackhole,
    /// Forward requests; drop replies and close their connections.
    LoseReplies,
    /// Drop the next reply chunk and close its connection, then pass.
    LoseNextReply,
    /// Trickle replies at this many bytes a second.
    Bandwidth(u64),
    /// Reset every connection, open and new.
    Reset,
    /// Reset open connections and refuse new ones.
    Cut,
}

impl Fault {
    /// True for the faults that end connections as soon as they are set.
    fn ends_connections(self) -> bool {
        matches!(self, Fault::Reset | Fault::Cut)
    }
}

/// Counts of what the proxy did, for tests to check their fault struck.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    replies_lost: AtomicU64,
    resets: AtomicU64,
    /// Chunks held back (`Delay`, `Bandwidth`) or swallowed (`Blackhole`).
    held: AtomicU64,
}

#[derive(Debug)]
struct State {
    target: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Serializes `LoseNextReply`: exactly one chunk is lost.
    lose_next: Mutex<()>,
    counters: Counters,
}

/// A fault-injecting proxy to one server; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.fault.send_replace(Fault::Cut);
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `target` (on loopback), passing traffic.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        assert!(target.ip().is_loopback(), "fault tests stay on loopback");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            target,
            fault: watch::Sender::new(Fault::Pass),
            lose_next: Mutex::new(()),
            counters: Counters::default(),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self { port, state, task })
    }

    /// A proxy to a server listening on `127.0.0.1:port`.
    pub async fn to_port(port: u16) -> std::io::Result<Self> {
        Self::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
    }

    /// The proxy's port: point the component here instead of at the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the fault from now on.
    pub fn set(&self, fault: Fault) {
        self.state.fault.send_replace(fault);
    }

    /// Back to passing traffic.
    pub fn heal(&self) {
        self.set(Fault::Pass);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.state.fault.borrow()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.counters.connections.load(Ordering::Relaxed)
    }

    /// Reply chunks dropped by `LoseReplies` / `LoseNextReply`.
    pub fn replies_lost(&self) -> u64 {
        self.state.counters.replies_lost.load(Ordering::Relaxed)
    }

    /// Connections reset or refused by `Reset` / `Cut`.
    pub fn resets(&self) -> u64 {
        self.state.counters.resets.load(Ordering::Relaxed)
    }

    /// Chunks delayed, trickled or swallowed.
    pub fn held(&self) -> u64 {
        self.state.counters.held.load(Ordering::Relaxed)
    }

    /// Everything the faults did to traffic: lost replies, resets, held chunks.
    pub fn struck(&self) -> u64 {
        self.replies_lost() + self.resets() + self.held()
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        state.counters.connections.fetch_add(1, Ordering::Relaxed);
        if state.fault.borrow().ends_connections() {
            state.counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        tokio::spawn(relay(client, state.clone()));
    }
}

/// Closes with RST instead of FIN, as a crashed peer or a firewall would.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// How one relay step ended.
enum Step {
    Go,
    /// Bytes were swallowed (`Blackhole`): the stream has a gap from now on.
    Swallowed,
    Closed,
    Reset,
}

async fn relay(mut client: TcpStream, state: Arc<State>) {
    let Ok(mut server) = TcpStream::connect(state.target).await else {
        return reset(client);
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let mut changes = state.fault.subscribe();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut gap = false;
    let end = {
        let (mut client_rx, mut client_tx) = client.split();
        let (mut server_rx, mut server_tx) = server.split();
        loop {
            let step = tokio::select! {
                read = client_rx.read(&mut up) => match read {
                    Ok(0) | Err(_) => Step::Closed,
                    Ok(n) => request(&state, &up[..n], &mut server_tx).await,
                },
                read = server_rx.read(&mut down) => match read {
                    Ok(0) | Err(_) => Step::Closed,
                    Ok(n) => reply(&state, &down[..n], &mut client_tx).await,
                },
                changed = changes.changed() => match changed {
                    Ok(()) if changes.borrow().ends_connections() => Step::Reset,
                    Ok(()) => Step::Go,
                    Err(_) => Step::Reset,
                },
            };
            match step {
                Step::Go => {}
                Step::Swallowed => gap = true,
                other => break other,
            }
            // Past a gap the bytes on either side no longer line up (a reply would answer
            // another request): once the blackhole ends, the connection ends too.
            if gap && *state.fault.borrow() != Fault::Blackhole {
                break Step::Reset;
            }
        }
    };
    match end {
        Step::Reset => {
            state.counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(server);
        }
        _ => {
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
    }
}

async fn request(state: &State, bytes: &[u8], server: &mut (impl AsyncWriteExt + Unpin)) -> Step {
    let fault = *state.fault.borrow();
    match fault {
        Fault::Blackhole => {
            state.counters.held.fetch_add(1, Ordering::Relaxed);
            Step::Swallowed
        }
        Fault::Reset | Fault::Cut => Step::Reset,
        Fault::Hold(d) => {
            state.counters.held.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
            write(server, bytes).await
        }
        _ => write(server, bytes).await,
    }
}

async fn reply(state: &State, bytes: &[u8], client: &mut (impl AsyncWriteExt + Unpin)) -> Step {
    let fault = *state.fault.borrow();
    match fault {
        Fault::Pass | Fault::Hold(_) => write(client, bytes).await,
        Fault::Delay(d) => {
            state.counters.held.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
            write(client, bytes).await
        }
        Fault::Blackhole => {
            state.counters.held.fetch_add(1, Ordering::Relaxed);
            Step::Swallowed
        }
        Fault::LoseReplies => lose(state),
        Fault::LoseNextReply => {
            let _one = state.lose_next.lock().unwrap_or_else(|e| e.into_inner());
            if *state.fault.borrow() != Fault::LoseNextReply {
                drop(_one);
                return write(client, bytes).await;
            }
            state.fault.send_replace(Fault::Pass);
            lose(state)
        }
        Fault::Bandwidth(per_second) => {
            state.counters.held.fetch_add(1, Ordering::Relaxed);
            trickle(client, bytes, per_second).await
        }
        Fault::Reset | Fault::Cut => Step::Reset,
    }
}

fn lose(state: &State) -> Step {
    state.counters.replies_lost.fetch_add(1, Ordering::Relaxed);
    Step::Reset
}

async fn write(to: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> Step {
    match to.write_all(bytes).await {
        Ok(()) => Step::Go,
        Err(_) => Step::Closed,
    }
}

async fn trickle(to: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8], per_second: u64) -> Step {
    let slice = (per_second / 10).max(1) as usize;
    for chunk in bytes.chunks(slice) {
        if let Step::Closed = write(to, chunk).await {
            return Step::Closed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Step::Go
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; answers each chunk with the same bytes.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn ask(stream: &mut TcpStream, text: &[u8], wait: Duration) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buf = vec![0u8; text.len()];
        match tokio::time::timeout(wait, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Ok(buf),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let connect = || TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port()));
        let second = Duration::from_secs(1);

        let mut s = connect().await.unwrap();
        assert_eq!(ask(&mut s, b"ping", second).await.unwrap(), b"ping");

        proxy.set(Fault::Delay(Duration::from_millis(300)));
        let started = tokio::time::Instant::now();
        assert_eq!(ask(&mut s, b"slow", second).await.unwrap(), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(300));

        proxy.set(Fault::Hold(Duration::from_millis(300)));
        let started = tokio::time::Instant::now();
        assert_eq!(ask(&mut s, b"late", second).await.unwrap(), b"late");
        assert!(started.elapsed() >= Duration::from_millis(300));

        proxy.set(Fault::Blackhole);
        let silent = ask(&mut s, b"gone", Duration::from_millis(200)).await;
        assert_eq!(silent.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        proxy.heal();
        assert!(
            ask(&mut s, b"next", second).await.is_err(),
            "a connection that lost bytes ends with the blackhole"
        );

        proxy.set(Fault::LoseNextReply);
        let mut s = connect().await.unwrap();
        assert!(
            ask(&mut s, b"lost", second).await.is_err(),
            "reply lost, connection closed"
        );
        assert_eq!((proxy.replies_lost(), proxy.fault()), (1, Fault::Pass));
        let mut s = connect().await.unwrap();
        assert_eq!(ask(&mut s, b"back", second).await.unwrap(), b"back");

        proxy.set(Fault::Bandwidth(40));
        let started = tokio::time::Instant::now();
        assert_eq!(
            ask(&mut s, b"01234567", second * 3).await.unwrap(),
            b"01234567"
        );
        assert!(started.elapsed() >= Duration::from_millis(90), "trickled");

        proxy.set(Fault::Cut);
        let mut buf = [0u8; 4];
        let cut = tokio::time::timeout(second, s.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(cut, Ok(0) | Err(_)),
            "the open connection ends: {cut:?}"
        );
        let mut refused = connect().await.unwrap();
        assert!(ask(&mut refused, b"nope", second).await.is_err());
        assert!(proxy.resets() >= 2);

        proxy.heal();
        let mut s = connect().await.unwrap();
        assert_eq!(ask(&mut s, b"healed", second).await.unwrap(), b"healed");
    }

    #[tokio::test]
    async fn lost_replies_reach_the_server_first() {
        // A server that counts what it received, then answers.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let seen = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.fetch_add(n as u64, Ordering::Relaxed);
                        let _ = s.write_all(b"ok").await;
                    }
                });
            }
        });
        let proxy = FaultProxy::start(target).await.unwrap();
        proxy.set(Fault::LoseReplies);
        for _ in 0..3 {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port()))
                .await
                .unwrap();
            assert!(ask(&mut s, b"do", Duration::from_secs(1)).await.is_err());
        }
        assert_eq!(
            received.load(Ordering::Relaxed),
            6,
            "the server acted each time"
        );
        assert_eq!(proxy.replies_lost(), 3);
    }
}
