//! `switchboard-server` binary: parse configuration, set up logging, bind,
//! print the stdout banner, and run [`switchboard_server::serve`] until
//! SIGTERM or Ctrl-C; or, for `token`, print one signed token.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use switchboard_server::config::{self, Command, Config};
use switchboard_server::token;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::load(&args, &config::ProcessEnv, &config::RealFiles) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Token(cmd)) => return token(&cmd),
        Ok(Command::Help) => {
            print!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::TokenHelp) => {
            print!("{}", config::token_usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("switchboard-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return ExitCode::from(config::EXIT_CONFIG as u8);
        }
    };
    switchboard_server::logging::init(config.log_format);
    // The multi-threaded runtime with its I/O and time drivers.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `switchboard-server token ...`: the token alone on stdout, or one line
/// per bad argument on stderr (exit 64).
fn token(cmd: &config::TokenCommand) -> ExitCode {
    let request = match token::request(&cmd.args) {
        Ok(request) => request,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::from(token::EXIT_USAGE as u8);
        }
    };
    match token::mint(&request, &cmd.signing, switchboard_server::auth::now_unix()) {
        Ok(t) => match banner(&t) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the token to stdout: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// stdout carries only the banner lines; flush each so a parent process
/// reading a pipe sees it at once.
fn banner(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Before the banner: whoever reads `listening on` may signal at once, and
    // a signal that arrives before the handler exists kills the process
    // instead of draining it.
    let shutdown = shutdown_signal()?;
    banner(&format!("listening on {addr}"))?;
    if config.dev {
        let token = switchboard_server::auth::dev_token(
            &config.jwt,
            "dev",
            "dev",
            "*",
            switchboard_server::auth::now_unix(),
            switchboard_server::dev_identity::TTL,
        )?;
        banner(&format!("dev token: {token}"))?;
        let admin = switchboard_server::dev_identity::admin_token(
            &config.jwt,
            switchboard_server::auth::now_unix(),
        )?;
        banner(&format!(
            "dev admin token (server API, grant room_admin): {admin}"
        ))?;
        // No token in the URL: each tab mints its own identity (a name the
        // page asks for, or a guest name with `autostart=1`), so two tabs are
        // two users; `autostart=1` connects them without pressing Join.
        banner(&format!("demo: http://{addr}/?room=demo&autostart=1"))?;
        banner(&format!(
            "dev identities: POST http://{addr}{} {{\"name\": \"Alice\"}} returns a token of its own",
            switchboard_server::dev_identity::PATH
        ))?;
        tracing::warn!(
            "--dev: in-process bus, a random JWT secret and a token for anyone who asks at {}; not for production",
            switchboard_server::dev_identity::PATH
        );
    }
    switchboard_server::serve(config, listener, shutdown).await?;
    Ok(())
}

/// Installs the SIGTERM (Kubernetes) and SIGINT (Ctrl-C) handlers now and
/// returns a future that completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("Ctrl-C received"),
        }
    })
}

/// Ctrl-C only where there is no SIGTERM.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        } else {
            std::future::pending::<()>().await;
        }
    })
}
