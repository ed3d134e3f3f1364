//! One link attempt: Start Auth Intent, then the Solve a Checkpoint loop, as one async function
//! that sends [`ServerFrame`]s into a channel. It knows nothing of WebSockets.
//!
//! Cancellation is by dropping the future: the in-flight upstream request is dropped with it,
//! which closes its connection at once (reqwest/hyper do not reuse a connection whose response
//! was abandoned).

pub mod mailbox;
pub mod protocol;

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::link::protocol::{
    CheckpointError, ErrorFrame, MAX_CHECKPOINT_ATTEMPTS, QrFrame, ServerFrame, codes, message_for,
    upstream_retryable,
};
use crate::qr;
use crate::upstream::{self, AuthResponse, IntentRequest, UnipileClient};

/// Which renderings of the QR a client asked for (`?qr=svg,text,raw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrFormats {
    /// SVG document (the default).
    pub svg: bool,
    /// Unicode half blocks for terminals.
    pub text: bool,
    /// The string the QR encodes.
    pub raw: bool,
}

impl Default for QrFormats {
    fn default() -> Self {
        QrFormats {
            svg: true,
            text: false,
            raw: false,
        }
    }
}

impl QrFormats {
    /// Parses `svg,text,raw`. Unknown names are ignored (newer clients may ask for more);
    /// asking for nothing known means the default, SVG.
    pub fn parse(list: &str) -> QrFormats {
        let mut f = QrFormats {
            svg: false,
            text: false,
            raw: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "svg" => f.svg = true,
                "text" => f.text = true,
                "raw" => f.raw = true,
                _ => {}
            }
        }
        if f == (QrFormats {
            svg: false,
            text: false,
            raw: false,
        }) {
            QrFormats::default()
        } else {
            f
        }
    }
}

/// What the attempt links and how it renders.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    /// Provider name as Unipile knows it.
    pub provider: String,
    /// Relink this account.
    pub account_id: Option<String>,
    /// Operator reference (the connect token's `sub`), sent as `state` and echoed on `account`.
    pub state: Option<String>,
    /// `custom_proxy` for Unipile, from the connect token.
    pub proxy: Option<Value>,
    /// Renderings to include in `qr` frames.
    pub formats: QrFormats,
    /// Estimate of a QR's lifetime, for `expires_at`.
    pub qr_ttl: Duration,
}

/// Where a link attempt sends its frames ([`mailbox`]: small, as every open session holds
/// one). Boxed: a frame waiting in the queue costs a pointer there.
pub type Frames = mailbox::Sender<Box<ServerFrame>>;

/// Where a link attempt receives the client's checkpoint answers.
pub type Codes = mailbox::Receiver<Box<String>>;

/// `send` with the boxing done here, so call sites read as plain sends.
trait SendBoxed {
    async fn send_boxed(&self, frame: ServerFrame) -> Result<(), ()>;
}

impl SendBoxed for Frames {
    async fn send_boxed(&self, frame: ServerFrame) -> Result<(), ()> {
        self.send(Box::new(frame)).await.map_err(drop)
    }
}

/// Where an attempt stands between two sockets: what it does first when a socket (re)attaches.
/// The attempt keeps it current as it goes, so whatever drops its future (a hang-up, a
/// takeover) finds in it where the next socket must pick up.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Resume {
    /// Nothing was shown yet: call Start Auth Intent.
    #[default]
    Start,
    /// A QR is shown, or a checkpoint answer was in flight: poll the same intent again with an
    /// empty code (Unipile answers a scan or an answer it took meanwhile, or a new QR).
    Poll {
        /// Unipile's intent.
        intent_id: String,
        /// The checkpoint on screen when its answer was in flight: asked again by the upstream,
        /// it is not shown twice.
        shown: Option<Value>,
    },
    /// A checkpoint is shown and unanswered: wait for the client's code.
    Answer {
        /// Unipile's intent.
        intent_id: String,
        /// The checkpoint asked.
        checkpoint: Value,
        /// Answers it has had (wrong ones).
        answers: u32,
    },
}

/// An attempt's position: QR codes shown so far and what comes next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursor {
    /// QR codes shown so far (the next `qr` frame's `rotation` is one more).
    pub rotation: u32,
    /// What the attempt does first when it runs again.
    pub next: Resume,
}

