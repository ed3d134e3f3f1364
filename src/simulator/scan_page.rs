//! The simulated phone: the page a demo QR opens (`GET /scan/{intent_id}?c=CODE`) and the scan
//! itself (`POST /scan/{intent_id}`).
//!
//! The page is self-contained (inline style, no script, no external resource) and its Scan
//! button is a plain form posting to the same URL. `POST` answers HTML to forms and browsers
//! (`Accept: text/html`) and JSON to everyone else, so the link page can `fetch` it with an
//! empty body.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::Simulator;
use super::intent::{Phase, ScanError};

/// What the page knows about the intent when it renders.
enum PageState {
    /// The code is current: offer the Scan button.
    Ready { provider: String },
    /// The QR the phone opened is no longer the current one, or all QRs expired.
    Stale { provider: String },
    /// Already scanned, linked or finished.
    Finished { provider: String },
    /// No such intent.
    Unknown,
}

/// `GET /scan/{intent_id}?c=CODE`.
pub(super) async fn page(
    State(sim): State<Simulator>,
    Path(intent_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let code = query.get("c").map(String::as_str);
    let (status, body) = match page_state(&sim, &intent_id, code) {
        PageState::Ready { provider } => (StatusCode::OK, ready_body(&provider, code)),
        PageState::Stale { provider } => (
            StatusCode::OK,
            message_body(
                &format!("link {} account?", provider_label(&provider)),
                "This QR code has expired. Scan the code the link page shows now.",
            ),
        ),
        PageState::Finished { provider } => (
            StatusCode::OK,
            message_body(
                &format!("link {} account?", provider_label(&provider)),
                "This link attempt was already scanned or has ended.",
            ),
        ),
        PageState::Unknown => (
            StatusCode::NOT_FOUND,
            message_body("Unknown link attempt", "No link attempt has this id."),
        ),
    };
    (status, Html(body)).into_response()
}

/// `POST /scan/{intent_id}`, with an optional `c` in the query or a form body.
pub(super) async fn scan(
    State(sim): State<Simulator>,
    Path(intent_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let code = form.get("c").or_else(|| query.get("c")).map(String::as_str);
    let result = sim.scan_code(&intent_id, code.filter(|c| !c.is_empty()));
    if wants_html(&headers) {
        html_result(&sim, &intent_id, result)
    } else {
        json_result(result)
    }
}

/// A scan result as JSON: `{"ok":true}`, or an error with 404, 409 or 410.
pub(super) fn json_result(result: Result<(), ScanError>) -> Response {
    match result {
        Ok(()) => axum::Json(json!({"ok": true})).into_response(),
        Err(error) => {
            let (status, code) = match error {
                ScanError::UnknownIntent => (StatusCode::NOT_FOUND, "unknown_intent"),
                ScanError::NotWaitingForScan => (StatusCode::CONFLICT, "not_waiting_for_scan"),
                ScanError::Expired => (StatusCode::GONE, "expired"),
            };
            let body = json!({"ok": false, "error": code, "message": error.to_string()});
            (status, axum::Json(body)).into_response()
        }
    }
}

fn html_result(sim: &Simulator, intent_id: &str, result: Result<(), ScanError>) -> Response {
    let provider = sim
        .cell(intent_id)
        .map(|cell| cell.lock().provider.name.clone())
        .unwrap_or_default();
    let title = format!("link {} account?", provider_label(&provider));
    let (status, body) = match result {
        Ok(()) => {
            let waits_for_2fa = sim
                .cell(intent_id)
                .is_some_and(|cell| matches!(cell.lock().phase, Phase::WaitingFor2fa));
            let text = if waits_for_2fa {
                "Scanned. This account has two-step verification: enter its password on the link \
                 page to finish."
            } else {
                "Scanned. The link page now shows the linked account."
            };
            (StatusCode::OK, message_body(&title, text))
        }
        Err(error) => {
            let status = match error {
                ScanError::UnknownIntent => StatusCode::NOT_FOUND,
                ScanError::NotWaitingForScan => StatusCode::CONFLICT,
                ScanError::Expired => StatusCode::GONE,
            };
            (status, message_body(&title, &error.to_string()))
        }
    };
    (status, Html(body)).into_response()
}

fn page_state(sim: &Simulator, intent_id: &str, code: Option<&str>) -> PageState {
    let Some(cell) = sim.cell(intent_id) else {
        return PageState::Unknown;
    };
    let intent = cell.lock();
    let provider = intent.provider.name.clone();
    match intent.phase {
        Phase::WaitingForScan => {}
        Phase::Done { .. } if intent.phase_name() == "timed_out" => {
            return PageState::Stale { provider };
        }
        _ => return PageState::Finished { provider },
    }
    let now = std::time::Instant::now();
    let current = intent.qrs.last();
    let expired = intent.current_expiry().is_none_or(|expiry| now >= expiry);
    let stale = code.is_some_and(|c| current.is_none_or(|q| q.code != c));
    if expired || stale {
        PageState::Stale { provider }
    } else {
        PageState::Ready { provider }
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    let accepts_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    accepts_html || is_form
}

/// How a person calls the provider.
fn provider_label(provider: &str) -> String {
    match provider {
        "whatsapp" => "WhatsApp".to_owned(),
        "telegram" => "Telegram".to_owned(),
        "google_messages" => "Google Messages".to_owned(),
        "" => "an".to_owned(),
        other => other.to_owned(),
    }
}

fn ready_body(provider: &str, code: Option<&str>) -> String {
    let label = escape(&provider_label(provider));
    let hidden = code.map_or_else(String::new, |c| {
        format!(r#"<input type="hidden" name="c" value="{}">"#, escape(c))
    });
    // Without an action the form posts back to this very URL, whatever the mount point.
    let form = format!(r#"<form method="post">{hidden}<button type="submit">Scan</button></form>"#);
    document(
        &format!("Simulated phone: link {label} account?"),
        &format!(
            "<p>This page stands in for the phone app: pressing Scan does what scanning the QR \
             code with {label} would do.</p>{form}"
        ),
    )
}

fn message_body(title: &str, text: &str) -> String {
    document(
        &format!("Simulated phone: {}", escape(title)),
        &format!("<p>{}</p>", escape(text)),
    )
}

/// The page around `heading` (already escaped) and `content` (already HTML).
fn document(heading: &str, content: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{heading}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f3f5f7; color: #1d2329; margin: 0;
       display: flex; min-height: 100vh; align-items: center; justify-content: center; }}
main {{ background: #fff; border-radius: 16px; box-shadow: 0 4px 24px rgba(0,0,0,.08);
       padding: 2rem; max-width: 24rem; margin: 1rem; text-align: center; }}
h1 {{ font-size: 1.25rem; margin: 0 0 1rem; }}
p {{ line-height: 1.5; color: #4a5560; }}
button {{ font-size: 1.1rem; padding: .8rem 2.5rem; border: 0; border-radius: 999px;
         background: #1a73e8; color: #fff; cursor: pointer; }}
button:hover {{ background: #155ab6; }}
</style>
</head>
<body><main><h1>{heading}</h1>{content}</main></body>
</html>
"#
    )
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_ready_page_posts_the_code_back_with_a_scan_button() {
        let page = ready_body("whatsapp", Some("abc"));
        assert!(page.contains("Simulated phone: link WhatsApp account?"));
        assert!(page.contains(r#"<form method="post""#));
        assert!(page.contains(r#"name="c" value="abc""#));
        assert!(page.contains(">Scan</button>"));
        assert!(!page.contains("<script"), "the page needs no script");
    }
}
