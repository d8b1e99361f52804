//! "Which subscriptions match this subject?", asked on every publish.
//!
//! A token trie in the manner of NATS's sublist: each node has literal children, a `*` child, the
//! subscriptions whose pattern ends there, and those whose pattern ends there with `>`. Matching
//! walks the subject's tokens once, forking only into `*` children. In front sits a bounded cache
//! of results keyed by subject, since publishers repeat a few thousand subjects.
//!
//! Lock order: `trie` (RwLock) before `cache` (Mutex). Every change bumps the trie's generation
//! and clears the cache while holding the trie's write lock; a matcher inserts its result only if
//! the cache is still at the generation the result was computed under, so a stale result is never
//! cached, let alone returned.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::subject::{Pattern, SUBJECT_TOKENS_MAX, Subject};

/// NATS's `slCacheMax`: enough for the hot subjects of a busy bus, small enough to sweep fast.
pub const MATCH_CACHE_ENTRIES_MAX: usize = 1024;
/// What a full cache is swept down to (NATS's `slCacheSweep`).
pub const MATCH_CACHE_ENTRIES_AFTER_SWEEP: usize = 256;

const _: () = assert!(MATCH_CACHE_ENTRIES_AFTER_SWEEP < MATCH_CACHE_ENTRIES_MAX);

/// Names one `insert`, so that it can be removed again. Never reused within an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

pub struct SubjectIndex<T> {
    trie: RwLock<Trie<T>>,
    cache: Mutex<MatchCache<T>>,
}

struct Trie<T> {
    root: Node<T>,
    /// Where each subscription sits, so that `remove` can walk straight to it.
    patterns: HashMap<SubscriptionId, Pattern>,
    id_next: u64,
    generation: u64,
}

struct Node<T> {
    literal_children: HashMap<Box<str>, Node<T>>,
    one_token_child: Option<Box<Node<T>>>,
    /// Patterns ending at this node.
    subscriptions: Vec<(SubscriptionId, T)>,
    /// Patterns ending at this node followed by `>`.
    tail_subscriptions: Vec<(SubscriptionId, T)>,
}

struct MatchCache<T> {
    /// hashbrown's foldhash, seeded per process: every publish looks its subject up here, and
    /// SipHash was 1% of a publish profile.
    results: hashbrown::HashMap<Box<str>, Arc<[T]>>,
    generation: u64,
}

impl<T: Clone> Default for SubjectIndex<T> {
    fn default() -> Self {
        SubjectIndex::new()
    }
}

impl<T: Clone> SubjectIndex<T> {
    pub fn new() -> SubjectIndex<T> {
        SubjectIndex {
            trie: RwLock::new(Trie {
                root: Node::new(),
                patterns: HashMap::new(),
                id_next: 1,
                generation: 0,
            }),
            cache: Mutex::new(MatchCache {
                results: hashbrown::HashMap::new(),
                generation: 0,
            }),
        }
    }

    pub fn insert(&self, pattern: &Pattern, value: T) -> SubscriptionId {
        let mut trie = self.trie.write();
        let id = SubscriptionId(trie.id_next);
        trie.id_next += 1;
        let mut node = &mut trie.root;
        let mut tail = false;
        for token in pattern.tokens() {
            node = match token {
                "*" => node.one_token_child.get_or_insert_with(Box::default),
                ">" => {
                    tail = true;
                    break;
                }
                literal => node.literal_children.entry(literal.into()).or_default(),
            };
        }
        if tail {
            node.tail_subscriptions.push((id, value));
        } else {
            node.subscriptions.push((id, value));
        }
        trie.patterns.insert(id, pattern.clone());
        self.invalidate(&mut trie);
        id
    }

    /// Removes a subscription and prunes the nodes it leaves empty, so memory follows the number
    /// of live subscriptions, not the history of churn.
    pub fn remove(&self, id: SubscriptionId) -> Option<T> {
        let mut trie = self.trie.write();
        let pattern = trie.patterns.remove(&id)?;
        let tokens: Vec<&str> = pattern.tokens().collect();
        let value = trie.root.remove(&tokens, id);
        debug_assert!(
            value.is_some(),
            "subscription {id:?} indexed but not in the trie"
        );
        self.invalidate(&mut trie);
        value
    }