/// Runs one link attempt from `cursor` to its end. Non-terminal frames (`qr`, `checkpoint`) and
/// finally exactly one terminal frame are sent into `frames`; `codes` carries the client's
/// answers to checkpoints. Returns early, sending nothing more, if either channel's other end
/// is gone. `cursor` is kept current at every await, so a caller that drops this future can
/// run the attempt on from where it stood (resume: the same intent, never a second one).
pub async fn run(
    upstream: &UnipileClient,
    req: &LinkRequest,
    cursor: &mut Cursor,
    frames: Frames,
    mut codes: Codes,
) {
    // The checkpoint the last code answered, and how many answers it has had.
    let mut asked: Option<(String, Value)> = None;
    let mut answers = 0u32;
    // A checkpoint the page already shows (replayed after a resume): not sent again.
    let mut shown: Option<Value> = None;
    let mut answer = match cursor.next.clone() {
        Resume::Start => upstream.start_intent(&intent_request(req)).await,
        Resume::Poll {
            intent_id,
            shown: on_screen,
        } => {
            shown = on_screen;
            upstream.solve_checkpoint(&intent_id, "").await
        }
        Resume::Answer {
            intent_id,
            checkpoint,
            answers: before,
        } => {
            answers = before;
            // The socket layer replayed the checkpoint frame: wait for its answer.
            let asking = Asking {
                intent_id,
                checkpoint,
                show: Show::OnScreen,
            };
            // Boxed: checkpoints are rare; the attempt's future, held by every session, stays small.
            let Some(solved) = Box::pin(asking.answer(
                upstream,
                &frames,
                &mut codes,
                cursor,
                &mut answers,
                &mut asked,
            ))
            .await
            else {
                return;
            };
            solved
        }
    };
    loop {
        let next = match answer {
            Ok(AuthResponse::QrCode { qrcode, intent_id }) => {
                asked = None;
                shown = None;
                let rotation = cursor.rotation + 1;
                let frame = match qr_frame(req, rotation, &qrcode, &intent_id) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream QR cannot be rendered");
                        let _ = frames
                            .send_boxed(gateway_error(codes::UPSTREAM_INVALID, true))
                            .await;
                        return;
                    }
                };
                // Before the send: once queued, the frame is what the page shows or will be
                // replayed, and the next poll is for the QR after it.
                cursor.rotation = rotation;
                cursor.next = Resume::Poll {
                    intent_id: intent_id.clone(),
                    shown: None,
                };
                if frames.send_boxed(frame).await.is_err() {
                    return;
                }
                upstream.solve_checkpoint(&intent_id, "").await
            }
            Ok(AuthResponse::Checkpoint {
                intent_id,
                checkpoint,
            }) => {
                answers = 0;
                let on_screen = shown.take().is_some_and(|s| s == checkpoint);
                let asking = Asking {
                    intent_id,
                    checkpoint,
                    show: if on_screen {
                        Show::OnScreen
                    } else {
                        Show::Ask(None)
                    },
                };
                // Boxed: checkpoints are rare; the attempt's future, held by every session, stays small.
                let Some(solved) = Box::pin(asking.answer(
                    upstream,
                    &frames,
                    &mut codes,
                    cursor,
                    &mut answers,
                    &mut asked,
                ))
                .await
                else {
                    return;
                };
                solved
            }
            Err(upstream::Error::Api(api))
                if api.kind == codes::INVALID_CHECKPOINT_CODE
                    && answers < MAX_CHECKPOINT_ATTEMPTS
                    && asked.is_some() =>
            {
                let (intent_id, checkpoint) = asked.take().expect("checked above");
                let retry = CheckpointError {
                    message: message_for(&api.kind).to_owned(),
                    code: api.kind,
                };
                let asking = Asking {
                    intent_id,
                    checkpoint,
                    show: Show::Ask(Some(retry)),
                };
                // Boxed: checkpoints are rare; the attempt's future, held by every session, stays small.
                let Some(solved) = Box::pin(asking.answer(
                    upstream,
                    &frames,
                    &mut codes,
                    cursor,
                    &mut answers,
                    &mut asked,
                ))
                .await
                else {
                    return;
                };
                solved
            }
            Ok(AuthResponse::Account(account)) => {
                let _ = frames
                    .send_boxed(ServerFrame::Account {
                        account,
                        state: req.state.clone(),
                        result: None,
                    })
                    .await;
                return;
            }
            Ok(AuthResponse::OauthUrl { .. }) => {
                let _ = frames
                    .send_boxed(gateway_error(codes::UNSUPPORTED_STEP, false))
                    .await;
                return;
            }
            Err(e) => {
                let _ = frames.send_boxed(error_frame(e, cursor.rotation)).await;
                return;
            }
        };
        answer = next;
    }
}

/// The Start Auth Intent body for a request.
fn intent_request(req: &LinkRequest) -> IntentRequest {
    IntentRequest {
        provider: req.provider.clone(),
        account_id: req.account_id.clone(),
        state: req.state.clone(),
        config: req
            .proxy
            .clone()
            .map(|p| serde_json::json!({ "custom_proxy": p })),
        ..IntentRequest::default()
    }
}

/// A checkpoint to answer: shown (or not), answered by the client, solved upstream.
struct Asking {
    intent_id: String,
    checkpoint: Value,
    show: Show,
}

/// Whether a checkpoint frame goes out before the attempt waits for its answer.
enum Show {
    /// Show it, with why when a wrong answer brings it again.
    Ask(Option<CheckpointError>),
    /// The page shows it already (replayed after a resume, or asked again by the upstream).
    OnScreen,
}

