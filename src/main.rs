//! `veil`: the command-line interface of the Veil confidential inference engine.
//!
//! A thin binary over the library crates: argument parsing and terminal output live here,
//! everything else in `veil-engine` and `veil-kernels`.

mod cli;
mod registry;
mod server;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // Servers log at info level unless VEIL_LOG says otherwise; other commands only errors.
    let default_level = if args.is_server() {
        tracing_subscriber::filter::LevelFilter::INFO
    } else {
        tracing_subscriber::filter::LevelFilter::ERROR
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(default_level.into())
                .with_env_var("VEIL_LOG")
                .from_env_lossy(),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
