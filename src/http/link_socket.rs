//! The WebSocket endpoint `/ws/link/{provider}`: carries the frames of one link attempt.
//!
//! Before the upgrade: the Origin check (403). After it, in order: provider, shutdown, connect
//! token, admission limits; each refusal is an `error` frame and a close code. Then the socket
//! loop: one `select!` over shutdown, operator cancel, the attempt's deadline, keepalive, the
//! link attempt's frames and the client's messages. The link future lives inside the loop:
//! whenever the loop ends (hang-up, `cancel`, protocol error, shutdown) the future is dropped
//! and its upstream request aborted.
//!
//! The socket is tokio-tungstenite's own (upgraded by [`crate::http::upgrade`], not axum's) so
//! that large messages go out as fragments of at most [`FRAGMENT_SIZE`]: tungstenite's out
//! buffer is a `Vec` that grows to the largest frame written and keeps that capacity for the
//! socket's life. A `qr` frame is 5–8 KB of JSON; sent whole it would pin that much heap in
//! every open session, sent in fragments it pins about one fragment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};

use crate::http::auth;
use crate::http::upgrade::{Socket, Upgrade};
use crate::link::mailbox::mailbox;
use crate::link::protocol::{
    ClientFrame, Envelope, ErrorFrame, MAX_CLIENT_MESSAGE_BYTES, ServerFrame, close, codes,
};
use crate::link::{self, LinkRequest, QrFormats};
use crate::notify;
use crate::state::AppState;
use crate::store::{Attachment, Denied, Interrupt, Outcome, ResumeRefused, Resumed};

/// Frames the link attempt may queue ahead of the socket. Small: a client that does not read
/// stalls its own attempt, never the gateway.
const FRAME_QUEUE: usize = 4;
/// Codes a client may queue before the attempt asks for one.
const CODE_QUEUE: usize = 2;
/// How long to wait for the client's Close after ours before dropping the connection.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// Initial read buffer per socket. Clients send a few bytes (`cancel` is 23 on the wire, a 2FA
/// code about 60, a pong 6); the tungstenite default (128 KiB) would dominate the memory of an
/// idle session. It grows for a larger message, up to [`MAX_CLIENT_MESSAGE_BYTES`].
const READ_BUFFER: usize = 256;
/// Outgoing bytes buffered per socket before a send fails: a few QR frames. A client that stops
/// reading hits this or the send timeout and is disconnected.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// Largest payload of one outgoing frame; longer text messages go out as a fragmented message
/// (RFC 6455 §5.4), which every client reassembles. tungstenite's out buffer keeps the capacity
/// of the largest frame it has written, so this bounds what each open session keeps for its
/// life. Measured with `qrlink-load` holding 3,000 sessions (7.6 KB `qr` frames), gateway heap
/// per session: 30.1 KiB sent whole, 26.1 at 4 KiB, 24.0–24.4 at 2 KiB, 23.4–23.8 at 1 KiB,
/// 22.9 at 512 B, where the ~15 writes per `qr` frame started to show in CPU per session.
/// Error, checkpoint and account frames are smaller and go out whole.
pub const FRAGMENT_SIZE: usize = 1024;

/// `GET /ws/link/{provider}`: check the Origin, upgrade, then run one link attempt.
pub async fn link(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    if let Err(refusal) = auth::check_origin(&state.config, &headers) {
        tracing::info!(peer = %peer.ip(), "refused a WebSocket from a foreign origin");
        return refusal.into_response();
    }
    if state.shutdown.is_cancelled() && state.store.is_cluster() {
        // Another node can take it: 503 before the upgrade, so a load balancer tries the next
        // node (nginx: `proxy_next_upstream http_503`) and a page retries. One process alone
        // has nowhere else to send it and says so in a frame (`gateway/shutting_down`).
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "this node is shutting down; another node will take it\n",
        )
            .into_response();
    }
    let client = auth::client_addr(&state.config, peer, &headers);
    let token = auth::token_from_request(params.get("token"), &headers).map(str::to_owned);
    ws.protocols([auth::SUBPROTOCOL])
        .on_upgrade(socket_config(), move |socket| {
            let tracker = state.tracker.clone();
            let attempt = Attempt {
                provider,
                params,
                client,
                token,
            };
            tracker.track_future(link_socket(Box::new(socket), state, attempt))
        })
}

