//! Client configuration. Defaults follow seed 004's client (`http://localhost:3003`, 3 retries,
//! a 5 s timeout) so that `ClientOptions::new(url)` is all most services need.

use std::time::Duration;

use crate::error::{Error, Result};

pub const URL_DEFAULT: &str = "http://127.0.0.1:3003";
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
pub const MAX_RETRIES_DEFAULT: u32 = 3;
/// Publishes (events) held while the connection is down before `publish` fails fast.
pub const PUBLISH_BUFFER_EVENTS_DEFAULT: usize = 10_000;
/// Events per `pub` frame when the client merges concurrent publishes.
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 1_000;
pub const RECONNECT_DELAY_INITIAL_DEFAULT: Duration = Duration::from_millis(100);
pub const RECONNECT_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(10);
/// Events a live subscription holds for a slow reader before the client drops it; the
/// server's own live buffer is the same size.
pub const LIVE_BUFFER_EVENTS_DEFAULT: usize = 1024;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `http://host:port` of the server; the WebSocket URL is derived from it.
    pub url: String,
    /// Set as `source` on published events that have none. With auth on, the server sets
    /// `source` to the token's name whatever the client says.
    pub service_name: Option<String>,
    /// A service token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// How long any one request (publish, subscribe, verb with an answer, HTTP call) may take.
    pub timeout: Duration,
    /// Retries of an HTTP read after a transport error, and of the first connection.
    pub max_retries: u32,
    pub publish_buffer_events: usize,
    /// How long a publish waits for others to share its frame. Zero (the default) still merges
    /// publishes that queue up while a frame is being written, so batching costs no latency.
    pub linger: Duration,
    pub batch_events_max: usize,
    pub reconnect_delay_initial: Duration,
    pub reconnect_delay_max: Duration,
    pub live_buffer_events: usize,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            url: URL_DEFAULT.to_owned(),
            service_name: None,
            token: None,
            timeout: TIMEOUT_DEFAULT,
            max_retries: MAX_RETRIES_DEFAULT,
            publish_buffer_events: PUBLISH_BUFFER_EVENTS_DEFAULT,
            linger: Duration::ZERO,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            reconnect_delay_initial: RECONNECT_DELAY_INITIAL_DEFAULT,
            reconnect_delay_max: RECONNECT_DELAY_MAX_DEFAULT,
            live_buffer_events: LIVE_BUFFER_EVENTS_DEFAULT,
        }
    }
}

impl ClientOptions {
    pub fn new(url: impl Into<String>) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            ..ClientOptions::default()
        }
    }

    pub fn service_name(mut self, name: impl Into<String>) -> ClientOptions {
        self.service_name = Some(name.into());
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> ClientOptions {
        self.token = Some(token.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> ClientOptions {
        self.timeout = timeout;
        self
    }

    pub fn max_retries(mut self, retries: u32) -> ClientOptions {
        self.max_retries = retries;
        self
    }

    pub fn publish_buffer_events(mut self, events: usize) -> ClientOptions {
        self.publish_buffer_events = events;
        self
    }

    pub fn linger(mut self, linger: Duration) -> ClientOptions {
        self.linger = linger;
        self
    }

    pub fn batch_events_max(mut self, events: usize) -> ClientOptions {
        self.batch_events_max = events.max(1);
        self
    }

    pub fn reconnect_delay(mut self, initial: Duration, max: Duration) -> ClientOptions {
        self.reconnect_delay_initial = initial;
        self.reconnect_delay_max = max.max(initial);
        self
    }

    pub fn live_buffer_events(mut self, events: usize) -> ClientOptions {
        self.live_buffer_events = events.max(1);
        self
    }

    /// The HTTP base (no trailing slash) and the WebSocket URL.
    pub(crate) fn endpoints(&self) -> Result<(reqwest::Url, String)> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: self.url.clone(),
            reason: reason.to_owned(),
        };
        let base = reqwest::Url::parse(self.url.trim_end_matches('/'))
            .map_err(|error| invalid(&error.to_string()))?;
        let ws_scheme = match base.scheme() {
            "http" => "ws",
            "https" => {
                return Err(invalid(
                    "https is not supported by this build of herald-client (plain http only); \
                     put a TLS-terminating proxy in front or use http on a private network",
                ));
            }
            _ => return Err(invalid("the scheme must be http")),
        };
        if base.host_str().is_none() {
            return Err(invalid("no host"));
        }
        let mut ws = base.clone();
        ws.set_path(&format!("{}/v1/ws", base.path().trim_end_matches('/')));
        let ws = ws.as_str().replacen("http", ws_scheme, 1);
        Ok((base, ws))
    }
}

/// Exponential backoff with full jitter in the upper half, so that many clients restarted
/// together do not reconnect in lockstep.
pub(crate) fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempt.min(20);
    let base = initial.saturating_mul(1u32 << exponent).min(max);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let check = |url: &str, expect: Result<(&str, &str), &str>| {
            let got = ClientOptions::new(url).endpoints();
            match (got, expect) {
                (Ok((base, ws)), Ok((want_base, want_ws))) => {
                    assert_eq!((base.as_str(), ws.as_str()), (want_base, want_ws), "{url}");
                }
                (Err(error), Err(want)) => {
                    let text = error.to_string();
                    assert!(text.contains(want), "{url}: {text}");
                }
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        };
        check(
            "http://127.0.0.1:3003",
            Ok(("http://127.0.0.1:3003/", "ws://127.0.0.1:3003/v1/ws")),
        );
        check(
            "http://localhost:3003/",
            Ok(("http://localhost:3003/", "ws://localhost:3003/v1/ws")),
        );
        check(
            "http://proxy/herald/",
            Ok(("http://proxy/herald", "ws://proxy/herald/v1/ws")),
        );
        check("https://example.com", Err("plain http only"));
        check("ftp://example.com", Err("must be http"));
        check("not a url", Err("invalid server URL"));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for attempt in 0..40 {
            let delay = backoff_delay(attempt, initial, max);
            let base = initial.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
        }
        assert!(backoff_delay(30, initial, max) >= max / 2);
    }
}
