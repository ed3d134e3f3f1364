//! A small app that lets its users link a WhatsApp, Google Messages or Telegram account through
//! qrlink: the job of Unipile's Express and FastAPI samples, with the gateway doing the QR part.
//!
//! Two terminals (README, "Embed it in your app"); this program prints the first command:
//!
//! ```sh
//! QRLINK_TOKEN_SECRET=… \
//! QRLINK_WEBHOOK_URL=http://127.0.0.1:4000/webhooks/qrlink \
//! QRLINK_WEBHOOK_SECRET=whsec_… \
//! QRLINK_ALLOWED_ORIGINS=http://127.0.0.1:4000 cargo run
//! cargo run --example app        # then open http://127.0.0.1:4000
//! ```
//!
//! The three steps of an integration, as this app does them:
//! 1. `POST /api/connect-token` mints a short-lived connect token for the signed-in user.
//! 2. Its page (`examples/app/index.html`, `app.js`) calls `QrLink.create` with that token; the
//!    gateway shows the QR in a modal over the page.
//! 3. The backend believes only what it can verify: the result token the page posts to
//!    `POST /api/link-result`, and the webhooks the gateway posts to `POST /webhooks/qrlink`.
//!
//! `/react` is the same page as a React component (`examples/react/`, built with npm).
//!
//! Settings, from the environment: `APP_LISTEN` (`127.0.0.1:4000`), `QRLINK_GATEWAY`
//! (`http://127.0.0.1:3000`), `QRLINK_TOKEN_SECRET` and `QRLINK_WEBHOOK_SECRET` (demo values by
//! default, which only ever belong on a laptop). Everything is kept in memory and users sign in
//! by name alone: a real app has real sign-in, a database, and its secrets in a vault.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Json, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, body::Bytes};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

/// Demo secrets, so that two commands are enough on a laptop. Anyone can read them here.
pub const DEMO_TOKEN_SECRET: &str = "qrlink-example-not-a-real-secret";
pub const DEMO_WEBHOOK_SECRET: &str = "whsec_cXJsaW5rIGV4YW1wbGU6IG5vdCBhIHJlYWwgc2VjcmV0";

/// Connect tokens are spent when the modal opens, so a few minutes is plenty (the gateway
/// refuses any longer than its `QRLINK_TOKEN_MAX_TTL`, 10 minutes by default).
const CONNECT_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// Standard Webhooks' replay window: a webhook signed further than this from now is refused.
const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const PROVIDERS: [&str; 3] = ["whatsapp", "google_messages", "telegram"];

/// Where this app listens and how it meets the gateway.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The gateway's base URL, as the browser reaches it.
    pub gateway: String,
    /// `QRLINK_TOKEN_SECRET`: signs connect tokens (here) and result tokens (the gateway).
    pub token_secret: String,
    /// `QRLINK_WEBHOOK_SECRET`: `whsec_` and the base64 of the HMAC key.
    pub webhook_secret: String,
}

impl Settings {
    /// Reads the environment, with the demo defaults.
    pub fn from_env() -> Result<Settings, String> {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
        let listen = var("APP_LISTEN", "127.0.0.1:4000");
        let webhook_secret = var("QRLINK_WEBHOOK_SECRET", DEMO_WEBHOOK_SECRET);
        webhook_key(&webhook_secret)?;
        Ok(Settings {
            listen: listen.parse().map_err(|_| {
                format!("APP_LISTEN={listen:?} is not an address like 127.0.0.1:4000")
            })?,
            gateway: var("QRLINK_GATEWAY", "http://127.0.0.1:3000")
                .trim_end_matches('/')
                .to_owned(),
            token_secret: var("QRLINK_TOKEN_SECRET", DEMO_TOKEN_SECRET),
            webhook_secret,
        })
    }