/// The link socket's tungstenite settings: the client message limit, small buffers, no write
/// buffering (see [`send_text`]). Public so the Autobahn conformance test
/// (tests/integration/autobahn.rs) runs its echo endpoint on exactly these limits.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

/// What the upgrade request asked for.
struct Attempt {
    provider: String,
    params: HashMap<String, String>,
    client: SocketAddr,
    token: Option<String>,
}

/// How a socket's loop ends.
enum Leave {
    /// The session ends: an error frame first when there is one, then this close code.
    End {
        error: Option<ErrorFrame>,
        close_code: u16,
    },
    /// The client went away without a terminal frame or `cancel` (hang-up, silence, a frame it
    /// did not take): the session detaches and waits for a resume (with resume off, or when
    /// nothing resumable was shown yet, it ends as `disconnected`, as in protocol v1).
    Detach,
    /// Another socket resumed the session: this one closes 4000, with no terminal frame.
    TakenOver,
    /// The gateway shuts down in cluster mode: the session detaches, to be resumed on another
    /// node, and the socket closes 1012 (service restart) with no terminal frame.
    Restart,
}

impl Leave {
    fn error(code: &str, retryable: bool, close_code: u16) -> Leave {
        Leave::End {
            error: Some(ErrorFrame::gateway(code, retryable)),
            close_code,
        }
    }
}

/// Refuses a socket before any session exists: one error frame, then the close code.
async fn refuse(mut socket: Box<Socket>, code: &str, retryable: bool, close_code: u16) {
    let frame = Envelope::new(
        "",
        1,
        ServerFrame::Error(ErrorFrame::gateway(code, retryable)),
    );
    let text = serde_json::to_string(&frame).expect("frames serialize");
    if send_text(&mut socket, text).await.is_ok() {
        close_socket(socket, close_code, "").await;
    }
}

/// Refuses a socket the admission limits turned away.
async fn refuse_denied(socket: Box<Socket>, client: SocketAddr, denied: Denied) {
    let code = match denied {
        Denied::Overloaded => codes::OVERLOADED,
        Denied::RateLimited => codes::RATE_LIMITED,
    };
    tracing::info!(client = %client.ip(), code, "refused a link attempt");
    refuse(socket, code, true, close::TRY_AGAIN_LATER).await;
}

/// The session's task: every open session keeps this future (and the loop's) for its whole
/// life, so the socket is boxed (an async fn keeps a by-value argument twice, as upvar and as
/// local, in each future it is passed down to) and the cold paths (refusals, the resume, the
/// ending) are boxed futures; this took the task from 3,328 to about 1,400 bytes
/// (`-Zprint-type-sizes`).
async fn link_socket(socket: Box<Socket>, state: Arc<AppState>, attempt: Attempt) {
    let Attempt {
        provider,
        params,
        client,
        token,
    } = attempt;
    if let Err(code) = check_provider(&state.config.providers, &provider) {
        return Box::pin(refuse(socket, code, false, close::POLICY)).await;
    }
    if state.shutdown.is_cancelled() {
        return Box::pin(refuse(
            socket,
            codes::SHUTTING_DOWN,
            true,
            close::GOING_AWAY,
        ))
        .await;
    }
    if let Some(resume) = params.get("resume") {
        let formats = params.get("qr").map(|q| QrFormats::parse(q));
        return Box::pin(resume_socket(
            socket, state, &provider, formats, client, resume,
        ))
        .await;
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
                    return Box::pin(refuse(socket, codes::UNAUTHORIZED, false, close::POLICY))
                        .await;
                }
            }
        }
        None => None,
    };
    let permit = match state.store.admit(client.ip()).await {
        Ok(p) => p,
        Err(denied) => return Box::pin(refuse_denied(socket, client, denied)).await,
    };

    // With connect tokens, what to link comes from the token alone, never from the URL.
    let (account_id, sub, proxy) = match claims {
        Some(c) => (c.account_id, Some(c.sub), c.proxy),
        None => (params.get("account_id").cloned(), None, None),
    };
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
    let session = state.store.open(client, req);
    let span = tracing::info_span!("session", id = %session.id, provider = %session.provider);
    async {
        tracing::info!(client = %client.ip(), "link attempt opened");
        session_loop(socket, &state, session, None).await;
    }
    .instrument(span)
    .await;
    drop(permit);
}

