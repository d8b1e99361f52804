//! Test support: the real `herald` binary as a child process, and small HTTP and WebSocket
//! helpers that speak the wire protocol directly (so these tests check the server, not a client).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected thing before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// A `herald serve` child process. Killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `herald serve` on a free loopback port with `data_dir` and `extra` arguments, and
    /// waits for its banner.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_on("127.0.0.1:0", data_dir, extra, env)
    }

    /// As [`Server::start_with_env`], listening on `listen` (such as `0.0.0.0:0`).
    pub fn start_on(listen: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("serve")
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("herald serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(rest.trim().parse::<SocketAddr>().unwrap());
                }
                log_writer.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("herald serve did not start: {:?}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    /// Runs the `herald` CLI against this server (`HERALD_URL`), with `token` as
    /// `HERALD_TOKEN` or none at all, and returns what it did.
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command.args(args).env("HERALD_URL", self.url());
        match token {
            Some(token) => command.env("HERALD_TOKEN", token),
            None => command.env_remove("HERALD_TOKEN"),
        };
        command.output().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// SIGKILL: no drain, no fsync beyond what the policy already did.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "herald did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// Sends a request and returns the status and the JSON body (Null when empty).
pub async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, body)
}

/// A raw `/v1/ws` connection.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    /// Frames read while waiting for an answer, handed out by `recv` first.
    queued: std::collections::VecDeque<Value>,
}

impl Ws {
    pub async fn connect(server: &Server) -> Ws {
        Ws::connect_with_token(server, None).await
    }

    pub async fn connect_with_token(server: &Server, token: Option<&str>) -> Ws {
        match Ws::try_connect(&server.ws_url(), token).await {
            Ok(ws) => ws,
            Err((status, body)) => panic!("upgrade refused: {status} {body}"),
        }
    }

    /// Connects to `url` (`server.ws_url()`, perhaps with `?token=`), with `token` as a bearer
    /// header if given; a refused upgrade is its HTTP status and JSON body.
    pub async fn try_connect(url: &str, token: Option<&str>) -> Result<Ws, (u16, Value)> {
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let stream = match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => stream,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|bytes| serde_json::from_slice(bytes).ok())
                    .unwrap_or(Value::Null);
                return Err((status, body));
            }
            Err(error) => panic!("connecting to {url}: {error}"),
        };
        let mut ws = Ws {
            stream,
            welcome: Value::Null,
            queued: Default::default(),
        };
        ws.welcome = ws.recv().await;
        assert_eq!(ws.welcome["op"], "welcome", "{}", ws.welcome);
        Ok(ws)
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next text frame as JSON (queued ones first); fails the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.queued.pop_front() {
            return frame;
        }
        self.recv_from_socket().await
    }

    async fn recv_from_socket(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame within the wait")
                .expect("the connection is open")
                .expect("a well-formed frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Sends `frame`; false when the connection is gone (for tests that kill the server).
    pub async fn try_send(&mut self, frame: Value) -> bool {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_ok()
    }

    /// The next text frame as JSON (queued ones first), or None once the connection is closed
    /// or broken; fails the test after [`WAIT`].
    pub async fn try_recv(&mut self) -> Option<Value> {
        if let Some(frame) = self.queued.pop_front() {
            return Some(frame);
        }
        loop {
            match self.recv_message().await? {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next message of any kind, or None when the connection ended.
    pub async fn recv_message(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("a message within the wait")
            .and_then(Result::ok)
    }

    /// Sends `frame` and returns the answer carrying its `rid` (frames for others in between,
    /// such as events, are returned in `others`).
    pub async fn request(&mut self, frame: Value) -> (Value, Vec<Value>) {
        let rid = frame["rid"].clone();
        self.send(frame).await;
        let mut others = Vec::new();
        loop {
            let answer = self.recv().await;
            if answer["rid"] == rid && answer["op"] != "event" {
                return (answer, others);
            }
            others.push(answer);
        }
    }

    /// Sends `frame` and returns the answer carrying its `rid`; frames that arrive first (such
    /// as events) stay queued for `recv`.
    pub async fn ask(&mut self, frame: Value) -> Value {
        let rid = frame["rid"].clone();
        self.send(frame).await;
        loop {
            let frame = self.recv_from_socket().await;
            if frame["rid"] == rid && frame["op"] != "event" {
                return frame;
            }
            self.queued.push_back(frame);
        }
    }

    pub async fn publish(&mut self, rid: u64, events: Value) -> Value {
        self.ask(serde_json::json!({"op": "pub", "rid": rid, "events": events}))
            .await
    }

    /// Subscribes and returns the sid.
    pub async fn subscribe(&mut self, rid: u64, sub: Value) -> u64 {
        let mut frame = sub;
        frame["op"] = "sub".into();
        frame["rid"] = rid.into();
        let answer = self.ask(frame).await;
        assert_eq!(answer["op"], "subscribed", "{answer}");
        answer["sid"].as_u64().unwrap()
    }

    /// The next `event` frame (other frames are skipped and returned).
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] == "event" {
                return frame;
            }
        }
    }
}
