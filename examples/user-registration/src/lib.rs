//! Seed 002 (ADR-005, "Event-Driven Architecture") on Herald: user registration fanned out to
//! independent services.
//!
//! The user service publishes the seed's `DomainEvent`s — `user.created` when someone registers,
//! `user.updated` when a profile changes — and does not know who consumes them. The seed's event
//! catalog names the consumers, and each is its own consumer group, so each gets every event:
//!
//! | event          | producer     | consumers (groups)                          |
//! | -------------- | ------------ | ------------------------------------------- |
//! | `user.created` | user-service | `notification-service`, `search-service`    |
//! | `user.updated` | user-service | `search-service`                            |
//!
//! The notification service runs two instances (two members of the group `notification-service`,
//! each on its own connection, like two processes): they share the load — every registration
//! gets exactly one welcome email, sent by one instance or the other. Where the seed's Redis
//! consumer loops on `XREADGROUP` and `XACK`s by hand, a Herald handler returns `Ok` (acked) or
//! `Err` (redelivered after the group's backoff). At the end the example replays the `user`
//! stream (the seed's `events:user`) to show that events are kept.
//!
//! Run it against a server:
//!
//! ```sh
//! herald serve                                        # terminal 1 (or: cargo run -p herald -- serve)
//! cargo run -p herald-example-user-registration       # terminal 2
//! ```
//!
//! `EVENT_BUS_URL` (default `http://127.0.0.1:3003`) says where the server is and `SERVICE_NAME`
//! (default `user-service`) names the producing service, as in the seeds. The example exits 0
//! once every service has seen every event it should, and fails after [`SCENARIO_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use herald_client::{
    Client, ClientOptions, Delivery, GroupInfo, GroupOptions, GroupWorker, NewEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// `EVENT_BUS_URL` when unset (seed 004's default port).
pub const URL_DEFAULT: &str = "http://127.0.0.1:3003";
/// `SERVICE_NAME` when unset: the producer of the seed's user events.
pub const SERVICE_NAME_DEFAULT: &str = "user-service";
/// The whole scenario fails rather than hang past this.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30);

pub const NOTIFICATION_GROUP: &str = "notification-service";
pub const SEARCH_GROUP: &str = "search-service";

/// The seed's `UserCreatedData`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCreatedData {
    pub user_id: String,
    pub email: String,
    pub role: String,
}

/// `user.updated`: the fields that changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserUpdatedData {
    pub user_id: String,
    pub display_name: String,
}

/// One event the user service published.
#[derive(Clone, Debug)]
pub struct Published {
    pub event_id: String,
    pub event_type: String,
    pub user_id: String,
    pub correlation_id: String,
    pub stream: String,
    pub seq: u64,
}

/// A welcome email the notification service sent (the seed's `sendWelcomeEmail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WelcomeEmail {
    pub event_id: String,
    pub to: String,
    pub user_id: String,
    /// Which notification-service instance sent it.
    pub sent_by: String,
}

/// A document the search service indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    pub event_id: String,
    pub event_type: String,
    pub user_id: String,
    pub correlation_id: Option<String>,
}

/// What happened, for the caller (and the test) to check.
#[derive(Debug)]
pub struct Summary {
    /// In publish order: the `user.created` events, then the `user.updated` one.
    pub published: Vec<Published>,
    /// Emails sent for this run's events.
    pub welcome_emails: Vec<WelcomeEmail>,
    /// Documents indexed for this run's events.
    pub indexed: Vec<Indexed>,
    /// Emails per notification-service instance.
    pub emails_per_instance: BTreeMap<String, usize>,
    pub notification_group: GroupInfo,
    pub search_group: GroupInfo,
    /// This run's events read back from the `user` stream.
    pub replayed: Vec<String>,
}

/// The users who register in this example.
const SIGNUPS: [(&str, &str); 6] = [
    ("ada@example.com", "FREELANCER"),
    ("grace@example.com", "CLIENT"),
    ("alan@example.com", "FREELANCER"),
    ("edsger@example.com", "FREELANCER"),
    ("barbara@example.com", "CLIENT"),
    ("donald@example.com", "FREELANCER"),
];

/// Runs the scenario against the server at `url` with the default service name.
pub async fn run(url: &str) -> anyhow::Result<Summary> {
    run_as(url, SERVICE_NAME_DEFAULT).await
}

