//! Embedding the link page in other sites (`/qrlink.js`): `GET /embed.json`, which tells the
//! drop-in script whether the page that loaded it may frame the link page, and the CSP
//! `frame-ancestors` matching behind it.
//!
//! The browser enforces `frame-ancestors` by itself; a blocked frame just shows the browser's
//! error page, and the host cannot tell why (a cross-origin frame reports nothing). So
//! `qrlink.js` asks first, and on `{"allowed": false}` reports `embed/forbidden` to its host
//! and logs one line naming the setting, instead of opening a broken frame. The answer is
//! computed from the same source list the pages are served with (`AppState::frame_ancestors`,
//! from [`Config::frame_ancestors`]),
//! so the two cannot disagree except where this matcher is deliberately simpler than a browser
//! (paths in host sources are ignored: an ancestor is matched by its origin).
//!
//! [`Config::frame_ancestors`]: crate::config::Config::frame_ancestors

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// `GET /embed.json`: `{"allowed": bool}` for the request's `Origin` (no `Origin`: the gateway's
/// own pages). Readable from any origin: it says nothing that the page's own CSP header does
/// not already say to anyone who asks.
pub async fn embed_json(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let allowed = match origin {
        Some(origin) => may_embed(&state.frame_ancestors, origin, host),
        None => true,
    };
    let mut resp = Json(json!({ "allowed": allowed })).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A browser origin split up: `scheme://host[:port]`, lowercased, with the port made explicit.
#[derive(Debug, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Parses a serialized origin (`https://app.example.com`, `http://127.0.0.1:8080`); `None`
/// for `null` and anything with a path, a user or a query.
fn parse_origin(origin: &str) -> Option<Origin<'_>> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return None;
    }
    let (host, port) = split_port(rest)?;
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port(scheme)?,
    };
    Some(Origin {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// `host[:port]` → (host, port); an IPv6 literal keeps its brackets.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

/// Whether a page of `origin` may frame the link page under the CSP source list `list`, on a
/// gateway reached as `host` (the `Host` header: `'self'` is this gateway, by http or https).
///
/// What CSP Level 3 says, for an ancestor's origin:
/// - `'none'` (alone) matches nothing; other keywords (`'unsafe-inline'`…) mean nothing here.
/// - `*` matches any http(s) origin (not `null`, not `file:`, `data:`…).
/// - A scheme source (`https:`) matches that scheme; `http:` also matches `https:`.
/// - A host source `[scheme://]host[:port][/path]`: the host exactly, or `*.example.com` for
///   any subdomain (not `example.com` itself); the port exactly, `*` for any, or the scheme's
///   default when absent; no scheme means http or https; `http://` also matches `https://`
///   on its default port upgraded (80 → 443). A path is ignored (see the module doc).
pub fn may_embed(list: &str, origin: &str, host: &str) -> bool {
    let Some(ancestor) = parse_origin(origin.trim()) else {
        return false;
    };
    if !matches!(ancestor.scheme, "http" | "https") {
        return false;
    }
    list.split_ascii_whitespace()
        .any(|source| source_matches(source, &ancestor, host))
}

fn source_matches(source: &str, ancestor: &Origin<'_>, host: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    let source = lower.as_str();
    if source == "'self'" {
        return split_port(host).is_some_and(|(h, p)| {
            let port = match p {
                Some(p) => p.parse().ok(),
                None => default_port(ancestor.scheme),
            };
            h.eq_ignore_ascii_case(&ancestor.host) && port == Some(ancestor.port)
        });
    }
    if source.starts_with('\'') {
        return false;
    }
    if source == "*" {
        return true;
    }
    if let Some(scheme) = source.strip_suffix(':')
        && !scheme.contains([':', '/', '.'])
    {
        return scheme_allows(scheme, ancestor.scheme);
    }
    // A host source.
    let (scheme, rest) = match source.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, source),
    };
    let authority = rest.split('/').next().unwrap_or("");
    let Some((host_part, port_part)) = split_port(authority) else {
        return false;
    };
    if scheme.is_some_and(|s| !scheme_allows(s, ancestor.scheme)) {
        return false;
    }
    let host_ok = match host_part.strip_prefix("*.") {
        Some(parent) => {
            ancestor.host.len() > parent.len() + 1
                && ancestor.host.ends_with(parent)
                && ancestor.host[..ancestor.host.len() - parent.len()].ends_with('.')
        }
        None => host_part == "*" || host_part == ancestor.host,
    };
    if !host_ok {
        return false;
    }
    match port_part {
        Some("*") => true,
        Some(p) => p.parse::<u16>().ok() == Some(ancestor.port),
        None => {
            // The scheme's default port: the source's scheme when it has one, else the
            // ancestor's; an http source also allows the https default (an upgrade).
            let expected = default_port(scheme.unwrap_or(ancestor.scheme));
            expected == Some(ancestor.port)
                || (scheme == Some("http") && ancestor.scheme == "https" && ancestor.port == 443)
        }
    }
}

