// @herald/client against the real herald binary: every method of seed 004's interface, groups
// with retries and dead letters, bad input, and the client's own limits.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { io, type Socket } from 'socket.io-client';

import {
  BufferFullError,
  ClosedError,
  ConnectionError,
  DeadLetterError,
  EventBusClient,
  HeraldError,
  InvalidArgumentError,
  ServerError,
  TimeoutError,
  type HeraldEvent,
} from '@herald/client';

import { FAST_POLICY, LIMITED_TOKEN, SERVICE_TOKEN, deferred, startServer, token, waitFor, within, type Server } from './support.js';

let server: Server;
const clients: EventBusClient[] = [];
const sockets: Socket[] = [];

function client(options: ConstructorParameters<typeof EventBusClient>[0] = {}): EventBusClient {
  const made = new EventBusClient({ eventBusUrl: server.url, authToken: SERVICE_TOKEN, serviceName: 'tests', ...options });
  clients.push(made);
  return made;
}

async function browser(user: string, claims: Record<string, unknown> = {}): Promise<Socket> {
  const socket = io(server.url, { auth: { token: token(user, claims) }, reconnection: false, forceNew: true });
  sockets.push(socket);
  await within(
    new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('connect_error', reject);
    }),
    `browser ${user} to connect`,
  );
  return socket;
}

function nextOn(socket: Socket, type: string): Promise<{ data: any; meta: any }> {
  return within(new Promise((resolve) => socket.once(type, (data: any, meta: any) => resolve({ data, meta }))), `${type} on a browser`);
}

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const socket of sockets) socket.close();
  await Promise.all(clients.map((made) => made.close()));
  await server.dispose();
});

