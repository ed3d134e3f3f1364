//! The embedded web pages (`web/`, compiled in with rust-embed) and the headers they need.

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

/// Everything under `web/`, inside the binary: no files to deploy next to it.
#[derive(Embed)]
#[folder = "web/"]
struct Web;

/// The pages load only their own scripts and styles: no inline script, no third party. QR
/// codes arrive as SVG text over the WebSocket and are inserted as DOM nodes, not images.
/// `frame-ancestors` is appended from the configuration (who may embed the page).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'";

/// Serves `/` as `index.html`, `/dashboard` as `dashboard.html`, and other embedded files by
/// path; 404 for anything else.
pub async fn serve(uri: Uri) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        "dashboard" => "dashboard.html",
        p => p,
    };
    let Some(file) = Web::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut resp = file.data.into_owned().into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("yaml") => "application/yaml",
        // TypeScript definitions are for reading: shown as text, not downloaded.
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
