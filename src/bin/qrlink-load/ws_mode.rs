//! One simulated browser against qrlink: a WebSocket on `/ws/link/{provider}`, frames in.
//!
//! Frames are read with a light struct (type, intent id, error code) rather than the full
//! `Envelope`: the SVG is skipped, not copied, so the load generator, which shares the machine
//! with the gateway, spends as little CPU per frame as it can.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use qrlink::link::protocol::close;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::drop_resume;
use crate::resume;
use crate::session::{Ctx, End, Exit, OpenGuard, Role, SessionResult, scan_outcome, unix_now_us};
use crate::target;

/// Client-side buffers: frames are a few KiB to a few tens of KiB, and thousands of sockets
/// live in this one process, so tungstenite's 128 KiB defaults would only waste memory.
const CLIENT_BUFFER: usize = 8 * 1024;

/// A client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// The fields of a server frame this tool looks at.
#[derive(Debug, Deserialize)]
pub struct Frame {
    /// `qr`, `checkpoint`, `account`, `error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `qr` frames: the upstream intent.
    #[serde(default)]
    pub intent_id: Option<String>,
    /// `error` frames: the code.
    #[serde(default)]
    pub code: Option<String>,
    /// `ses_…`.
    #[serde(default)]
    pub session: Option<String>,
    /// The frame's number in its session.
    #[serde(default)]
    pub seq: Option<u64>,
    /// `qr` frames: which QR of the attempt.
    #[serde(default)]
    pub rotation: Option<u32>,
    /// v1.1: `true` on the frame a resume re-sends.
    #[serde(default)]
    pub replay: bool,
    /// v1.1: the session's resume token, on `qr` and `checkpoint` frames.
    #[serde(default)]
    pub resume: Option<String>,
}

/// What the next message was.
pub enum Next {
    /// A text frame, parsed, and its size in bytes.
    Frame(Frame, usize),
    /// A Close frame with its code (1005 without one).
    Close(u16),
    /// The connection ended otherwise; the error kind.
    Gone(String),
}

/// Reads the next message that means something (pings and pongs are skipped).
pub async fn next(ws: &mut Ws) -> Next {
    loop {
        match ws.next().await {
            None => return Next::Gone("eof".to_owned()),
            Some(Err(e)) => return Next::Gone(ws_error_kind(&e)),
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str::<Frame>(text.as_str()) {
                    Ok(frame) => Next::Frame(frame, text.len()),
                    Err(_) => Next::Gone("unparsable_frame".to_owned()),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Next::Close(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(Message::Binary(_))) => return Next::Gone("binary_frame".to_owned()),
            Some(Ok(_)) => continue,
        }
    }
}

fn ws_error_kind(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Io(io) => format!("io_{:?}", io.kind()),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        WsError::Protocol(_) => "protocol".to_owned(),
        other => format!("ws_{}", variant(&format!("{other:?}"))),
    }
}

fn variant(debug: &str) -> &str {
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or(debug)
}

/// Connects session `i` (from its source address) and opens the WebSocket at `url`, each step
/// bounded by the step timeout; the error kind (`connect_…`, `handshake_…`) otherwise.
pub async fn open(ctx: &Ctx, i: u64, url: &str) -> Result<Ws, String> {
    open_at(ctx, ctx.target, i, url).await
}