/// Whether this gateway links the path's provider; if not, the refusal's code. Exact names: the
/// name goes on to Unipile and into metrics labels, so a near miss (case, spaces, an encoded
/// character) is refused rather than guessed at.
fn check_provider(providers: &[String], provider: &str) -> Result<(), &'static str> {
    if providers.iter().any(|p| p == provider) {
        Ok(())
    } else {
        Err(codes::UNKNOWN_PROVIDER)
    }
}

/// `?resume=TOKEN`: re-attaches the token's session to this socket, replays its last frame and
/// runs the attempt on. The token is the credential (no connect token); the address's admission
/// limits apply as to a new attempt. The token itself is never logged.
async fn resume_socket(
    socket: Box<Socket>,
    state: Arc<AppState>,
    provider: &str,
    formats: Option<QrFormats>,
    client: SocketAddr,
    token: &str,
) {
    let permit = match state.store.admit_resume(client.ip()).await {
        Ok(p) => p,
        Err(denied) => return refuse_denied(socket, client, denied).await,
    };
    let Resumed { attachment, replay } = match state.store.resume(token, provider, formats).await {
        Ok(resumed) => resumed,
        Err(refusal) => {
            tracing::info!(client = %client.ip(), reason = %refusal, "refused a resume");
            let (code, retryable, close_code) = match refusal {
                ResumeRefused::Expired => (codes::SESSION_EXPIRED, true, close::POLICY),
                ResumeRefused::WrongProvider => (codes::UNAUTHORIZED, false, close::POLICY),
                ResumeRefused::Busy => (codes::OVERLOADED, true, close::TRY_AGAIN_LATER),
            };
            return refuse(socket, code, retryable, close_code).await;
        }
    };
    let span = tracing::info_span!("session", id = %attachment.id, provider = %attachment.provider);
    async {
        tracing::info!(client = %client.ip(), "link attempt resumed");
        session_loop(socket, &state, attachment, Some(Box::new(replay))).await;
    }
    .instrument(span)
    .await;
    drop(permit);
}

