//! Real Redis, NATS JetStream and Postgres servers for tests, on free loopback ports.
//!
//! Each server is a child process of the test, started from the real binaries:
//! - [`RedisServer`]: `redis-server` with persistence off (a restart comes back empty, as in
//!   production where Redis keeps nothing on disk);
//! - [`NatsServer`]: `nats-server -js` with a file store in its own folder (a restart keeps the
//!   streams). It prefers the 2.15 binary that `scripts/setup.sh` installs under `.tools/bin`
//!   and falls back to the one on `PATH` with a log line;
//! - [`PostgresServer`]: a cluster made by `initdb` and run by `postgres` (as the `postgres`
//!   user when the test runs as root); [`PostgresServer::create_database`] gives each test a
//!   fresh database.
//!
//! Every handle can [`kill`](RedisServer::kill) its server (SIGKILL, like a crash),
//! [`restart`](RedisServer::restart) it on the same port (and the same data folder for NATS and
//! Postgres), and [`pause`](RedisServer::pause)/[`resume`](RedisServer::resume) it
//! (SIGSTOP/SIGCONT), for fault tests. Servers run in their own process group under
//! `setpriv --pdeathsig KILL`, so they die with the test process even when it is killed, and a
//! dropped handle (a panicking test included) kills its server and removes its folder.
//!
//! [`FaultProxy`] goes between a component and one of them (or any TCP server on loopback) to
//! fault a single hop while both ends run: lost replies, delays past a timeout, blackholes,
//! resets, slow bandwidth, a node cut off ([`Fault`]).
//!
//! Binaries can be overridden with `REDIS_SERVER_BIN`, `NATS_SERVER_BIN` and `PG_BIN_DIR`.

mod nats;
mod postgres;
mod process;
mod proxy;
mod redis;

pub use nats::{NatsCluster, NatsServer};
pub use postgres::{PostgresServer, TestDatabase};
pub use proxy::{Fault, FaultProxy};
pub use redis::{CLUSTER_NODE_TIMEOUT, RedisCluster, RedisServer};

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

/// Where a server keeps its files: a temporary folder removed with the handle, or a folder
/// kept for the next start (`flashsale up`).
#[derive(Debug)]
pub(crate) enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    pub(crate) fn temp(prefix: &str) -> std::io::Result<Self> {
        Ok(Self::Temp(
            tempfile::Builder::new().prefix(prefix).tempdir()?,
        ))
    }

    pub(crate) fn kept(path: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(Self::Kept(path.to_path_buf()))
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Kept(p) => p,
        }
    }
}

/// Loopback, where every test server listens.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port that was free a moment ago, and that this process has not handed out
/// before.
///
/// Chosen at random below the kernel's ephemeral range (`ip_local_port_range`): a port the
/// kernel assigned could be handed to the next outgoing connection of any process before the
/// server that was meant to get it binds it, and tests make thousands of connections.
pub fn free_port() -> std::io::Result<u16> {
    use std::{collections::HashSet, sync::Mutex};
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low);
    if high > low + 1_000 {
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        for _ in 0..1_000 {
            let port = rand::random_range(low..high);
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind((LOOPBACK, port)).is_ok() {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((LOOPBACK, 0))?.local_addr()?.port())
}

/// The workspace root (where `Cargo.lock`, `.tools/`, `helm/` and `k8s/` live): the nearest
/// folder above this crate holding `Cargo.lock`. The one place the repository finds its root.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// Finds an executable by name on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

/// A random lowercase name, for databases, streams and key prefixes.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