/// Runs the scenario against the server at `url`, publishing as `service_name`.
pub async fn run_as(url: &str, service_name: &str) -> anyhow::Result<Summary> {
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario(url, service_name))
        .await
        .with_context(|| {
            format!("the user registration scenario did not complete within {SCENARIO_TIMEOUT:?}")
        })?
}

/// What a consumer saw, sent to the scenario as it happens.
enum Seen {
    Email(WelcomeEmail),
    Indexed(Indexed),
}

async fn connect(url: &str, service_name: &str) -> anyhow::Result<Client> {
    Client::connect(ClientOptions::new(url).service_name(service_name))
        .await
        .with_context(|| {
            format!("{service_name} cannot reach Herald at {url} (is `herald serve` running?)")
        })
}

async fn scenario(url: &str, service_name: &str) -> anyhow::Result<Summary> {
    // Every run has its own users, so that a server kept from an earlier run changes nothing.
    let run = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();

    // The consumers start first: a group created by its first subscriber starts at the latest
    // event, and these groups should get everything the user service publishes from now on.
    let mut consumers = Vec::new();
    let mut workers = Vec::new();
    for instance in ["notification-service#1", "notification-service#2"] {
        let client = connect(url, "notification-service").await?;
        workers.push(notification_service(&client, instance, seen_tx.clone()).await?);
        consumers.push(client);
        println!("[{instance}] joined group {NOTIFICATION_GROUP} on user.created");
    }
    let search = connect(url, "search-service").await?;
    workers.push(search_service(&search, seen_tx.clone()).await?);
    consumers.push(search);
    println!("[search-service] joined group {SEARCH_GROUP} on user.*");
    drop(seen_tx);

    // The user service: one event per registration, as the seed's publisher does.
    let users = connect(url, service_name).await?;
    let mut published = Vec::new();
    for (n, (email, role)) in SIGNUPS.iter().enumerate() {
        let user_id = format!("usr_{run}_{n}");
        let correlation_id = format!("req_{run}_{n}");
        let data = UserCreatedData {
            user_id: user_id.clone(),
            email: (*email).to_owned(),
            role: (*role).to_owned(),
        };
        let event = NewEvent::new("user.created", &data)?
            .version("1.0")
            .timestamp(OffsetDateTime::now_utc())
            .correlation_id(correlation_id.clone());
        let result = users.publish_event(event).await?;
        println!(
            "[{service_name}] published user.created {user_id} <{email}> as {}#{}",
            result.stream.as_deref().unwrap_or("?"),
            result.seq.unwrap_or(0)
        );
        published.push(Published {
            event_id: result.id,
            event_type: "user.created".to_owned(),
            user_id,
            correlation_id,
            stream: result.stream.unwrap_or_default(),
            seq: result.seq.unwrap_or(0),
        });
    }
    let first = &published[0];
    let (user_id, correlation_id) = (first.user_id.clone(), format!("req_{run}_update"));
    let event = NewEvent::new(
        "user.updated",
        &UserUpdatedData {
            user_id: user_id.clone(),
            display_name: "Ada L.".to_owned(),
        },
    )?
    .version("1.0")
    .correlation_id(correlation_id.clone());
    let result = users.publish_event(event).await?;
    println!("[{service_name}] published user.updated {user_id}");
    published.push(Published {
        event_id: result.id,
        event_type: "user.updated".to_owned(),
        user_id,
        correlation_id,
        stream: result.stream.unwrap_or_default(),
        seq: result.seq.unwrap_or(0),
    });

    // Wait until the notification service has welcomed every new user and the search service
    // has indexed every event.
    let ours: BTreeSet<&str> = published.iter().map(|p| p.event_id.as_str()).collect();
    let created: BTreeSet<&str> = published
        .iter()
        .filter(|p| p.event_type == "user.created")
        .map(|p| p.event_id.as_str())
        .collect();
    let mut welcome_emails = Vec::new();
    let mut indexed = Vec::new();
    loop {
        let emailed: BTreeSet<&str> = welcome_emails
            .iter()
            .map(|email: &WelcomeEmail| email.event_id.as_str())
            .collect();
        let searchable: BTreeSet<&str> = indexed
            .iter()
            .map(|doc: &Indexed| doc.event_id.as_str())
            .collect();
        if emailed == created && searchable == ours {
            break;
        }
        match seen.recv().await {
            Some(Seen::Email(email)) if ours.contains(email.event_id.as_str()) => {
                welcome_emails.push(email);
            }
            Some(Seen::Indexed(doc)) if ours.contains(doc.event_id.as_str()) => indexed.push(doc),
            // An event of an earlier run, still unacked when that run stopped.
            Some(_) => {}
            None => anyhow::bail!("the consumers stopped before seeing every event"),
        }
    }

    // Closing a worker lets its running handler finish and ack before it leaves the group.
    for worker in workers {
        worker.close().await?;
    }
    let admin = users.admin();
    let notification_group = admin.group(NOTIFICATION_GROUP).await?;
    let search_group = admin.group(SEARCH_GROUP).await?;
    let mut emails_per_instance = BTreeMap::new();
    for email in &welcome_emails {
        *emails_per_instance
            .entry(email.sent_by.clone())
            .or_insert(0) += 1;
    }
    println!("fan-out: every registration reached both services");
    println!("load sharing in {NOTIFICATION_GROUP}: {emails_per_instance:?}");
    for group in [&notification_group, &search_group] {
        println!(
            "group {}: {} delivered, {} acked, lag {}, in flight {}",
            group.name, group.delivered, group.acked, group.lag, group.in_flight
        );
    }

    // Replay: the events stay in the `user` stream (the seed's `events:user`).
    let page = admin
        .replay(&published[0].stream, published[0].seq, Some(100))
        .await
        .context("replaying the user stream")?;
    let mut replayed = Vec::new();
    for raw in &page.events {
        let event: Value = serde_json::from_str(raw.get())?;
        if let Some(id) = event["id"].as_str()
            && ours.contains(id)
        {
            println!(
                "replay: {} {} {}",
                event["seq"], event["type"], event["data"]["userId"]
            );
            replayed.push(id.to_owned());
        }
    }

    users.close().await;
    for client in consumers {
        client.close().await;
    }
    Ok(Summary {
        published,
        welcome_emails,
        indexed,
        emails_per_instance,
        notification_group,
        search_group,
        replayed,
    })
}