describe('publish', () => {
  test('stores an event and answers where; the envelope carries the options', async () => {
    const bus = client();
    const received = deferred<HeraldEvent>();
    await bus.subscribe('invoice.*', (event) => received.resolve(event));
    const result = await bus.publish(
      'invoice.created',
      { invoiceId: 'inv-1', total: 42 },
      { traceId: 'trace-abc-123', correlationId: 'req_xyz', key: 'inv-1', userId: 'user-456', metadata: { region: 'eu' } },
    );
    assert.equal(result.stream, 'invoice');
    assert.equal(typeof result.seq, 'number');
    assert.equal(result.duplicate, false);
    const event = await within(received.promise, 'the event');
    assert.equal(event.id, result.id);
    assert.deepEqual(event.data, { invoiceId: 'inv-1', total: 42 });
    assert.equal(event.traceId, 'trace-abc-123');
    assert.equal(event.correlationId, 'req_xyz');
    assert.equal(event.key, 'inv-1');
    assert.equal(event.userId, 'user-456');
    assert.deepEqual(event.metadata, { region: 'eu' });
    assert.equal(event.source, 'api', 'with auth on, source is the token name');
    assert.equal(event.version, '1.0');
    assert.equal(event.seq, result.seq);
  });

  test('an id already stored is not stored again', async () => {
    const bus = client();
    const first = await bus.publish('invoice.paid', { n: 1 }, { id: 'invoice-paid-1' });
    const again = await bus.publish('invoice.paid', { n: 1 }, { id: 'invoice-paid-1' });
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, first.seq);
  });

  test('concurrent publishes are batched and stored in call order', async () => {
    const bus = client({ batchSize: 50 });
    const results = await Promise.all(Array.from({ length: 1000 }, (_, n) => bus.publish('batch.tick', { n })));
    for (let n = 1; n < results.length; n += 1) assert.equal(results[n]!.seq, results[n - 1]!.seq! + 1);
    assert.equal(bus.metrics().eventsPublished, 1000);
  });

  test('bad input fails at the call with a message naming the problem; nothing is sent', async () => {
    const bus = client();
    await assert.rejects(bus.publish('user..created', {}), (error: unknown) => {
      assert.ok(error instanceof InvalidArgumentError);
      assert.equal(error.code, 'invalid_argument');
      assert.match(error.message, /token 2 "" is not/);
      return true;
    });
    await assert.rejects(bus.publish('user.*', {}), /event type "user\.\*": token 2/);
    await assert.rejects(bus.publish('user.created', undefined), /must be a JSON value/);
    await assert.rejects(bus.publish('user.created', {}, { traceid: 'x' } as any), /unknown publish option "traceid"/);
    await assert.rejects(bus.publish('user.created', {}, { metadata: { n: 1 } as any }), /metadata\.n must be a string/);
    const circular: any = {};
    circular.self = circular;
    await assert.rejects(bus.publish('user.created', circular), /does not encode as JSON/);
    await assert.rejects(bus.subscribe('user.>.x', () => {}), /'>' \(token 2\) may only be the last token/);
    await assert.rejects(bus.subscribe('user.*', 'not a function' as any), /handler must be a function/);
    await assert.rejects(bus.subscribe('user.*', () => {}, { from: 'yesterday' }), /from must be/);
    assert.throws(() => new EventBusClient({ timeout: -1 }), /option timeout must be an integer >= 1/);
    assert.throws(() => new EventBusClient({ eventBusUrl: 'ftp://x' }), /scheme must be http/);
    assert.throws(() => new EventBusClient({ batchsize: 10 } as any), /unknown option "batchsize"/);
    assert.equal(bus.connected, false, 'nothing was sent, so nothing connected');
  });

  test("the server's refusal of one event fails that publish only", async () => {
    const bus = client();
    const [good, bad, alsoGood] = await Promise.allSettled([
      bus.publish('refusal.ok', { n: 1 }),
      bus.publish('refusal.ok', { n: 2 }, { id: 'x'.repeat(200) }),
      bus.publish('refusal.ok', { n: 3 }),
    ]);
    assert.equal(good.status, 'fulfilled');
    assert.equal(alsoGood.status, 'fulfilled');
    assert.equal(bad.status, 'rejected');
    const error = (bad as PromiseRejectedResult).reason;
    assert.ok(error instanceof ServerError);
    assert.equal(error.code, 'invalid_event');
    assert.match(error.message, /id/);
  });

  test("a token's publish patterns are enforced", async () => {
    const bus = client({ authToken: LIMITED_TOKEN });
    assert.ok((await bus.publish('chat.message', { text: 'hi' })).seq! >= 1);
    await assert.rejects(bus.publish('order.created', {}), (error: unknown) => error instanceof ServerError && error.code === 'forbidden');
  });

  test('an unknown token is refused at once, not retried', async () => {
    const bus = client({ authToken: 'no-such-token-0123456789', maxRetries: 5 });
    const started = Date.now();
    await assert.rejects(bus.publish('user.created', {}), (error: unknown) => error instanceof ServerError && error.code === 'unauthorized');
    assert.ok(Date.now() - started < 2000);
  });
});

