//! Where the Redis engine keeps things: every key of one stream — its events, its counters,
//! its dedupe ids, and each group's retries, dead letters and counters on it — carries the
//! stream's name as a hash tag, so that in a Redis Cluster they live in one slot and one Lua
//! script may touch them all atomically.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:streams` | set | names of every stream |
//! | `P:groups` | hash | group name → its definition (JSON) |
//! | `P:procs` | set | ids of Herald processes that announced themselves |
//! | `P:proc:<id>` | string, expiring | a live process's heartbeat: its members per group (JSON) |
//! | `P:ephemeral` | pub/sub channel | ephemeral events, `<process id>\n<event JSON>` |
//! | `P:relay:<topic>` | pub/sub channel | batches of a relay's messages (`relay.rs`), `<process id>\n` then `<length>\n<bytes>` each |
//! | `P:relay:<topic>:report:<id>` | string, expiring | a live process's report on a relay's topic (the server's real-time stats) |
//! | `P:{S}:events` | stream | the events of stream `S`; entry id `0-<seq>` (added as `0-*`: Redis numbers them), field `e` (the event's JSON) |
//! | `P:{S}:meta` | hash | `seq` (last seq stored), `t` (last store time, µs), `published`, `duplicates` |
//! | `P:{S}:times` | sorted set | the time index: per publish call, its first seq (zero-padded to 20 digits) scored by its store time (µs) |
//! | `P:{S}:dd:<bucket>` | hash, expiring | event id → seq of the events stored in one window-long time bucket (dedupe) |
//! | `P:{S}:g:<G>:due` | sorted set | seqs of group `G` waiting for a retry, scored by due time (µs) |
//! | `P:{S}:g:<G>:dead` | stream | `G`'s dead letters from stream `S`, with the event and why |
//! | `P:{S}:g:<G>:stats` | hash | `G`'s counters on `S`: delivered, acked, nacked, redelivered, dead_lettered |
//! | `P:{S}:g:<G>:info` | hash | `f:<seq>` first delivery time (ms), `e:<seq>` last error, per unfinished event; `fenced:<consumer>` for each member consumer whose entries another process recovered (its acks are then checked entry by entry) |
//!
//! `P` is the configured key prefix (tests give each engine its own).

/// The key names of one engine, from its prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

/// The keys of one stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamKeys {
    pub events: String,
    pub meta: String,
    /// Store times, one per publish call: where a subscription `from` a time starts.
    pub times: String,
    /// Prefix of dedupe buckets; the bucket number (ms since the epoch / window) follows.
    pub dedupe: String,
}

impl StreamKeys {
    /// The dedupe bucket numbered `bucket` (ms since the epoch / window).
    pub fn dedupe_bucket(&self, bucket: u64) -> String {
        format!("{}{bucket}", self.dedupe)
    }
}

/// The keys of one group on one stream, in the order the group scripts take them as `KEYS`.
#[derive(Clone, Debug)]
pub(crate) struct GroupKeys {
    pub events: String,
    pub due: String,
    pub dead: String,
    pub stats: String,
    pub info: String,
    pub meta: String,
}

