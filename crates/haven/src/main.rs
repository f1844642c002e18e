//! `haven`: the one binary. `haven agent` runs the node daemon, `haven demo` a local
//! cluster, and every other subcommand is a client of the REST API of any agent.

mod cli;
mod demo;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The node guard is a plain loop of its own, with no async runtime to depend on.
    if let cli::Cmd::Guard(g) = &args.command {
        return cli::guard(g);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_UNAVAILABLE);
        }
    };
    runtime.block_on(cli::run(args))
}
