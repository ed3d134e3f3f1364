//! Configuration: command-line flags, each with an environment variable of the same meaning
//! (a `.env` file is read first, like Unipile's Node and Python samples).
//!
//! The `///` comment of each field is its `--help` text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Address served when nothing is configured: loopback, so a fresh `cargo run` exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// Unipile's public API base.
pub const DEFAULT_UNIPILE_API_URL: &str = "https://api.unipile.com";
/// Providers linked by default.
pub const DEFAULT_PROVIDERS: &str = "whatsapp,google_messages,telegram";
/// QR lifetime estimates: about 60 s per code, Telegram's login tokens about 30 s (UNIPILE.md).
pub const DEFAULT_QR_TTL: &str = "60s,telegram=30s";

/// `qrlink`: the command line.
#[derive(Debug, Parser)]
#[command(
    name = "qrlink",
    version,
    about,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Gateway settings for the default `serve`.
    #[command(flatten)]
    pub serve: Config,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gateway (the default).
    Serve(Box<Config>),
    /// Serve the embedded Unipile simulator alone, for any Unipile client.
    Simulate(SimulateArgs),
    /// Mint a connect token, for trying out `QRLINK_TOKEN_SECRET`.
    Token(TokenArgs),
    /// Check a result token (the `result` of an `account` frame) by hand: prints its claims
    /// as JSON, or says why it does not verify (exit status 1).
    VerifyResult(VerifyResultArgs),
}

/// Settings of `qrlink verify-result`.
#[derive(Debug, Clone, Args)]
pub struct VerifyResultArgs {
    /// The result token.
    pub token: String,
    /// The HS256 secret the gateway signs with (its connect-token secret).
    #[arg(long, env = "QRLINK_TOKEN_SECRET", hide_env_values = true)]
    pub secret: String,
}

/// Settings of `qrlink token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The HS256 secret the gateway verifies with.
    #[arg(long, env = "QRLINK_TOKEN_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Your reference for the user (sent to Unipile as `state`, echoed on `account`).
    #[arg(long)]
    pub sub: String,
    /// The only provider the token may link.
    #[arg(long)]
    pub provider: Option<String>,
    /// Relink this Unipile account.
    #[arg(long)]
    pub account_id: Option<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// Settings of `qrlink simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Address to serve the simulator on.
    #[arg(long, default_value = "127.0.0.1:3100")]
    pub listen: SocketAddr,
    /// API key the simulator requires in `X-API-KEY`.
    #[arg(
        long,
        env = "UNIPILE_API_KEY",
        default_value = "demo",
        hide_env_values = true
    )]
    pub api_key: String,
    /// Lifetime of each simulated QR code (Telegram gets half of it).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub qr_ttl: Duration,
    /// QR codes issued before `provider/timeout`.
    #[arg(long, default_value_t = 5)]
    pub qr_count: u32,
    /// Runtime threads: 1 (the default) serves everything from one thread, which costs the
    /// least CPU per request (no wake-ups across threads) and leaves the other cores to the
    /// gateway under test; 0 takes one worker per core.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Serve HTTPS with a self-signed certificate made at start (valid for `localhost`,
    /// `127.0.0.1`, `::1` and the `--listen` address), speaking HTTP/2 or HTTP/1.1 as ALPN
    /// agrees. A connection that does not open with TLS is still served plain HTTP (the
    /// control API for `curl` and `qrlink-load`).
    #[arg(long)]
    pub tls: bool,
    /// With `--tls`: write the certificate (PEM) here, for `--upstream-ca-file` or
    /// `NODE_EXTRA_CA_CERTS`; without it the certificate is printed on standard output.
    #[arg(long, requires = "tls")]
    pub cert_out: Option<std::path::PathBuf>,
    /// With `--tls`: the protocols offered by ALPN.
    #[arg(long, requires = "tls", default_value = "both")]
    pub alpn: crate::simulator::Alpn,
}

/// Most serving threads `--threads` accepts: each is an OS thread with a runtime, a listening
/// socket and its own upstream connections.
const MAX_THREADS: usize = 1024;

