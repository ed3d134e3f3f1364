//! A real `redis-server` for the cluster tests: started on a free loopback port with no
//! persistence, stopped (killed) when dropped.
//!
//! Without `redis-server` a test says why and passes, unless `CI` is set: CI must run the
//! cluster tests (`.ci/run` installs the Debian package).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub struct TestRedis {
    child: Child,
    server: std::path::PathBuf,
    pub port: u16,
}

impl TestRedis {
    /// `None` when redis-server is missing and the test should skip (never on CI).
    pub async fn start() -> Option<TestRedis> {
        super::init_logs();
        let server = super::required_tool("redis-server", "redis-server")?;
        let port = super::free_port();
        let child = spawn(&server, port);
        let redis = TestRedis {
            child,
            server,
            port,
        };
        redis.wait_for_ping().await;
        Some(redis)
    }

    /// Kills the server (an outage: everything it held is gone, as without persistence).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts an empty server again on the same port, after [`TestRedis::kill`].
    pub async fn restart(&mut self) {
        self.child = spawn(&self.server, self.port);
        self.wait_for_ping().await;
    }

    async fn wait_for_ping(&self) {
        tokio::time::timeout(WAIT, async {
            while self.ping().await.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers PING");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ping(&self) -> Option<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0; 7];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as a Redis
    /// that hangs or a network that drops packets.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT), with everything it had.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// A connection for a test's own commands.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }
}

/// redis-server on `port` of 127.0.0.1, without persistence.
fn spawn(server: &std::path::Path, port: u16) -> Child {
    Command::new(server)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
