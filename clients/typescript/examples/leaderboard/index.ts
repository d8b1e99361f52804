// Seed 000's game leaderboard on Herald instead of Redis lists and BRPOP. The same events
// (`user.created`, `score.created`, `score.updated`, `cache.invalidate`), one producer each,
// several consumers: every consumer service is its own consumer group, so each gets every
// event, at least once, and a crashed consumer resumes where its group is.
//
//   auth-service    → user.created                          → user-service
//   score-service   → score.created, score.updated          → ranking-service, notification-service
//   score-service   → cache.invalidate {keys}               → ranking-service's cache
//
//   EVENT_BUS_URL=… EVENT_BUS_TOKEN=… node build/examples/leaderboard/index.js

import { outcome, runIfMain, serviceClient, type ExampleOptions } from '../shared.js';

interface Score {
  scoreId: number;
  userId: number;
  username: string;
  game: string;
  score: number;
}

export async function startUserService(options: ExampleOptions) {
  const eventBus = serviceClient('user-service', options);
  const users = new Map<number, { username: string; email: string }>();
  await eventBus.subscribe('user.created', (event) => {
    users.set(event.data.userId, { username: event.data.username, email: event.data.email });
  }, { group: 'user-service' });
  return { eventBus, users };
}

/** Keeps every game's scores, and serves rankings from a cache that cache.invalidate clears. */
export async function startRankingService(options: ExampleOptions, onChange: (what: string) => void) {
  const eventBus = serviceClient('ranking-service', options);
  const scores = new Map<number, Score>();
  const cache = new Map<string, { username: string; score: number }[]>();
  const counters = { hits: 0, misses: 0, invalidated: 0 };

  await eventBus.subscribe('score.*', (event) => {
    const { scoreId, userId, username, game } = event.data;
    const score = event.type === 'score.updated' ? event.data.newScore : event.data.score;
    scores.set(scoreId, { scoreId, userId, username, game, score });
    onChange(event.type);
  }, { group: 'ranking-service' });

  await eventBus.subscribe('cache.invalidate', (event) => {
    for (const key of event.data.keys as string[]) if (cache.delete(key)) counters.invalidated += 1;
    onChange(event.type);
  }, { group: 'ranking-cache' });

  function ranking(game: string | 'global') {
    const key = `ranking:${game}`;
    const cached = cache.get(key);
    if (cached !== undefined) {
      counters.hits += 1;
      return cached;
    }
    counters.misses += 1;
    const computed = [...scores.values()]
      .filter((score) => game === 'global' || score.game === game)
      .sort((a, b) => b.score - a.score)
      .map(({ username, score }) => ({ username, score }));
    cache.set(key, computed);
    return computed;
  }
  return { eventBus, ranking, counters };
}

export async function startNotificationService(options: ExampleOptions) {
  const eventBus = serviceClient('notification-service', options);
  const messages: string[] = [];
  await eventBus.subscribe('score.*', (event) => {
    const { username, game } = event.data;
    messages.push(
      event.type === 'score.created'
        ? `${username} scored ${event.data.score} in ${game}`
        : `${username} improved from ${event.data.oldScore} to ${event.data.newScore} in ${game}`,
    );
  }, { group: 'notification-service' });
  return { eventBus, messages };
}

export async function main(options: ExampleOptions = {}) {
  // What the ranking service has applied since the last expect().
  const seen = new Set<string>();
  let waiting: { types: string[]; applied: ReturnType<typeof outcome<void>> } | undefined;
  const expect = (types: string[]) => {
    seen.clear();
    waiting = { types, applied: outcome(`${types.join(' and ')} to be applied`) };
    return waiting.applied.promise;
  };

  const users = await startUserService(options);
  const ranking = await startRankingService(options, (type) => {
    seen.add(type);
    if (waiting !== undefined && waiting.types.every((t) => seen.has(t))) waiting.applied.done();
  });
  const notifications = await startNotificationService(options);
  const auth = serviceClient('auth-service', options);
  const scoreService = serviceClient('score-service', options);

  try {
    await auth.publish('user.created', { userId: 123, username: 'player1', email: 'player1@example.com', createdAt: new Date().toISOString() });
    let applied = expect(['score.created']);
    await scoreService.publish('score.created', { scoreId: 456, userId: 123, username: 'player1', game: 'doom', score: 15000 });
    await applied;
    const before = ranking.ranking('doom');

    applied = expect(['score.updated', 'cache.invalidate']);
    await scoreService.publish('score.updated', { scoreId: 456, userId: 123, username: 'player1', game: 'doom', oldScore: 15000, newScore: 20000 });
    await scoreService.publish('cache.invalidate', { keys: ['ranking:doom', 'ranking:global'] });
    await applied;
    const after = ranking.ranking('doom');
    const cachedAgain = ranking.ranking('doom');

    const registered = outcome('user-service to have the user');
    const poll = setInterval(() => users.users.has(123) && registered.done(), 5);
    await registered.promise.finally(() => clearInterval(poll));
    const notified = outcome('both score notifications');
    const pollMessages = setInterval(() => notifications.messages.length === 2 && notified.done(), 5);
    await notified.promise.finally(() => clearInterval(pollMessages));

    return {
      before,
      after,
      cachedAgain,
      cache: ranking.counters,
      users: Object.fromEntries(users.users),
      notifications: notifications.messages,
    };
  } finally {
    await Promise.all([users.eventBus.close(), ranking.eventBus.close(), notifications.eventBus.close(), auth.close(), scoreService.close()]);
  }
}

runIfMain(import.meta.url, main);