    /// This app's origin: the gateway must allow it, to be framed by its pages.
    pub fn origin(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The command that starts a gateway in demo mode to match. Secrets of your own stay out
    /// of the terminal: they are shown as the variable they came from.
    pub fn gateway_command(&self) -> String {
        let shown = |value: &str, demo: &str, name: &str| {
            if value == demo {
                value.to_owned()
            } else {
                format!("\"${name}\"")
            }
        };
        format!(
            "QRLINK_TOKEN_SECRET={} \\\nQRLINK_WEBHOOK_URL={}/webhooks/qrlink \\\n\
             QRLINK_WEBHOOK_SECRET={} \\\nQRLINK_ALLOWED_ORIGINS={} cargo run",
            shown(&self.token_secret, DEMO_TOKEN_SECRET, "QRLINK_TOKEN_SECRET"),
            self.origin(),
            shown(
                &self.webhook_secret,
                DEMO_WEBHOOK_SECRET,
                "QRLINK_WEBHOOK_SECRET"
            ),
            self.origin(),
        )
    }
}

/// Asks the gateway for `/config.json`: is it there, and does it sign result tokens?
pub async fn check_gateway(gateway: &str) -> Result<(), String> {
    let unreachable = |why: String| {
        format!(
            "cannot reach the qrlink gateway at {gateway} ({why}). Start it first with the \
             command above, or set QRLINK_GATEWAY to where it runs."
        )
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let answer = http
        .get(format!("{gateway}/config.json"))
        .send()
        .await
        .map_err(|e| {
            unreachable(if e.is_connect() {
                "nothing answers there".to_owned()
            } else if e.is_timeout() {
                "no answer within 5 s".to_owned()
            } else {
                e.without_url().to_string()
            })
        })?;
    if !answer.status().is_success() {
        return Err(unreachable(format!("it answered {}", answer.status())));
    }
    let config: Value = answer
        .json()
        .await
        .map_err(|_| unreachable("its /config.json is not JSON: is it qrlink?".to_owned()))?;
    if config["token_required"] != true {
        return Err(format!(
            "the gateway at {gateway} runs without QRLINK_TOKEN_SECRET: it would link accounts \
             for anyone and sign no result tokens. Restart it with the command above."
        ));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("app: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    println!("Start the gateway in demo mode (another terminal, in the repository):\n");
    println!("{}\n", settings.gateway_command());
    check_gateway(&settings.gateway).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {} ({e}); set APP_LISTEN", settings.listen))?;
    println!(
        "Gateway found at {}. Open {}/",
        settings.gateway,
        settings.origin()
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, settings, stop)
        .await
        .map_err(|e| e.to_string())
}

/// Serves the app on `listener` until `stop` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let webhook_key = webhook_key(&settings.webhook_secret)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = Arc::new(App {
        settings,
        webhook_key,
        db: Mutex::default(),
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(stop)
        .await
}

struct App {
    settings: Settings,
    webhook_key: Vec<u8>,
    /// A real app has a database.
    db: Mutex<Db>,
}

#[derive(Default)]
struct Db {
    /// Session cookie → user name.
    sessions: HashMap<String, String>,
    /// User name → linked accounts.
    accounts: HashMap<String, Vec<LinkedAccount>>,
    /// User name → the webhooks about them, oldest first.
    webhooks: HashMap<String, Vec<Value>>,
    /// Result tokens already used (a real app forgets them once expired, after 5 minutes).
    used_results: HashSet<String>,
    /// `webhook-id`s handled: a retry of one that was delivered must not count twice.
    handled_webhooks: HashSet<String>,
    /// How many of each were accepted and refused (`GET /api/status`).
    counts: HashMap<&'static str, u64>,
}

/// An account, and which proofs of it the backend has verified.
#[derive(Clone, serde::Serialize)]
struct LinkedAccount {
    account_id: String,
    provider: String,
    name: Option<String>,
    by_result: bool,
    by_webhook: bool,
}

impl Db {
    fn link(&mut self, user: &str, account_id: &str, provider: &str) -> &mut LinkedAccount {
        let accounts = self.accounts.entry(user.to_owned()).or_default();
        match accounts.iter().position(|a| a.account_id == account_id) {
            Some(i) => &mut accounts[i],
            None => {
                accounts.push(LinkedAccount {
                    account_id: account_id.to_owned(),
                    provider: provider.to_owned(),
                    name: None,
                    by_result: false,
                    by_webhook: false,
                });
                accounts.last_mut().expect("just pushed")
            }
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset("text/javascript", include_str!("app/app.js"))),
        )
        .route(
            "/style.css",
            get(|| asset("text/css", include_str!("app/style.css"))),
        )
        .route("/react", get(react_page))
        .route("/react/demo.js", get(react_bundle))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/connect-token", post(connect_token))
        .route("/api/link-result", post(link_result))
        .route("/webhooks/qrlink", post(webhook))
        .route("/api/status", get(status))
        .with_state(app)
}

/// A refusal, as `{"error": …}`.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn fail(status: StatusCode, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The page, with the gateway's address filled in (it loads `/qrlink.js` from there).
async fn index(State(app): State<Arc<App>>) -> Response {
    let page = include_str!("app/index.html").replace("{{GATEWAY}}", &app.settings.gateway);
    ([csp(&app.settings.gateway)], Html(page)).into_response()
}

async fn react_page(State(app): State<Arc<App>>) -> Response {
    (
        [csp(&app.settings.gateway)],
        Html(include_str!("react/index.html")),
    )
        .into_response()
}

/// The pages' Content-Security-Policy: nothing inline, and the gateway let in where qrlink.js
/// needs it: `script-src` (the script), `connect-src` (its `/embed.json`), `frame-src` (the
/// page in the modal).
fn csp(gateway: &str) -> (header::HeaderName, String) {
    let policy = format!(
        "default-src 'self'; script-src 'self' {gateway}; connect-src 'self' {gateway}; \
         frame-src {gateway}; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    );
    (header::CONTENT_SECURITY_POLICY, policy)
}

/// The React demo's bundle, built by `npm ci && npm run build` in `examples/react`.
async fn react_bundle() -> Response {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/react/dist/demo.js");
    match std::fs::read_to_string(path) {
        Ok(js) => ([(header::CONTENT_TYPE, "text/javascript")], js).into_response(),
        Err(_) => fail(
            StatusCode::NOT_FOUND,
            "the React demo is not built: cd examples/react && npm ci && npm run build",
        )
        .into_response(),
    }
}

/// The session cookie's value.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("sid="))
}

/// The signed-in user, from the session cookie.
fn user(app: &App, headers: &HeaderMap) -> Result<String, Fail> {
    let db = app.db.lock().unwrap();
    session_id(headers)
        .and_then(|sid| db.sessions.get(sid).cloned())
        .ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "sign in first"))
}

#[derive(Deserialize)]
struct Login {
    name: String,
}

/// The fake sign-in: any name will do.
async fn login(State(app): State<Arc<App>>, Json(login): Json<Login>) -> Result<Response, Fail> {
    let name = login.name.trim();
    if name.is_empty() || name.chars().count() > 40 || name.chars().any(char::is_control) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "a name is 1 to 40 characters",
        ));
    }
    let sid = format!("{:032x}", rand::random::<u128>());
    app.db
        .lock()
        .unwrap()
        .sessions
        .insert(sid.clone(), name.to_owned());
    // SameSite=Lax: another site cannot POST to /api/* with it (no CSRF token needed here).
    let cookie = format!("sid={sid}; Path=/; HttpOnly; SameSite=Lax");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "user": name })),
    )
        .into_response())
}