/// Settings of the gateway (`qrlink serve`).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to serve on.
    #[arg(long, env = "QRLINK_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Unipile API base; the gateway calls `{base}/v2/auth/…`.
    #[arg(long, env = "UNIPILE_API_URL", default_value = DEFAULT_UNIPILE_API_URL)]
    pub unipile_api_url: String,

    /// Unipile API key. Unset: demo mode against the embedded simulator.
    #[arg(long, env = "UNIPILE_API_KEY", hide_env_values = true)]
    pub unipile_api_key: Option<String>,

    /// Providers this gateway links, comma separated.
    #[arg(long, env = "QRLINK_PROVIDERS", default_value = DEFAULT_PROVIDERS, value_delimiter = ',')]
    pub providers: Vec<String>,

    /// QR lifetime estimate for `expires_at`: a default, then `provider=duration` overrides.
    #[arg(long, env = "QRLINK_QR_TTL", default_value = DEFAULT_QR_TTL, value_parser = parse_qr_ttl)]
    pub qr_ttl: QrTtl,

    /// Total time spent retrying one failing upstream call before giving up.
    #[arg(long, env = "QRLINK_UPSTREAM_RETRY_BUDGET", default_value = "30s", value_parser = parse_duration)]
    pub upstream_retry_budget: Duration,

    /// First retry delay; doubles per attempt (full jitter), capped at 5 s.
    #[arg(long, env = "QRLINK_UPSTREAM_BACKOFF", default_value = "250ms", value_parser = parse_duration)]
    pub upstream_backoff: Duration,

    /// Time allowed to open a connection to Unipile.
    #[arg(long, env = "QRLINK_UPSTREAM_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Longest a Solve a Checkpoint long poll may take (Unipile holds it until the QR rotates).
    #[arg(long, env = "QRLINK_UPSTREAM_POLL_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub upstream_poll_timeout: Duration,

    /// HTTP version towards Unipile. `auto` (default): on `https://` ALPN offers `h2` and
    /// `http/1.1` and each connection speaks what the server picks (HTTP/2: calls are streams
    /// on a few connections; HTTP/1.1: a connection per pending long poll); plain `http://`
    /// speaks HTTP/1.1. `2`: HTTP/2 only (`https://`: the server must agree by ALPN; plain
    /// `http://`: spoken from the first byte, as `qrlink simulate` understands). `1.1`:
    /// HTTP/1.1 only. HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are honoured (http://,
    /// https://, socks5://, socks5h://, socks4:// and socks4a:// proxies).
    #[arg(long, env = "QRLINK_UPSTREAM_HTTP", default_value = "auto")]
    pub upstream_http: UpstreamHttp,

    /// With HTTP/2: streams on one connection before another is opened (fewer if the server
    /// allows fewer: its `SETTINGS_MAX_CONCURRENT_STREAMS` is respected as it changes).
    #[arg(long, env = "QRLINK_UPSTREAM_HTTP2_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_http2_streams: u32,

    /// PEM file of root certificates trusted for the upstream besides the usual web roots: a
    /// TLS-intercepting corporate proxy's, or `qrlink simulate --tls --cert-out`'s.
    #[arg(long, env = "QRLINK_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<std::path::PathBuf>,

    /// Serving threads, each with its own runtime and listening socket (`SO_REUSEPORT`: the
    /// kernel spreads new connections over them); a connection and its session stay on the
    /// thread that accepted it. 0 (the default): one per core.
    #[arg(long, env = "QRLINK_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Time given to open sessions to say goodbye on shutdown before they are dropped.
    #[arg(long, env = "QRLINK_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Public base URL of this gateway, used in demo QR codes so a phone can open the scan
    /// page (e.g. `http://192.168.1.20:3000`). Default: `http://{listen}`.
    #[arg(long, env = "QRLINK_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Demo mode: lifetime of each simulated QR code (Telegram gets half of it).
    #[arg(long, env = "QRLINK_DEMO_QR_TTL", default_value = "60s", value_parser = parse_duration)]
    pub demo_qr_ttl: Duration,

    /// Demo mode: QR codes the simulator issues before `provider/timeout`.
    #[arg(long, env = "QRLINK_DEMO_QR_COUNT", default_value_t = 5)]
    pub demo_qr_count: u32,

    /// Browser origins allowed to open WebSockets besides the gateway's own (exact
    /// `scheme://host[:port]`, comma separated). Clients that send no Origin are not browsers
    /// and are not checked.
    #[arg(long, env = "QRLINK_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// HS256 secret for connect tokens. When set, `/ws/link` needs a token (`?token=` or the
    /// `qrlink.token.<jwt>` subprotocol).
    #[arg(long, env = "QRLINK_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Longest lifetime (`exp` minus `iat`, or `exp` minus now) a connect token may have.
    #[arg(long, env = "QRLINK_TOKEN_MAX_TTL", default_value = "10m", value_parser = parse_duration)]
    pub token_max_ttl: Duration,

    /// Bearer token for `/ws/watch`, `/api/*` and `/metrics`. Unset: loopback clients only.
    #[arg(long, env = "QRLINK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Concurrent sessions, all clients together; beyond it `gateway/overloaded` and 1013.
    #[arg(long, env = "QRLINK_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Concurrent sessions per client address (an IPv6 /64 is one address).
    #[arg(long, env = "QRLINK_MAX_SESSIONS_PER_IP", default_value_t = 10)]
    pub max_sessions_per_ip: usize,

    /// New sessions per client address per minute (a token bucket; bursts up to this many).
    #[arg(long, env = "QRLINK_SESSIONS_PER_IP_PER_MINUTE", default_value_t = 60)]
    pub sessions_per_ip_per_minute: u32,

    /// How long a link attempt whose socket dropped (reload, network loss) waits for its page to
    /// resume it with the `resume` token of its frames; `0` turns resume off (protocol v1: no
    /// `resume` field, a hang-up ends the attempt).
    #[arg(long, env = "QRLINK_RESUME_GRACE", default_value = "120s", value_parser = parse_duration)]
    pub resume_grace: Duration,

    /// Cluster mode: the Redis every node shares (`redis://` or `rediss://`; Redis 7 or Valkey).
    /// Unset: one process, everything in memory.
    #[arg(long, env = "QRLINK_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key in cluster mode.
    #[arg(long, env = "QRLINK_REDIS_PREFIX", default_value = "qrlink:")]
    pub redis_prefix: String,

    /// Longest a link attempt may last, whatever the upstream does.
    #[arg(long, env = "QRLINK_MAX_ATTEMPT_DURATION", default_value = "10m", value_parser = parse_duration)]
    pub max_attempt_duration: Duration,

    /// How often the gateway pings an idle client.
    #[arg(long, env = "QRLINK_PING_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A client silent (no pong, no message) this long is gone; its session ends.
    #[arg(long, env = "QRLINK_CLIENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub client_timeout: Duration,

    /// Time a client has to send its HTTP request headers (against slow-header clients).
    #[arg(long, env = "QRLINK_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Reverse proxies whose `X-Forwarded-For` is believed (IPs or CIDRs, comma separated).
    #[arg(long, env = "QRLINK_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<Cidr>,

    /// `frame-ancestors` of the pages' CSP: who may embed the link page in an iframe (and so
    /// use `/qrlink.js`), a CSP source list such as `'self' https://app.example.com`, used
    /// verbatim. Unset: `'self'` and every `--allowed-origins` entry, since an operator who lets
    /// a site open link sockets lets it embed the page too. See [`Config::frame_ancestors`].
    #[arg(long, env = "QRLINK_FRAME_ANCESTORS")]
    pub frame_ancestors: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "QRLINK_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// This node's name, in webhooks (`data.node`), `/api/sessions` and the cluster's records.
    /// Default: the host name and the process id.
    #[arg(long, env = "QRLINK_NODE_ID")]
    pub node_id: Option<String>,

    /// Where each outcome is POSTed as a Standard Webhook (`link.succeeded`, `link.failed`,
    /// `link.expired`, `link.abandoned`); needs `--webhook-secret`.
    #[arg(long, env = "QRLINK_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Signing secrets of the webhooks, `whsec_` followed by base64, space separated: each
    /// signs every webhook, so a receiver can move to a new secret without missing one.
    #[arg(long, env = "QRLINK_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Longest a webhook attempt may take (connection, request and answer); then it is retried.
    #[arg(long, env = "QRLINK_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Webhook attempts in flight at once.
    #[arg(long, env = "QRLINK_WEBHOOK_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_concurrency: u32,

    /// Tests only: multiplies the webhook retry schedule (5 s, 5 min, 30 min … 24 h), so a
    /// test sees retries in milliseconds.
    #[arg(
        long,
        env = "QRLINK_WEBHOOK_RETRY_SCALE",
        default_value_t = 1.0,
        hide = true
    )]
    pub webhook_retry_scale: f64,

    /// Cluster mode, tests only: a webhook another node took and left unsettled this long is
    /// claimed (its node is dead or stuck). Default: `--webhook-timeout` plus 5 s, so a live
    /// node's attempt is never taken from it.
    #[arg(long, env = "QRLINK_WEBHOOK_CLAIM_IDLE", value_parser = parse_duration, hide = true)]
    pub webhook_claim_idle: Option<Duration>,
}

