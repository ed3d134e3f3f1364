//! The WebSocket endpoint `/ws/link/{provider}`: carries the frames of one link attempt.
//!
//! Before the upgrade: the Origin check (403). After it, in order: provider, shutdown, connect
//! token, admission limits; each refusal is an `error` frame and a close code. Then the socket
//! loop: one `select!` over shutdown, operator cancel, the attempt's deadline, keepalive, the
//! link attempt's frames and the client's messages. The link future lives inside the loop:
//! whenever the loop ends (hang-up, `cancel`, protocol error, shutdown) the future is dropped
//! and its upstream request aborted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth;
use crate::gateway::AppState;
use crate::limits::Denied;
use crate::link::{self, LinkRequest, QrFormats};
use crate::protocol::{
    ClientFrame, Envelope, ErrorFrame, MAX_CLIENT_MESSAGE_BYTES, ServerFrame, close, codes,
};
use crate::sessions::{Outcome, SessionGuard};

/// Frames the link attempt may queue ahead of the socket. Small: a client that does not read
/// stalls its own attempt, never the gateway.
const FRAME_QUEUE: usize = 4;
/// Codes a client may queue before the attempt asks for one.
const CODE_QUEUE: usize = 2;
/// How long to wait for the client's Close after ours before dropping the connection.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// Initial read buffer per socket. Clients send a few bytes (`cancel`, a 2FA code); the
/// tungstenite default (128 KiB) would dominate the memory of an idle session. It grows for a
/// larger message, up to [`MAX_CLIENT_MESSAGE_BYTES`].
const READ_BUFFER: usize = 1024;
/// Outgoing bytes buffered per socket before a send fails: a few QR frames. A client that stops
/// reading hits this or the send timeout and is disconnected.
const MAX_WRITE_BUFFER: usize = 64 * 1024;

/// `GET /ws/link/{provider}`: check the Origin, upgrade, then run one link attempt.
pub async fn link(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(refusal) = auth::check_origin(&state.config, &headers) {
        tracing::info!(peer = %peer.ip(), "refused a WebSocket from a foreign origin");
        return refusal.into_response();
    }
    let client = auth::client_addr(&state.config, peer, &headers);
    let token = auth::token_from_request(params.get("token"), &headers).map(str::to_owned);
    ws.protocols([auth::SUBPROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            let attempt = Attempt {
                provider,
                params,
                client,
                token,
            };
            tracker.track_future(link_socket(socket, state, attempt))
        })
}

/// What the upgrade request asked for.
struct Attempt {
    provider: String,
    params: HashMap<String, String>,
    client: SocketAddr,
    token: Option<String>,
}

/// How a socket ends, besides the terminal frame it may already have sent.
struct Ending {
    error: Option<ErrorFrame>,
    close_code: u16,
}

impl Ending {
    fn error(code: &str, retryable: bool, close_code: u16) -> Option<Ending> {
        Some(Ending {
            error: Some(ErrorFrame::gateway(code, retryable)),
            close_code,
        })
    }
}

/// Refuses a socket before any session exists: one error frame, then the close code.
async fn refuse(mut socket: WebSocket, code: &str, retryable: bool, close_code: u16) {
    let frame = Envelope {
        session: String::new(),
        seq: 1,
        frame: ServerFrame::Error(ErrorFrame::gateway(code, retryable)),
    };
    let text = serde_json::to_string(&frame).expect("frames serialize");
    if socket.send(Message::Text(text.into())).await.is_ok() {
        close_socket(socket, close_code).await;
    }
}

async fn link_socket(socket: WebSocket, state: Arc<AppState>, attempt: Attempt) {
    let Attempt {
        provider,
        params,
        client,
        token,
    } = attempt;
    if !state.config.providers.contains(&provider) {
        return refuse(socket, codes::UNKNOWN_PROVIDER, false, close::POLICY).await;
    }
    if state.shutdown.is_cancelled() {
        return refuse(socket, codes::SHUTTING_DOWN, true, close::GOING_AWAY).await;
    }
    let claims = match &state.config.token_secret {
        Some(secret) => {
            match auth::verify(
                secret,
                state.config.token_max_ttl,
                token.as_deref(),
                &provider,
            ) {
                Ok(claims) => Some(claims),
                Err(e) => {
                    tracing::info!(client = %client.ip(), reason = %e, "refused a link attempt");
                    return refuse(socket, codes::UNAUTHORIZED, false, close::POLICY).await;
                }
            }
        }
        None => None,
    };
    let permit = match state.limits.admit(client.ip(), state.sessions.len()) {
        Ok(p) => p,
        Err(denied) => {
            let code = match denied {
                Denied::Overloaded => codes::OVERLOADED,
                Denied::RateLimited => codes::RATE_LIMITED,
            };
            tracing::info!(client = %client.ip(), code, "refused a link attempt");
            return refuse(socket, code, true, close::TRY_AGAIN_LATER).await;
        }
    };

    // With connect tokens, what to link comes from the token alone, never from the URL.
    let (account_id, sub, proxy) = match claims {
        Some(c) => (c.account_id, Some(c.sub), c.proxy),
        None => (params.get("account_id").cloned(), None, None),
    };
    let session = state.sessions.register(&provider, client);
    let span = tracing::info_span!("session", id = %session.id, provider = %provider);
    let req = LinkRequest {
        qr_ttl: state.config.qr_ttl.for_provider(&provider),
        formats: params
            .get("qr")
            .map(|q| QrFormats::parse(q))
            .unwrap_or_default(),
        account_id,
        state: sub,
        proxy,
        provider,
    };
    session_loop(socket, &state, &session, &req)
        .instrument(span)
        .await;
    drop(permit);
}

