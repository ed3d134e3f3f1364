//! Telling the app's backend how a link attempt ended, in ways it can trust (DESIGN.md
//! section 10): the result token on `account` frames ([`result`]) and Standard Webhooks 1.0.
//!
//! Webhooks: the store hands every session's ending, once, to [`Notifier::ended`]
//! (`store::tell_outbox`, whichever store backend); the ending becomes a signed-on-send message
//! in the [`outbox`], which the [`deliver`]er POSTs to `QRLINK_WEBHOOK_URL` with retries.
//! - [`event`]: the event types and body.
//! - [`signing`]: `whsec_` secrets and `webhook-signature`.
//! - [`outbox`]: pending webhooks (in memory, or in Redis in cluster mode: [`redis_outbox`]).
//! - [`deliver`]: attempts, the retry schedule, `Retry-After`, 410, bounded concurrency.
//! - [`journal`]: recent deliveries for the dashboard (`GET /api/deliveries`).

pub mod deliver;
pub mod event;
pub mod journal;
pub mod outbox;
pub mod redis_outbox;
pub mod result;
pub mod signing;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use event::{Ending, Kind, Notes};

use deliver::Deliverer;
use journal::{Entry, Journal, Status};
use outbox::{Message, Outbox};
use signing::Secrets;

/// Webhook settings (`--webhook-*`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where outcomes are POSTed.
    pub url: reqwest::Url,
    /// Signing secrets, each signs every webhook.
    pub secrets: Secrets,
    /// Longest an attempt may take.
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Shrinks the retry schedule, for tests; 1 in production.
    pub retry_scale: f64,
    /// This node's name, in every webhook's `data.node`.
    pub node: String,
    /// Cluster mode: pending webhooks wait in Redis, for any node; `None`: in memory.
    pub redis: Option<outbox::RedisOutboxConfig>,
}

/// Hands outcomes to the outbox and runs the deliverer; disabled (does nothing) when no webhook
/// URL is configured. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    deliverer: Arc<Deliverer>,
    node: String,
    /// The attempts in flight.
    attempts: TaskTracker,
    /// Stops the deliverer and its attempts: shutdown's grace is over.
    stop: CancellationToken,
}