/// [`open`] on another gateway than the run's (`--resume-url`).
pub async fn open_at(ctx: &Ctx, at: std::net::SocketAddr, i: u64, url: &str) -> Result<Ws, String> {
    let step = ctx.step_timeout;
    let stream = match timeout(step, target::connect(at, ctx.source(i))).await {
        Err(_) => return Err("connect_timeout".to_owned()),
        Ok(Err(e)) => return Err(format!("connect_{:?}", e.kind())),
        Ok(Ok(s)) => s,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_BUFFER)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    match timeout(step, handshake).await {
        Err(_) => Err("handshake_timeout".to_owned()),
        Ok(Err(e)) => Err(format!("handshake_{}", ws_error_kind(&e))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// Runs session `i` with `role` to its end.
pub async fn run(ctx: &Ctx, i: u64, role: Role) -> SessionResult {
    let mut r = SessionResult::new(role);
    let start = Instant::now();
    let step = ctx.step_timeout;
    let mut ws = match open(ctx, i, &ctx.url).await {
        Ok(ws) => ws,
        Err(kind) => return early(ctx, r, kind),
    };
    let upgraded = Instant::now();
    r.connect = Some(upgraded - start);
    let _open = OpenGuard::new(&ctx.live);
    // `--resume-on-drop` held sessions: what the browser last saw, for a resume.
    let mut shown: Option<resume::Shown> = None;

    // The first frame must be a QR.
    match timeout(step, next(&mut ws)).await {
        Err(_) => return early(ctx, r, "first_qr_timeout".to_owned()),
        Ok(Next::Frame(frame, bytes)) if frame.kind == "qr" => {
            let now = Instant::now();
            r.first_qr = Some(now - upgraded);
            r.start_to_qr = Some(now - start);
            r.first_qr_at = Some(now);
            r.first_qr_bytes = bytes;
            r.qrs = 1;
            if role == Role::Resume {
                ctx.live.ready.fetch_add(1, Ordering::Relaxed);
                let Some(shown) = resume::Shown::from_first(&frame) else {
                    return r.fail("resume_no_token");
                };
                r.intent_id = frame.intent_id;
                let end = resume::run(ctx, i, ws, shown, &mut r).await;
                return r.ended(end);
            }
            if role == Role::Hold && ctx.on_drop.is_some() {
                shown = resume::Shown::from_first(&frame);
                r.dropped = Some(Box::default());
            }
            r.intent_id = frame.intent_id;
            ctx.live.ready.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Next::Frame(frame, _)) => {
            let kind = match frame.kind.as_str() {
                "error" => format!("error_{}", frame.code.unwrap_or_default()),
                other => format!("first_frame_{other}"),
            };
            return early(ctx, r, kind);
        }
        Ok(Next::Close(code)) => return early(ctx, r, format!("closed_before_qr_{code}")),
        Ok(Next::Gone(kind)) => return early(ctx, r, format!("before_qr_{kind}")),
    }
    if let Role::Churn(exit) = role {
        let end = leave(ws, exit, step).await;
        return r.ended(end);
    }
    let first_qr = r.first_qr_at.unwrap_or(upgraded);
    let end = loop {
        let (kind, dropped) =
            match after_first_qr(ctx, &mut ws, &mut r, first_qr, shown.as_mut()).await {
                Ok(end) => break end,
                Err(lost) => lost,
            };
        let (Some(plan), Some(seen), Some(log)) = (&ctx.on_drop, shown.as_mut(), &mut r.dropped)
        else {
            break End::Failed(format!("lost_{kind}"));
        };
        match drop_resume::recover(ctx, plan, i, seen, dropped, log).await {
            Ok(resumed) => ws = resumed,
            Err(why) => {
                log.lost = Some(why.clone());
                break End::Failed(format!("drop_lost_{why}"));
            }
        }
    };
    r.ended(end)
}

/// A churn session leaves right after its first QR. Each way ends only when the connection is
/// gone at both ends (or the step timeout strikes, which is a failure), so a gateway that does
/// not let go of a socket shows up in the errors.
pub async fn leave(mut ws: Ws, exit: Exit, step: Duration) -> End {
    match exit {
        Exit::Drop => {
            drop(ws);
            End::Dropped
        }
        Exit::Close => {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "".into(),
            };
            if let Err(e) = ws.send(Message::Close(Some(frame))).await {
                return End::Failed(format!("close_send_{}", ws_error_kind(&e)));
            }
            // The gateway drops the socket (its Close reply, if any, comes first).
            match timeout(step, async { while ws.next().await.is_some() {} }).await {
                Ok(()) => End::HungUp,
                Err(_) => End::Failed("close_not_closed".to_owned()),
            }
        }
        Exit::Cancel => {
            if let Err(e) = ws.send(Message::text(r#"{"type":"cancel"}"#)).await {
                return End::Failed(format!("cancel_send_{}", ws_error_kind(&e)));
            }
            loop {
                match timeout(step, next(&mut ws)).await {
                    // A QR rotation may cross the cancel.
                    Ok(Next::Frame(frame, _)) if frame.kind == "qr" => continue,
                    Ok(Next::Close(code)) if code == close::NORMAL => {
                        let _ = timeout(step, async { while ws.next().await.is_some() {} }).await;
                        return End::Cancelled;
                    }
                    Ok(Next::Close(code)) => {
                        return End::Failed(format!("close_after_cancel_{code}"));
                    }
                    Ok(Next::Frame(frame, _)) => {
                        return End::Failed(format!("frame_after_cancel_{}", frame.kind));
                    }
                    Ok(Next::Gone(kind)) => {
                        return End::Failed(format!("no_close_after_cancel_{kind}"));
                    }
                    Err(_) => return End::Failed("cancel_timeout".to_owned()),
                }
            }
        }
    }
}

fn early(ctx: &Ctx, r: SessionResult, kind: String) -> SessionResult {
    ctx.live.failed_early.fetch_add(1, Ordering::Relaxed);
    r.fail(kind)
}

/// Runs the session's role on `ws` to its end. With `shown` (`--resume-on-drop`, held
/// sessions), rotations update it, and a socket lost without a terminal frame is handed back as
/// `Err((kind, when))` for a resume.
async fn after_first_qr(
    ctx: &Ctx,
    ws: &mut Ws,
    r: &mut SessionResult,
    qr_at: Instant,
    mut shown: Option<&mut resume::Shown>,
) -> Result<End, (String, Instant)> {
    let mut timer = Some(
        qr_at
            + match r.role {
                Role::Hold => ctx.hold,
                Role::Scan => ctx.scan_after,
                Role::HangUp => ctx.hangup_after,
                Role::Timeout => ctx.timeout_wait,
                Role::Churn(_) | Role::Resume => Duration::ZERO,
            },
    );
    let mut scan: Option<JoinHandle<Result<(), String>>> = None;
    let mut account_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            () = sleep_until(timer.unwrap_or(qr_at).into()), if timer.is_some() => {
                timer = None;
                match r.role {
                    Role::Hold | Role::Churn(_) | Role::Resume => {
                        hang_up(ws, true, ctx.step_timeout).await;
                        return Ok(End::HungUp);
                    }
                    Role::Timeout => return Ok(End::Failed("no_timeout_frame".to_owned())),
                    Role::HangUp => {
                        if let (Some(sim), Some(id)) = (&ctx.sim, &r.intent_id)
                            && !sim.wait_for_pending_poll(id, ctx.step_timeout).await
                        {
                            return Ok(End::Failed("no_pending_poll_to_hang_up".to_owned()));
                        }
                        r.hung_up_at_us = Some(unix_now_us());
                        hang_up(ws, false, ctx.step_timeout).await;
                        return Ok(End::HungUp);
                    }
                    Role::Scan => {
                        let (Some(sim), Some(id)) = (ctx.sim.clone(), r.intent_id.clone()) else {
                            return Ok(End::Failed("scan_without_sim_or_intent".to_owned()));
                        };
                        scan = Some(tokio::spawn(async move { sim.scan(&id).await }));
                        account_deadline = Some(Instant::now() + ctx.step_timeout);
                    }
                }
            }
            done = async { scan.as_mut().expect("guarded").await }, if scan.is_some() => {
                scan = None;
                if let Err(label) = scan_outcome(done) {
                    return Ok(End::Failed(label));
                }
            }
            () = sleep_until(account_deadline.unwrap_or(qr_at).into()), if account_deadline.is_some() => {
                return Ok(End::Failed("account_timeout".to_owned()));
            }
            msg = next(ws) => match msg {
                Next::Frame(frame, _) => match frame.kind.as_str() {
                    "qr" => {
                        r.qrs += 1;
                        if let Some(shown) = shown.as_deref_mut() {
                            shown.saw(&frame);
                        }
                    }
                    "account" => {
                        r.account_at_us = Some(unix_now_us());
                        return Ok(terminal(ws, End::Account, ctx.step_timeout).await);
                    }
                    "timeout" => return Ok(terminal(ws, End::Timeout, ctx.step_timeout).await),
                    "error" => {
                        let code = frame.code.unwrap_or_default();
                        return Ok(terminal(ws, End::Failed(format!("error_{code}")), ctx.step_timeout).await);
                    }
                    other => return Ok(End::Failed(format!("unexpected_frame_{other}"))),
                },
                Next::Close(code) if shown.is_some() && drop_resume::is_drop_close(code) => {
                    return Err((format!("closed_{code}"), Instant::now()));
                }
                Next::Gone(kind) if shown.is_some() => return Err((kind, Instant::now())),
                Next::Close(code) => return Ok(End::Failed(format!("closed_without_terminal_{code}"))),
                Next::Gone(kind) => return Ok(End::Failed(format!("lost_{kind}"))),
            },
        }
    }
}

/// After a terminal frame the gateway must close with 1000.
async fn terminal(ws: &mut Ws, end: End, step: Duration) -> End {
    match timeout(step, next(ws)).await {
        Ok(Next::Close(code)) if code == close::NORMAL => {
            // Let tungstenite flush its Close reply, then the server drops the connection.
            let _ = timeout(step, async { while ws.next().await.is_some() {} }).await;
            end
        }
        Ok(Next::Close(code)) => End::Failed(format!("close_after_terminal_{code}")),
        Ok(Next::Frame(frame, _)) => End::Failed(format!("frame_after_terminal_{}", frame.kind)),
        Ok(Next::Gone(kind)) => End::Failed(format!("no_close_after_terminal_{kind}")),
        Err(_) => End::Failed("close_timeout".to_owned()),
    }
}

/// The client goes: a Close frame as a closing tab sends; with `wait`, the close handshake is
/// completed (bounded), otherwise the connection is dropped at once.
async fn hang_up(ws: &mut Ws, wait: bool, step: Duration) {
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() || !wait {
        return;
    }
    let _ = timeout(step.min(Duration::from_secs(1)), async {
        while ws.next().await.is_some() {}
    })
    .await;
}
