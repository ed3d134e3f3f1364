//! The `qrlink` binary: parse the configuration, set up logs, bind, serve until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use qrlink::config::{Cli, Command, Config, LogFormat, SimulateArgs, TokenArgs, VerifyResultArgs};
use qrlink::http::auth;
use qrlink::simulator::{SelfSigned, Simulator, SimulatorConfig};
use qrlink::{Gateway, telemetry};
use tokio::net::TcpListener;

/// mimalloc instead of glibc's malloc: per session it costs the same, but after a burst of
/// sessions it returns the memory to the system, where glibc keeps its high-water mark
/// (100,000 sessions opened and closed at 500/s: RSS 1.13–1.28× the start with glibc, 1.04×
/// with mimalloc preloaded, 0.96× built in; benches/README.md, "Churn").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Like Unipile's Node and Python samples, settings may come from a `.env` file.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(config)) => serve(*config),
        Some(Command::Simulate(args)) => runtime(args.threads)?.block_on(simulate(args)),
        Some(Command::Token(args)) => {
            token(args);
            Ok(())
        }
        Some(Command::VerifyResult(args)) => verify_result(args),
    }
}

/// Prints a result token's claims if it verifies; an error (exit status 1) says why not.
fn verify_result(args: VerifyResultArgs) -> anyhow::Result<()> {
    let claims = qrlink::notify::result::verify(&args.secret, args.token.trim())?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}

/// [`qrlink::config::runtime`], with the error said.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    qrlink::config::runtime(threads).context("cannot start the tokio runtime")
}

/// Prints a connect token: `websocat "ws://…/ws/link/whatsapp?token=$(qrlink token --sub u1)"`.
fn token(args: TokenArgs) {
    let now = auth::now_secs();
    let claims = auth::Claims {
        sub: args.sub,
        exp: now + args.ttl.as_secs(),
        iat: Some(now),
        provider: args.provider,
        account_id: args.account_id,
        proxy: None,
    };
    println!("{}", auth::mint(&args.secret, &claims));
}

fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    if let Err(e) = config.check() {
        // One line for the operator: as an `anyhow` error it would grow a backtrace wherever
        // RUST_BACKTRACE is set.
        eprintln!("Error: {e}");
        std::process::exit(2);
    }
    let threads = config.serving_threads();
    let listeners = qrlink::net::bind_group(config.listen, threads)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listeners[0].local_addr()?;
    let demo = config.demo();
    // The calling thread serves too, in this runtime, where the gateway's own tasks start.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let gateway = {
        let _in_runtime = rt.enter();
        Gateway::new(config, addr)?
    };
    if demo {
        tracing::warn!(
            "DEMO MODE: no UNIPILE_API_KEY is set, so QR codes come from the embedded Unipile \
             simulator at /simulator and no real account can be linked"
        );
    }
    tracing::info!(%addr, threads = listeners.len(), "qrlink listening; open http://{addr}/");
    gateway.serve_threads(rt, listeners, shutdown_signal())?;
    Ok(())
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Text);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let config =
        SimulatorConfig::demo_defaults(args.api_key).with_timings(args.qr_ttl, args.qr_count);
    let simulator = Simulator::new(config);
    if !args.tls {
        tracing::info!(%addr, "Unipile simulator listening; point UNIPILE_API_URL at http://{addr}");
        return Ok(simulator.serve(listener, shutdown_signal()).await?);
    }
    let tls =
        SelfSigned::generate(&[addr.ip().to_string()], args.alpn).map_err(anyhow::Error::msg)?;
    match &args.cert_out {
        Some(path) => std::fs::write(path, &tls.cert_pem)
            .with_context(|| format!("cannot write the certificate to {}", path.display()))?,
        None => print!("{}", tls.cert_pem),
    }
    tracing::info!(
        %addr,
        alpn = ?args.alpn,
        "Unipile simulator listening over TLS; point UNIPILE_API_URL at https://{addr} and \
         trust its certificate (--upstream-ca-file)"
    );
    simulator
        .serve_tls(listener, tls.acceptor, shutdown_signal())
        .await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
