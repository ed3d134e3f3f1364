//! A webhook receiver on 127.0.0.1:0: records every request (headers, body, arrival) and
//! answers as a test scripts it (a status, a `Retry-After`, or never), else 204.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::time::Instant;

use super::WAIT;

/// One answer of the script.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After: <value>`.
    RetryAfter(u16, &'static str),
    /// Never answer (the connection stays open until the caller gives up).
    Hang,
}

/// A request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
}

/// Serves until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    count: watch::Receiver<usize>,
    served: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::scripted([]).await
    }

    /// Answers the first requests as `script` says, then 204.
    pub async fn scripted(script: impl IntoIterator<Item = Answer>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.script.lock().unwrap().extend(script);
        let (tx, count) = watch::channel(0usize);
        let app = Router::new()
            .fallback(receive)
            .with_state((shared.clone(), Arc::new(tx)));
        let served = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            shared,
            count,
            served,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.count.clone();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "expected {n} webhooks, got {}",
                    self.shared.received.lock().unwrap().len()
                )
            })
            .unwrap();
        self.received()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.served.abort();
    }
}

type Ctx = (Arc<Shared>, Arc<watch::Sender<usize>>);

async fn receive(State((shared, count)): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    shared.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    count.send_modify(|c| *c += 1);
    let answer = shared.script.lock().unwrap().pop_front();
    match answer {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(Answer::Status(s)) => StatusCode::from_u16(s).unwrap().into_response(),
        Some(Answer::RetryAfter(s, after)) => (
            StatusCode::from_u16(s).unwrap(),
            [(header::RETRY_AFTER, after)],
        )
            .into_response(),
        Some(Answer::Hang) => std::future::pending().await,
    }
}
