//! Command-line definitions and dispatch.

mod generate;
mod model;
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
    /// Manage models: pull, import, list.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

/// Runs the parsed command.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Model(c) => model::run(c),
    }
}
