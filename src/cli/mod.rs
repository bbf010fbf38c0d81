//! Command-line definitions and dispatch.

mod attest;
mod bench;
mod cc;
mod chat;
mod gateway;
mod generate;
mod model;
mod remote;
mod serve;
mod tokenize;

use clap::{Parser, Subcommand};

/// Veil: confidential LLM inference.
#[derive(Debug, Parser)]
#[command(name = "veil", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Print the token ids of a text (no special tokens added).
    Tokenize(tokenize::TokenizeArgs),
    /// Manage models: pull, import, synth, list.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Serve the gRPC API (veil.v1.Inference) with health, reflection and metrics.
    Serve(serve::ServeArgs),
    /// Load-test a running server (throughput and latency percentiles), compare CC transfer
    /// modes (`--compare-cc`), or compare two saved runs (`veil bench compare A.json B.json`).
    #[command(args_conflicts_with_subcommands = true)]
    Bench(bench::BenchArgs),
    /// Chat with a running server in the terminal (reads stdin line by line).
    Chat(chat::ChatArgs),
    /// Attestation: inspect evidence, verify a bundle against a policy, fetch a server's.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Print (or write) an nginx or HAProxy configuration that routes each sealed call to the
    /// replica holding its key, from the replicas' current key ids.
    GatewayConfig(gateway::GatewayArgs),
}

impl Cli {
    /// Whether the command is a long-running server (logs at info level by default).
    pub(crate) fn is_server(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

/// Runs the parsed command.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Model(c) => model::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Attest(c) => attest::run(c),
        Command::GatewayConfig(a) => gateway::run(a),
    }
}
