//! `veil tokenize`.

use clap::Args;

use super::model::{ModelArg, resolve_model};

/// Arguments of `veil tokenize`.
#[derive(Debug, Args)]
pub(crate) struct TokenizeArgs {
    /// The text to tokenize.
    text: String,
    /// Print a JSON array instead of space-separated ids.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArg,
}

pub(crate) fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let dir = resolve_model(&a.model.model)?;
    let tok = veil_engine::tokenizer::Tokenizer::from_dir(&dir)?;
    let ids = tok.encode(&a.text)?;
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", s.join(" "));
    }
    Ok(())
}
