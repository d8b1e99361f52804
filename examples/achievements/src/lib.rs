//! Seed 001 (the gamification service's event system) on Herald: achievements awarded from
//! events, with the retries, backoff and dead-letter queue the seed wrote by hand on RabbitMQ
//! done by the bus.
//!
//! - The seed's queue `achievement_events` bound to `achievement.*` is a consumer group of that
//!   name on the pattern `achievement.*`, created with a retry policy: the seed's 3 retries with
//!   exponential backoff (×2), but starting at 100 ms instead of 1 s so the example runs fast.
//! - The game publishes `achievement.progress_updated` (the seed's `AchievementEvent` data:
//!   `achievementId`, `userId`, `progress`). When progress reaches 100 the service looks the
//!   achievement up in its catalog, credits the points to a points ledger, and publishes the
//!   seed's own example event, `achievement.completed` (`achievementId`, `userId`, `name`,
//!   `points`, `completedAt`) with the same correlation id.
//! - The points ledger is briefly unavailable for one user: the handler returns `Err`, Herald
//!   nacks the delivery and brings it back after the group's backoff, with the attempt number
//!   (1, 2, 3…), and the third attempt succeeds. No retry loop in the handler.
//! - Two events name an achievement missing from the catalog (a deploy forgot it): every attempt
//!   fails, and after `maxRetries` Herald moves them to the group's dead letters with the last
//!   error — the seed's `moveToDeadLetterQueue`. The example lists them, "fixes" the catalog,
//!   redrives them (attempts reset) and they are awarded.
//!
//! Run it against a server:
//!
//! ```sh
//! herald serve                                  # terminal 1 (or: cargo run -p herald -- serve)
//! cargo run -p herald-example-achievements      # terminal 2
//! ```
//!
//! `EVENT_BUS_URL` (default `http://127.0.0.1:3003`) says where the server is and `SERVICE_NAME`
//! (default `gamification-service`) names the service, as in the seeds. The example exits 0
//! once the scenario completed, and fails after [`SCENARIO_TIMEOUT`]. The group keeps its
//! policy from the first run; events of an earlier, interrupted run are acknowledged and
//! otherwise ignored (each run has its own correlation id).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_client::{
    BackoffConfig, Client, ClientOptions, Delivery, GroupDefinition, GroupInfo, GroupOptions,
    GroupPolicyConfig, NewEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

/// `EVENT_BUS_URL` when unset (seed 004's default port).
pub const URL_DEFAULT: &str = "http://127.0.0.1:3003";
/// `SERVICE_NAME` when unset.
pub const SERVICE_NAME_DEFAULT: &str = "gamification-service";
/// The whole scenario fails rather than hang past this.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30);

/// The seed's queue name, here a consumer group.
pub const GROUP: &str = "achievement_events";
/// The seed's routing key.
pub const PATTERN: &str = "achievement.*";
/// The seed's `max_attempts: 3` (retries after the first delivery).
pub const MAX_RETRIES: u32 = 3;
/// The seed's backoff starts at 1 s; 100 ms keeps the example quick.
pub const BACKOFF_INITIAL_MS: u64 = 100;
pub const BACKOFF_FACTOR: f64 = 2.0;
pub const BACKOFF_MAX_MS: u64 = 1_000;
pub const BACKOFF_JITTER: f64 = 0.1;

/// The group's policy: the seed's retry strategy with a short initial delay.
pub fn policy() -> GroupPolicyConfig {
    GroupPolicyConfig {
        ack_timeout_ms: Some(10_000),
        max_retries: Some(MAX_RETRIES),
        backoff: Some(BackoffConfig {
            initial_ms: BACKOFF_INITIAL_MS,
            factor: BACKOFF_FACTOR,
            max_ms: BACKOFF_MAX_MS,
            jitter: BACKOFF_JITTER,
        }),
        max_in_flight: None,
    }
}

/// The seed's `AchievementEvent` data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AchievementData {
    pub achievement_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// What one run of the handler did with one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Progress below 100, recorded.
    Progress(u32),
    /// Awarded: points credited and `achievement.completed` published.
    Awarded { name: String, points: u32 },
    /// Awarded before (a redelivery): nothing to do.
    AlreadyAwarded,
    /// The service's own `achievement.completed` came back through the group.
    Announced,
    /// The handler returned this error: Herald nacks the delivery.
    Failed(String),
}

/// One delivery as the handler saw it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub event_id: String,
    pub event_type: String,
    pub user_id: String,
    pub achievement_id: String,
    /// Herald's attempt number, 1 on first delivery.
    pub attempt: u32,
    /// When the handler started, since the scenario did.
    pub at: Duration,
    pub outcome: Outcome,
}