    pub fn len(&self) -> usize {
        self.trie.read().patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of every subscription whose pattern matches `subject`, each once, in no
    /// particular order.
    pub fn matches(&self, subject: &Subject) -> Arc<[T]> {
        if let Some(result) = self.cache.lock().results.get(subject.as_str()) {
            return Arc::clone(result);
        }
        let (result, generation) = {
            let trie = self.trie.read();
            (trie.collect(subject), trie.generation)
        };
        let mut cache = self.cache.lock();
        if cache.generation == generation {
            if cache.results.len() >= MATCH_CACHE_ENTRIES_MAX {
                let mut kept = 0;
                cache.results.retain(|_, _| {
                    kept += 1;
                    kept <= MATCH_CACHE_ENTRIES_AFTER_SWEEP
                });
            }
            cache
                .results
                .insert(subject.as_str().into(), Arc::clone(&result));
        }
        result
    }

    /// [`Self::matches`] without the cache, for benchmarks and for callers that know a subject is
    /// one-off.
    pub fn matches_uncached(&self, subject: &Subject) -> Arc<[T]> {
        self.trie.read().collect(subject)
    }

    fn invalidate(&self, trie: &mut Trie<T>) {
        trie.generation += 1;
        let mut cache = self.cache.lock();
        cache.results.clear();
        cache.generation = trie.generation;
    }

    #[cfg(test)]
    fn cache_len(&self) -> usize {
        self.cache.lock().results.len()
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.trie.read().root.count()
    }
}

impl<T: Clone> Trie<T> {
    fn collect(&self, subject: &Subject) -> Arc<[T]> {
        let mut tokens = [""; SUBJECT_TOKENS_MAX];
        let mut token_count = 0;
        for (slot, token) in tokens.iter_mut().zip(subject.tokens()) {
            *slot = token;
            token_count += 1;
        }
        let mut result = Vec::new();
        self.root.collect(&tokens[..token_count], &mut result);
        result.into()
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node::new()
    }
}

impl<T> Node<T> {
    fn new() -> Node<T> {
        Node {
            literal_children: HashMap::new(),
            one_token_child: None,
            subscriptions: Vec::new(),
            tail_subscriptions: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.literal_children.is_empty()
            && self.one_token_child.is_none()
            && self.subscriptions.is_empty()
            && self.tail_subscriptions.is_empty()
    }

    fn collect(&self, tokens: &[&str], result: &mut Vec<T>)
    where
        T: Clone,
    {
        let Some((token, rest)) = tokens.split_first() else {
            result.extend(self.subscriptions.iter().map(|(_, value)| value.clone()));
            return;
        };
        result.extend(
            self.tail_subscriptions
                .iter()
                .map(|(_, value)| value.clone()),
        );
        if let Some(child) = self.literal_children.get(*token) {
            child.collect(rest, result);
        }
        if let Some(child) = &self.one_token_child {
            child.collect(rest, result);
        }
    }

    /// Removes `id` under the path `tokens` (a pattern's tokens) and prunes emptied children.
    fn remove(&mut self, tokens: &[&str], id: SubscriptionId) -> Option<T> {
        let take = |subscriptions: &mut Vec<(SubscriptionId, T)>| {
            let position = subscriptions.iter().position(|(each, _)| *each == id)?;
            Some(subscriptions.swap_remove(position).1)
        };
        match tokens.split_first() {
            None => take(&mut self.subscriptions),
            Some((&">", _)) => take(&mut self.tail_subscriptions),
            Some((&"*", rest)) => {
                let child = self.one_token_child.as_mut()?;
                let value = child.remove(rest, id);
                if child.is_empty() {
                    self.one_token_child = None;
                }
                value
            }
            Some((literal, rest)) => {
                let child = self.literal_children.get_mut(*literal)?;
                let value = child.remove(rest, id);
                if child.is_empty() {
                    self.literal_children.remove(*literal);
                }
                value
            }
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self
            .literal_children
            .values()
            .map(Node::count)
            .sum::<usize>()
            + self
                .one_token_child
                .as_ref()
                .map_or(0, |child| child.count())
    }
}

impl<T> fmt::Debug for SubjectIndex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectIndex")
            .field("subscriptions", &self.trie.read().patterns.len())
            .field("cached_subjects", &self.cache.lock().results.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Installs `patterns` (value = the pattern text) and checks the patterns matching each
    /// subject. `expect` lists `subject: pattern pattern …` lines.
    fn check(patterns: &[&str], expect: &str) {
        let index = SubjectIndex::new();
        for pattern in patterns {
            index.insert(&Pattern::new(pattern).unwrap(), (*pattern).to_owned());
        }
        for line in expect
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
        {
            let (subject, expected) = line.split_once(':').unwrap();
            let subject = Subject::new(subject.trim()).unwrap();
            let expected: BTreeSet<&str> = expected.split_whitespace().collect();
            for round in ["uncached", "cached"] {
                let found = index.matches(&subject);
                let found: BTreeSet<&str> = found.iter().map(String::as_str).collect();
                assert_eq!(found, expected, "{subject} ({round})");
            }
        }
    }

    #[test]
    fn nats_semantics() {
        check(
            &[
                "user.*",
                "user.>",
                "user.created",
                ">",
                "*.created",
                "*",
                "user",
            ],
            "
            user.created: user.* user.> user.created > *.created
            user.profile.updated: user.> >
            user: > * user
            order.created: > *.created
            order: > *
            ",
        );
    }

    #[test]
    fn duplicate_patterns_are_separate_subscriptions() {
        let index = SubjectIndex::new();
        let pattern = Pattern::new("a.*").unwrap();
        let first = index.insert(&pattern, 1);
        let second = index.insert(&pattern, 2);
        assert_ne!(first, second);
        let subject = Subject::new("a.b").unwrap();
        let mut found = index.matches(&subject).to_vec();
        found.sort();
        assert_eq!(found, [1, 2]);
        assert_eq!(index.remove(first), Some(1));
        assert_eq!(index.remove(first), None);
        assert_eq!(&*index.matches(&subject), [2]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn removal_prunes_empty_nodes() {
        let index = SubjectIndex::new();
        assert_eq!(index.node_count(), 1);
        let deep = index.insert(&Pattern::new("a.b.c.d").unwrap(), ());
        let wild = index.insert(&Pattern::new("a.*.c.>").unwrap(), ());
        let shallow = index.insert(&Pattern::new("a").unwrap(), ());
        // root, a, a.b, a.b.c, a.b.c.d, a.*, a.*.c
        assert_eq!(index.node_count(), 7);
        index.remove(deep).unwrap();
        assert_eq!(index.node_count(), 4);
        index.remove(wild).unwrap();
        assert_eq!(index.node_count(), 2);
        index.remove(shallow).unwrap();
        assert_eq!(index.node_count(), 1);
        assert!(index.is_empty());
    }

    #[test]
    fn churn_does_not_grow_the_trie() {
        let index = SubjectIndex::new();
        let subject = Subject::new("svc.e.created").unwrap();
        for round in 0..1000 {
            let pattern = Pattern::new(&format!("svc{round}.*.created")).unwrap();
            let id = index.insert(&pattern, round);
            index.matches(&subject);
            index.remove(id).unwrap();
        }
        assert_eq!(index.node_count(), 1);
        assert!(index.is_empty());
    }

    #[test]
    fn cache_is_bounded_and_invalidated() {
        let index = SubjectIndex::new();
        index.insert(&Pattern::new(">").unwrap(), 0);
        for n in 0..MATCH_CACHE_ENTRIES_MAX {
            index.matches(&Subject::new(&format!("s{n}")).unwrap());
        }
        assert_eq!(index.cache_len(), MATCH_CACHE_ENTRIES_MAX);
        index.matches(&Subject::new("one.more").unwrap());
        assert_eq!(index.cache_len(), MATCH_CACHE_ENTRIES_AFTER_SWEEP + 1);

        let subject = Subject::new("s1").unwrap();
        assert_eq!(&*index.matches(&subject), [0]);
        index.insert(&Pattern::new("s1").unwrap(), 1);
        assert_eq!(index.cache_len(), 0);
        let mut found = index.matches(&subject).to_vec();
        found.sort();
        assert_eq!(found, [0, 1]);
    }

    #[test]
    fn concurrent_matchers_never_see_stale_results() {
        let index = Arc::new(SubjectIndex::new());
        let subject = Subject::new("a.b").unwrap();
        let pattern = Pattern::new("a.*").unwrap();
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                for _ in 0..20_000 {
                    index.matches(&subject);
                }
            });
            for _ in 0..2_000 {
                let id = index.insert(&pattern, 1);
                assert_eq!(&*index.matches(&subject), [1]);
                index.remove(id).unwrap();
                assert!(index.matches(&subject).is_empty());
            }
            reader.join().unwrap();
        });
    }