impl Asking {
    /// Shows the checkpoint as `show` says, waits for the client's code and solves the
    /// checkpoint with it, keeping `cursor` current at each step, counting the answer and
    /// noting in `asked` what was asked (for a retry after a wrong code). Returns the
    /// upstream's answer; None when the client is gone.
    async fn answer(
        self,
        upstream: &UnipileClient,
        frames: &Frames,
        codes: &mut Codes,
        cursor: &mut Cursor,
        answers: &mut u32,
        asked: &mut Option<(String, Value)>,
    ) -> Option<Result<AuthResponse, upstream::Error>> {
        let Asking {
            intent_id,
            checkpoint,
            show,
        } = self;
        cursor.next = Resume::Answer {
            intent_id: intent_id.clone(),
            checkpoint: checkpoint.clone(),
            answers: *answers,
        };
        if let Show::Ask(error) = show {
            // Codes typed before this checkpoint was shown answer nothing.
            while codes.try_recv().is_some() {}
            let frame = ServerFrame::Checkpoint {
                checkpoint: checkpoint.clone(),
                error,
            };
            frames.send_boxed(frame).await.ok()?;
        }
        let code = *codes.recv().await?;
        *answers += 1;
        // The answer is in flight: if the socket goes now, a resume polls for its outcome.
        cursor.next = Resume::Poll {
            intent_id: intent_id.clone(),
            shown: Some(checkpoint.clone()),
        };
        let solved = upstream.solve_checkpoint(&intent_id, &code).await;
        *asked = Some((intent_id, checkpoint));
        Some(solved)
    }
}

/// The `qr` frame for a QR string. `raw` always carries the string: the socket layer keeps it
/// for a replay and takes it off the frame unless the client asked for `raw`.
fn qr_frame(
    req: &LinkRequest,
    rotation: u32,
    qrcode: &str,
    intent_id: &str,
) -> Result<ServerFrame, qr::QrError> {
    let mut frame = QrFrame {
        rotation,
        intent_id: intent_id.to_owned(),
        // Milliseconds: whole seconds would truncate, and the page would call a live code expired.
        expires_at: humantime::format_rfc3339_millis(SystemTime::now() + req.qr_ttl).to_string(),
        svg: None,
        text: None,
        raw: None,
    };
    render_qr(&mut frame, qrcode, req.formats)?;
    frame.raw = Some(qrcode.to_owned());
    Ok(ServerFrame::Qr(frame))
}

/// Fills a `qr` frame's renderings of `qrcode` in `formats` (those not asked for are cleared):
/// for a new QR, and again for a replay, which needs only the string kept.
pub fn render_qr(frame: &mut QrFrame, qrcode: &str, formats: QrFormats) -> Result<(), qr::QrError> {
    let matrix = qr::encode(qrcode)?;
    frame.svg = formats.svg.then(|| matrix.to_svg());
    frame.text = formats.text.then(|| matrix.to_text());
    frame.raw = formats.raw.then(|| qrcode.to_owned());
    Ok(())
}

fn gateway_error(code: &str, retryable: bool) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::gateway(code, retryable))
}

/// Maps an upstream failure to the terminal frame the browser gets.
pub fn error_frame(e: upstream::Error, rotations: u32) -> ServerFrame {
    match e {
        upstream::Error::Api(api) if api.kind == codes::PROVIDER_TIMEOUT => {
            ServerFrame::Timeout { rotations }
        }
        upstream::Error::Api(api) => ServerFrame::Error(ErrorFrame {
            message: message_for(&api.kind).to_owned(),
            retryable: upstream_retryable(&api.kind),
            code: api.kind,
            detail: api.detail,
            req_id: api.req_id,
        }),
        upstream::Error::Unavailable { .. } => gateway_error(codes::UPSTREAM_UNAVAILABLE, true),
        upstream::Error::Invalid(reason) => {
            tracing::warn!(%reason, "unreadable upstream answer");
            gateway_error(codes::UPSTREAM_INVALID, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_formats_default_to_svg_and_ignore_unknown_names() {
        assert_eq!(QrFormats::parse(""), QrFormats::default());
        assert_eq!(QrFormats::parse("png"), QrFormats::default());
        let f = QrFormats::parse("text, raw,future");
        assert!(!f.svg && f.text && f.raw);
    }

    #[test]
    fn provider_timeout_becomes_a_timeout_frame_and_others_pass_through() {
        let api = |kind: &str| {
            upstream::Error::Api(upstream::ApiError {
                kind: kind.into(),
                status: 504,
                detail: Some("d".into()),
                req_id: Some("r".into()),
            })
        };
        assert_eq!(
            error_frame(api("provider/timeout"), 5),
            ServerFrame::Timeout { rotations: 5 }
        );
        match error_frame(api("api/already_exists"), 1) {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, "api/already_exists");
                assert_eq!(e.detail.as_deref(), Some("d"));
                assert!(!e.retryable);
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
}