/// A dead letter of this run, as listed by the admin API.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub event_id: String,
    pub user_id: String,
    pub achievement_id: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// What happened, for the caller (and the test) to check.
#[derive(Debug)]
pub struct Summary {
    pub correlation_id: String,
    /// Deliveries before the redrive, in the order the handler ran.
    pub attempts: Vec<Attempt>,
    /// This run's dead letters once retries were exhausted.
    pub dead_letters: Vec<DeadLetter>,
    /// What the redrive answered (every dead letter of the group).
    pub redriven: u64,
    /// Deliveries after the redrive.
    pub redrive_attempts: Vec<Attempt>,
    /// Points per user in the ledger at the end.
    pub balances: BTreeMap<String, u32>,
    /// This run's dead letters left at the end.
    pub dead_letters_left: usize,
    pub group: GroupInfo,
}

impl Summary {
    /// Every delivery of `achievement_id` for `user_id`'s progress event, before and after
    /// the redrive.
    pub fn attempts_of(&self, user_id: &str, achievement_id: &str) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .chain(&self.redrive_attempts)
            .filter(|attempt| {
                attempt.event_type == "achievement.progress_updated"
                    && attempt.user_id == user_id
                    && attempt.achievement_id == achievement_id
            })
            .collect()
    }

    /// `(user, achievement, points)` for every award, in the order made.
    pub fn awards(&self) -> Vec<(String, String, u32)> {
        self.attempts
            .iter()
            .chain(&self.redrive_attempts)
            .filter_map(|attempt| match &attempt.outcome {
                Outcome::Awarded { points, .. } => Some((
                    attempt.user_id.clone(),
                    attempt.achievement_id.clone(),
                    *points,
                )),
                _ => None,
            })
            .collect()
    }
}

/// Runs the scenario against the server at `url` with the default service name.
pub async fn run(url: &str) -> anyhow::Result<Summary> {
    run_as(url, SERVICE_NAME_DEFAULT).await
}

/// Runs the scenario against the server at `url` as `service_name`.
pub async fn run_as(url: &str, service_name: &str) -> anyhow::Result<Summary> {
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario(url, service_name))
        .await
        .with_context(|| {
            format!("the achievements scenario did not complete within {SCENARIO_TIMEOUT:?}")
        })?
}

/// The progress events the game publishes: `(user, achievement, progress)`.
const PROGRESS: [(&str, &str, u32); 5] = [
    ("user-456", "first-quest", 40),
    ("user-456", "first-quest", 100),
    // The ledger is unavailable for user-789's first two credits: retried, then awarded.
    ("user-789", "quest-master", 100),
    // Not in the catalog until the fix: dead letters.
    ("user-456", "night-owl", 100),
    ("user-789", "night-owl", 100),
];

/// The user whose ledger shard fails, and how many times.
const FLAKY_USER: &str = "user-789";
const FLAKY_FAILURES: u32 = 2;

/// The achievement missing from the catalog until the fix, and what the fix adds.
const MISSING: (&str, &str, u32) = ("night-owl", "Night Owl", 25);

