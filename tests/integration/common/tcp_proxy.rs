//! A TCP forwarder on 127.0.0.1:0 in front of a server, whose connections a test can cut (a
//! reset, as a network that goes away) or hold back (a network that is not there yet).
//!
//! [`TcpProxy::cut`] resets every connection open at that moment: both of its sockets are
//! closed with `SO_LINGER` 0, so each peer gets a TCP RST rather than a FIN (a browser sees
//! its WebSocket fail with 1006, the server a read error). New connections keep being accepted.
//! [`TcpProxy::hold`] makes new connections wait, accepted but not forwarded, until
//! [`TcpProxy::release`]; [`TcpProxy::wait_waiting`] tells a test that a client is knocking.
//! Every task ends when the proxy is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::WAIT;

/// Connections open or waiting at once; more are refused (closed at once). A page opens a
/// handful; a bug that opens them in a loop fails the test instead of exhausting the machine.
const MAX_CONNECTIONS: u64 = 64;

/// What the proxy has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted, ever.
    pub accepted: u64,
    /// Connections accepted and not yet ended (waiting ones included).
    pub open: u64,
    /// Connections accepted while held, not yet forwarded.
    pub waiting: u64,
    /// Connections ended by [`TcpProxy::cut`].
    pub cut: u64,
}

/// State shared by the proxy handle and its tasks.
struct Shared {
    /// Cancelled by `cut`: every connection open at that moment ends with a reset; later ones
    /// take the fresh token that replaces it.
    current: Mutex<CancellationToken>,
    /// True while new connections are held back instead of forwarded.
    holding: watch::Sender<bool>,
    /// The counts, as a watch so a test waits for a change instead of polling.
    counts: watch::Sender<Counts>,
}

/// A TCP proxy in front of `target`; stops, resetting what it still carries, when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            current: Mutex::new(CancellationToken::new()),
            holding: watch::channel(false).0,
            counts: watch::channel(Counts::default()).0,
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, target, shared.clone(), stop.clone()));
        TcpProxy { addr, shared, stop }
    }

    /// `http://{addr}{path}`: the same origin for a page and its WebSockets.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Resets every connection open (or waiting) now; returns how many there were. Later
    /// connections go through (or wait, while held).
    pub fn cut(&self) -> u64 {
        let open = self.counts().open;
        let old = std::mem::take(&mut *self.shared.current.lock().unwrap());
        old.cancel();
        open
    }

    /// New connections are accepted but wait, not forwarded, until [`TcpProxy::release`].
    pub fn hold(&self) {
        self.shared.holding.send_replace(true);
    }

    /// Forwards the waiting connections, and new ones at once.
    pub fn release(&self) {
        self.shared.holding.send_replace(false);
    }

    pub fn counts(&self) -> Counts {
        *self.shared.counts.borrow()
    }

    /// Waits (at most [`WAIT`]) until `what` holds of the counts.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Counts) -> bool) -> Counts {
        let mut counts = self.shared.counts.subscribe();
        match tokio::time::timeout(WAIT, counts.wait_for(|c| pred(c))).await {
            Ok(Ok(c)) => *c,
            Ok(Err(_)) => unreachable!("the proxy holds the sender"),
            Err(_) => panic!(
                "expected {what} within {WAIT:?}; the proxy saw {:?}",
                self.counts()
            ),
        }
    }

    /// Waits until at least `n` connections are held back.
    pub async fn wait_waiting(&self, n: u64) -> Counts {
        self.wait_for(&format!("{n} connection(s) held back"), |c| c.waiting >= n)
            .await
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        if shared.counts.borrow().open >= MAX_CONNECTIONS {
            continue; // dropped: refused
        }
        let cut = shared.current.lock().unwrap().clone();
        let guard = Open::new(shared.clone());
        tokio::spawn(forward(inbound, target, guard, cut, stop.clone()));
    }
}

/// One connection: wait while held, then copy both ways until either side ends, a cut, or
/// the proxy's end (then both sides are reset).
async fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    guard: Open,
    cut: CancellationToken,
    stop: CancellationToken,
) {
    let mut holding = guard.shared.holding.subscribe();
    if *holding.borrow() {
        guard.set_waiting(true);
        let released = tokio::select! {
            r = holding.wait_for(|h| !h) => r.is_ok(),
            () = cut.cancelled() => false,
            () = stop.cancelled() => false,
        };
        guard.set_waiting(false);
        if !released {
            guard.count_cut();
            reset(&inbound);
            return;
        }
    }
    let mut inbound = inbound;
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        reset(&inbound);
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        () = cut.cancelled() => {
            guard.count_cut();
            reset(&inbound);
            reset(&outbound);
        }
        () = stop.cancelled() => {
            reset(&inbound);
            reset(&outbound);
        }
    }
}

/// Makes the socket's close (when it is dropped) a reset: RST, not FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Counts a connection as open while it lives, and as waiting while it is held.
struct Open {
    shared: Arc<Shared>,
}

impl Open {
    fn new(shared: Arc<Shared>) -> Open {
        shared.counts.send_modify(|c| {
            c.accepted += 1;
            c.open += 1;
        });
        Open { shared }
    }

    fn set_waiting(&self, waiting: bool) {
        self.shared.counts.send_modify(|c| {
            if waiting {
                c.waiting += 1;
            } else {
                c.waiting -= 1;
            }
        });
    }

    fn count_cut(&self) {
        self.shared.counts.send_modify(|c| c.cut += 1);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared.counts.send_modify(|c| c.open -= 1);
    }
}
