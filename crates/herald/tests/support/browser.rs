//! A browser's Socket.IO socket over WebSocket, spoken by hand: the Engine.IO v4 / Socket.IO v5
//! packets a browser needs (open, connect with a token, ping/pong, events, acks), as
//! `herald bench socketio` does. The stock socket.io-client is exercised by tests/node; this
//! one lets Rust tests put sockets beside `/v1/ws` connections and killed processes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Server, WAIT};

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// Emits waiting for their ack, by ack id.
type Acks = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A browser token (HS256) for `sub`, with `herald` as its audience and `grants` as its
/// `herald` claim.
pub fn browser_token(secret: &str, sub: &str, grants: Value) -> String {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let claims = json!({"sub": sub, "aud": "herald", "exp": exp, "herald": grants});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// One event a socket received: its name and its `(data, meta)`.
#[derive(Clone, Debug)]
pub struct Received {
    pub event: String,
    pub data: Value,
    pub meta: Value,
}

/// A connected socket; a task answers pings and collects events and acks.
pub struct BrowserSocket {
    sink: Arc<tokio::sync::Mutex<Sink>>,
    events: mpsc::UnboundedReceiver<Received>,
    acks: Acks,
    next_ack: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for BrowserSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl BrowserSocket {
    /// Connects to `server` with `token`; fails the test unless the gateway accepts it.
    pub async fn connect(server: &Server, token: &str) -> BrowserSocket {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let (sink, mut stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let acks: Acks = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel();
        let connect = format!("40{}", json!({ "token": token }));
        let reader = tokio::spawn({
            let (sink, acks) = (sink.clone(), acks.clone());
            async move {
                let mut connected_tx = Some(connected_tx);
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let text = text.as_str();
                    let send = |packet: String| {
                        let sink = sink.clone();
                        async move { sink.lock().await.send(Message::text(packet)).await }
                    };
                    if text.starts_with('0') {
                        if send(connect.clone()).await.is_err() {
                            return;
                        }
                    } else if text == "2" {
                        if send("3".to_owned()).await.is_err() {
                            return;
                        }
                    } else if let Some(answer) = text.strip_prefix("40") {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Ok(answer.to_owned()));
                        }
                    } else if let Some(error) = text.strip_prefix("44") {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Err(error.to_owned()));
                        }
                    } else if let Some(packet) = text.strip_prefix("42") {
                        let args: Vec<Value> = serde_json::from_str(packet).unwrap();
                        let _ = events_tx.send(Received {
                            event: args[0].as_str().unwrap().to_owned(),
                            data: args.get(1).cloned().unwrap_or(Value::Null),
                            meta: args.get(2).cloned().unwrap_or(Value::Null),
                        });
                    } else if let Some(packet) = text.strip_prefix("43") {
                        let split = packet.find('[').unwrap();
                        let id: u64 = packet[..split].parse().unwrap();
                        let mut args: Vec<Value> = serde_json::from_str(&packet[split..]).unwrap();
                        if let Some(tx) = acks.lock().unwrap().remove(&id) {
                            let _ = tx.send(args.swap_remove(0));
                        }
                    }
                }
            }
        });
        let answer = tokio::time::timeout(WAIT, connected)
            .await
            .expect("the socket connects in time")
            .expect("the connection stays open");
        if let Err(error) = answer {
            panic!("connect_error: {error}");
        }
        BrowserSocket {
            sink,
            events,
            acks,
            next_ack: 1,
            reader,
        }
    }

    /// Emits `event` with `arg` and returns the ack's answer (`{ok}` or `{error}`).
    pub async fn request(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        let packet = format!("42{id}{}", json!([event, arg]));
        self.sink
            .lock()
            .await
            .send(Message::text(packet))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("an ack in time")
            .expect("the socket is open")
    }

    /// The next event received; fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("the socket is open")
    }

    /// The next event if one arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}
