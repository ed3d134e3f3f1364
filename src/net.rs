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

/// Binds `n` listening sockets to `addr` for [`crate::Gateway::serve_threads`], with
/// `SO_REUSEPORT` so the kernel spreads new connections over them (Linux; elsewhere one socket,
/// as `SO_REUSEPORT` does not balance there). The address is first bound once without
/// `SO_REUSEPORT`: one already in use, by another qrlink too (which could otherwise join the
/// group and silently take a share of the connections), fails as it always would; port 0 picks
/// the port for the whole group.
pub fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let probe = std::net::TcpListener::bind(addr)?;
    if n <= 1 || !cfg!(target_os = "linux") {
        probe.set_nonblocking(true)?;
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            #[cfg(target_os = "linux")]
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

/// The accept queue of each listening socket (what tokio's `TcpListener::bind` asks for; the
/// kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_group_shares_one_port_that_nothing_else_can_take() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = group
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
        let addr = group[0].local_addr().unwrap();
        // Not another plain listener, and not another group either.
        let taken = std::net::TcpListener::bind(addr).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        let taken = bind_group(addr, 2).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        // Each is a working listener (non-blocking, for tokio): a connection reaches one.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = group.iter().filter(|l| l.accept().is_ok()).count();
        assert_eq!(accepted, 1);
    }

    #[test]
    fn one_thread_is_one_plain_listener() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        assert_eq!(group.len(), 1);
        let taken = std::net::TcpListener::bind(group[0].local_addr().unwrap()).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }
}