    /// Token by token, independent of `Pattern::matches`.
    fn reference_matches(pattern: &str, subject: &str) -> bool {
        let pattern: Vec<&str> = pattern.split('.').collect();
        let subject: Vec<&str> = subject.split('.').collect();
        if pattern.last() == Some(&">") {
            let fixed = &pattern[..pattern.len() - 1];
            subject.len() > fixed.len()
                && fixed.iter().zip(&subject).all(|(p, s)| *p == "*" || p == s)
        } else {
            pattern.len() == subject.len()
                && pattern
                    .iter()
                    .zip(&subject)
                    .all(|(p, s)| *p == "*" || p == s)
        }
    }

    fn subject_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=4)
            .prop_map(|tokens| tokens.join("."))
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 0..=4),
            any::<bool>(),
        )
            .prop_filter_map("a pattern needs a token", |(mut tokens, tail)| {
                if tail {
                    tokens.push(">");
                }
                (!tokens.is_empty()).then(|| tokens.join("."))
            })
    }

    fn matched_ids(
        index: &SubjectIndex<usize>,
        ids: &[SubscriptionId],
        subject: &str,
    ) -> BTreeSet<u64> {
        let subject = Subject::new(subject).unwrap();
        index
            .matches(&subject)
            .iter()
            .map(|&position| ids[position].0)
            .collect()
    }

    fn expected_ids(installed: &[(SubscriptionId, String)], subject: &str) -> BTreeSet<u64> {
        installed
            .iter()
            .filter(|(_, pattern)| reference_matches(pattern, subject))
            .map(|(id, _)| id.0)
            .collect()
    }

    proptest! {
        #[test]
        fn agrees_with_reference_matcher(
            patterns in prop::collection::vec(pattern_strategy(), 0..40),
            subjects in prop::collection::vec(subject_strategy(), 1..20),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            // Each value is its position in `patterns`; `ids` maps it back to its subscription.
            let index = SubjectIndex::new();
            let mut ids = Vec::new();
            let mut installed: Vec<(SubscriptionId, String)> = Vec::new();
            for (position, pattern) in patterns.iter().enumerate() {
                let id = index.insert(&Pattern::new(pattern).unwrap(), position);
                ids.push(id);
                installed.push((id, pattern.clone()));
            }
            for round in 0..2 {
                for subject in &subjects {
                    prop_assert_eq!(
                        matched_ids(&index, &ids, subject),
                        expected_ids(&installed, subject),
                        "round {} subject {}", round, subject
                    );
                }
            }
            for removal in &removals {
                if installed.is_empty() {
                    break;
                }
                let (id, _) = installed.remove(removal.index(installed.len()));
                prop_assert!(index.remove(id).is_some());
                for subject in &subjects {
                    prop_assert_eq!(matched_ids(&index, &ids, subject), expected_ids(&installed, subject));
                }
            }
            prop_assert_eq!(index.len(), installed.len());
            for (id, _) in installed.drain(..) {
                index.remove(id).unwrap();
            }
            prop_assert_eq!(index.node_count(), 1);
        }
    }
}
