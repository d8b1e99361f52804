//! A bench connection: raw `/v1/ws` frames over tokio-tungstenite.

use anyhow::{Context, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::Target;
use herald_protocol::ws::WS_READ_BUFFER_BYTES;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
pub type Source = SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>;

/// Connects and reads the `welcome` frame.
pub async fn connect(target: &Target) -> anyhow::Result<(Sink, Source)> {
    let mut request = target.ws_url.as_str().into_client_request()?;
    if let Some(token) = &target.token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    // Nagle off: small frames go out at once, as a latency-sensitive client would send them.
    let (stream, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(read_buffer_config()), true)
            .await
            .with_context(|| format!("connecting to {}", target.ws_url))?;
    let (sink, mut source) = stream.split();
    let welcome = next_frame(&mut source).await?;
    if welcome["op"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok((sink, source))
}

/// The next text frame as JSON; errors if the server sent an `error` frame.
pub async fn next_frame(source: &mut Source) -> anyhow::Result<Value> {
    loop {
        let message = source
            .next()
            .await
            .context("the server closed the connection")??;
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["op"] == "error" {
                    bail!("server error: {}", frame["error"]);
                }
                return Ok(frame);
            }
            Message::Close(close) => bail!("the server closed the connection: {close:?}"),
            _ => continue,
        }
    }
}

/// The next `puback`, counted without decoding it into a tree (the bench client shares the
/// machine with the server; it should spend as little of it as it can).
pub async fn next_puback(source: &mut Source) -> anyhow::Result<u64> {
    loop {
        let message = source
            .next()
            .await
            .context("the server closed the connection")??;
        match message {
            Message::Text(text) if text.starts_with(r#"{"op":"puback""#) => {
                return Ok(text.matches(r#""duplicate":"#).count() as u64);
            }
            Message::Text(text) => bail!("expected puback, got {text}"),
            Message::Close(close) => bail!("the server closed the connection: {close:?}"),
            _ => continue,
        }
    }
}

/// Deliveries acked in one `ack` frame at most.
pub const ACK_BATCH_MAX: usize = 1000;

/// Acks `ids` of subscription `sid` in one frame, if there are any, and empties `ids`
/// (keeping its memory); returns how many were acked.
pub async fn send_acks(sink: &mut Sink, sid: u64, ids: &mut Vec<u64>) -> anyhow::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ack = serde_json::json!({"op": "ack", "sid": sid, "deliveryIds": ids});
    let count = ids.len() as u64;
    ids.clear();
    sink.send(text(ack.to_string())).await?;
    Ok(count)
}

pub fn text(frame: String) -> Message {
    Message::Text(frame.into())
}

/// A `pub` frame of `count` events of `kind`, each with a payload of about `data_bytes`.
pub fn pub_frame(rid: u64, kind: &str, count: usize, data_bytes: usize) -> String {
    let padding = "x".repeat(data_bytes.saturating_sub(24));
    let event = format!(r#"{{"type":"{kind}","data":{{"pad":"{padding}"}}}}"#);
    let mut frame = format!(r#"{{"op":"pub","rid":{rid},"events":["#);
    for i in 0..count {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(&event);
    }
    frame.push_str("]}");
    frame
}

/// `pub` frames of `count` events each carrying an id of its own (`<run>-<frame>-<i>`, unique
/// per frame name and event), so that every event is a new one to publish dedupe.
#[derive(Clone)]
pub struct PubFrames {
    /// The events' JSON after their id.
    rest: std::sync::Arc<str>,
    run: std::sync::Arc<str>,
    count: usize,
}

impl PubFrames {
    pub fn new(kind: &str, count: usize, data_bytes: usize) -> PubFrames {
        let padding = "x".repeat(data_bytes.saturating_sub(24));
        PubFrames {
            rest: format!(r#"","type":"{kind}","data":{{"pad":"{padding}"}}}}"#).into(),
            run: super::run_id().into(),
            count,
        }
    }

    /// The frame named `name` (unique among the frames of this run).
    pub fn frame(&self, name: &str) -> String {
        let mut frame = String::with_capacity(32 + self.count * (self.rest.len() + 48));
        frame.push_str(r#"{"op":"pub","rid":1,"events":["#);
        for i in 0..self.count {
            if i > 0 {
                frame.push(',');
            }
            frame.push_str(r#"{"id":""#);
            frame.push_str(&self.run);
            frame.push('-');
            frame.push_str(name);
            frame.push('-');
            frame.push_str(&i.to_string());
            frame.push_str(&self.rest);
        }
        frame.push_str("]}");
        frame
    }
}

/// Sends a `sub` frame and waits for `subscribed`; returns the sid.
pub async fn subscribe(sink: &mut Sink, source: &mut Source, sub: Value) -> anyhow::Result<u64> {
    let mut frame = sub;
    frame["op"] = "sub".into();
    frame["rid"] = 1.into();
    sink.send(text(frame.to_string())).await?;
    loop {
        let answer = next_frame(source).await?;
        if answer["op"] == "subscribed" {
            return answer["sid"].as_u64().context("subscribed without sid");
        }
    }
}

/// Reads of [`WS_READ_BUFFER_BYTES`]: tungstenite zero-fills its whole read size before each read.
fn read_buffer_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER_BYTES)
}