describe('subscribe', () => {
  test("a live subscription to 'user.*' gets user.created, not user.profile.updated, until unsubscribed", async () => {
    const bus = client();
    const seen: string[] = [];
    const sub = await bus.subscribe('member.*', (event) => {
      seen.push(event.type);
    });
    assert.match(sub.id, /^sub-/);
    await bus.publish('member.profile.updated', {});
    await bus.publish('member.created', {});
    await waitFor(() => seen.length === 1, 'member.created');
    assert.deepEqual(seen, ['member.created']);
    await bus.unsubscribe(sub.id);
    assert.equal(await sub.ended, undefined);
    await bus.publish('member.deleted', {});
    // A marker on another subscription proves the deleted event went by.
    const marker = deferred();
    await bus.subscribe('member.marker', () => marker.resolve());
    await bus.publish('member.marker', {});
    await within(marker.promise, 'the marker');
    assert.deepEqual(seen, ['member.created']);
    await assert.rejects(bus.unsubscribe(sub.id), /no subscription/);
  });

  test('from earliest replays what is stored', async () => {
    const bus = client();
    await bus.publish('replay.one', { n: 1 });
    await bus.publish('replay.two', { n: 2 });
    const seen: number[] = [];
    await bus.subscribe('replay.>', (event) => {
      seen.push(event.data.n);
    }, { from: 'earliest' });
    await waitFor(() => seen.length === 2, 'the replay');
    assert.deepEqual(seen, [1, 2]);
  });

  test('group members share the events; a resolving handler acks', async () => {
    const a = client();
    const b = client();
    const byMember = { a: 0, b: 0 };
    const slow = (member: 'a' | 'b') => async () => {
      byMember[member] += 1;
      await new Promise((resolve) => setImmediate(resolve));
    };
    await a.subscribe('share.*', slow('a'), { group: 'share-workers', maxInFlight: 5 });
    await b.subscribe('share.*', slow('b'), { group: 'share-workers', maxInFlight: 5 });
    await Promise.all(Array.from({ length: 200 }, (_, n) => a.publish('share.job', { n })));
    await waitFor(() => byMember.a + byMember.b === 200, '200 deliveries');
    assert.ok(byMember.a > 0 && byMember.b > 0, `both members got work: ${JSON.stringify(byMember)}`);
    await waitFor(async () => (await a.getGroup('share-workers')).acked === 200, 'the group to count 200 acks');
    const group = await a.getGroup('share-workers');
    assert.equal(group.lag, 0);
    assert.equal(group.inFlight, 0);
  });

  test('a throwing handler nacks: retried with backoff, then dead-lettered; redrive brings it back', async () => {
    const bus = client();
    const attempts: number[] = [];
    const times: number[] = [];
    let fail = true;
    const done = deferred();
    await bus.subscribe(
      'charge.*',
      async (event, context) => {
        attempts.push(context.attempt);
        times.push(Date.now());
        assert.equal(context.group, 'billing');
        if (fail) throw new Error(`card declined for ${event.data.orderId}`);
        done.resolve();
      },
      { group: 'billing', policy: FAST_POLICY },
    );
    const { id } = await bus.publish('charge.requested', { orderId: 'o-1' });
    await waitFor(async () => (await bus.deadLetters('billing')).length === 1, 'the dead letter');
    assert.deepEqual(attempts, [1, 2, 3, 4], '3 retries: 4 deliveries');
    for (let n = 1; n < times.length; n += 1) {
      assert.ok(times[n]! - times[n - 1]! >= 40, `backoff between attempts: ${times.map((t) => t - times[0]!)}`);
    }
    const [dead] = await bus.deadLetters('billing');
    assert.equal(dead!.event.id, id);
    assert.equal(dead!.attempts, 4);
    assert.match(dead!.lastError!, /card declined for o-1/);
    assert.equal(bus.metrics().nacked, 4);
    fail = false;
    assert.equal(await bus.redriveDeadLetters('billing'), 1);
    await within(done.promise, 'the redriven event');
    assert.equal((await bus.deadLetters('billing')).length, 0);
  });

  test('a DeadLetterError dead-letters at once', async () => {
    const bus = client();
    let calls = 0;
    await bus.subscribe(
      'parse.*',
      () => {
        calls += 1;
        throw new DeadLetterError('payload has no userId');
      },
      { group: 'parsers', policy: FAST_POLICY },
    );
    await bus.publish('parse.input', { nothing: true });
    await waitFor(async () => (await bus.deadLetters('parsers')).length === 1, 'the dead letter');
    assert.equal(calls, 1);
    const [dead] = await bus.deadLetters('parsers');
    assert.equal(dead!.attempts, 1);
    assert.match(dead!.lastError!, /payload has no userId/);
    assert.equal(await bus.purgeDeadLetters('parsers'), 1);
  });

  test('context.extend keeps a long handler from being redelivered', async () => {
    const bus = client();
    const attempts: number[] = [];
    const done = deferred();
    await bus.subscribe(
      'long.*',
      async (_event, context) => {
        attempts.push(context.attempt);
        for (let n = 0; n < 4; n += 1) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          await context.extend();
        }
        done.resolve();
      },
      { group: 'long-workers', policy: { ...FAST_POLICY, ackTimeoutMs: 250 } },
    );
    await bus.publish('long.job', {});
    await within(done.promise, 'the long handler');
    await waitFor(async () => (await bus.getGroup('long-workers')).acked === 1, 'the ack');
    assert.deepEqual(attempts, [1]);
  });

  test('a member that goes away has its unsettled deliveries redelivered to another member', async () => {
    const stuck = client({ timeout: 300 });
    const other = client();
    const first = deferred<number>();
    const second = deferred<number>();
    await stuck.subscribe('handoff.*', (_event, context) => {
      first.resolve(context.attempt);
      return new Promise(() => {}); // never finishes
    }, { group: 'handoff' });
    await stuck.publish('handoff.job', { n: 1 });
    assert.equal(await within(first.promise, 'the first delivery'), 1);
    await other.subscribe('handoff.*', (_event, context) => second.resolve(context.attempt), { group: 'handoff' });
    await stuck.close(); // gives up on the stuck handler after its timeout
    assert.equal(await within(second.promise, 'the redelivery'), 2, 'counted as an attempt');
  });

  test('concurrency runs that many handlers of a subscription at once', async () => {
    const bus = client();
    let running = 0;
    let most = 0;
    let handled = 0;
    await bus.subscribe('parallel.*', async () => {
      running += 1;
      most = Math.max(most, running);
      await new Promise((resolve) => setTimeout(resolve, 20));
      running -= 1;
      handled += 1;
    }, { group: 'parallel', concurrency: 4, maxInFlight: 10 });
    await Promise.all(Array.from({ length: 12 }, (_, n) => bus.publish('parallel.job', { n })));
    await waitFor(() => handled === 12, '12 handled');
    assert.equal(most, 4);
  });

  test('a live subscription whose handler falls behind is dropped, not the publishers', async () => {
    const bus = client({ liveBufferEvents: 5 });
    const release = deferred();
    const closed = deferred<{ error: Error }>();
    bus.on('subscriptionClosed', (info) => closed.resolve(info));
    const sub = await bus.subscribe('flood.*', () => release.promise);
    await Promise.all(Array.from({ length: 20 }, (_, n) => bus.publish('flood.tick', { n })));
    const error = await within(sub.ended, 'the subscription to end');
    assert.equal((error as { code?: string }).code, 'slow_consumer');
    assert.match(error!.message, /fell 5 events behind/);
    assert.equal((await closed.promise).error, error);
    release.resolve();
  });

  test('Subscription.unsubscribe and connect()', async () => {
    const bus = client();
    await bus.connect();
    assert.equal(bus.connected, true);
    const sub = await bus.subscribe('handle.*', () => {});
    assert.equal(bus.metrics().activeSubscriptions, 1);
    await sub.unsubscribe();
    assert.equal(await sub.ended, undefined);
    assert.equal(bus.metrics().activeSubscriptions, 0);
  });

  test('HTTP refusals are ServerErrors with the status', async () => {
    const bus = client();
    await assert.rejects(bus.getGroup('no-such-group'), (error: unknown) => {
      assert.ok(error instanceof ServerError);
      assert.equal(error.code, 'not_found');
      assert.equal(error.status, 404);
      return true;
    });
  });

  test('a group keeps its pattern: another pattern is a conflict', async () => {
    const bus = client();
    await bus.subscribe('fixed.a', () => {}, { group: 'fixed' });
    await assert.rejects(bus.subscribe('fixed.b', () => {}, { group: 'fixed' }), (error: unknown) => error instanceof ServerError && error.code === 'conflict');
  });
});

