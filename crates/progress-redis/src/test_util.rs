//! A real `redis-server` for tests (feature `test-util`): this crate's own tests and the
//! gateway's end-to-end tests start one per test.
//!
//! Needs Debian's `redis-server` on the `PATH` (`scripts/test.sh` installs it). Without
//! it [`RedisServer::start`] panics, so the tests that need Redis fail rather than skip.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` on a loopback port, without persistence; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// More `redis-server` arguments (a password, a TLS port), kept for restarts.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (to bring a stopped server back on the same address; it
    /// starts empty).
    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// Starts one on `port` with more `redis-server` arguments, e.g. `--requirepass pw`
    /// or `--tls-port N --tls-cert-file …` (the plain `port` still serves, to tell when
    /// the server is up).
    pub async fn start_with(port: u16, args: &[&str]) -> Self {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut server = Self {
            child: None,
            port,
            args,
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it if it runs, then starts it again on the same port (empty: nothing is
    /// saved) and waits until it answers `PING`.
    pub async fn restart(&mut self) {
        self.kill();
        // Port 0 is not supported by redis-server: the port is picked beforehand.
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is missing: install Debian's redis-server (scripts/test.sh does)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers_ping().await {
            if Instant::now() >= deadline {
                self.kill();
                panic!("redis-server did not answer PING on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the server answers `PING` with `+PONG`, or `-NOAUTH` when it wants a
    /// password (inline command, RESP reply).
    async fn answers_ping(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if conn.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        let read = tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut reply));
        matches!(read.await, Ok(Ok(_))) && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on (free when this returns; another process could
/// take it before the caller binds it, which is unlikely enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
