//! `SubjectIndex::matches` with 10 000 patterns installed (PRODUCT.md target: at least 5 million
//! matches per second on one thread).
//!
//! Patterns: `svcN.entityM.created` (9 700), `svcN.*.updated` (100), `svcN.>` (100),
//! `*.entityM.deleted` (100). Queries are `svcN.entityM.{created,updated,deleted}`:
//! - `cached_hot_1000`: 1 000 distinct subjects, all fitting the cache;
//! - `cached_skewed_4000`: 4 000 distinct subjects, 90% of queries on the hottest 500;
//! - `uncached_4000`: the trie walk alone (`matches_uncached`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_core::{Pattern, Subject, SubjectIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVICES: usize = 100;
const ENTITIES: usize = 100;
const QUERIES: usize = 1 << 16;

fn build_index() -> SubjectIndex<u32> {
    let index = SubjectIndex::new();
    let mut value = 0;
    let mut insert = |pattern: String| {
        index.insert(&Pattern::new(&pattern).unwrap(), value);
        value += 1;
    };
    for service in 0..SERVICES {
        for entity in 0..97 {
            insert(format!("svc{service}.entity{entity}.created"));
        }
        insert(format!("svc{service}.*.updated"));
        insert(format!("svc{service}.>"));
    }
    for entity in 0..ENTITIES {
        insert(format!("*.entity{entity}.deleted"));
    }
    assert_eq!(index.len(), 10_000);
    index
}

fn subjects(count: usize, rng: &mut StdRng) -> Vec<Subject> {
    const VERBS: [&str; 3] = ["created", "updated", "deleted"];
    let mut subjects = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    while subjects.len() < count {
        let text = format!(
            "svc{}.entity{}.{}",
            rng.random_range(0..SERVICES),
            rng.random_range(0..ENTITIES),
            VERBS[rng.random_range(0..VERBS.len())]
        );
        if seen.insert(text.clone()) {
            subjects.push(Subject::new(&text).unwrap());
        }
    }
    subjects
}

/// Indexes into `subjects`, uniform or with `hot_share` of queries on the first `hot` subjects.
fn queries(count: usize, hot: usize, hot_share: f64, rng: &mut StdRng) -> Vec<usize> {
    (0..QUERIES)
        .map(|_| {
            if rng.random_bool(hot_share) {
                rng.random_range(0..hot)
            } else {
                rng.random_range(0..count)
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let index = build_index();
    let mut rng = StdRng::seed_from_u64(7);
    let all = subjects(4000, &mut rng);
    let mut group = c.benchmark_group("subject_index_10000_patterns");
    group.throughput(Throughput::Elements(1));

    let cases: [(&str, usize, usize, f64, bool); 3] = [
        ("cached_hot_1000", 1000, 1000, 0.0, true),
        ("cached_skewed_4000", 4000, 500, 0.9, true),
        ("uncached_4000", 4000, 4000, 0.0, false),
    ];
    for (name, count, hot, hot_share, cached) in cases {
        let order = queries(count, hot, hot_share, &mut rng);
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let subject = &all[order[next % QUERIES]];
                next += 1;
                let found = if cached {
                    index.matches(black_box(subject))
                } else {
                    index.matches_uncached(black_box(subject))
                };
                black_box(found.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
