//! A third-party site for the embedding tests: a tiny axum server on its own loopback port (so
//! its origin differs from the gateway's) serving fixed files under a strict CSP of its own,
//! as an app using `/qrlink.js` would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The site: bind first (the gateway needs its origin), then [`HostSite::serve`] its files.
pub struct HostSite {
    listener: Option<TcpListener>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

struct Files {
    /// path → (content type, body)
    files: HashMap<String, (&'static str, String)>,
    csp: String,
}

impl HostSite {
    pub async fn bind() -> HostSite {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        HostSite {
            listener: Some(listener),
            addr,
            stop: None,
        }
    }

    /// `http://127.0.0.1:PORT`: what its pages send as `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Serves `files` (path, content type, body), HTML ones with `csp` as their policy.
    pub fn serve(&mut self, files: Vec<(&str, &'static str, String)>, csp: &str) {
        let listener = self.listener.take().expect("serve is called once");
        let files = Arc::new(Files {
            files: files
                .into_iter()
                .map(|(path, ty, body)| (path.to_owned(), (ty, body)))
                .collect(),
            csp: csp.to_owned(),
        });
        let app = Router::new().fallback(file).with_state(files);
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
    }
}

async fn file(State(files): State<Arc<Files>>, uri: Uri) -> Response {
    let Some((ty, body)) = files.files.get(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut resp = body.clone().into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if ty.starts_with("text/html")
        && let Ok(v) = HeaderValue::from_str(&files.csp)
    {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

impl Drop for HostSite {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
