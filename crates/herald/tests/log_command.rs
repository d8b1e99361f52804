//! `herald log …` against real log directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use bytes::Bytes;
use herald_log::{Log, LogConfig};

fn herald(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

fn build_log(dir: &std::path::Path) {
    let log = Log::open(dir, LogConfig::default()).unwrap();
    let events: Vec<Bytes> = (1..=5)
        .map(|n| Bytes::from(format!(r#"{{"type":"user.created","data":{{"n":{n}}}}}"#)))
        .collect();
    log.append_blocking(events).unwrap();
    log.close().unwrap();
}

#[test]
fn verify_reports_a_clean_log_and_fails_on_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    let (ok, out) = herald(&["log", "verify", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("1 segments, 5 records: clean"), "{out}");

    let segment = dir.path().join("00000000000000000001.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[60] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let (ok, out) = herald(&["log", "verify", dir.path().to_str().unwrap()]);
    assert!(!ok, "a damaged log fails verify");
    assert!(
        out.contains("DAMAGED") && out.contains("invalid record at byte"),
        "{out}"
    );
}

#[test]
fn dump_prints_records_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    let (ok, out) = herald(&["log", "dump", dir.path().to_str().unwrap(), "--from", "4"]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains(r#""seq":4"#) && lines[0].contains(r#""n":4"#),
        "{out}"
    );
    let (ok, out) = herald(&["log", "stats", dir.path().to_str().unwrap()]);
    assert!(ok && out.contains(r#""lastSeq":5"#), "{out}");
}
