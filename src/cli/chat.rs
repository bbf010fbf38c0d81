//! `veil chat`: an interactive terminal chat against a running Veil server.
//!
//! Reads one user message per line from stdin, keeps the conversation, sends it whole on each
//! turn as a `ChatInput` and streams the reply's text to stdout as it arrives. `/reset` starts
//! a new conversation, `/exit` (or end of input) quits. Works with piped stdin as well as a
//! terminal; prompts and notices go to stderr, only replies to stdout.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic::transport::{Channel, Endpoint};
use veil_proto::v1::generate_request::Input;
use veil_proto::v1::generate_response::Event;
use veil_proto::v1::inference_client::InferenceClient;
use veil_proto::v1::{
    ChatInput, ChatMessage, FinishReason, GenerateRequest, GenerationParams, ModelInfoRequest,
};

/// The server address used when `--server` is not given.
pub(super) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Arguments of `veil chat`.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// The server: URL or HOST:PORT.
    #[arg(long, default_value = DEFAULT_SERVER, env = "VEIL_SERVER")]
    server: String,
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

/// `http://HOST:PORT` for a bare `HOST:PORT`; URLs are kept as they are.
pub(super) fn server_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// Connects to a Veil server.
pub(super) async fn connect(server: &str) -> anyhow::Result<InferenceClient<Channel>> {
    let url = server_url(server);
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid server address {server:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the Veil server at {url} (is `veil serve` running?)"))?;
    Ok(InferenceClient::new(channel))
}

/// A readable description of a failed call.
pub(super) fn status_error(s: &tonic::Status) -> String {
    let msg = s.message();
    match s.code() {
        tonic::Code::Unavailable => format!("server unavailable: {msg}"),
        code if msg.is_empty() => format!("server returned {code:?}"),
        code => format!("server returned {code:?}: {msg}"),
    }
}

pub(crate) fn run(a: ChatArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut client = rt.block_on(connect(&a.server))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        let info = rt
            .block_on(client.model_info(ModelInfoRequest {}))
            .map_err(|s| anyhow::anyhow!(status_error(&s)))?
            .into_inner();
        eprintln!(
            "connected to {} ({}, {}, {}); /reset starts over, /exit quits",
            server_url(&a.server),
            info.name,
            info.dtype,
            info.backend
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
        match rt.block_on(reply(&mut client, &history, &a)) {
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
async fn reply(
    client: &mut InferenceClient<Channel>,
    history: &[ChatMessage],
    a: &ChatArgs,
) -> anyhow::Result<String> {
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
    let mut stream = client
        .generate(req)
        .await
        .map_err(|s| anyhow::anyhow!(status_error(&s)))?
        .into_inner();
    let stdout = std::io::stdout();
    let mut text = String::new();
    let mut finished = None;
    let result = loop {
        match stream.message().await {
            Ok(Some(msg)) => match msg.event {
                Some(Event::Delta(d)) if !d.text.is_empty() => {
                    let mut out = stdout.lock();
                    out.write_all(d.text.as_bytes())
                        .and_then(|()| out.flush())
                        .context("writing to stdout")?;
                    text.push_str(&d.text);
                }
                Some(Event::Finished(f)) => finished = Some(f),
                _ => {}
            },
            Ok(None) => break Ok(()),
            Err(s) => break Err(anyhow::anyhow!(status_error(&s))),
        }
    };
    // End the reply's line even when it failed half-way.
    {
        let mut out = stdout.lock();
        out.write_all(b"\n")
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
    }
    result?;
    let f = finished.context("the reply ended without its final message")?;
    match FinishReason::try_from(f.reason) {
        Ok(FinishReason::Stop) => {}
        Ok(FinishReason::Length) => eprintln!("(reply cut short: token limit reached)"),
        Ok(FinishReason::Cancelled) => anyhow::bail!("the server cancelled the reply"),
        Ok(FinishReason::Error) => anyhow::bail!("generation failed: {}", f.error),
        _ => anyhow::bail!("unknown finish reason {}", f.reason),
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(server_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(server_url("http://h:1"), "http://h:1");
        assert_eq!(server_url("https://h:1"), "https://h:1");
    }

    #[test]
    fn status_messages() {
        let s = tonic::Status::invalid_argument("params.top_p: must be in (0, 1]");
        assert_eq!(
            status_error(&s),
            "server returned InvalidArgument: params.top_p: must be in (0, 1]"
        );
        assert!(status_error(&tonic::Status::unavailable("down")).starts_with("server unavailable"));
    }
}