async fn scenario(url: &str, service_name: &str) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let correlation_id = format!(
        "gamification-{}",
        OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
    );
    let client = Client::connect(ClientOptions::new(url).service_name(service_name))
        .await
        .with_context(|| format!("cannot reach Herald at {url} (is `herald serve` running?)"))?;
    let admin = client.admin().clone();

    // The seed's queue and retry strategy, as a group with a policy. An existing group keeps
    // its own policy (and start position).
    let definition = GroupDefinition {
        pattern: PATTERN.to_owned(),
        from: None,
        policy: Some(policy()),
    };
    admin
        .create_group(GROUP, &definition)
        .await
        .with_context(|| format!("creating group {GROUP}"))?;
    println!(
        "group {GROUP} on {PATTERN}: maxRetries {MAX_RETRIES}, backoff {BACKOFF_INITIAL_MS} ms \
         x{BACKOFF_FACTOR} up to {BACKOFF_MAX_MS} ms (jitter {BACKOFF_JITTER})"
    );

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let service = Arc::new(Service {
        client: client.clone(),
        correlation_id: correlation_id.clone(),
        started,
        catalog: Mutex::new(BTreeMap::from([
            ("first-quest".to_owned(), ("First Quest".to_owned(), 10)),
            ("quest-master".to_owned(), ("Quest Master".to_owned(), 100)),
        ])),
        ledger: Mutex::new(Ledger {
            failures_left: BTreeMap::from([(FLAKY_USER.to_owned(), FLAKY_FAILURES)]),
            balances: BTreeMap::new(),
        }),
        awarded: Mutex::new(BTreeSet::new()),
        seen: seen_tx,
    });
    let handler_service = service.clone();
    let worker = client
        .subscribe_group(
            PATTERN,
            GROUP,
            GroupOptions::default(),
            move |delivery: Delivery<AchievementData>| {
                let service = handler_service.clone();
                async move { service.handle(delivery).await }
            },
        )
        .await
        .context("joining the group")?;

    // The game reports progress, as the seed's publishEvent does.
    for (user_id, achievement_id, progress) in PROGRESS {
        let data = AchievementData {
            achievement_id: achievement_id.to_owned(),
            user_id: Some(user_id.to_owned()),
            progress: Some(progress),
            ..AchievementData::default()
        };
        let event = NewEvent::new("achievement.progress_updated", &data)?
            .correlation_id(correlation_id.clone())
            .user_id(user_id);
        client.publish_event(event).await?;
        println!(
            "published achievement.progress_updated {achievement_id} {progress}% for {user_id}"
        );
    }

    // Until: both awards made (one after retries), both announced, and both broken events
    // failed their last attempt.
    let mut attempts = Vec::new();
    let last_attempt = MAX_RETRIES + 1;
    loop {
        let awarded = count(&attempts, |a| matches!(a.outcome, Outcome::Awarded { .. }));
        let announced = count(&attempts, |a| a.outcome == Outcome::Announced);
        let exhausted = count(&attempts, |a| {
            a.attempt == last_attempt && matches!(a.outcome, Outcome::Failed(_))
        });
        if awarded == 2 && announced == 2 && exhausted == 2 {
            break;
        }
        attempts.push(
            seen.recv()
                .await
                .context("the handler stopped before the scenario ended")?,
        );
    }

    // The broken events are now dead letters, with the last error.
    let dead_letters = loop {
        let letters = this_run_dead_letters(&client, &correlation_id).await?;
        if letters.len() == 2 {
            break letters;
        }
        // The last nack is on its way to the server; ask again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for letter in &dead_letters {
        println!(
            "dead letter: {} for {} after {} attempts, last error: {}",
            letter.achievement_id,
            letter.user_id,
            letter.attempts,
            letter.last_error.as_deref().unwrap_or("-")
        );
    }

    // The fix: the missing achievement is added to the catalog. Then the dead letters go back
    // into the group, attempts reset.
    let (id, name, points) = MISSING;
    service
        .catalog
        .lock()
        .map_err(|_| anyhow::anyhow!("catalog lock poisoned"))?
        .insert(id.to_owned(), (name.to_owned(), points));
    println!("fix deployed: {id} ({name}, {points} points) added to the catalog");
    let redriven = admin.redrive_dead_letters(GROUP).await?;
    println!("redrove {redriven} dead letters");

    let mut redrive_attempts = Vec::new();
    loop {
        let awarded = count(&redrive_attempts, |a| {
            matches!(a.outcome, Outcome::Awarded { .. })
        });
        let announced = count(&redrive_attempts, |a| a.outcome == Outcome::Announced);
        if awarded == 2 && announced == 2 {
            break;
        }
        redrive_attempts.push(
            seen.recv()
                .await
                .context("the handler stopped before the scenario ended")?,
        );
    }

    // Closing lets the running handler finish and settle before leaving the group.
    worker.close().await?;
    let dead_letters_left = this_run_dead_letters(&client, &correlation_id).await?.len();
    let group = admin.group(GROUP).await?;
    let balances = service
        .ledger
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?
        .balances
        .clone();
    println!("points: {balances:?}");
    println!(
        "group {GROUP}: {} delivered, {} acked, {} nacked, {} redelivered, {} dead-lettered, {} dead letters left",
        group.delivered,
        group.acked,
        group.nacked,
        group.redelivered,
        group.dead_lettered,
        group.dead_letters
    );
    client.close().await;
    Ok(Summary {
        correlation_id,
        attempts,
        dead_letters,
        redriven,
        redrive_attempts,
        balances,
        dead_letters_left,
        group,
    })
}

fn count(attempts: &[Attempt], matching: impl Fn(&Attempt) -> bool) -> usize {
    attempts.iter().filter(|attempt| matching(attempt)).count()
}

/// The group's dead letters whose event belongs to this run.
async fn this_run_dead_letters(
    client: &Client,
    correlation_id: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    for letter in client.admin().dead_letters(GROUP, None).await? {
        let event: Value = serde_json::from_str(letter.event.get())?;
        if event["correlationId"] != correlation_id {
            continue;
        }
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        letters.push(DeadLetter {
            event_id: text(&event["id"]),
            user_id: text(&event["data"]["userId"]),
            achievement_id: text(&event["data"]["achievementId"]),
            attempts: letter.attempts,
            last_error: letter.last_error,
        });
    }
    Ok(letters)
}