/// What `GET /api/deliveries` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    /// Whether webhooks are configured.
    pub enabled: bool,
    /// Where the pending ones wait: `memory` (lost on restart) or `redis` (cluster mode).
    pub outbox: &'static str,
    /// Webhooks not delivered yet (waiting or in flight; in cluster mode every node's, as
    /// Redis said at most a second ago).
    pub pending: usize,
    /// Age of the oldest pending one, in milliseconds.
    pub oldest_pending_ms: Option<u64>,
    /// The receiver answered 410: nothing more is sent until a restart.
    pub gone: bool,
    /// The last deliveries, newest first.
    pub recent: Vec<Entry>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Starts delivering to `config.url`: the deliverer runs on a task of its own until
    /// [`Notifier::drain`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start(config: WebhookConfig) -> Result<Notifier, StartError> {
        let client = reqwest::Client::builder()
            // A receiver that redirects is misconfigured: following would send the signed
            // body somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .user_agent(concat!("qrlink/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let outbox = match &config.redis {
            Some(redis) => Outbox::redis(redis).map_err(StartError::Redis)?,
            None => Outbox::memory(),
        };
        // The host only: a URL may carry a credential in its path or query.
        tracing::info!(
            host = config.url.host_str().unwrap_or_default(),
            secrets = config.secrets.len(),
            node = %config.node,
            outbox = outbox.name(),
            "webhooks on; {}",
            match outbox {
                Outbox::Memory(_) => "pending ones are kept in memory (lost on restart)",
                Outbox::Redis(_) => "pending ones are kept in Redis (any node delivers them)",
            }
        );
        let deliverer = Arc::new(Deliverer {
            url: config.url,
            secrets: config.secrets,
            client,
            timeout: config.timeout,
            retry_scale: config.retry_scale,
            concurrency: config.concurrency,
            outbox,
            journal: Journal::default(),
            gone: Default::default(),
        });
        let inner = Arc::new(Inner {
            deliverer: deliverer.clone(),
            node: config.node,
            attempts: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(deliverer.run(inner.attempts.clone(), inner.stop.clone()));
        Ok(Notifier { inner: Some(inner) })
    }

    /// Whether webhooks are configured.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues the webhook of a session's ending. The store calls it exactly once per session.
    pub fn ended(&self, ending: Ending<'_>) {
        let Some(inner) = &self.inner else { return };
        let msg = Message {
            id: crate::secret::random_base62("msg_", 24).into_boxed_str(),
            event: ending.kind.event_type(),
            session: ending.session.into(),
            body: Bytes::from(ending.body(&inner.node, SystemTime::now())),
            queued: Instant::now(),
            attempts: 0,
        };
        let d = &inner.deliverer;
        if inner.stop.is_cancelled() {
            // A session that outlived the shutdown grace: nothing delivers any more.
            tracing::warn!(webhook_id = %msg.id, event = msg.event, "webhook lost: the gateway has stopped delivering");
            d.journal.update(&msg, Status::Lost, None, None);
            metrics::counter!("qrlink_webhook_deliveries_total", "event" => msg.event, "result" => "lost")
                .increment(1);
            return;
        }
        if d.gone.load(Ordering::Relaxed) {
            d.journal.update(&msg, Status::Gone, None, None);
            metrics::counter!("qrlink_webhook_deliveries_total", "event" => msg.event, "result" => "gone")
                .increment(1);
            return;
        }
        d.journal.update(&msg, Status::Pending, None, None);
        d.outbox.push(msg);
    }

    /// The deliveries panel's feed.
    pub fn deliveries(&self) -> Deliveries {
        let Some(inner) = &self.inner else {
            return Deliveries {
                enabled: false,
                outbox: "memory",
                pending: 0,
                oldest_pending_ms: None,
                gone: false,
                recent: Vec::new(),
            };
        };
        let d = &inner.deliverer;
        let (pending, oldest) = d.outbox.pending();
        Deliveries {
            enabled: true,
            outbox: d.outbox.name(),
            pending,
            oldest_pending_ms: oldest.map(|t| t.elapsed().as_millis() as u64),
            gone: d.gone.load(Ordering::Relaxed),
            recent: d.journal.recent(),
        }
    }

    /// Resolves with the deliveries feed once it satisfies `pred` (checked at every change);
    /// for tests and tools that wait for a delivery to get somewhere.
    pub async fn wait_for(&self, pred: impl Fn(&Deliveries) -> bool) -> Deliveries {
        let mut changes = self.inner.as_ref().map(|i| i.deliverer.journal.subscribe());
        loop {
            let now = self.deliveries();
            if pred(&now) {
                return now;
            }
            let changed = match &mut changes {
                Some(rx) => rx.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                // Disabled, or the journal is gone: nothing will change.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sets the gauges that change with time alone (read at `/metrics`).
    pub fn update_gauges(&self) {
        let Some(inner) = &self.inner else { return };
        let (pending, oldest) = inner.deliverer.outbox.pending();
        metrics::gauge!("qrlink_webhook_pending").set(pending as f64);
        metrics::gauge!("qrlink_webhook_oldest_pending_seconds")
            .set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    }

    /// Shutdown: gives pending webhooks until `deadline` to be delivered (attempts in flight
    /// finish; in memory, retries due before it are made), then stops the deliverer. What is
    /// still pending in memory is lost with this process: logged and counted
    /// (`result="lost"`). In cluster mode only what never reached Redis is; the rest waits
    /// there for another node (an attempt cut short is claimed after the claim idle time).
    pub async fn drain(&self, deadline: Instant) {
        let Some(inner) = &self.inner else { return };
        let outbox = &inner.deliverer.outbox;
        let _ = tokio::time::timeout_at(deadline, outbox.settled_before(deadline)).await;
        inner.stop.cancel();
        inner.attempts.close();
        inner.attempts.wait().await;
        let lost = outbox.drop_all();
        for event in &lost {
            metrics::counter!("qrlink_webhook_deliveries_total", "event" => *event, "result" => "lost")
                .increment(1);
        }
        if !lost.is_empty() {
            tracing::warn!(
                lost = lost.len(),
                outbox = outbox.name(),
                "webhooks still pending at shutdown are lost (in memory, or never written to Redis)"
            );
        }
    }
}

/// Why the notifier did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client could not be built.
    #[error("webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The Redis URL is not usable.
    #[error("{0}")]
    Redis(String),
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
