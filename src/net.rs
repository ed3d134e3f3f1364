//! TCP accept for the gateway's and the simulator's own accept loops.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed `accept`: the usual cause is running out of file descriptors, and
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection, with Nagle off (frames and answers are small and latency-bound).
/// Failed accepts are logged with `who` and retried after [`ACCEPT_BACKOFF`].
pub async fn accept(listener: &TcpListener, who: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "{who}: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