describe('real-time sends to browsers', () => {
  test('publishToUser, sendToUser, publishToRoom and broadcast reach stock socket.io-client sockets', async () => {
    const bus = client();
    const alice = await browser('alice', { herald: { rooms: ['game.*'] } });
    const bob = await browser('bob');

    const toAlice = nextOn(alice, 'notification.new');
    assert.deepEqual(await bus.publishToUser('alice', 'notification.new', { title: 'Photo processed' }), { delivered: 1 });
    const { data, meta } = await toAlice;
    assert.deepEqual(data, { title: 'Photo processed' });
    assert.equal(meta.type, 'notification.new');
    assert.equal(meta.source, 'api');

    const again = nextOn(alice, 'notification.again');
    assert.equal((await bus.sendToUser('alice', 'notification.again', { n: 2 })).delivered, 1);
    assert.deepEqual((await again).data, { n: 2 });

    assert.deepEqual(await alice.timeout(5000).emitWithAck('join', 'game.lobby'), { ok: true });
    const inRoom = nextOn(alice, 'game.started');
    assert.equal((await bus.publishToRoom('game.lobby', 'game.started', { round: 1 })).delivered, 1);
    assert.deepEqual((await inRoom).data, { round: 1 });

    const everyoneA = nextOn(alice, 'system.maintenance');
    const everyoneB = nextOn(bob, 'system.maintenance');
    assert.ok((await bus.broadcast('system.maintenance', { duration: '30 minutes' })).delivered >= 2);
    assert.deepEqual((await everyoneA).data, { duration: '30 minutes' });
    assert.deepEqual((await everyoneB).data, { duration: '30 minutes' });

    assert.equal((await bus.publishToUser('nobody-here', 'notification.new', {})).delivered, 0);
    await assert.rejects(bus.publishToRoom('', 'x.y', {}), /room must be a non-empty string/);
    await assert.rejects(bus.publishToRoom('bad room!', 'game.started', {}), (error: unknown) => error instanceof ServerError && error.code === 'invalid_subject');
    assert.equal(bus.metrics().sent, 5);
  });

  test('joinRoom / subscribeToRoom / leaveRoom listen on the /v1/ws connection', async () => {
    const sender = client();
    const listener = client();
    const seen: HeraldEvent[] = [];
    const sub = await listener.subscribeToRoom('ops.alerts', (event) => {
      seen.push(event);
    });
    await sender.publishToRoom('ops.alerts', 'alert.raised', { level: 'high' });
    await waitFor(() => seen.length === 1, 'the room event');
    assert.equal(seen[0]!.type, 'alert.raised');
    assert.deepEqual(seen[0]!.data, { level: 'high' });
    assert.equal(seen[0]!.source, 'api');

    await listener.joinRoom('ops.audit');
    assert.equal((await sender.publishToRoom('ops.audit', 'audit.logged', {})).delivered, 1);
    await listener.leaveRoom('ops.audit');
    assert.equal((await sender.publishToRoom('ops.audit', 'audit.logged', {})).delivered, 0);

    // Rooms named with ':' (seed 004's 'session:abc123'), heard by the service and a browser.
    const browserInRoom = await browser('carol', { herald: { rooms: ['session:*'] } });
    assert.deepEqual(await browserInRoom.timeout(5000).emitWithAck('join', 'session:abc123'), { ok: true });
    const session: HeraldEvent[] = [];
    await listener.subscribeToRoom('session:abc123', (event) => {
      session.push(event);
    });
    const atBrowser = nextOn(browserInRoom, 'notification.new');
    assert.equal((await sender.publishToRoom('session:abc123', 'notification.new', { n: 1 })).delivered, 2);
    assert.deepEqual((await atBrowser).data, { n: 1 });
    await waitFor(() => session.length === 1, 'the session room event');

    // Handlers run one event at a time, in order.
    const ordered: number[] = [];
    await listener.subscribeToRoom('ops.ordered', async (event) => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      ordered.push(event.data.n);
    });
    for (let n = 0; n < 20; n++) await sender.publishToRoom('ops.ordered', 'ops.tick', { n });
    await waitFor(() => ordered.length === 20, 'twenty ordered room events');
    assert.deepEqual(ordered, [...Array(20).keys()]);

    await listener.unsubscribe(sub);
    assert.equal(await sub.ended, undefined);

    // The token's patterns decide: this one may listen to chat.* rooms only.
    const limited = client({ authToken: LIMITED_TOKEN });
    await limited.joinRoom('chat.general');
    await assert.rejects(limited.joinRoom('ops.alerts'), (error: unknown) => error instanceof ServerError && error.code === 'forbidden');
    await assert.rejects(listener.joinRoom('user:alice'), (error: unknown) => error instanceof ServerError && error.code === 'forbidden');
    await assert.rejects(listener.joinRoom('bad room!'), (error: unknown) => {
      assert.ok(error instanceof ServerError);
      assert.equal(error.code, 'invalid_subject');
      assert.match(error.message, /the character ' ' at byte 4/);
      return true;
    });
  });

  test('a room handler that falls liveBufferEvents behind is dropped; the others keep going', async () => {
    const sender = client();
    const listener = client({ liveBufferEvents: 2 });
    const stuck = deferred();
    const slow = await listener.subscribeToRoom('ops.flood', () => stuck.promise);
    const seen: number[] = [];
    await listener.subscribeToRoom('ops.flood', (event) => {
      seen.push(event.data.n);
    });
    // One running, two waiting, the fourth is one too many.
    for (let n = 0; n < 4; n++) await sender.publishToRoom('ops.flood', 'ops.tick', { n });
    const error = await within(slow.ended, 'the slow handler to be dropped');
    assert.ok(error instanceof HeraldError);
    assert.equal(error.code, 'slow_consumer');
    await waitFor(() => seen.length === 4, 'the other handler to see every event');
    assert.deepEqual(seen, [0, 1, 2, 3]);
    stuck.resolve();
  });

  test('rooms are joined again after a reconnect', async () => {
    const own = await startServer();
    try {
      const sender = new EventBusClient({ eventBusUrl: own.url, authToken: SERVICE_TOKEN, maxRetries: 10 });
      const listener = new EventBusClient({ eventBusUrl: own.url, authToken: SERVICE_TOKEN, reconnectDelayMs: 10, reconnectDelayMaxMs: 100 });
      clients.push(sender, listener);
      const seen: HeraldEvent[] = [];
      await listener.subscribeToRoom('session:re', (event) => {
        seen.push(event);
      });
      const reconnected = new Promise<void>((resolve) => listener.once('connected', () => resolve()));
      await own.restart();
      await within(reconnected, 'the listener to reconnect');
      // The join is sent right after the welcome; once the room counts this connection, events reach it.
      await waitFor(async () => (await sender.publishToRoom('session:re', 'a.b', { n: 1 })).delivered === 1, 'the room joined again');
      await waitFor(() => seen.length >= 1, 'a room event after the reconnect');
    } finally {
      await own.dispose();
    }
  });
});