/// The points ledger: an external dependency that is sometimes unavailable.
#[derive(Debug)]
struct Ledger {
    failures_left: BTreeMap<String, u32>,
    balances: BTreeMap<String, u32>,
}

impl Ledger {
    fn credit(&mut self, user_id: &str, points: u32) -> anyhow::Result<u32> {
        if let Some(left) = self.failures_left.get_mut(user_id)
            && *left > 0
        {
            *left -= 1;
            anyhow::bail!("points ledger unavailable for {user_id} (shard rebalancing)");
        }
        let balance = self.balances.entry(user_id.to_owned()).or_insert(0);
        *balance += points;
        Ok(*balance)
    }
}

/// The gamification service's achievement handler and its state.
#[derive(Debug)]
struct Service {
    client: Client,
    correlation_id: String,
    started: Instant,
    /// achievementId → (name, points).
    catalog: Mutex<BTreeMap<String, (String, u32)>>,
    ledger: Mutex<Ledger>,
    /// (userId, achievementId) already awarded: redeliveries do not award twice.
    awarded: Mutex<BTreeSet<(String, String)>>,
    seen: mpsc::UnboundedSender<Attempt>,
}

impl Service {
    /// `Ok` acks the delivery; `Err` nacks it, and the group's policy decides: retried after
    /// backoff, or dead-lettered once `maxRetries` is spent.
    async fn handle(&self, delivery: Delivery<AchievementData>) -> anyhow::Result<()> {
        let event = &delivery.event;
        if event.correlation_id.as_deref() != Some(self.correlation_id.as_str()) {
            println!(
                "[{GROUP}] {} {} is from an earlier run: acknowledged, ignored",
                event.event_type, event.id
            );
            return Ok(());
        }
        let at = self.started.elapsed();
        let data = &event.data;
        let user_id = data.user_id.clone().unwrap_or_default();
        let result = match event.event_type.as_str() {
            "achievement.progress_updated" => self.progress(data, &user_id).await,
            "achievement.completed" => Ok(Outcome::Announced),
            _ => Ok(Outcome::Announced),
        };
        let outcome = match &result {
            Ok(outcome) => outcome.clone(),
            Err(error) => Outcome::Failed(error.to_string()),
        };
        println!(
            "[{GROUP}] {:>5} ms  {} {} for {user_id}, attempt {}: {}",
            at.as_millis(),
            event.event_type,
            data.achievement_id,
            delivery.attempt,
            match &outcome {
                Outcome::Progress(progress) => format!("progress {progress}% recorded"),
                Outcome::Awarded { name, points } => format!("awarded {name} (+{points})"),
                Outcome::AlreadyAwarded => "already awarded".to_owned(),
                Outcome::Announced => "announced to the player".to_owned(),
                Outcome::Failed(error) => format!("failed: {error}"),
            }
        );
        let _ = self.seen.send(Attempt {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            user_id,
            achievement_id: data.achievement_id.clone(),
            attempt: delivery.attempt,
            at,
            outcome,
        });
        result.map(|_| ())
    }

    async fn progress(&self, data: &AchievementData, user_id: &str) -> anyhow::Result<Outcome> {
        let progress = data.progress.unwrap_or(0);
        if progress < 100 {
            return Ok(Outcome::Progress(progress));
        }
        let key = (user_id.to_owned(), data.achievement_id.clone());
        if self.lock(&self.awarded)?.contains(&key) {
            return Ok(Outcome::AlreadyAwarded);
        }
        let (name, points) = self
            .lock(&self.catalog)?
            .get(&data.achievement_id)
            .cloned()
            .with_context(|| {
                format!(
                    "unknown achievement {:?}: not in the catalog",
                    data.achievement_id
                )
            })?;
        self.lock(&self.ledger)?.credit(user_id, points)?;
        // The seed's publishEvent('achievement.completed', {...}, { correlationId }).
        let completed = AchievementData {
            achievement_id: data.achievement_id.clone(),
            user_id: Some(user_id.to_owned()),
            name: Some(name.clone()),
            points: Some(points),
            progress: None,
            completed_at: Some(OffsetDateTime::now_utc().format(&Rfc3339)?),
        };
        let event = NewEvent::new("achievement.completed", &completed)?
            .correlation_id(self.correlation_id.clone())
            .user_id(user_id);
        self.client.publish_event(event).await?;
        self.lock(&self.awarded)?.insert(key);
        Ok(Outcome::Awarded { name, points })
    }

    fn lock<'a, T>(&self, mutex: &'a Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'a, T>> {
        mutex
            .lock()
            .map_err(|_| anyhow::anyhow!("a handler panicked holding the service state"))
    }
}