/// One socket's part of a session: the replayed frame when it resumes, then the attempt from
/// where it stood, until a terminal frame, a cancel, a hang-up or a takeover.
async fn session_loop(
    mut socket: Box<Socket>,
    state: &AppState,
    session: Attachment,
    // Boxed: an async fn keeps its arguments for its whole life, and every open session's
    // task holds this future.
    replay: Option<Box<Envelope>>,
) {
    let config = &state.config;
    let req = session.request();
    let mut cursor = session.cursor();
    if let Some(replay) = replay {
        let sent = Box::pin(send_frame(&mut socket, config.client_timeout, &replay)).await;
        drop(replay);
        if sent.is_err() {
            tracing::info!("client gone before the replay; detached again");
            session.detach(cursor);
            return;
        }
    }
    let (frames_tx, mut frames_rx) = mailbox(FRAME_QUEUE);
    let (codes_tx, codes_rx) = mailbox(CODE_QUEUE);
    // Boxed so it can be dropped (aborting its upstream request) before anything else.
    let mut attempt = Box::pin(link::run(
        &state.upstream,
        &req,
        &mut cursor,
        frames_tx,
        codes_rx,
    ));
    let mut attempt_done = false;
    // From the attempt's start, whichever socket it is on now.
    let deadline = tokio::time::sleep_until(Instant::from_std(
        session.started + config.max_attempt_duration,
    ));
    tokio::pin!(deadline);
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    let mut last_heard = Instant::now();

    let leave = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                if state.store.is_cluster() {
                    break Leave::Restart;
                }
                break Leave::error(codes::SHUTTING_DOWN, true, close::GOING_AWAY);
            }
            why = session.interrupted() => match why {
                Interrupt::Cancelled => break Leave::error(codes::CANCELLED, true, close::NORMAL),
                Interrupt::TakenOver => break Leave::TakenOver,
            },
            () = &mut deadline => {
                break Leave::error(codes::SESSION_EXPIRED, true, close::NORMAL);
            }
            // The keepalive and the client's messages before the frames: an upstream that
            // answers faster than the client reads would otherwise keep them from ever running,
            // so a silent client would never go and a live one's pongs would go unread.
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.client_timeout {
                    tracing::info!("client silent too long");
                    break Leave::Detach;
                }
                let sent = tokio::time::timeout(config.client_timeout, socket.send(Message::Ping(Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break Leave::Detach;
                }
            }
            msg = socket.next() => {
                last_heard = Instant::now();
                match client_message(msg) {
                    Incoming::Ignore => {}
                    Incoming::Gone => {
                        tracing::info!("client disconnected");
                        break Leave::Detach;
                    }
                    Incoming::Cancel => {
                        tracing::info!("client cancelled");
                        session.set_outcome(Outcome::Cancelled, None);
                        break Leave::End { error: None, close_code: close::NORMAL };
                    }
                    Incoming::Code(code) => {
                        // A full queue means the client is flooding codes; dropping extras is fine.
                        let _ = codes_tx.try_send(Box::new(code));
                    }
                    Incoming::Invalid(close_code) => {
                        break Leave::error(codes::INVALID_MESSAGE, false, close_code);
                    }
                }
            }
            frame = frames_rx.recv() => {
                // `None` only if the attempt gave up on its channels, which this loop holds.
                let Some(frame) = frame else { break Leave::Detach };
                let terminal = frame.is_terminal();
                // Boxed: the send's state is only alive while a frame goes out.
                if Box::pin(emit(&mut socket, state, &session, *frame)).await.is_err() {
                    // A terminal frame has set the outcome: detaching then ends the session.
                    tracing::info!("client gone or not reading");
                    break Leave::Detach;
                }
                if terminal {
                    break Leave::End { error: None, close_code: close::NORMAL };
                }
            }
            () = &mut attempt, if !attempt_done => {
                // Its frames are still queued in `frames_rx`; the loop sends them next.
                attempt_done = true;
            }
        }
    };
    // Drop the attempt (and its upstream request) before anything else is awaited.
    drop(attempt);
    // Boxed: the ending's futures are alive once per socket, not during the loop.
    Box::pin(async move {
        match leave {
            Leave::Detach => {
                // Frames the attempt queued that never went out: the last one is what a resume
                // replays (a terminal one ends the session instead).
                while let Some(frame) = frames_rx.try_recv() {
                    let env = session.record(*frame);
                    session.publish_frame(env);
                }
                session.detach(cursor);
                flush_after_hang_up(&mut socket).await;
            }
            Leave::TakenOver => {
                tracing::info!("resumed elsewhere");
                session.detach(cursor);
                close_socket(socket, close::RESUMED_ELSEWHERE, "resumed elsewhere").await;
            }
            Leave::Restart => {
                tracing::info!("node shutting down; left for another node");
                session.detach(cursor);
                close_socket(socket, close::SERVICE_RESTART, "service restart").await;
            }
            Leave::End { error, close_code } => {
                if let Some(error) = error {
                    tracing::info!(code = %error.code, "session ended by the gateway");
                    let frame = ServerFrame::Error(error);
                    if emit(&mut socket, state, &session, frame).await.is_err() {
                        session.end();
                        return;
                    }
                }
                close_socket(socket, close_code, "").await;
                session.end();
            }
        }
    })
    .await;
}

/// What a client's message means for the session.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    Ignore,
    Gone,
    Cancel,
    Code(String),
    Invalid(u16),
}