describe('monitoring', () => {
  test('getStats: server-wide counts and this client', async () => {
    const bus = client();
    await bus.subscribe('stats.*', () => {});
    await bus.publish('stats.one', {});
    const stats = await bus.getStats();
    assert.ok(stats.eventsPublished >= 1);
    assert.ok(stats.activeSubscriptions >= 1);
    assert.ok(stats.connections >= 1);
    assert.ok(stats.streams.some((stream) => stream.name === 'stats'));
    assert.equal(stats.client!.eventsPublished, 1);
    assert.equal(stats.client!.activeSubscriptions, 1);
    const quiet = client({ enableMetrics: false });
    assert.equal((await quiet.getStats()).client, undefined);
  });

  test('healthCheck: healthy when up, unhealthy with the reason when unreachable', async () => {
    const bus = client();
    const health = await bus.healthCheck();
    assert.equal(health.status, 'healthy');
    assert.ok(health.parts.length >= 1);
    const nowhere = client({ eventBusUrl: 'http://127.0.0.1:1', maxRetries: 0, timeout: 1000 });
    const down = await nowhere.healthCheck();
    assert.equal(down.status, 'unhealthy');
    assert.match(down.error!, /127\.0\.0\.1:1/);
  });
});

describe('connection', () => {
  test('a server that is not there: ConnectionError after maxRetries', async () => {
    const bus = client({ eventBusUrl: 'http://127.0.0.1:1', maxRetries: 2, reconnectDelayMs: 10 });
    await assert.rejects(bus.publish('user.created', {}), (error: unknown) => {
      assert.ok(error instanceof ConnectionError);
      assert.equal(error.code, 'connection_failed');
      assert.match(error.message, /ws:\/\/127\.0\.0\.1:1\/v1\/ws/);
      return true;
    });
  });

  test('close answers what was taken, then refuses', async () => {
    const bus = client();
    const publishes = Array.from({ length: 50 }, (_, n) => bus.publish('closing.tick', { n }));
    await bus.close();
    const results = await Promise.all(publishes);
    assert.equal(results.length, 50);
    await assert.rejects(bus.publish('closing.tick', {}), ClosedError);
  });

  test('the package loads as CommonJS too, and the default eventBus reads EVENT_BUS_URL, EVENT_BUS_TOKEN, SERVICE_NAME', () => {
    const script = `
      const { eventBus, EventBusClient } = require('@herald/client');
      eventBus.publish('cjs.loaded', { ok: true }).then(async (result) => {
        console.log(JSON.stringify({ stream: result.stream, url: eventBus.options.httpUrl, service: eventBus.options.serviceName, ctor: typeof EventBusClient }));
        await eventBus.close();
      }, (error) => { console.error(error); process.exit(1); });`;
    const output = execFileSync(process.execPath, ['-e', script], {
      env: { ...process.env, EVENT_BUS_URL: server.url, EVENT_BUS_TOKEN: SERVICE_TOKEN, SERVICE_NAME: 'cjs-service' },
      timeout: 10_000,
    }).toString();
    assert.deepEqual(JSON.parse(output), { stream: 'cjs', url: server.url, service: 'cjs-service', ctor: 'function' });
  });
});