/// One instance of the notification service: the seed's `handleUserCreated`.
async fn notification_service(
    client: &Client,
    instance: &'static str,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<GroupWorker> {
    let worker = client
        .subscribe_group(
            "user.created",
            NOTIFICATION_GROUP,
            GroupOptions::default(),
            move |delivery: Delivery<UserCreatedData>| {
                let seen = seen.clone();
                async move {
                    let user = &delivery.event.data;
                    // emailService.sendWelcomeEmail({ to, userId })
                    println!(
                        "[{instance}] welcome email sent to {} (user {}, event {})",
                        user.email, user.user_id, delivery.event.id
                    );
                    let _ = seen.send(Seen::Email(WelcomeEmail {
                        event_id: delivery.event.id.clone(),
                        to: user.email.clone(),
                        user_id: user.user_id.clone(),
                        sent_by: instance.to_owned(),
                    }));
                    anyhow::Ok(())
                }
            },
        )
        .await?;
    Ok(worker)
}

/// The search service indexes users when they are created and when they change.
async fn search_service(
    client: &Client,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<GroupWorker> {
    let worker = client
        .subscribe_group(
            "user.*",
            SEARCH_GROUP,
            GroupOptions::default(),
            move |delivery: Delivery<Value>| {
                let seen = seen.clone();
                async move {
                    let event = &delivery.event;
                    let user_id = match event.event_type.as_str() {
                        "user.created" => {
                            serde_json::from_value::<UserCreatedData>(event.data.clone())?.user_id
                        }
                        "user.updated" => {
                            serde_json::from_value::<UserUpdatedData>(event.data.clone())?.user_id
                        }
                        // Not in the catalog for search: nothing to index.
                        _ => return anyhow::Ok(()),
                    };
                    println!(
                        "[search-service] indexed {user_id} from {} (correlation {})",
                        event.event_type,
                        event.correlation_id.as_deref().unwrap_or("-")
                    );
                    let _ = seen.send(Seen::Indexed(Indexed {
                        event_id: event.id.clone(),
                        event_type: event.event_type.clone(),
                        user_id,
                        correlation_id: event.correlation_id.clone(),
                    }));
                    anyhow::Ok(())
                }
            },
        )
        .await?;
    Ok(worker)
}
