//! `herald bench` against a real server: each workload runs on its own kind of runtime (the
//! latency client on one thread) and reports what it measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::Server;

/// Runs `herald bench --json <workload…>` against the server and returns its one report.
fn bench(server: &Server, workload: &[&str]) -> Value {
    let output = server.cli(&[&["bench", "--json"][..], workload].concat(), None);
    assert!(
        output.status.success(),
        "herald bench {workload:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{reports}");
    reports[0].clone()
}

#[test]
fn latency_counts_every_measured_event_and_orders_its_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for extra in [&[][..], &["--group"][..]] {
        let args = [&["latency", "--rate", "400", "--seconds", "1"][..], extra].concat();
        let report = bench(&server, &args);
        assert_eq!(report["workload"], "latency", "{report}");
        // The warm-up second is not measured.
        assert_eq!(report["events"], 400, "{report}");
        let latency = &report["latency_us"];
        let p50 = latency["p50"].as_f64().unwrap();
        let p99 = latency["p99"].as_f64().unwrap();
        let max = latency["max"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report}");
    }
}

#[tokio::test]
async fn publish_reports_every_event_acknowledged_and_the_server_stored_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let report = bench(
        &server,
        &["publish", "--events", "20000", "--connections", "2"],
    );
    assert_eq!(report["events"], 20_000, "{report}");
    assert!(
        report["events_per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let (status, streams) =
        support::call(support::http().get(format!("{}/v1/streams", server.url()))).await;
    assert_eq!(status, 200, "{streams}");
    assert_eq!(
        streams["streams"][0]["events"], 20_000,
        "the server stored what the bench counted: {streams}"
    );
}
