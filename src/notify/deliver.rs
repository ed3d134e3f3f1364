//! The deliverer: takes due webhooks from the outbox and POSTs them, a bounded number at a
//! time, signed afresh on every attempt (a receiver refuses a `webhook-timestamp` more than
//! five minutes old, and retries come hours apart) under the same `webhook-id`.
//!
//! A 2xx answer delivers. Anything else, or nothing within the timeout (15 s by default), is
//! retried on the Standard Webhooks schedule with jitter, later if the receiver's `Retry-After`
//! asks; after the last retry the delivery fails. 410 Gone means the receiver wants no more:
//! this process stops delivering to the URL (what is pending is dropped) until it restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::journal::{Journal, Status};
use super::outbox::{Message, Outbox, Settle};
use super::signing::Secrets;

/// The Standard Webhooks retry schedule: the wait before each retry after the first attempt
/// (ten attempts over about 3 days and 4 hours).
pub const SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// Each wait is drawn from ±this fraction of the schedule's, so that a receiver that comes back
/// from an outage is not hit by every retry in the same second.
pub const JITTER: f64 = 0.2;

/// Longest `Retry-After` believed: a receiver cannot park a delivery for longer than the
/// schedule's longest wait.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Most of a receiver's answer body read (and thrown away) so its connection can be reused.
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// The wait before the retry that follows `failed` failed attempts (1 = the first attempt
/// failed), or `None` when the schedule is over. `scale` shrinks the schedule for tests;
/// `jitter` is a draw from [0, 1).
pub fn retry_delay(failed: u32, scale: f64, jitter: f64) -> Option<Duration> {
    let base = SCHEDULE.get(usize::try_from(failed).ok()?.checked_sub(1)?)?;
    let factor = 1.0 - JITTER + 2.0 * JITTER * jitter;
    Some(base.mul_f64(factor * scale))
}

/// A `Retry-After` value: delay seconds or an HTTP date; capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// What the deliverer needs.
#[derive(Debug)]
pub struct Deliverer {
    /// Where webhooks go.
    pub url: reqwest::Url,
    /// The signing keys.
    pub secrets: Secrets,
    /// One client: its connections to the receiver are reused.
    pub client: reqwest::Client,
    /// Longest an attempt may take, answer included.
    pub timeout: Duration,
    /// Shrinks the retry schedule (tests); 1 in production.
    pub retry_scale: f64,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Pending webhooks.
    pub outbox: Outbox,
    /// Recent deliveries, for the dashboard.
    pub journal: Journal,
    /// Set when the receiver answered 410: nothing more goes to the URL.
    pub gone: AtomicBool,
}

/// How one attempt went.
#[derive(Debug)]
enum Attempt {
    Delivered(StatusCode),
    Gone,
    Failed {
        /// The answer's status, or none when there was no answer.
        status: Option<StatusCode>,
        /// What went wrong, for logs, metrics and the dashboard.
        label: &'static str,
        retry_after: Option<Duration>,
    },
}

impl Deliverer {
    /// Runs until `stop`: takes due webhooks and attempts each on a task of `attempts`, at most
    /// [`Deliverer::concurrency`] at once.
    pub async fn run(self: Arc<Self>, attempts: TaskTracker, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                () = stop.cancelled() => return,
            };
            // This permit, and every other free one: what can start now.
            let room = permits.available_permits() + 1;
            let msg = tokio::select! {
                msg = self.outbox.take(room) => msg,
                () = stop.cancelled() => return,
            };
            let this = self.clone();
            let stop = stop.clone();
            attempts.spawn(async move {
                tokio::select! {
                    () = this.deliver(msg) => {}
                    // Shutdown's grace is over: what is left is counted lost by the caller.
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
    }

    /// One attempt of one message, and what follows from it.
    async fn deliver(&self, mut msg: Box<Message>) {
        if self.gone.load(Ordering::Relaxed) {
            self.finish(&msg, Status::Gone, None, "gone");
            return;
        }
        msg.attempts += 1;
        let started = Instant::now();
        let attempt = self.attempt(&msg).await;
        let (status, label) = match &attempt {
            Attempt::Delivered(s) => (Some(*s), "delivered"),
            Attempt::Gone => (Some(StatusCode::GONE), "gone"),
            Attempt::Failed { status, label, .. } => (*status, *label),
        };
        metrics::counter!("qrlink_webhook_attempts_total", "result" => label).increment(1);
        metrics::histogram!("qrlink_webhook_attempt_seconds")
            .record(started.elapsed().as_secs_f64());
        let code = status.map(|s| s.as_u16());
        match attempt {
            Attempt::Delivered(_) => {
                metrics::histogram!("qrlink_webhook_delivery_seconds")
                    .record(msg.queued.elapsed().as_secs_f64());
                tracing::debug!(webhook_id = %msg.id, event = msg.event, attempts = msg.attempts, "webhook delivered");
                self.finish(&msg, Status::Delivered, code, "delivered");
            }
            Attempt::Gone => {
                if !self.gone.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        host = self.url.host_str().unwrap_or_default(),
                        "the webhook receiver answered 410 Gone: no more webhooks go to QRLINK_WEBHOOK_URL until this gateway restarts"
                    );
                }
                self.finish(&msg, Status::Gone, code, "gone");
                for dropped in self.outbox.clear() {
                    self.finish(&dropped, Status::Gone, None, "gone");
                }
            }
            Attempt::Failed {
                label, retry_after, ..
            } => {
                let jitter = rand::rng().random::<f64>();
                match retry_delay(msg.attempts, self.retry_scale, jitter) {
                    Some(wait) => {
                        let wait = wait.max(retry_after.unwrap_or_default());
                        tracing::warn!(webhook_id = %msg.id, event = msg.event, attempts = msg.attempts,
                            status = code, error = label, retry_in = %humantime::format_duration(round_ms(wait)),
                            "webhook attempt failed; will retry");
                        self.journal.update(
                            &msg,
                            Status::Retrying,
                            code,
                            Some(SystemTime::now() + wait),
                        );
                        let id = msg.id.clone();
                        self.outbox
                            .settle(&id, Settle::RetryAt(Instant::now() + wait, msg));
                    }
                    None => {
                        tracing::error!(webhook_id = %msg.id, event = msg.event, attempts = msg.attempts,
                            status = code, error = label, "webhook failed: no retry left");
                        self.finish(&msg, Status::Failed, code, "failed");
                    }
                }
            }
        }
    }

