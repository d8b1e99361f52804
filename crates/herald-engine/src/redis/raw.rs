//! A plain RESP2 connection of a group task's own, for the reads that carry events
//! (`XREADGROUP`), or of the publish path's (`publish.rs`): replies come back as their bytes,
//! not as redis-rs `Value` trees, and a publish writes each batch of commands as soon as it is
//! encoded ([`RawWriter::send`]) rather than handing it to redis-rs's connection task.
//!
//! Why: on the consume path redis-rs's parser (built on `combine`) and the tree it builds — a
//! `Vec` per entry and per field list, a `Vec<u8>` per id, name and event — were about a third
//! of the Herald process's profile, for replies of which Herald keeps only each entry's id and
//! the event's JSON. Here a reply is one buffer: [`frame_len`] finds where it ends by skipping
//! bulk strings by their length (the JSON is never scanned), and `decode.rs` walks it, each
//! event's JSON a slice of that buffer (no copy).
//!
//! Only a standalone Redis over TCP or a Unix socket gets one (a Cluster routes by slot:
//! redis-rs's cluster connection keeps doing it). Commands are packed by redis-rs (`Cmd`);
//! the handshake is `AUTH` and `SELECT` as the URL asks. A failed or timed-out exchange drops
//! the connection: the next read opens a new one.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{Cmd, ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// How many bytes a read from the socket asks for at least: a read of 1,000 events is about
/// 300 KiB, so a few reads bring it in.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The largest element count or bulk length accepted in a reply header: more is a broken
/// stream, not a reply (Redis's own bulk limit is 512 MiB).
const REPLY_LENGTH_MAX: i64 = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RawError {
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis protocol: {0}")]
    Protocol(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis refused the handshake: {0}")]
    Handshake(String),
}

trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

pub(crate) struct RawConnection {
    io: Box<dyn Io>,
    /// Bytes read and not yet handed out as replies.
    buffer: BytesMut,
    response_timeout: Duration,
}

impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawConnection")
    }
}

/// One reply: its whole RESP frame, or the text of an error reply.
pub(crate) type RawReply = Result<Bytes, String>;