/// HTTP version of the Unipile client (`--upstream-http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UpstreamHttp {
    /// What the server picks by ALPN on `https://`; HTTP/1.1 on plain `http://`.
    #[default]
    #[value(name = "auto")]
    Auto,
    /// HTTP/1.1 only: a connection per call in flight.
    #[value(name = "1.1")]
    Http1,
    /// HTTP/2: streams on a small pool of connections (ALPN on TLS, prior knowledge on plain
    /// HTTP).
    #[value(name = "2")]
    Http2,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Parses flags only (no environment), for tests and embedding: `Config::from_args(["--listen", "127.0.0.1:0"])`.
    pub fn from_args<I, S>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        #[command(args_override_self = true)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        let argv = std::iter::once(std::ffi::OsString::from("qrlink"))
            .chain(args.into_iter().map(Into::into));
        let config = Only::try_parse_from(argv)?.config;
        config
            .check()
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e))?;
        Ok(config)
    }

    /// Serving threads: `--threads`, or one per core when it is 0.
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// What no single flag's parser can see: settings that only make sense together.
    pub fn check(&self) -> Result<(), String> {
        if self.threads > MAX_THREADS {
            return Err(format!(
                "--threads ({}) must be at most {MAX_THREADS} (0: one per core)",
                self.threads
            ));
        }
        // A healthy idle client answers each ping; with a timeout no longer than the interval
        // it would be silent "too long" at every second ping, and every idle session would drop.
        // (An interval past the longest attempt turns pings off, which tests use.)
        if self.client_timeout <= self.ping_interval
            && self.ping_interval < self.max_attempt_duration
        {
            return Err(format!(
                "--client-timeout ({}) must be longer than --ping-interval ({})",
                humantime::format_duration(self.client_timeout),
                humantime::format_duration(self.ping_interval)
            ));
        }
        self.webhook()?;
        if let Some(list) = &self.frame_ancestors {
            // It goes into a header after `frame-ancestors`: a `;` or `,` would add directives
            // or a second policy, and a control character would break the header.
            if list.trim().is_empty()
                || list
                    .chars()
                    .any(|c| matches!(c, ';' | ',') || c.is_control())
            {
                return Err(format!(
                    "--frame-ancestors must be a CSP source list such as \"'self' https://app.example.com\" \
                     (space separated, no ';' or ','), got {list:?}"
                ));
            }
        }
        Ok(())
    }

    /// The `frame-ancestors` source list the pages are served with: `--frame-ancestors` as
    /// given, or else `'self'` followed by each allowed origin that is a plain source expression
    /// (entries with spaces, `;`, `,` or control characters are left out: they would change
    /// the policy, and such an origin cannot open a socket either).
    pub fn frame_ancestors(&self) -> String {
        if let Some(list) = &self.frame_ancestors {
            return list.trim().to_owned();
        }
        let mut list = String::from("'self'");
        for origin in &self.allowed_origins {
            let origin = origin.trim().trim_end_matches('/');
            let plain = !origin.is_empty()
                && origin
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | ',' | '\''));
            if plain {
                list.push(' ');
                list.push_str(origin);
            }
        }
        list
    }

    /// The webhook settings, `None` without a webhook URL. Refuses, in one line each, a URL
    /// without a secret, a secret that is not `whsec_` and base64, and a URL that is not http(s).
    pub fn webhook(&self) -> Result<Option<crate::notify::WebhookConfig>, String> {
        let Some(url) = &self.webhook_url else {
            return Ok(None);
        };
        let Some(secret) = &self.webhook_secret else {
            return Err(
                "--webhook-url needs --webhook-secret (QRLINK_WEBHOOK_SECRET, whsec_…): \
                        receivers must be able to check that a webhook comes from this gateway"
                    .to_owned(),
            );
        };
        let parsed = url::Url::parse(url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or("--webhook-url must be an http:// or https:// URL")?;
        let secrets = crate::notify::signing::Secrets::parse(secret)?;
        if !(self.webhook_retry_scale > 0.0 && self.webhook_retry_scale.is_finite()) {
            return Err("--webhook-retry-scale must be a positive number".to_owned());
        }
        Ok(Some(crate::notify::WebhookConfig {
            url: parsed,
            secrets,
            timeout: self.webhook_timeout,
            concurrency: self.webhook_concurrency as usize,
            retry_scale: self.webhook_retry_scale,
            node: self.node_id(),
            redis: self
                .redis_url
                .as_ref()
                .map(|url| crate::notify::outbox::RedisOutboxConfig {
                    url: url.clone(),
                    prefix: self.redis_prefix.clone(),
                    node: self.node_id(),
                    claim_idle: self
                        .webhook_claim_idle
                        .unwrap_or(self.webhook_timeout + Duration::from_secs(5)),
                }),
        }))
    }

    /// This node's name: `--node-id`, else the host name and the process id.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "qrlink".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Whether the gateway runs against its embedded simulator (no API key configured).
    pub fn demo(&self) -> bool {
        self.unipile_api_key.is_none()
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`; a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `10.0.0.0/8`, `127.0.0.1`, `::1`.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        None => max,
    };
    Ok(Cidr { addr, prefix })
}

/// QR lifetime estimates per provider.
#[derive(Debug, Clone, PartialEq)]
pub struct QrTtl {
    /// Lifetime of providers without an override.
    pub default: Duration,
    /// Per-provider overrides.
    pub per_provider: BTreeMap<String, Duration>,
}

impl QrTtl {
    /// The estimate for one provider.
    pub fn for_provider(&self, provider: &str) -> Duration {
        self.per_provider
            .get(provider)
            .copied()
            .unwrap_or(self.default)
    }
}

/// Parses `60s`, `250ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

/// Parses `60s,telegram=30s`: an optional default, then `provider=duration` overrides.
pub fn parse_qr_ttl(s: &str) -> Result<QrTtl, String> {
    let mut ttl = QrTtl {
        default: Duration::from_secs(60),
        per_provider: BTreeMap::new(),
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((provider, d)) => {
                ttl.per_provider
                    .insert(provider.trim().to_owned(), parse_duration(d)?);
            }
            None => ttl.default = parse_duration(part)?,
        }
    }
    Ok(ttl)
}

/// A tokio runtime for the binaries: one worker per core (or `TOKIO_WORKER_THREADS`) for
/// `threads` 0, a current-thread runtime for 1 (no wake-ups across threads: the least CPU per
/// request), else that many workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_demo_mode_on_loopback() {
        let c = Config::from_args::<_, &str>([]).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(c.demo());
        assert_eq!(c.providers, ["whatsapp", "google_messages", "telegram"]);
        assert_eq!(c.qr_ttl.for_provider("whatsapp"), Duration::from_secs(60));
        assert_eq!(c.qr_ttl.for_provider("telegram"), Duration::from_secs(30));
        assert_eq!(c.upstream_http, UpstreamHttp::Auto);
        assert_eq!(c.upstream_ca_file, None);
    }

    #[test]
    fn frame_ancestors_default_to_self_and_the_allowed_origins() {
        let c = Config::from_args::<_, &str>([]).unwrap();
        assert_eq!(c.frame_ancestors(), "'self'");
        let c = Config::from_args([
            "--allowed-origins",
            "https://app.example.com/, http://127.0.0.1:8080,bad;origin",
        ])
        .unwrap();
        assert_eq!(
            c.frame_ancestors(),
            "'self' https://app.example.com http://127.0.0.1:8080"
        );
        let c = Config::from_args([
            "--allowed-origins",
            "https://app.example.com",
            "--frame-ancestors",
            "'none'",
        ])
        .unwrap();
        assert_eq!(c.frame_ancestors(), "'none'", "set, it is used verbatim");
    }

    #[test]
    fn frame_ancestors_that_would_change_the_policy_are_refused() {
        for bad in [
            "'self'; script-src *",
            "'self', https://a.example",
            "",
            "'self'\nx",
        ] {
            let err = Config::from_args(["--frame-ancestors", bad])
                .err()
                .unwrap_or_else(|| panic!("expected {bad:?} to be refused"));
            assert!(
                err.to_string()
                    .contains("--frame-ancestors must be a CSP source list"),
                "{err}"
            );
        }
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let host = parse_cidr("::1").unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        assert!(
            parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn a_client_timeout_not_longer_than_the_ping_interval_is_refused() {
        let err = Config::from_args(["--ping-interval", "10s", "--client-timeout", "10s"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--client-timeout (10s) must be longer"),
            "{err}"
        );
        assert!(Config::from_args(["--ping-interval", "1s", "--client-timeout", "2s"]).is_ok());
        // Pings off: an interval no attempt lives to see.
        assert!(Config::from_args(["--ping-interval", "1h", "--client-timeout", "1s"]).is_ok());
    }

    #[test]
    fn webhook_settings_are_refused_in_one_clear_line_each() {
        let refused = |args: &[&str]| Config::from_args(args).unwrap_err().to_string();
        let url = ["--webhook-url", "https://app.example/hooks"];
        let cases: [(&[&str], &str); 4] = [
            (&url, "--webhook-url needs --webhook-secret"),
            (
                &[url[0], url[1], "--webhook-secret", "hunter2"],
                "does not start with whsec_",
            ),
            (
                &[url[0], url[1], "--webhook-secret", "whsec_%%%"],
                "not whsec_ followed by base64",
            ),
            (
                &[
                    "--webhook-url",
                    "ftp://app.example/hooks",
                    "--webhook-secret",
                    "whsec_c2VjcmV0",
                ],
                "must be an http:// or https:// URL",
            ),
        ];
        for (args, says) in cases {
            let err = refused(args);
            assert!(err.contains(says), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(!err.contains("hunter2"), "no secret in errors: {err}");
        }
        let ok = Config::from_args([url[0], url[1], "--webhook-secret", "whsec_c2VjcmV0"]).unwrap();
        let webhook = ok.webhook().unwrap().expect("webhooks on");
        assert_eq!(webhook.url.as_str(), "https://app.example/hooks");
        assert_eq!(webhook.timeout, Duration::from_secs(15));
        assert!(
            Config::from_args::<_, &str>([])
                .unwrap()
                .webhook()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_node_id_defaults_to_host_and_pid() {
        let c = Config::from_args::<_, &str>([]).unwrap();
        assert!(c.node_id().ends_with(&format!("-{}", std::process::id())));
        let c = Config::from_args(["--node-id", "gw-1"]).unwrap();
        assert_eq!(c.node_id(), "gw-1");
    }

    #[test]
    fn qr_ttl_accepts_overrides_and_rejects_garbage() {
        let t = parse_qr_ttl("45s, google_messages=30s").unwrap();
        assert_eq!(t.for_provider("whatsapp"), Duration::from_secs(45));
        assert_eq!(t.for_provider("google_messages"), Duration::from_secs(30));
        assert!(parse_qr_ttl("telegram=soon").is_err());
    }
}