/// Signs out (every tab of this browser: their pages notice at their next look).
async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(sid) = session_id(&headers) {
        app.db.lock().unwrap().sessions.remove(sid);
    }
    let cookie = "sid=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0";
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

/// What the page shows: the user, the gateway, the accounts the backend has verified.
async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, Fail> {
    let user = user(&app, &headers)?;
    let db = app.db.lock().unwrap();
    Ok(Json(json!({
        "user": user,
        "gateway": app.settings.gateway,
        "accounts": db.accounts.get(&user).cloned().unwrap_or_default(),
        "webhooks": db.webhooks.get(&user).cloned().unwrap_or_default(),
    })))
}

#[derive(Deserialize)]
struct ConnectRequest {
    provider: String,
}

/// Step 1: a connect token for the signed-in user and one provider.
async fn connect_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<ConnectRequest>,
) -> Result<Json<Value>, Fail> {
    let user = user(&app, &headers)?;
    if !PROVIDERS.contains(&req.provider.as_str()) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "provider: whatsapp, google_messages or telegram",
        ));
    }
    let now = now();
    // `sub` comes back in the result token and in every webhook (as `state`): use your user id.
    let claims = json!({
        "sub": user,
        "provider": req.provider,
        "iat": now,
        "exp": now + CONNECT_TOKEN_TTL.as_secs(),
    });
    let key = EncodingKey::from_secret(app.settings.token_secret.as_bytes());
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "token": token })))
}

#[derive(Deserialize)]
struct LinkResult {
    result: String,
}

