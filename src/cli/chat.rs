//! `veil chat`: an interactive terminal chat against a running Veil server.
//!
//! Reads one user message per line from stdin, keeps the conversation, sends it whole on each
//! turn as a `ChatInput` and streams the reply's text to stdout as it arrives. `/reset` starts
//! a new conversation, `/exit` (or end of input) quits. Works with piped stdin as well as a
//! terminal; prompts and notices go to stderr, only replies to stdout.
//!
//! Every turn is a sealed call to the attested engine (`--policy` says what the server must
//! prove; see [`super::remote`]); before the first prompt the user sees what was verified, or a
//! plain warning when the session is not confidential. `--plaintext` uses the plaintext RPC.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use clap::Args;
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::{ChatInput, ChatMessage, FinishReason, GenerateRequest, GenerationParams};

use super::remote::{Remote, RemoteArgs, server_url};

/// Arguments of `veil chat`.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// System message that opens the conversation (kept across /reset).
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature; 0 is greedy (default: the server's, 1.0).
    #[arg(long)]
    temperature: Option<f32>,
    /// Maximum tokens per reply (default: the server's, until the context is full).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling seed, for reproducible replies.
    #[arg(long)]
    seed: Option<u64>,
}

pub(crate) fn run(a: ChatArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Attests the server (or warns about plaintext) before the first prompt.
    let mut remote = rt.block_on(Remote::connect(&a.remote))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "connected to {}; /reset starts over, /exit quits",
            server_url(&a.remote.server)
        );
    }
    let base: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    let mut history = base.clone();
    let (mut turns, mut failed) = (0usize, 0usize);
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        line.clear();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 {
            if interactive {
                eprintln!();
            }
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clone_from(&base);
                eprintln!("(conversation reset)");
                continue;
            }
            "/help" => {
                eprintln!("/reset starts a new conversation, /exit quits");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        });
        turns += 1;
        match rt.block_on(reply(&mut remote, &history, &a)) {
            Ok(reply) => history.push(ChatMessage {
                role: "assistant".into(),
                content: reply,
            }),
            Err(e) => {
                eprintln!("error: {e:#}");
                // Drop the unanswered message so the conversation stays consistent.
                history.pop();
                failed += 1;
            }
        }
    }
    if failed > 0 && !interactive {
        anyhow::bail!("{failed} of {turns} messages got no reply");
    }
    Ok(())
}

/// Sends the conversation and streams the reply to stdout; returns the reply's text.
async fn reply(remote: &mut Remote, history: &[ChatMessage], a: &ChatArgs) -> anyhow::Result<String> {
    let req = GenerateRequest {
        input: Some(Input::Chat(ChatInput {
            messages: history.to_vec(),
        })),
        params: Some(GenerationParams {
            temperature: a.temperature,
            max_tokens: a.max_tokens,
            seed: a.seed,
            ..Default::default()
        }),
    };
    let stdout = std::io::stdout();
    let mut text = String::new();
    let result = remote
        .generate(&req, |d| {
            if !d.text.is_empty() {
                let mut out = stdout.lock();
                out.write_all(d.text.as_bytes())
                    .and_then(|()| out.flush())
                    .context("writing to stdout")?;
                text.push_str(&d.text);
            }
            Ok(())
        })
        .await;
    // End the reply's line even when it failed half-way.
    {
        let mut out = stdout.lock();
        out.write_all(b"\n")
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
    }
    let f = result?.finished;
    match FinishReason::try_from(f.reason) {
        Ok(FinishReason::Stop) => {}
        Ok(FinishReason::Length) => eprintln!("(reply cut short: token limit reached)"),
        Ok(FinishReason::Cancelled) => anyhow::bail!("the server cancelled the reply"),
        Ok(FinishReason::Error) => anyhow::bail!("generation failed: {}", f.error),
        _ => anyhow::bail!("unknown finish reason {}", f.reason),
    }
    Ok(text)
}