/// Whether a source's scheme lets an ancestor of `ancestor` scheme in: the same, or `http`
/// upgraded to `https`.
fn scheme_allows(source: &str, ancestor: &str) -> bool {
    source == ancestor || (source == "http" && ancestor == "https")
}

#[cfg(test)]
mod tests {
    use super::may_embed;

    const GW: &str = "link.example.com";

    #[test]
    fn none_matches_nothing_and_self_only_the_gateway() {
        assert!(!may_embed("'none'", "https://link.example.com", GW));
        assert!(may_embed("'self'", "https://link.example.com", GW));
        assert!(may_embed("'self'", "http://link.example.com", GW));
        assert!(may_embed("'SELF'", "https://LINK.example.com", GW));
        assert!(!may_embed("'self'", "https://app.example.com", GW));
        assert!(!may_embed("'self'", "https://link.example.com:8443", GW));
        assert!(may_embed(
            "'self'",
            "http://127.0.0.1:3000",
            "127.0.0.1:3000"
        ));
        assert!(!may_embed(
            "'self'",
            "http://127.0.0.1:3001",
            "127.0.0.1:3000"
        ));
    }

    #[test]
    fn a_star_matches_any_web_origin_but_not_opaque_ones() {
        assert!(may_embed("*", "https://anything.test", GW));
        assert!(may_embed("*", "http://127.0.0.1:9", GW));
        assert!(!may_embed("*", "null", GW));
        assert!(!may_embed("*", "file://", GW));
        assert!(!may_embed("*", "chrome-extension://abc", GW));
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let list = "'self' https://app.example.com http://127.0.0.1:8080";
        assert!(may_embed(list, "https://app.example.com", GW));
        assert!(may_embed(list, "https://app.example.com/", GW));
        assert!(may_embed(list, "https://app.example.com:443", GW));
        assert!(!may_embed(list, "http://app.example.com", GW), "https only");
        assert!(!may_embed(list, "https://app.example.com:8443", GW));
        assert!(!may_embed(list, "https://evil-app.example.com", GW));
        assert!(!may_embed(list, "https://app.example.com.evil.test", GW));
        assert!(may_embed(list, "http://127.0.0.1:8080", GW));
        assert!(!may_embed(list, "http://127.0.0.1:8081", GW));
        assert!(!may_embed(list, "http://localhost:8080", GW));
    }

    #[test]
    fn an_http_source_also_allows_its_https_upgrade() {
        assert!(may_embed(
            "http://app.example.com",
            "https://app.example.com",
            GW
        ));
        assert!(may_embed("http:", "https://app.example.com", GW));
        assert!(!may_embed("https:", "http://app.example.com", GW));
        assert!(!may_embed(
            "https://app.example.com",
            "http://app.example.com",
            GW
        ));
    }

    #[test]
    fn scheme_sources_match_every_origin_of_that_scheme() {
        assert!(may_embed("https:", "https://a.test", GW));
        assert!(may_embed("https:", "https://b.test:8443", GW));
        assert!(!may_embed("https:", "http://a.test", GW));
        assert!(!may_embed("data:", "https://a.test", GW));
    }

    #[test]
    fn host_wildcards_match_subdomains_only() {
        let list = "https://*.example.com";
        assert!(may_embed(list, "https://app.example.com", GW));
        assert!(may_embed(list, "https://a.b.example.com", GW));
        assert!(!may_embed(list, "https://example.com", GW));
        assert!(!may_embed(list, "https://badexample.com", GW));
        assert!(!may_embed(list, "http://app.example.com", GW));
        assert!(may_embed("*.example.com", "http://app.example.com", GW));
        assert!(may_embed("*.example.com", "https://app.example.com", GW));
        assert!(!may_embed(
            "*.example.com",
            "https://app.example.com:8443",
            GW
        ));
    }

    #[test]
    fn ports_can_be_wildcards_and_default_to_the_schemes() {
        assert!(may_embed(
            "http://127.0.0.1:*",
            "http://127.0.0.1:55123",
            GW
        ));
        assert!(!may_embed(
            "http://127.0.0.1:*",
            "http://127.0.0.2:55123",
            GW
        ));
        assert!(may_embed("app.example.com", "https://app.example.com", GW));
        assert!(may_embed("app.example.com", "http://app.example.com", GW));
        assert!(!may_embed(
            "app.example.com",
            "https://app.example.com:444",
            GW
        ));
        assert!(may_embed("[::1]:8080", "http://[::1]:8080", GW));
    }

    #[test]
    fn paths_in_sources_are_ignored_and_keywords_mean_nothing() {
        assert!(may_embed(
            "https://app.example.com/embed/",
            "https://app.example.com",
            GW
        ));
        assert!(!may_embed(
            "'unsafe-inline' 'strict-dynamic'",
            "https://app.example.com",
            GW
        ));
    }

    #[test]
    fn malformed_origins_are_never_allowed() {
        for origin in [
            "",
            "app.example.com",
            "https://",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app.example.com:99999",
            "https://app.example.com:x",
        ] {
            assert!(!may_embed("*", origin, GW), "{origin:?}");
        }
    }
}
