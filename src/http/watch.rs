//! `/ws/watch`: every session's events for dashboards.
//!
//! A watcher first gets a `snapshot`, then `opened`, each frame as its browser got it (QR
//! content stripped unless asked for with `?qr=svg` by an admin), and `closed`. Events come from
//! a broadcast channel: a slow watcher never slows a link attempt; it loses events instead and
//! is told how many in a `lagged` event.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::link::protocol::{Envelope, ServerFrame, close};
use crate::state::AppState;
use crate::store::WatchEvent;

/// `GET /ws/watch[?session=ID][&qr=svg]`.
pub async fn watch(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(refusal) =
        crate::http::auth::admin(&state.config, peer, &headers, params.get("admin_token"))
    {
        return refusal.into_response();
    }
    let filter = params.get("session").cloned();
    let with_qr = params
        .get("qr")
        .is_some_and(|q| q.split(',').any(|f| f == "svg"));
    ws.max_message_size(crate::link::protocol::MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            tracker.track_future(watch_socket(socket, state, filter, with_qr))
        })
}

async fn watch_socket(
    mut socket: WebSocket,
    state: Arc<AppState>,
    filter: Option<String>,
    with_qr: bool,
) {
    // Subscribe before the snapshot so no event falls between the two.
    let mut events = state.store.subscribe();
    metrics::gauge!("qrlink_watchers").increment(1.0);
    let _gauge = scopeguard(|| metrics::gauge!("qrlink_watchers").decrement(1.0));
    let sessions: Vec<_> = state
        .store
        .snapshot_all()
        .await
        .into_iter()
        .filter(|s| filter.as_ref().is_none_or(|f| *f == s.id))
        .collect();
    // A watcher whose socket takes longer than the client timeout to take one event is dropped.
    let timeout = state.config.client_timeout;
    if send(
        &mut socket,
        timeout,
        json!({"type": "snapshot", "sessions": sessions}),
    )
    .await
    .is_err()
    {
        return;
    }
    loop {
        let out = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: close::GOING_AWAY, reason: "".into() })))
                    .await;
                return;
            }
            ev = events.recv() => match ev {
                Ok(ev) => match render(&ev, filter.as_deref(), with_qr) {
                    Some(v) => v,
                    None => continue,
                },
                Err(RecvError::Lagged(skipped)) => json!({"type": "lagged", "skipped": skipped}),
                Err(RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // Watchers have nothing to say; anything else is ignored.
                Some(Ok(_)) => continue,
            },
        };
        if send(&mut socket, timeout, out).await.is_err() {
            return;
        }
    }
}

async fn send(socket: &mut WebSocket, timeout: Duration, v: Value) -> Result<(), ()> {
    let text = v.to_string();
    match tokio::time::timeout(timeout, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The JSON a watcher gets for an event, or None when its filter excludes it.
fn render(ev: &WatchEvent, filter: Option<&str>, with_qr: bool) -> Option<Value> {
    let session = match ev {
        WatchEvent::Opened { session, .. }
        | WatchEvent::Detached { session, .. }
        | WatchEvent::Resumed { session, .. }
        | WatchEvent::Closed { session, .. } => session,
        WatchEvent::Frame(env) => &env.session,
    };
    if filter.is_some_and(|f| f != session) {
        return None;
    }
    Some(match ev {
        WatchEvent::Opened {
            session,
            provider,
            client,
            at,
            node,
        } => {
            let mut v = json!({"type": "opened", "session": session, "provider": provider, "client": client, "at": at});
            if let Some(node) = node {
                v["node"] = json!(node);
            }
            v
        }
        WatchEvent::Detached { session, at } => {
            json!({"type": "detached", "session": session, "at": at})
        }
        WatchEvent::Resumed { session, at } => {
            json!({"type": "resumed", "session": session, "at": at})
        }
        WatchEvent::Closed {
            session,
            outcome,
            duration_ms,
            code,
        } => {
            let mut v = json!({"type": "closed", "session": session, "outcome": outcome, "duration_ms": duration_ms});
            if let Some(code) = code {
                v["code"] = json!(code);
            }
            v
        }
        WatchEvent::Frame(env) => frame_for_watcher(env, with_qr),
    })
}

/// A session frame as a watcher sees it: QR renderings and the raw string only when allowed.
fn frame_for_watcher(env: &Envelope, with_qr: bool) -> Value {
    match &env.frame {
        ServerFrame::Qr(q) if !with_qr || q.raw.is_some() || q.text.is_some() => {
            let mut q = q.clone();
            q.raw = None;
            q.text = None;
            if !with_qr {
                q.svg = None;
            }
            serde_json::to_value(Envelope::new(
                env.session.clone(),
                env.seq,
                ServerFrame::Qr(q),
            ))
            .expect("frames serialize")
        }
        _ => serde_json::to_value(env).expect("frames serialize"),
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::protocol::QrFrame;

    fn qr_env() -> Envelope {
        Envelope::new(
            "ses_1",
            1,
            ServerFrame::Qr(QrFrame {
                rotation: 1,
                intent_id: "acc_1".into(),
                expires_at: "2026-11-28T10:00:00Z".into(),
                svg: Some("<svg/>".into()),
                text: Some("▀▄".into()),
                raw: Some("2@secret".into()),
            }),
        )
    }

    #[test]
    fn watchers_get_qr_frames_without_qr_content_by_default() {
        let v = frame_for_watcher(&qr_env(), false);
        assert_eq!(v["type"], "qr");
        assert_eq!(v["rotation"], 1);
        assert!(v.get("svg").is_none() && v.get("text").is_none() && v.get("raw").is_none());
    }

    #[test]
    fn allowed_watchers_get_the_svg_but_never_the_raw_string() {
        let v = frame_for_watcher(&qr_env(), true);
        assert_eq!(v["svg"], "<svg/>");
        assert!(v.get("raw").is_none() && v.get("text").is_none());
    }

    #[test]
    fn a_session_filter_drops_other_sessions_events() {
        let ev = WatchEvent::Frame(Arc::new(qr_env()));
        assert!(render(&ev, Some("ses_2"), false).is_none());
        assert!(render(&ev, Some("ses_1"), false).is_some());
    }
}
