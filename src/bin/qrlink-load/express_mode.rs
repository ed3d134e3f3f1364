//! One simulated browser against the do-it-yourself peer (`benches/peer-express`): what the
//! browser of Unipile's sample does. `POST /api/intent` gives the QR string (the browser would
//! draw it), then the browser long-polls `POST /api/checkpoint` until `Account` or an error.
//!
//! A pending attempt is one long poll in flight; hanging up drops that HTTP request (its
//! connection closes), which is all a closing tab can do.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};

use crate::control::short_error;
use crate::session::{Ctx, End, OpenGuard, Role, SessionResult, scan_outcome, unix_now_us};

/// The fields of a Unipile object this tool looks at.
#[derive(Debug, Deserialize)]
struct Object {
    #[serde(default)]
    object: String,
    #[serde(default)]
    intent_id: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// One POST to the peer: status and parsed body, or an error kind.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> Result<(u16, Object), String> {
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| short_error(&e).to_owned())?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| short_error(&e).to_owned())?;
    let object = serde_json::from_slice(&bytes).map_err(|_| format!("unparsable_{status}"))?;
    Ok((status, object))
}

/// Runs session `i` with `role` to its end.
pub async fn run(ctx: &Ctx, i: u64, role: Role) -> SessionResult {
    let mut r = SessionResult::new(role);
    let client = ctx.http(i);
    let intent_url = format!("{}/api/intent", ctx.url);
    let checkpoint_url = format!("{}/api/checkpoint", ctx.url);
    let start = Instant::now();
    let body = json!({"provider": ctx.provider});
    let intent_id = match timeout(ctx.step_timeout, post(client, &intent_url, body)).await {
        Err(_) => return early(ctx, r, "intent_timeout".to_owned()),
        Ok(Err(kind)) => return early(ctx, r, format!("intent_{kind}")),
        Ok(Ok((200, obj))) if obj.object == "AuthenticationQrCode" && obj.intent_id.is_some() => {
            obj.intent_id.unwrap_or_default()
        }
        Ok(Ok((status, obj))) => {
            let what = obj.kind.unwrap_or(obj.object);
            return early(ctx, r, format!("intent_{status}_{what}"));
        }
    };
    let qr_at = Instant::now();
    r.first_qr = Some(qr_at - start);
    r.start_to_qr = r.first_qr;
    r.first_qr_at = Some(qr_at);
    r.qrs = 1;
    r.intent_id = Some(intent_id.clone());
    ctx.live.ready.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard::new(&ctx.live);

    let mut timer = Some(
        qr_at
            + match role {
                Role::Hold => ctx.hold,
                Role::Scan => ctx.scan_after,
                Role::HangUp => ctx.hangup_after,
                // Churn and soak are refused in express mode; were they not, they would leave at
                // once.
                Role::Churn(_) | Role::Resume | Role::Timeout => Duration::ZERO,
            },
    );
    let mut scan: Option<JoinHandle<Result<(), String>>> = None;
    let mut account_deadline: Option<Instant> = None;
    'polls: loop {
        let body = json!({"intent_id": intent_id, "code": ""});
        let poll = post(client, &checkpoint_url, body);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                answer = &mut poll => {
                    match answer {
                        Err(kind) => return r.fail(format!("poll_{kind}")),
                        Ok((200, obj)) if obj.object == "AuthenticationQrCode" => {
                            r.qrs += 1;
                            continue 'polls;
                        }
                        Ok((200, obj)) if obj.object == "Account" => {
                            r.account_at_us = Some(unix_now_us());
                            return r.ended(End::Account);
                        }
                        Ok((_, obj)) if obj.kind.as_deref() == Some(qrlink::link::protocol::codes::PROVIDER_TIMEOUT) => {
                            return r.ended(End::Timeout);
                        }
                        Ok((status, obj)) => {
                            let what = obj.kind.unwrap_or(obj.object);
                            return r.fail(format!("poll_{status}_{what}"));
                        }
                    }
                }
                () = sleep_until(timer.unwrap_or(qr_at).into()), if timer.is_some() => {
                    timer = None;
                    match role {
                        Role::Hold | Role::Churn(_) | Role::Resume | Role::Timeout => {
                            return r.ended(End::HungUp);
                        }
                        Role::HangUp => {
                            if let Some(sim) = &ctx.sim {
                                // Keep driving the request while waiting: the peer only
                                // starts its upstream poll once ours has been sent.
                                let pending = tokio::select! {
                                    ok = sim.wait_for_pending_poll(&intent_id, ctx.step_timeout) => ok,
                                    _ = &mut poll => false,
                                };
                                if !pending {
                                    return r.fail("no_pending_poll_to_hang_up");
                                }
                            }
                            r.hung_up_at_us = Some(unix_now_us());
                            // Returning drops `poll`: its connection to the peer closes.
                            return r.ended(End::HungUp);
                        }
                        Role::Scan => {
                            let Some(sim) = ctx.sim.clone() else {
                                return r.fail("scan_without_sim");
                            };
                            let id = intent_id.clone();
                            scan = Some(tokio::spawn(async move { sim.scan(&id).await }));
                            account_deadline = Some(Instant::now() + ctx.step_timeout);
                        }
                    }
                }
                done = async { scan.as_mut().expect("guarded").await }, if scan.is_some() => {
                    scan = None;
                    if let Err(label) = scan_outcome(done) {
                        return r.fail(label);
                    }
                }
                () = sleep_until(account_deadline.unwrap_or(qr_at).into()), if account_deadline.is_some() => {
                    return r.fail("account_timeout");
                }
            }
        }
    }
}

fn early(ctx: &Ctx, r: SessionResult, kind: String) -> SessionResult {
    ctx.live.failed_early.fetch_add(1, Ordering::Relaxed);
    r.fail(kind)
}