fn client_message(msg: Option<Result<Message, tungstenite::Error>>) -> Incoming {
    match msg {
        None | Some(Ok(Message::Close(_))) => Incoming::Gone,
        // Reading never yields a raw `Frame`; tungstenite answers pings itself.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Ignore,
        Some(Ok(Message::Binary(_))) => Incoming::Invalid(close::UNSUPPORTED_DATA),
        Some(Ok(Message::Text(text))) => match ClientFrame::from_json(&text) {
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
/// opposed to a broken connection: the close code for the former, `None` for the latter.
pub fn ws_error_kind(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Capacity(_) => Some(close::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(close::INVALID_PAYLOAD),
        _ => None,
    }
}

/// Sends a session's frame, records what it means for the session, and shows it to watchers.
/// Fails if the client is gone or has not taken the frame within the client timeout.
async fn emit(
    socket: &mut Socket,
    state: &AppState,
    session: &Attachment,
    frame: ServerFrame,
) -> Result<(), ()> {
    let mut envelope = session.record(frame);
    let secret = state.config.token_secret.as_deref();
    let signed = notify::result::stamp(&mut envelope, secret, &session.provider);
    // Cluster mode: the record reaches Redis before the frame leaves, so a resume on another
    // node finds what the page shows; a slow Redis holds it up briefly, never longer.
    session.written().await;
    let sent = send_frame(socket, state.config.client_timeout, &envelope).await;
    if signed {
        notify::result::unstamp(&mut envelope);
    }
    session.publish_frame(envelope);
    sent
}

/// Sends a frame; fails if the client is gone or has not taken it within `timeout`.
async fn send_frame(socket: &mut Socket, timeout: Duration, envelope: &Envelope) -> Result<(), ()> {
    let text = serde_json::to_string(envelope).expect("frames serialize");
    match tokio::time::timeout(timeout, send_text(socket, text)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends Close and waits briefly for the client's Close, so well-behaved clients see a clean
/// close handshake; a silent client is dropped after [`CLOSE_HANDSHAKE`].
pub async fn close_socket(mut socket: Box<Socket>, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Sends what is still owed to a client that hung up or broke the protocol: a client that
/// closed (a reload sends 1001) gets tungstenite's queued answer. tungstenite writes it, then
/// reports the connection closed before flushing its stream, so the gathering writer under it
/// is flushed here; a client that does not take it is dropped after [`CLOSE_HANDSHAKE`].
pub async fn flush_after_hang_up(socket: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        let _ = socket.flush().await;
        let _ = tokio::io::AsyncWriteExt::flush(socket.get_mut()).await;
    })
    .await;
}

/// Sends one text message: whole when it fits in [`FRAGMENT_SIZE`], else as a fragmented
/// message (a Text frame without FIN, Continuation frames, the last with FIN) cut on character
/// boundaries, so each fragment is valid UTF-8 on its own too. The fragments are written one by
/// one from this task, so nothing but tungstenite's own Pong can fall between them, which
/// RFC 6455 allows for control frames.
pub async fn send_text(socket: &mut Socket, text: String) -> Result<(), tungstenite::Error> {
    if text.len() <= FRAGMENT_SIZE {
        return socket.send(Message::Text(text.into())).await;
    }
    let bytes = Bytes::from(text);
    // A UTF-8 continuation byte (0b10xx_xxxx) never starts a character.
    let char_boundary = |i: usize| i == bytes.len() || bytes[i] & 0xC0 != 0x80;
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + FRAGMENT_SIZE).min(bytes.len());
        while !char_boundary(end) {
            end -= 1;
        }
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let last = end == bytes.len();
        let frame = Frame::message(bytes.slice(start..end), OpCode::Data(opcode), last);
        // With no write buffering (`write_buffer_size` 0) each fragment is written to the
        // socket as it is fed; a blocked socket is flushed before the next one is taken.
        socket.feed(Message::Frame(frame)).await?;
        start = end;
    }
    socket.flush().await
}

#[cfg(test)]
#[path = "link_socket_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    /// The size of the future an async fn returns, without calling it.
    fn future_of<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_of5<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open session holds its socket task and its boxed attempt for its whole life:
    /// 1,272 and 1,960 bytes before resume (debug build), 1,728 and 2,152 when resume first
    /// kept the replayed frame in the task and the checkpoint step inline; boxing both brought
    /// them back to 1,360 and 1,800.
    #[test]
    fn the_futures_every_open_session_holds_stay_small() {
        let task = future_of(super::link_socket);
        let attempt = future_of5(crate::link::run);
        eprintln!("socket task {task} bytes, attempt {attempt} bytes");
        assert!(task <= 1536, "the socket task's future is {task} bytes");
        assert!(attempt <= 2048, "the attempt's future is {attempt} bytes");
    }
}
