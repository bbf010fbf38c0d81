//! A `veil serve` child process for end-to-end tests, killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use veil_proto::v1::inference_client::InferenceClient;

/// A running `veil serve`.
pub struct Server {
    pub child: Child,
    /// The gRPC address, `HOST:PORT`.
    pub addr: String,
    /// The metrics address, `HOST:PORT`, when `--metrics-listen` was given.
    pub metrics_addr: Option<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `veil serve` on the default model (f32, 2 threads, 512 MiB of KV cache) on free
    /// gRPC and metrics ports, with `extra` arguments, and waits until it listens.
    pub fn start(extra: &[&str]) -> Server {
        let mut args: Vec<String> = [
            "--metrics-listen",
            "127.0.0.1:0",
            "--dtype",
            "f32",
            "--threads",
            "2",
            "--kv-cache-mb",
            "512",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::spawn(&args)
    }

    /// Starts `veil serve --listen 127.0.0.1:0 --model DEFAULT ARGS...` and waits until it
    /// prints `listening on ADDR`; panics with its log if it exits or takes over 5 minutes.
    pub fn spawn(args: &[String]) -> Server {
        match Server::try_spawn(args) {
            Ok(s) => s,
            Err(log) => panic!("the server did not start:\n{log}"),
        }
    }

    /// As [`Server::spawn`], but a server that exits before listening gives its log.
    pub fn try_spawn(args: &[String]) -> Result<Server, String> {
        Server::try_spawn_logging(args, "info")
    }

    /// As [`Server::try_spawn`] with `VEIL_LOG=filter`; stdout is captured into the log too.
    pub fn try_spawn_logging(args: &[String], filter: &str) -> Result<Server, String> {
        Server::try_spawn_with(args, filter, |_| {})
    }

    /// As [`Server::try_spawn_logging`], with `configure` adjusting the command (environment,
    /// limits) before it starts.
    pub fn try_spawn_with(
        args: &[String],
        filter: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Server, String> {
        Server::try_spawn_model(&super::model_dir(), args, filter, configure)
    }

    /// As [`Server::try_spawn_with`], serving the model directory `model`.
    pub fn try_spawn_model(
        model: &std::path::Path,
        args: &[String],
        filter: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Server, String> {
        Server::try_spawn_listening(model, "127.0.0.1:0", args, filter, configure)
    }

    /// As [`Server::start`], listening on `listen` (`HOST:PORT`).
    pub fn start_at(listen: &str, extra: &[&str]) -> Server {
        let mut args: Vec<String> = [
            "--metrics-listen",
            "127.0.0.1:0",
            "--dtype",
            "f32",
            "--threads",
            "2",
            "--kv-cache-mb",
            "512",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        match Server::try_spawn_listening(&super::model_dir(), listen, &args, "info", |_| {}) {
            Ok(s) => s,
            Err(log) => panic!("the server did not start:\n{log}"),
        }
    }

    /// As [`Server::try_spawn_model`], listening on `listen` (`HOST:PORT`).
    pub fn try_spawn_listening(
        model: &std::path::Path,
        listen: &str,
        args: &[String],
        filter: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil"));
        cmd.args(["serve", "--listen", listen, "--model"])
            .arg(model)
            .args(args)
            .env("VEIL_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("start veil serve");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(String::new()));
        let log_out = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut l = log_out.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(("grpc", a.trim().to_owned()));
                }
                if let Some(a) = line.strip_prefix("metrics on http://") {
                    let _ = tx.send(("metrics", a.trim_end_matches("/metrics").to_owned()));
                }
                let mut l = log2.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
            // The stream closed: the server exited.
            let _ = tx.send(("exit", String::new()));
        });
        let (mut addr, mut metrics_addr) = (None, None);
        let t = Instant::now();
        while addr.is_none() {
            let left = Duration::from_secs(300).saturating_sub(t.elapsed());
            match rx.recv_timeout(left) {
                Ok(("grpc", a)) => addr = Some(a),
                Ok(("metrics", a)) => metrics_addr = Some(a),
                Ok(_) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(log.lock().expect("log").clone());
                }
            }
        }
        Ok(Server {
            child,
            addr: addr.expect("address"),
            metrics_addr,
            log,
        })
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    /// GET `path` on the metrics address: (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let addr = self.metrics_addr.as_ref().expect("started with --metrics-listen");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
        (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        body
    }

    /// The value of an unlabelled or fully labelled sample, e.g. `veil_kv_blocks_used`.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
            .parse()
            .expect("a number")
    }

    /// Waits until `sample` satisfies `ok`, for up to `limit`.
    pub fn wait_metric(&self, sample: &str, limit: Duration, ok: impl Fn(f64) -> bool) {
        let t = Instant::now();
        loop {
            let v = self.metric(sample);
            if ok(v) {
                return;
            }
            assert!(t.elapsed() < limit, "{sample} stuck at {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(t.elapsed() < limit, "the server did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory (VmRSS) in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
