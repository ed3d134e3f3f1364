//! The state every handler shares, in a module of its own so that the HTTP surface, the socket
//! loops and the gateway all point here instead of at each other.

use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::notify::Notifier;
use crate::simulator::Simulator;
use crate::store::Store;
use crate::upstream::UnipileClient;

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// The configuration the gateway started with.
    pub config: Config,
    /// Who may frame the pages ([`Config::frame_ancestors`]), worked out once: every page's
    /// CSP and `/embed.json` use it.
    pub frame_ancestors: String,
    /// The one Unipile client (one connection pool).
    pub upstream: UnipileClient,
    /// Every link attempt, attached or detached, and the admission limits.
    pub store: Store,
    /// Webhooks: the outbox and its deliverer (disabled without `--webhook-url`).
    pub notifier: Notifier,
    /// Cancelled when shutdown begins; every socket task watches it.
    pub shutdown: CancellationToken,
    /// Every socket task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// False once shutdown has begun (`/readyz`).
    pub ready: AtomicBool,
    /// The embedded simulator, in demo mode.
    pub simulator: Option<Simulator>,
    /// The simulator's 2FA password, shown on the page in demo mode.
    pub demo_twofa_password: Option<String>,
}
