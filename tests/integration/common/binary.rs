//! The `qrlink` binary as a separate process: started on a free port against a given upstream,
//! its logs captured. For what must be measured apart from the test process (its metrics, tasks
//! and fds are its own) and for what only a process shows (signals, logs).

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::{API_KEY, WAIT};

/// The binary, its address, and everything it logged so far.
pub struct Running {
    pub child: Child,
    pub addr: String,
    logs: Arc<Mutex<String>>,
    /// Counts log lines, so a test can wait for the next one.
    lines: tokio::sync::watch::Receiver<usize>,
}

impl Running {
    /// Waits for a line to arrive that satisfies `pred` on the whole log, and returns the log.
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool) -> String {
        let mut lines = self.lines.clone();
        loop {
            let logs = self.logs.lock().unwrap().clone();
            if pred(&logs) {
                return logs;
            }
            tokio::time::timeout(WAIT, lines.changed())
                .await
                .unwrap_or_else(|_| panic!("the expected log line never came:\n{logs}"))
                .expect("the log readers are alive");
        }
    }
}

pub async fn start_binary(upstream: &str, rust_log: &str) -> Running {
    start_binary_with(upstream, rust_log, &[], &[]).await
}

pub async fn start_binary_with(
    upstream: &str,
    rust_log: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrlink"))
        .env_remove("QRLINK_LOG_FORMAT")
        .envs(envs.iter().copied())
        .args(["--listen", "127.0.0.1:0", "--unipile-api-url", upstream])
        .args(["--unipile-api-key", API_KEY, "--shutdown-grace", "5s"])
        .args(["--max-sessions-per-ip", "1000"])
        // Last, so a test's flags win over the ones above.
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the qrlink binary starts");
    let logs = Arc::new(Mutex::new(String::new()));
    let (line_count, lines) = tokio::sync::watch::channel(0usize);
    let line_count = Arc::new(line_count);
    let (addr_tx, addr_rx) = oneshot::channel();
    let mut addr_tx = Some(addr_tx);
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let logs = logs.clone();
        let line_count = line_count.clone();
        let mut addr_tx = addr_tx.take();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("open http://").nth(1) {
                    if let Some(tx) = addr_tx.take() {
                        let addr = rest.split(['/', ' ']).next().unwrap_or_default();
                        let _ = tx.send(addr.to_owned());
                    }
                }
                {
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                line_count.send_modify(|n| *n += 1);
            }
        });
    }
    let addr = tokio::time::timeout(WAIT, addr_rx)
        .await
        .expect("the binary says where it listens")
        .expect("the binary printed its address");
    Running {
        child,
        addr,
        logs,
        lines,
    }
}