impl RawConnection {
    /// Connects as `info` says, under `name` (`CLIENT SETNAME`: what `CLIENT LIST` shows
    /// operators); `None` for an address this connection does not speak (TLS).
    pub async fn connect(
        info: &ConnectionInfo,
        name: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Option<RawConnection>, RawError> {
        let connecting = async {
            let io: Box<dyn Io> = match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                #[cfg(unix)]
                ConnectionAddr::Unix(path) => {
                    Box::new(tokio::net::UnixStream::connect(path).await?)
                }
                _ => return Ok(None),
            };
            Ok::<_, RawError>(Some(io))
        };
        let io = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| RawError::Timeout(connect_timeout))??;
        let Some(io) = io else { return Ok(None) };
        let mut connection = RawConnection {
            io,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            response_timeout,
        };
        let settings = info.redis_settings();
        let mut handshake = Vec::new();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            handshake.push(auth);
        }
        if settings.db() != 0 {
            let mut select = redis::cmd("SELECT");
            select.arg(settings.db());
            handshake.push(select);
        }
        let mut set_name = redis::cmd("CLIENT");
        set_name.arg("SETNAME").arg(name);
        handshake.push(set_name);
        for reply in connection.pipeline(&handshake).await? {
            reply.map_err(RawError::Handshake)?;
        }
        Ok(Some(connection))
    }

    /// Sends `commands` in one write and reads their replies, in order.
    pub async fn pipeline(&mut self, commands: &[Cmd]) -> Result<Vec<RawReply>, RawError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = self.response_timeout;
        tokio::time::timeout(timeout, self.exchange(commands))
            .await
            .map_err(|_| RawError::Timeout(timeout))?
    }

    async fn exchange(&mut self, commands: &[Cmd]) -> Result<Vec<RawReply>, RawError> {
        let mut packed = Vec::new();
        for command in commands {
            command.write_packed_command(&mut packed);
        }
        self.write(&packed).await?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    async fn write(&mut self, packed: &[u8]) -> Result<(), RawError> {
        self.io.write_all(packed).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<RawReply, RawError> {
        read_reply(&mut self.io, &mut self.buffer).await
    }

    /// The connection as a side that writes and a side that reads, for a task of each
    /// (`publish_connection.rs`): one writes the next batch of commands while the other waits for
    /// the replies to those before.
    pub fn into_split(self) -> (RawWriter, RawReader) {
        let (read, write) = tokio::io::split(self.io);
        (
            RawWriter {
                io: write,
                response_timeout: self.response_timeout,
            },
            RawReader {
                io: read,
                buffer: self.buffer,
                response_timeout: self.response_timeout,
            },
        )
    }
}

/// The writing side of a [`RawConnection`] ([`RawConnection::into_split`]).
pub(crate) struct RawWriter {
    io: WriteHalf<Box<dyn Io>>,
    response_timeout: Duration,
}

impl RawWriter {
    /// Writes packed commands and returns without waiting for their replies, so that Redis
    /// runs them while the next are prepared ([`RawReader::replies`] reads them, in order). An
    /// error leaves the connection unusable.
    pub async fn send(&mut self, packed: &[u8]) -> Result<(), RawError> {
        let timeout = self.response_timeout;
        let writing = async {
            self.io.write_all(packed).await?;
            self.io.flush().await
        };
        tokio::time::timeout(timeout, writing)
            .await
            .map_err(|_| RawError::Timeout(timeout))?
            .map_err(RawError::Io)
    }
}

/// The reading side of a [`RawConnection`] ([`RawConnection::into_split`]).
pub(crate) struct RawReader {
    io: ReadHalf<Box<dyn Io>>,
    buffer: BytesMut,
    response_timeout: Duration,
}

impl RawReader {
    /// The next `count` replies to what was sent. An error leaves the connection unusable.
    pub async fn replies(&mut self, count: usize) -> Result<Vec<RawReply>, RawError> {
        let timeout = self.response_timeout;
        let reading = async {
            let mut replies = Vec::with_capacity(count);
            while replies.len() < count {
                replies.push(read_reply(&mut self.io, &mut self.buffer).await?);
            }
            Ok(replies)
        };
        tokio::time::timeout(timeout, reading)
            .await
            .map_err(|_| RawError::Timeout(timeout))?
    }
}

/// The next reply from `io`, `buffer` holding what was read past the last.
async fn read_reply(
    io: &mut (impl AsyncRead + Unpin),
    buffer: &mut BytesMut,
) -> Result<RawReply, RawError> {
    let mut framing = Framing::default();
    loop {
        if let Some(len) = framing.advance(buffer)? {
            let frame = buffer.split_to(len).freeze();
            return Ok(match frame.first() {
                Some(b'-') => Err(String::from_utf8_lossy(line_of(&frame)).into_owned()),
                _ => Ok(frame),
            });
        }
        buffer.reserve(READ_CHUNK_BYTES);
        if io.read_buf(buffer).await? == 0 {
            return Err(RawError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// The text of a simple reply (`+…`, `-…`, `:…`) without its type byte and CRLF.
fn line_of(frame: &[u8]) -> &[u8] {
    frame
        .get(1..frame.len().saturating_sub(2))
        .unwrap_or_default()
}

/// The length of the first whole RESP2 reply in `buffer`, `None` while it is incomplete.
/// Bulk strings are skipped by their length, so their contents are never scanned.
#[cfg(test)]
pub(crate) fn frame_len(buffer: &[u8]) -> Result<Option<usize>, RawError> {
    Framing::default().advance(buffer)
}

/// How far the reply at the start of a buffer has been framed: kept between reads, so that a
/// reply arriving in many reads is scanned once, not from its start after each (a read of a
/// thousand events comes in several; rescanning cost two thirds of what decoding it did).
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Where the next element starts.
    at: usize,
    /// Elements still to be read, the next one included; 0 before the reply's first.
    pending: u64,
}

impl Framing {
    /// The length of the first whole reply in `buffer` (which holds what it held at the last
    /// call, and maybe more), `None` while it is incomplete. Once it returns a length it starts
    /// over, for a buffer that begins where that reply ended.
    pub(crate) fn advance(&mut self, buffer: &[u8]) -> Result<Option<usize>, RawError> {
        if self.pending == 0 {
            *self = Framing { at: 0, pending: 1 };
        }
        while self.pending > 0 {
            let Some(Header { kind, line, next }) = header(buffer, self.at)? else {
                return Ok(None);
            };
            let mut at = next;
            let mut children = 0;
            match kind {
                b'+' | b'-' | b':' => {}
                b'$' => {
                    let len = length(line)?;
                    if len >= 0 {
                        let end = at + len as usize + 2;
                        if end > buffer.len() {
                            return Ok(None);
                        }
                        at = end;
                    }
                }
                b'*' => children = length(line)?.max(0) as u64,
                other => {
                    return Err(RawError::Protocol(format!(
                        "unexpected reply type {:?}",
                        other as char
                    )));
                }
            }
            // The element is whole: step past it.
            self.at = at;
            self.pending = self.pending - 1 + children;
        }
        Ok(Some(std::mem::take(self).at))
    }
}

/// One header line of a RESP2 reply.
pub(crate) struct Header<'a> {
    /// The type byte (`*`, `$`, `+`, `-`, `:`).
    pub kind: u8,
    /// The rest of the line, without its CRLF.
    pub line: &'a [u8],
    /// Where the next header (or a bulk string's bytes) starts.
    pub next: usize,
}

/// The header at `at`; `None` when its line is not all in `buffer` yet.
pub(crate) fn header(buffer: &[u8], at: usize) -> Result<Option<Header<'_>>, RawError> {
    let Some(&kind) = buffer.get(at) else {
        return Ok(None);
    };
    let rest = buffer.get(at + 1..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&byte| byte == b'\r') else {
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(Header {
            kind,
            line: &rest[..cr],
            next: at + 1 + cr + 2,
        })),
        Some(_) => Err(RawError::Protocol("a line without CRLF".to_owned())),
    }
}

/// A header's length (`*<n>`, `$<n>`; `-1` for nil). Read digit by digit: every element of a
/// reply has one, read twice (framing, then decoding), and `str::parse` cost ten times more.
pub(crate) fn length(line: &[u8]) -> Result<i64, RawError> {
    let bad = || RawError::Protocol(format!("bad length {:?}", String::from_utf8_lossy(line)));
    match line {
        b"-1" => return Ok(-1),
        [] => return Err(bad()),
        _ => {}
    }
    let mut len: i64 = 0;
    for &byte in line {
        if !byte.is_ascii_digit() {
            return Err(bad());
        }
        len = len * 10 + i64::from(byte - b'0');
        if len > REPLY_LENGTH_MAX {
            return Err(bad());
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_where_the_reply_does() {
        let reply =
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n0-1\r\n*2\r\n$1\r\ne\r\n$4\r\n{\r\n}\r\n";
        assert_eq!(frame_len(reply).unwrap(), Some(reply.len()));
        for cut in 0..reply.len() {
            assert_eq!(frame_len(&reply[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut two = reply.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(frame_len(&two).unwrap(), Some(reply.len()));
    }

    #[test]
    fn simple_nil_and_error_replies_are_frames() {
        assert_eq!(frame_len(b"+OK\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"-NOGROUP no\r\n").unwrap(), Some(13));
        assert_eq!(frame_len(b":12\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"*-1\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"$-1\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"*0\r\n").unwrap(), Some(4));
        assert_eq!(line_of(b"-NOGROUP no\r\n"), b"NOGROUP no");
    }

    /// A RESP2 reply tree, as Redis could send it.
    #[derive(Debug, Clone)]
    enum Reply {
        Simple(String),
        Error(String),
        Integer(i64),
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Reply>>),
    }

    fn encode(reply: &Reply, out: &mut Vec<u8>) {
        match reply {
            Reply::Simple(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
            Reply::Error(text) => out.extend_from_slice(format!("-{text}\r\n").as_bytes()),
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(bytes)) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(items)) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    encode(item, out);
                }
            }
        }
    }

    fn reply() -> impl proptest::strategy::Strategy<Value = Reply> {
        use proptest::prelude::*;
        let line = "[a-zA-Z0-9 _-]{0,12}";
        let leaf = prop_oneof![
            line.prop_map(Reply::Simple),
            line.prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Integer),
            // Bulk strings may hold CRLF and anything else: they are skipped by length.
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(Reply::Bulk),
            Just(Reply::Array(None)),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(|items| Reply::Array(Some(items)))
        })
    }

    proptest::proptest! {
        #[test]
        fn a_reply_is_framed_whole_and_never_before_it_is_complete(
            first in reply(),
            second in reply(),
        ) {
            let mut bytes = Vec::new();
            encode(&first, &mut bytes);
            let first_len = bytes.len();
            encode(&second, &mut bytes);
            proptest::prop_assert_eq!(frame_len(&bytes).unwrap(), Some(first_len));
            for cut in 0..first_len {
                proptest::prop_assert_eq!(frame_len(&bytes[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn a_reply_read_in_pieces_is_framed_as_when_read_whole(
            first in reply(),
            second in reply(),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut bytes = Vec::new();
            encode(&first, &mut bytes);
            let first_len = bytes.len();
            encode(&second, &mut bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&cut| cut < bytes.len()).collect();
            cuts.sort_unstable();
            let mut framing = Framing::default();
            for cut in cuts {
                let framed = framing.advance(&bytes[..cut]).unwrap();
                let expect = (cut >= first_len).then_some(first_len);
                proptest::prop_assert_eq!(framed, expect);
                if framed.is_some() {
                    return Ok(());
                }
            }
            proptest::prop_assert_eq!(framing.advance(&bytes).unwrap(), Some(first_len));
            // Started over: the second reply, once the first is split off.
            proptest::prop_assert_eq!(
                framing.advance(&bytes[first_len..]).unwrap(),
                Some(bytes.len() - first_len)
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overrun(bytes in proptest::collection::vec(
            proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(Some(len)) = frame_len(&bytes) {
                proptest::prop_assert!(len <= bytes.len());
            }
        }
    }

    #[test]
    fn lengths_are_decimal_from_minus_one_to_the_maximum() {
        let check = |line: &[u8], expect: Option<i64>| {
            assert_eq!(
                length(line).ok(),
                expect,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        };
        check(b"0", Some(0));
        check(b"-1", Some(-1));
        check(b"12", Some(12));
        check(b"007", Some(7));
        check(b"536870912", Some(REPLY_LENGTH_MAX));
        check(b"536870913", None);
        check(b"99999999999999999999999", None);
        check(b"", None);
        check(b"-", None);
        check(b"-2", None);
        check(b"+3", None);
        check(b"1 ", None);
        check(b"x", None);
    }

    #[test]
    fn broken_streams_are_refused() {
        assert!(frame_len(b"!3\r\nabc\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
        assert!(frame_len(b"*-2\r\n").is_err());
        assert!(frame_len(b"+OK\rX").is_err());
    }
}