test('a script that only publishes exits by itself once its publishes are answered', () => {
  const script = `
    import { eventBus } from '@herald/client';
    const result = await eventBus.publish('exit.ok', { done: true });
    console.log(result.stream);`;
  const output = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, EVENT_BUS_URL: server.url, EVENT_BUS_TOKEN: SERVICE_TOKEN },
    timeout: 10_000,
  }).toString();
  assert.equal(output.trim(), 'exit');
});

describe('timeouts', () => {
  test('a subscribe that is never answered times out', async () => {
    const bus = client({ eventBusUrl: 'http://127.0.0.1:1', maxRetries: 100, timeout: 300, reconnectDelayMs: 50 });
    await assert.rejects(bus.subscribe('user.*', () => {}), (error: unknown) => error instanceof TimeoutError && error.code === 'timeout');
  });

  test('publishes beyond maxBufferedEvents fail at once with BufferFullError', async () => {
    const bus = client({ eventBusUrl: 'http://127.0.0.1:1', maxRetries: 100, timeout: 500, maxBufferedEvents: 3, reconnectDelayMs: 50 });
    const waiting = [1, 2, 3].map((n) => bus.publish('buffer.tick', { n }));
    await assert.rejects(bus.publish('buffer.tick', { n: 4 }), (error: unknown) => {
      assert.ok(error instanceof BufferFullError);
      assert.equal(error.code, 'buffer_full');
      assert.match(error.message, /3 events \(the limit is 3\)/);
      return true;
    });
    for (const result of await Promise.allSettled(waiting)) {
      assert.equal(result.status, 'rejected');
      assert.ok((result as PromiseRejectedResult).reason instanceof TimeoutError);
    }
  });
});
