// Seed 001's gamification events on Herald instead of a RabbitMQ topic exchange: the
// `achievement.*` queue is a consumer group, and the seed's retry strategy (3 retries, 1 s
// initial, x2, 60 s cap) and dead-letter queue are the group's policy, not code in the
// handler. The handler only says whether it succeeded: resolving acks, throwing nacks (retried
// with backoff), and after the last retry Herald dead-letters the event with its last error.
// The dead letters are then listed, and redriven once the cause is fixed. Health and metrics
// come in the seed's shapes (EventSystemHealth, EventMetrics).
//
//   EVENT_BUS_URL=… EVENT_BUS_TOKEN=… node build/examples/achievements/index.js

import type { EventBusClient, GroupPolicy } from '@herald/client';

import { outcome, runIfMain, serviceClient, type ExampleOptions } from '../shared.js';

/** The seed's retry strategy, as the group's policy. */
export const SEED_RETRY_POLICY: GroupPolicy = {
  maxRetries: 3,
  backoff: { initialMs: 1000, factor: 2, maxMs: 60_000, jitter: 0.2 },
};

export interface AchievementsOptions extends ExampleOptions {
  /** The first retry's delay (the seed's 1 s by default); tests make it shorter. */
  retryInitialMs?: number;
}

/** The seed's publishEvent(type, data, {correlationId}). */
function publishEventWith(eventBus: EventBusClient) {
  return (type: string, data: Record<string, unknown>, metadata: { correlationId?: string } = {}) =>
    eventBus.publish(type, data, { correlationId: metadata.correlationId, userId: data.userId as string | undefined });
}

export async function main(options: AchievementsOptions = {}) {
  const policy: GroupPolicy = {
    ...SEED_RETRY_POLICY,
    backoff: { ...SEED_RETRY_POLICY.backoff!, initialMs: options.retryInitialMs ?? 1000 },
  };
  const gamification = serviceClient('gamification-service', options);
  const consumer = serviceClient('achievement-consumer', options);
  const publishEvent = publishEventWith(gamification);

  // The points database: down for the first two writes (a transient outage), and it knows
  // only the achievements it has definitions for.
  const points = new Map<string, number>();
  const definitions = new Set(['achievement-123']);
  let outage = 2;
  const attemptsByEvent = new Map<string, number[]>();
  const started = Date.now();
  const metrics = { publishedEvents: 0, consumedEvents: 0, failedEvents: 0, retryCount: 0, processingTime: 0 };
  const awarded = outcome('the first achievement awarded after its retries');
  const redriven = outcome('the dead letter processed after the redrive');

  await consumer.subscribe(
    'achievement.*',
    async (event, context) => {
      const begin = performance.now();
      (attemptsByEvent.get(event.data.achievementId) ?? attemptsByEvent.set(event.data.achievementId, []).get(event.data.achievementId)!).push(context.attempt);
      if (context.attempt > 1) metrics.retryCount += 1;
      try {
        if (!definitions.has(event.data.achievementId)) throw new Error(`no definition for ${event.data.achievementId}`);
        if (outage > 0) {
          outage -= 1;
          throw new Error('points database unavailable');
        }
        points.set(event.data.userId, (points.get(event.data.userId) ?? 0) + event.data.points);
        metrics.consumedEvents += 1;
        if (event.data.achievementId === 'achievement-123') awarded.done();
        else redriven.done();
      } catch (error) {
        metrics.failedEvents += 1;
        throw error;
      } finally {
        metrics.processingTime += performance.now() - begin;
      }
    },
    { group: 'achievement_events', policy },
  );

  try {
    await publishEvent(
      'achievement.completed',
      { achievementId: 'achievement-123', userId: 'user-456', name: 'Achievement Name', points: 100, completedAt: new Date().toISOString() },
      { correlationId: 'correlation-789' },
    );
    metrics.publishedEvents += 1;
    // An achievement the service has no definition for yet: no retry helps.
    await publishEvent('achievement.completed', { achievementId: 'achievement-999', userId: 'user-456', name: 'Secret', points: 500 });
    metrics.publishedEvents += 1;

    await awarded.promise;
    const deadline = outcome('achievement-999 in the dead-letter queue', 30_000);
    const poll = setInterval(async () => {
      const dead = await consumer.deadLetters('achievement_events');
      if (dead.length === 1) deadline.done();
    }, 50);
    await deadline.promise.finally(() => clearInterval(poll));
    const deadLetters = await consumer.deadLetters('achievement_events');

    const group = await consumer.getGroup('achievement_events');
    const health = {
      herald: {
        connected: consumer.connected,
        queues: [{ name: group.name, messageCount: group.lag + group.inFlight + group.scheduled, consumerCount: group.members, deadLetters: group.deadLetters }],
      },
    };
    const status = (await consumer.healthCheck()).status;

    // The definition is deployed: put the dead letters back into the group.
    definitions.add('achievement-999');
    const redrivenCount = await consumer.redriveDeadLetters('achievement_events');
    await redriven.promise;

    return {
      attempts: Object.fromEntries(attemptsByEvent),
      deadLetters: deadLetters.map((dead) => ({ achievementId: dead.event.data.achievementId, attempts: dead.attempts, lastError: dead.lastError })),
      redriven: redrivenCount,
      points: Object.fromEntries(points),
      metrics: { ...metrics, queueLength: health.herald.queues[0]!.messageCount, elapsedMs: Date.now() - started },
      health,
      status,
    };
  } finally {
    await Promise.all([gamification.close(), consumer.close()]);
  }
}

runIfMain(import.meta.url, main);
