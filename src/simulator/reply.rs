//! One simulator answer before it becomes an HTTP response: status, body, and the short label
//! that poll records keep (`AuthenticationQrCode`, `Error:provider/timeout`, …).
//!
//! Error bodies follow Unipile's shape, `{"object":"Error","type","status","title","detail",
//! "req_id"}`, with the HTTP status equal to `status`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::mint::Minter;

/// Header on every `/v2/auth/*` answer: when the simulator produced it, in microseconds since
/// the Unix epoch, so load tests can split latency between the gateway and the upstream.
pub const ANSWERED_AT_HEADER: &str = "x-simulator-answered-at";

/// A response the simulator is about to send.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// What poll records call it: the `object` field, `Error:<type>` for errors, or `Status`,
    /// `Malformed` for bodies that are not a Unipile object.
    pub label: String,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body as sent.
    pub body: String,
    /// `Retry-After` in seconds, for 429 answers.
    pub retry_after: Option<u64>,
}

impl Reply {
    /// 200 with a Unipile object; the label is its `object` field.
    pub fn object(body: Value) -> Self {
        let label = body["object"].as_str().unwrap_or("?").to_owned();
        Reply {
            status: StatusCode::OK,
            label,
            content_type: "application/json",
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// A Unipile error body with HTTP status `status` (500 when `status` is not a valid code).
    pub fn error(status: u16, error_type: &str, detail: Option<&str>) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let title = title(error_type, status);
        let body = json!({
            "object": "Error",
            "type": error_type,
            "status": status.as_u16(),
            "title": title,
            "detail": detail.unwrap_or(title),
            "req_id": Minter::req_id(),
        });
        Reply {
            status,
            label: format!("Error:{error_type}"),
            content_type: "application/json",
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// 400 `api/invalid_parameters` saying what is wrong with the request.
    pub fn invalid(detail: &str) -> Self {
        Reply::error(400, "api/invalid_parameters", Some(detail))
    }

    /// 404 `api/resource_not_found` for an unknown or finished intent.
    pub fn intent_not_found() -> Self {
        Reply::error(
            404,
            "api/resource_not_found",
            Some("No pending authentication intent has this id."),
        )
    }

    /// 503 for long polls cut short because the simulator is shutting down.
    pub fn shutting_down() -> Self {
        Reply::error(
            503,
            "api/service_unavailable",
            Some("The simulator is shutting down."),
        )
    }

    /// A body that is not a Unipile object at all, like a load balancer's page.
    pub fn raw(status: u16, content_type: &'static str, body: String, label: &str) -> Self {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            label: label.to_owned(),
            content_type,
            body,
            retry_after: None,
        }
    }

    /// Adds the `x-simulator-answered-at` header and turns this into a response.
    pub fn into_timed_response(self) -> Response {
        let mut response = self.into_response();
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        if let Ok(value) = HeaderValue::from_str(&micros.to_string()) {
            response.headers_mut().insert(ANSWERED_AT_HEADER, value);
        }
        response
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The short human title Unipile puts beside an error type.
fn title(error_type: &str, status: StatusCode) -> &'static str {
    match error_type {
        "api/missing_authorization" => "Missing authorization",
        "api/expired_authorization" => "Expired authorization",
        "api/invalid_parameters" | "provider/invalid_parameters" => "Invalid parameters",
        "api/resource_not_found" => "Resource not found",
        "api/too_many_requests" | "provider/too_many_requests" => "Too many requests",
        "api/proxy_error" => "Proxy error",
        "api/proxy_auth_error" => "Proxy authentication error",
        "api/proxy_timeout" => "Proxy timeout",
        "api/already_exists" => "Account already exists",
        "api/account_restricted" => "Account restricted",
        "api/inactive_subscription" => "Inactive subscription",
        "api/insufficient_permissions" => "Insufficient permissions",
        "api/internal_error" => "Internal error",
        "provider/timeout" => "Timeout",
        "provider/invalid_checkpoint_code" => "Invalid checkpoint code",
        "provider/server_error" => "Provider server error",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_have_unipile_shape_and_matching_status() {
        let reply = Reply::error(504, "provider/timeout", None);
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.label, "Error:provider/timeout");
        let body: Value = serde_json::from_str(&reply.body).expect("json body");
        assert_eq!(body["object"], "Error");
        assert_eq!(body["type"], "provider/timeout");
        assert_eq!(body["status"], 504);
        assert!(body["title"].is_string() && body["detail"].is_string());
        assert!(body["req_id"].as_str().is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn an_invalid_status_becomes_500_instead_of_panicking() {
        let reply = Reply::error(42, "api/whatever", Some("x"));
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn object_replies_are_labelled_by_their_object_field() {
        let reply = Reply::object(json!({"object": "OauthUrl", "url": "https://x"}));
        assert_eq!(reply.label, "OauthUrl");
        assert_eq!(reply.status, StatusCode::OK);
    }
}