    /// A message is done with: journal, metrics, outbox.
    fn finish(&self, msg: &Message, status: Status, code: Option<u16>, result: &'static str) {
        self.outbox.settle(&msg.id, Settle::Done);
        metrics::counter!("qrlink_webhook_deliveries_total", "event" => msg.event, "result" => result)
            .increment(1);
        self.journal.update(msg, status, code, None);
    }

    /// One POST, signed now, within the timeout.
    async fn attempt(&self, msg: &Message) -> Attempt {
        let timestamp = super::now_secs();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("webhook-id", header_value(&msg.id));
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        let mut signature = header_value(&self.secrets.sign(&msg.id, timestamp, &msg.body));
        // Kept out of any header dump (hyper's and reqwest's debug output).
        signature.set_sensitive(true);
        headers.insert("webhook-signature", signature);
        let request = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(msg.body.clone());
        let exchange = async {
            let mut answer = request.send().await?;
            let status = answer.status();
            let retry_after = answer
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Read what little the receiver says, so the connection can carry the next one.
            let mut read = 0;
            while read < MAX_ANSWER_BODY {
                match answer.chunk().await? {
                    Some(chunk) => read += chunk.len(),
                    None => break,
                }
            }
            Ok::<_, reqwest::Error>((status, retry_after))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, _))) if status.is_success() => Attempt::Delivered(status),
            Ok(Ok((StatusCode::GONE, _))) => Attempt::Gone,
            Ok(Ok((status, retry_after))) => Attempt::Failed {
                status: Some(status),
                label: if status.is_server_error() {
                    "http_5xx"
                } else if status.is_client_error() {
                    "http_4xx"
                } else {
                    "http_other"
                },
                retry_after,
            },
            Ok(Err(e)) => Attempt::Failed {
                status: None,
                label: if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                },
                retry_after: None,
            },
            Err(_) => Attempt::Failed {
                status: None,
                label: "timeout",
                retry_after: None,
            },
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    // Ids are base62 and signatures base64: always valid header values.
    HeaderValue::from_str(s).expect("ASCII header value")
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_the_specs_with_jitter_and_ends_after_nine_retries() {
        let spec = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];
        for (i, secs) in spec.into_iter().enumerate() {
            let failed = i as u32 + 1;
            let spec = Duration::from_secs(secs);
            assert_eq!(retry_delay(failed, 1.0, 0.5), Some(spec), "retry {failed}");
            assert_eq!(retry_delay(failed, 1.0, 0.0), Some(spec.mul_f64(0.8)));
            let high = retry_delay(failed, 1.0, 0.999_999).unwrap();
            assert!(
                high < spec.mul_f64(1.2) && high > spec.mul_f64(1.19),
                "{high:?}"
            );
        }
        assert_eq!(retry_delay(0, 1.0, 0.5), None);
        assert_eq!(retry_delay(10, 1.0, 0.5), None, "ten attempts in all");
        assert_eq!(
            retry_delay(1, 0.01, 0.5),
            Some(Duration::from_millis(50)),
            "scaled for tests"
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