async fn session_loop(
    mut socket: WebSocket,
    state: &AppState,
    session: &SessionGuard,
    req: &LinkRequest,
) {
    tracing::info!(client = %session.client.ip(), "link attempt opened");
    let config = &state.config;
    let (frames_tx, mut frames_rx) = mpsc::channel(FRAME_QUEUE);
    let (codes_tx, codes_rx) = mpsc::channel(CODE_QUEUE);
    // Boxed so it can be dropped (aborting its upstream request) before the close handshake.
    let mut attempt = Box::pin(link::run(&state.upstream, req, frames_tx, codes_rx));
    let mut attempt_done = false;
    let mut seq = 0u64;
    let deadline = tokio::time::sleep(config.max_attempt_duration);
    tokio::pin!(deadline);
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    let mut last_heard = Instant::now();

    let ending: Option<Ending> = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                break Ending::error(codes::SHUTTING_DOWN, true, close::GOING_AWAY);
            }
            _ = session.cancel.cancelled() => {
                break Ending::error(codes::CANCELLED, true, close::NORMAL);
            }
            () = &mut deadline => {
                break Ending::error(codes::SESSION_EXPIRED, true, close::NORMAL);
            }
            frame = frames_rx.recv() => {
                let Some(frame) = frame else {
                    // The attempt ended without a terminal frame: only when its client is gone.
                    break None;
                };
                let terminal = frame.is_terminal();
                if emit(&mut socket, state, session, &mut seq, *frame).await.is_err() {
                    tracing::info!("client gone or not reading; dropping it");
                    return;
                }
                if terminal {
                    break Some(Ending { error: None, close_code: close::NORMAL });
                }
            }
            () = &mut attempt, if !attempt_done => {
                // Its frames are still queued in `frames_rx`; the loop sends them next.
                attempt_done = true;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.client_timeout {
                    tracing::info!("client silent too long; dropping it");
                    return;
                }
                let sent = tokio::time::timeout(config.client_timeout, socket.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
            msg = socket.recv() => {
                last_heard = Instant::now();
                match client_message(msg) {
                    Incoming::Ignore => {}
                    Incoming::Gone => {
                        tracing::info!("client disconnected");
                        return;
                    }
                    Incoming::Cancel => {
                        tracing::info!("client cancelled");
                        session.set_outcome(Outcome::Cancelled, None);
                        break Some(Ending { error: None, close_code: close::NORMAL });
                    }
                    Incoming::Code(code) => {
                        // A full queue means the client is flooding codes; dropping extras is fine.
                        let _ = codes_tx.try_send(code);
                    }
                    Incoming::Invalid(close_code) => {
                        break Ending::error(codes::INVALID_MESSAGE, false, close_code);
                    }
                }
            }
        }
    };
    // Drop the attempt (and its upstream request) before anything else is awaited.
    drop(attempt);
    let Some(ending) = ending else {
        return;
    };
    if let Some(error) = ending.error {
        tracing::info!(code = %error.code, "session ended by the gateway");
        let frame = ServerFrame::Error(error);
        if emit(&mut socket, state, session, &mut seq, frame)
            .await
            .is_err()
        {
            return;
        }
    }
    close_socket(socket, ending.close_code).await;
}

enum Incoming {
    Ignore,
    Gone,
    Cancel,
    Code(String),
    Invalid(u16),
}

fn client_message(msg: Option<Result<Message, axum::Error>>) -> Incoming {
    match msg {
        None | Some(Ok(Message::Close(_))) => Incoming::Gone,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Ignore,
        Some(Ok(Message::Binary(_))) => Incoming::Invalid(close::UNSUPPORTED_DATA),
        Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Cancel) => Incoming::Cancel,
            Ok(ClientFrame::Code { code }) => Incoming::Code(code),
            Ok(ClientFrame::Unknown) => Incoming::Ignore,
            Err(_) => Incoming::Invalid(close::INVALID_PAYLOAD),
        },
        Some(Err(e)) => match ws_error_kind(&e) {
            Some(code) => Incoming::Invalid(code),
            None => Incoming::Gone,
        },
    }
}

/// Which protocol errors deserve an error frame (the socket still works for writing), as
/// opposed to a broken connection.
fn ws_error_kind(e: &axum::Error) -> Option<u16> {
    let inner = std::error::Error::source(e)?;
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some(close::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(close::INVALID_PAYLOAD),
        _ => None,
    }
}

/// Sends a session's frame, records what it means for the session, and shows it to watchers.
/// Fails if the client is gone or has not taken the frame within the client timeout.
async fn emit(
    socket: &mut WebSocket,
    state: &AppState,
    session: &SessionGuard,
    seq: &mut u64,
    frame: ServerFrame,
) -> Result<(), ()> {
    session.record_frame(&frame);
    *seq += 1;
    let envelope = Envelope {
        session: session.id.clone(),
        seq: *seq,
        frame,
    };
    let text = serde_json::to_string(&envelope).expect("frames serialize");
    let sent = tokio::time::timeout(
        state.config.client_timeout,
        socket.send(Message::Text(text.into())),
    )
    .await;
    state.sessions.publish_frame(|| envelope);
    match sent {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends Close and waits briefly for the client's Close, so well-behaved clients see a clean
/// close handshake; a silent client is dropped after [`CLOSE_HANDSHAKE`].
async fn close_socket(mut socket: WebSocket, code: u16) {
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
