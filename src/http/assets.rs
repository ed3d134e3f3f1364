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

/// `/qrlink.mjs`: the drop-in script as an ES module, made at compile time from the one source,
/// `web/qrlink.js` (a classic script). The prologue gives the code its own URL (for the default
/// gateway; `import.meta` is a syntax error in a classic script, so it cannot be in the file
/// itself) and the epilogue exports what the classic script puts on `window`.
const QRLINK_MODULE: &str = concat!(
    "// qrlink.js as an ES module: `import QrLink from \"https://gateway/qrlink.mjs\"`.\n",
    "const QRLINK_MODULE_URL = import.meta.url;\n",
    include_str!("../../web/qrlink.js"),
    "\nexport default QrLink;\nexport { QrLink };\n"
);

/// Serves `/` as `index.html`, `/dashboard` as `dashboard.html`, `/qrlink.mjs` (see
/// [`QRLINK_MODULE`]), and other embedded files by path; 404 for anything else.
pub async fn serve(uri: Uri) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        "dashboard" => "dashboard.html",
        p => p,
    };
    let body = if path == "qrlink.mjs" {
        QRLINK_MODULE.as_bytes().to_vec()
    } else {
        let Some(file) = Web::get(path) else {
            return (StatusCode::NOT_FOUND, "not found").into_response();
        };
        file.data.into_owned()
    };
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    if matches!(path, "qrlink.js" | "qrlink.mjs" | "qrlink.d.ts") {
        // Loaded by other sites: a classic <script> needs nothing, but `import()` of a module
        // from another origin is a CORS request, and a host with COEP needs CORP.
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        );
    }
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
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
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