impl GroupKeys {
    /// A call of `script` with this stream's keys, in `all`'s order (what the group scripts
    /// expect as KEYS[1..6]).
    pub fn invoke<'a>(&self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in self.all() {
            invocation.key(key);
        }
        invocation
    }

    pub fn all(&self) -> [&str; 6] {
        [
            &self.events,
            &self.due,
            &self.dead,
            &self.stats,
            &self.info,
            &self.meta,
        ]
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn streams(&self) -> String {
        format!("{}:streams", self.prefix)
    }

    pub fn groups(&self) -> String {
        format!("{}:groups", self.prefix)
    }

    /// The heartbeat of a process: its member counts per group, expiring unless renewed.
    pub fn process(&self, process: &str) -> String {
        format!("{}:proc:{process}", self.prefix)
    }

    /// The ids of processes that announced themselves (pruned once their heartbeat is gone).
    pub fn processes(&self) -> String {
        format!("{}:procs", self.prefix)
    }

    /// The pub/sub channel carrying ephemeral events between processes.
    pub fn ephemeral_channel(&self) -> String {
        format!("{}:ephemeral", self.prefix)
    }

    /// The pub/sub channel of a relay between processes.
    pub fn relay_channel(&self, topic: &str) -> String {
        format!("{}:relay:{topic}", self.prefix)
    }

    /// A process's report on a relay's topic, expiring unless renewed.
    pub fn relay_report(&self, topic: &str, process: &str) -> String {
        format!("{}:relay:{topic}:report:{process}", self.prefix)
    }

    pub fn stream(&self, stream: &str) -> StreamKeys {
        let tag = format!("{}:{{{stream}}}", self.prefix);
        StreamKeys {
            events: format!("{tag}:events"),
            meta: format!("{tag}:meta"),
            times: format!("{tag}:times"),
            dedupe: format!("{tag}:dd:"),
        }
    }

    pub fn group(&self, stream: &str, group: &str) -> GroupKeys {
        let tag = format!("{}:{{{stream}}}", self.prefix);
        GroupKeys {
            events: format!("{tag}:events"),
            due: format!("{tag}:g:{group}:due"),
            dead: format!("{tag}:g:{group}:dead"),
            stats: format!("{tag}:g:{group}:stats"),
            info: format!("{tag}:g:{group}:info"),
            meta: format!("{tag}:meta"),
        }
    }
}

/// The entry id of seq `seq`: `0-<seq>`. Entries are added with the id `0-*`, which Redis
/// numbers one past the stream's last, so a stream's entries are its seqs, gapless from 1.
pub(crate) fn entry_id(seq: u64) -> String {
    format!("0-{seq}")
}

/// The seq of an entry id `0-<seq>`.
pub(crate) fn seq_of(id: &str) -> Option<u64> {
    id.strip_prefix("0-").and_then(|seq| seq.parse().ok())
}

// The consumer `_scheduled` owns a group's entries while they wait for a retry (or after a
// redrive): owned by no member, so that no member's verb reaches them, and still pending, so
// that a crash loses nothing. The scripts name it.

/// The consumer a process reads new entries with before handing them to its members.
pub(crate) fn holder_consumer(process: &str) -> String {
    format!("hold:{process}")
}

/// The process a consumer belongs to (`None` for `_scheduled`).
pub(crate) fn process_of(consumer: &str) -> Option<&str> {
    if let Some(process) = consumer.strip_prefix("hold:") {
        return Some(process);
    }
    consumer
        .strip_prefix("m:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(process, _)| process)
}

/// The consumer of one member.
pub(crate) fn member_consumer(process: &str, member_id: u64) -> String {
    format!("m:{process}:{member_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_stream_shares_its_hash_tag() {
        let keys = Keys::new("herald");
        let stream = keys.stream("user");
        let group = keys.group("user", "mailer");
        for key in [
            stream.events.as_str(),
            &stream.meta,
            &stream.times,
            &stream.dedupe,
        ]
        .into_iter()
        .chain(group.all())
        {
            assert!(key.starts_with("herald:{user}:"), "{key}");
        }
        assert_eq!(group.due, "herald:{user}:g:mailer:due");
    }

    #[test]
    fn entry_ids_are_seqs() {
        assert_eq!(entry_id(42), "0-42");
        assert_eq!(seq_of("0-42"), Some(42));
        assert_eq!(seq_of(&entry_id(u64::MAX)), Some(u64::MAX));
        assert_eq!(seq_of("42-0"), None, "the older format is refused");
        assert_eq!(seq_of("0-x"), None);
    }

    #[test]
    fn consumers_name_their_process() {
        assert_eq!(process_of(&holder_consumer("p1")), Some("p1"));
        assert_eq!(process_of(&member_consumer("p1", 7)), Some("p1"));
        assert_eq!(process_of("_scheduled"), None);
    }
}
