// Seed 002's ADR on Herald: domain events in the DomainEvent envelope (id, type, version,
// timestamp, source, correlationId, data, metadata), consumer groups instead of hand-rolled
// XREADGROUP loops, fan-out to independent consumers, and replay of the past for a consumer
// that starts later. The event catalog:
//
//   user.created  → notification (welcome email), search (index)
//   user.updated  → search
//
//   EVENT_BUS_URL=… EVENT_BUS_TOKEN=… node build/examples/user-registration/index.js

import { randomUUID } from 'node:crypto';

import type { HeraldEvent } from '@herald/client';

import { outcome, runIfMain, serviceClient, type ExampleOptions } from '../shared.js';

interface UserCreatedData {
  userId: string;
  email: string;
  role: 'FREELANCER' | 'CLIENT';
}

/** The user service publishes domain events; the event id is its own (`evt_…`), so that a
 * retried publish is stored once (the server's dedupe window). */
export function userService(options: ExampleOptions) {
  const eventBus = serviceClient('user-service', options);
  return {
    eventBus,
    async register(user: UserCreatedData, requestId: string) {
      return eventBus.publish('user.created', user, {
        id: `evt_${randomUUID()}`,
        version: '1.0',
        correlationId: requestId,
        metadata: { origin: 'signup-form' },
      });
    },
    async update(userId: string, changes: Record<string, unknown>, requestId: string) {
      return eventBus.publish('user.updated', { userId, ...changes }, { id: `evt_${randomUUID()}`, correlationId: requestId });
    },
  };
}

/** Welcome emails, idempotent by event id: a redelivered event sends nothing twice. */
export async function startNotificationService(options: ExampleOptions, onEmail: () => void) {
  const eventBus = serviceClient('notification-service', options);
  const sent = new Map<string, { to: string; userId: string; correlationId?: string }>();
  await eventBus.subscribe(
    'user.created',
    async (event: HeraldEvent<UserCreatedData>) => {
      if (sent.has(event.id)) return;
      sent.set(event.id, { to: event.data.email, userId: event.data.userId, correlationId: event.correlationId });
      onEmail();
    },
    { group: 'notification' },
  );
  return { eventBus, sent };
}

/** The search index: users by id, kept up to date by user.created and user.updated. */
export async function startSearchService(options: ExampleOptions, onIndexed: () => void) {
  const eventBus = serviceClient('search-service', options);
  const index = new Map<string, Record<string, unknown>>();
  await eventBus.subscribe(
    'user.*',
    async (event) => {
      index.set(event.data.userId, { ...index.get(event.data.userId), ...event.data });
      onIndexed();
    },
    { group: 'search' },
  );
  return { eventBus, index };
}

export async function main(options: ExampleOptions = {}) {
  const users: UserCreatedData[] = [
    { userId: 'usr_1', email: 'ada@example.com', role: 'FREELANCER' },
    { userId: 'usr_2', email: 'grace@example.com', role: 'CLIENT' },
    { userId: 'usr_3', email: 'linus@example.com', role: 'FREELANCER' },
  ];
  const emailed = outcome('three welcome emails');
  const indexed = outcome('four index updates');
  let emails = 0;
  let updates = 0;
  const notification = await startNotificationService(options, () => ++emails === users.length && emailed.done());
  const search = await startSearchService(options, () => ++updates === users.length + 1 && indexed.done());
  const producer = userService(options);
  const analytics = serviceClient('analytics-service', options);

  try {
    const published = [];
    for (const [n, user] of users.entries()) published.push(await producer.register(user, `req_${n + 1}`));
    await producer.update('usr_2', { role: 'FREELANCER' }, 'req_4');
    await Promise.all([emailed.promise, indexed.promise]);

    // Later, a new consumer: analytics replays every user event from the start of the stream.
    const replayed: string[] = [];
    const replayDone = outcome('the analytics replay');
    await analytics.subscribe(
      'user.*',
      (event) => {
        replayed.push(`${event.type} ${event.data.userId}`);
        if (replayed.length === users.length + 1) replayDone.done();
      },
      { group: 'analytics', from: 'earliest' },
    );
    await replayDone.promise;

    return {
      published,
      emails: [...notification.sent.values()],
      index: Object.fromEntries(search.index),
      replayed,
    };
  } finally {
    await Promise.all([notification.eventBus.close(), search.eventBus.close(), producer.eventBus.close(), analytics.close()]);
  }
}

runIfMain(import.meta.url, main);
