//! `haven agent` and `haven witness`: load the node's config and run the daemon until
//! Ctrl-C or SIGTERM. The daemon itself is `haven_agent::run`; nothing else lives here.

use std::path::PathBuf;

use clap::Args;

use super::{EXIT_UNAVAILABLE, Failure, usage};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The node's TOML config file (id, name, listen, state_dir; see docs/OPERATIONS.md).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

/// Runs the agent of `a` (a witness if `witness`, or if its config says so).
pub(super) async fn run(a: AgentArgs, witness: bool) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAVEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut config = haven_agent::AgentConfig::load(&a.config).map_err(usage)?;
    config.witness |= witness;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    haven_agent::run(config, shutdown).await.map_err(|e| Failure { code: EXIT_UNAVAILABLE, message: e.to_string() })
}