/// A result token's claims that this app uses (`iss` and `exp` are checked by the validation).
#[derive(Deserialize)]
struct ResultClaims {
    account_id: String,
    provider: String,
    jti: String,
}

/// Step 3, from the page: the result token, verified. The page's own word ("linked!") is not
/// proof; a token signed with our secret, for this user, not expired and not used before is.
async fn link_result(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<LinkResult>,
) -> Result<Json<Value>, Fail> {
    let user = user(&app, &headers)?;
    let verified = verify_result(&app.settings.token_secret, &user, &req.result);
    let mut db = app.db.lock().unwrap();
    let claims = match verified {
        Ok(claims) => claims,
        Err(e) => return Err(reject(&mut db, &e)),
    };
    if !db.used_results.insert(claims.jti.clone()) {
        return Err(reject(&mut db, "this result token was already used"));
    }
    db.count("results_verified");
    let account = db.link(&user, &claims.account_id, &claims.provider);
    account.by_result = true;
    Ok(Json(json!({ "account": account.clone() })))
}

fn reject(db: &mut Db, why: &str) -> Fail {
    db.count("results_rejected");
    fail(StatusCode::BAD_REQUEST, why)
}

/// Verifies a result token for `user`: HS256 with our secret, issued by qrlink, not expired,
/// and about this user (the `sub` of the connect token we minted for them).
fn verify_result(secret: &str, user: &str, token: &str) -> Result<ResultClaims, String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["qrlink"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation.sub = Some(user.to_owned());
    let key = DecodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::decode::<ResultClaims>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("the result token does not verify: {e}"))
}

/// Step 3, from the gateway: a webhook, verified before anything in it is believed.
async fn webhook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = verify_webhook(&app.webhook_key, &headers, &body, now()) {
        app.db.lock().unwrap().count("webhooks_rejected");
        return fail(StatusCode::BAD_REQUEST, e).into_response();
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return fail(StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let mut db = app.db.lock().unwrap();
    db.count("webhooks_verified");
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
    // A retry of a webhook already handled: answer 2xx again, do nothing twice.
    if !db
        .handled_webhooks
        .insert(id.unwrap_or_default().to_owned())
    {
        return StatusCode::NO_CONTENT.into_response();
    }
    let data = &event["data"];
    // `state` is the `sub` of the connect token: the user who opened the modal.
    if let Some(user) = data["state"].as_str() {
        if event["type"] == "link.succeeded" {
            let (id, provider) = (&data["account"]["id"], &data["provider"]);
            if let (Some(id), Some(provider)) = (id.as_str(), provider.as_str()) {
                let account = db.link(user, id, provider);
                account.by_webhook = true;
                account.name = data["account"]["name"].as_str().map(str::to_owned);
            }
        }
        let seen = json!({ "type": event["type"], "provider": data["provider"] });
        db.webhooks.entry(user.to_owned()).or_default().push(seen);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The HMAC key of a `whsec_…` secret.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| BASE64.decode(b64).ok())
        .ok_or_else(|| "QRLINK_WEBHOOK_SECRET must be whsec_ followed by base64".to_owned())
}

/// Standard Webhooks, by hand (a library does the same: README, "Tell your backend"). The
/// signature is HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, in base64; the
/// header holds one `v1,…` per secret the gateway signs with (several while they rotate).
pub fn verify_webhook(
    key: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("no {name} header"))
    };
    let (id, timestamp) = (header("webhook-id")?, header("webhook-timestamp")?);
    let signatures = header("webhook-signature")?;
    let sent: u64 = timestamp
        .parse()
        .map_err(|_| "webhook-timestamp is not a number".to_owned())?;
    // An old webhook replayed by someone who recorded it is refused.
    if now.abs_diff(sent) > WEBHOOK_TOLERANCE.as_secs() {
        return Err("webhook-timestamp is more than 5 minutes from now".to_owned());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let valid = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| BASE64.decode(s).ok())
        // verify_slice compares in constant time: no timing hints towards a forged signature.
        .any(|signature| mac.clone().verify_slice(&signature).is_ok());
    if valid {
        Ok(())
    } else {
        Err("no valid signature".to_owned())
    }
}

/// For tests and curl: what the backend has verified and refused. A real app has no such page.
async fn status(State(app): State<Arc<App>>) -> Json<Value> {
    let db = app.db.lock().unwrap();
    Json(json!({ "counts": db.counts, "accounts": db.accounts }))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
