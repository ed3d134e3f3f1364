//! The WebSocket endpoint `/ws/link/{provider}`: carries the frames of one link attempt.
//!
//! The socket loop is one `select!` over shutdown, operator cancel, the link attempt's frames and
//! the client's messages. The link future lives inside the loop: whenever the loop ends (hang-up,
//! `cancel`, protocol error, shutdown) the future is dropped and its upstream request aborted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::Response;
use tokio::sync::mpsc;

use crate::gateway::AppState;
use crate::link::{self, LinkRequest, QrFormats};
use crate::protocol::{
    ClientFrame, Envelope, ErrorFrame, MAX_CLIENT_MESSAGE_BYTES, ServerFrame, close, codes,
};
use crate::sessions::{Phase, SessionGuard};
use tracing::Instrument;

/// Frames the link attempt may queue ahead of the socket. Small: a client that does not read
/// stalls its own attempt, never the gateway.
const FRAME_QUEUE: usize = 4;
/// Codes a client may queue before the attempt asks for one.
const CODE_QUEUE: usize = 2;
/// How long to wait for the client's Close after ours before dropping the connection.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// `GET /ws/link/{provider}`: upgrade, then run one link attempt.
pub async fn link(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            tracker.track_future(link_socket(socket, state, provider, params, client))
        })
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

async fn link_socket(
    mut socket: WebSocket,
    state: Arc<AppState>,
    provider: String,
    params: HashMap<String, String>,
    client: SocketAddr,
) {
    if !state.config.providers.contains(&provider) {
        let mut seq = 0;
        let frame = ServerFrame::Error(ErrorFrame::gateway(codes::UNKNOWN_PROVIDER, false));
        let _ = send_frame(&mut socket, "", &mut seq, frame).await;
        close_socket(socket, close::POLICY).await;
        return;
    }
    if state.shutdown.is_cancelled() {
        let mut seq = 0;
        let frame = ServerFrame::Error(ErrorFrame::gateway(codes::SHUTTING_DOWN, true));
        let _ = send_frame(&mut socket, "", &mut seq, frame).await;
        close_socket(socket, close::GOING_AWAY).await;
        return;
    }

    let session = state.sessions.register(&provider, client);
    let span = tracing::info_span!("session", id = %session.id, provider = %provider);
    let req = LinkRequest {
        qr_ttl: state.config.qr_ttl.for_provider(&provider),
        formats: params
            .get("qr")
            .map(|q| QrFormats::parse(q))
            .unwrap_or_default(),
        account_id: params.get("account_id").cloned(),
        state: None,
        proxy: None,
        provider,
    };
    session_loop(socket, &state, &session, &req)
        .instrument(span)
        .await;
}

async fn session_loop(
    mut socket: WebSocket,
    state: &AppState,
    session: &SessionGuard,
    req: &LinkRequest,
) {
    tracing::info!(client = %session.client.ip(), "link attempt opened");
    let (frames_tx, mut frames_rx) = mpsc::channel(FRAME_QUEUE);
    let (codes_tx, codes_rx) = mpsc::channel(CODE_QUEUE);
    // Boxed so it can be dropped (aborting its upstream request) before the close handshake.
    let mut attempt = Box::pin(link::run(&state.upstream, req, frames_tx, codes_rx));
    let mut attempt_done = false;
    let mut seq = 0u64;

    let ending: Option<Ending> = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                break Ending::error(codes::SHUTTING_DOWN, true, close::GOING_AWAY);
            }
            _ = session.cancel.cancelled() => {
                break Ending::error(codes::CANCELLED, true, close::NORMAL);
            }
            frame = frames_rx.recv() => {
                let Some(frame) = frame else {
                    // The attempt ended without a terminal frame: only when its client is gone.
                    break None;
                };
                let terminal = frame.is_terminal();
                match &frame {
                    ServerFrame::Qr(q) => {
                        session.set_phase(Phase::Qr);
                        session.set_rotation(q.rotation);
                    }
                    ServerFrame::Checkpoint { .. } => session.set_phase(Phase::Checkpoint),
                    _ => session.set_phase(Phase::Closing),
                }
                if send_frame(&mut socket, &session.id, &mut seq, frame).await.is_err() {
                    tracing::info!("client gone while sending");
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
            msg = socket.recv() => {
                match client_message(msg) {
                    Incoming::Ignore => {}
                    Incoming::Gone => {
                        tracing::info!("client disconnected");
                        return;
                    }
                    Incoming::Cancel => {
                        tracing::info!("client cancelled");
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
    let Some(ending) = ending else {
        return;
    };
    if let Some(error) = ending.error {
        tracing::info!(code = %error.code, "session ended by the gateway");
        let _ = send_frame(
            &mut socket,
            &session.id,
            &mut seq,
            ServerFrame::Error(error),
        )
        .await;
    }
    // Drop the attempt (and its upstream request) before the close handshake.
    drop(attempt);
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

async fn send_frame(
    socket: &mut WebSocket,
    session: &str,
    seq: &mut u64,
    frame: ServerFrame,
) -> Result<(), axum::Error> {
    *seq += 1;
    let envelope = Envelope {
        session: session.to_owned(),
        seq: *seq,
        frame,
    };
    let text = serde_json::to_string(&envelope).expect("frames serialize");
    socket.send(Message::Text(text.into())).await
}

/// Sends Close and waits briefly for the client's Close, so well-behaved clients see a clean
/// close handshake; a silent client is dropped after [`CLOSE_HANDSHAKE`].
async fn close_socket(mut socket: WebSocket, code: u16) {
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
