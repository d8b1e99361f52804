// Reconnection: the server restarts under a working group member, a live subscriber and a
// publisher; the client buffers publishes while the server is down, within its bound.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { BufferFullError, EventBusClient, type PublishResult } from '@herald/client';

import { SERVICE_TOKEN, call, config, deferred, startServer, waitFor, within, type Server } from './support.js';

let server: Server;
const clients: EventBusClient[] = [];

function client(options: ConstructorParameters<typeof EventBusClient>[0] = {}): EventBusClient {
  const made = new EventBusClient({ eventBusUrl: server.url, authToken: SERVICE_TOKEN, reconnectDelayMs: 50, reconnectDelayMaxMs: 500, ...options });
  clients.push(made);
  return made;
}

before(async () => {
  server = await startServer();
});

after(async () => {
  await Promise.all(clients.map((made) => made.close()));
  await server.dispose();
});

test('a server restart loses no group delivery: the member reconnects, re-subscribes and gets every event', async () => {
  const worker = client({ timeout: 20_000 });
  const publisher = client({ timeout: 20_000 });
  const live = client();
  const handled = new Set<number>();
  let deliveries = 0;
  const events: string[] = [];
  worker.on('disconnected', () => events.push('disconnected'));
  worker.on('connected', ({ reconnected }) => events.push(reconnected ? 'reconnected' : 'connected'));
  await worker.subscribe(
    'job.*',
    async (event) => {
      deliveries += 1;
      await new Promise((resolve) => setTimeout(resolve, 2));
      handled.add(event.data.n);
    },
    { group: 'resilient', maxInFlight: 20 },
  );
  const liveSeen: number[] = [];
  await live.subscribe('job.*', (event) => {
    liveSeen.push(event.data.n);
  });

  const before = await Promise.all(Array.from({ length: 300 }, (_, n) => publisher.publish('job.created', { n })));
  assert.equal(before.length, 300);
  await waitFor(() => handled.size >= 30, 'the member to be working');
  await server.restart();
  const afterRestart = await Promise.all(Array.from({ length: 100 }, (_, n) => publisher.publish('job.created', { n: 300 + n })));
  assert.equal(afterRestart.length, 100);

  await waitFor(() => handled.size === 400, `all 400 events handled (have ${handled.size})`, 30_000);
  await waitFor(async () => {
    const group = (await call(server.url, 'GET', '/v1/groups/resilient')).body;
    return group.lag === 0 && group.inFlight === 0 && group.scheduled === 0;
  }, 'the group to have nothing left');
  assert.ok(deliveries >= 400, 'at least once');
  assert.ok(worker.metrics().reconnects >= 1);
  assert.deepEqual(events.slice(0, 3), ['connected', 'disconnected', 'reconnected']);
  // The live subscription resumed (from the latest event: it is at-most-once) after the
  // restart. It may have come back after the 100 above, so publish markers until one arrives.
  let marker = 1000;
  await waitFor(async () => {
    if (liveSeen.some((n) => n >= 1000)) return true;
    if (live.connected) await publisher.publish('job.marker', { n: marker++ });
    return false;
  }, 'a live event after the restart');
});

test('after a crash (kill -9) under load, every publish is answered and every event handled by the group', async () => {
  const worker = client({ timeout: 30_000 });
  const publisher = client({ timeout: 30_000, maxBufferedEvents: 5000 });
  const handled = new Set<number>();
  await worker.subscribe(
    'crash.*',
    (event) => {
      handled.add(event.data.n);
    },
    { group: 'crash-survivors', maxInFlight: 50 },
  );
  const total = 2000;
  // Publish in waves so that some pub frames are unanswered when the server dies.
  const publishes: Promise<PublishResult>[] = [];
  for (let n = 0; n < total; n += 1) {
    publishes.push(publisher.publish('crash.job', { n }));
    if (n === 1000) {
      await waitFor(() => handled.size > 100, 'the worker to be working');
      await server.kill();
      await server.start();
    }
  }
  const results = await Promise.all(publishes);
  assert.equal(results.length, total);
  await waitFor(() => handled.size === total, `all ${total} events handled (have ${handled.size})`, 30_000);
  // Frames re-sent after the crash were deduplicated by id: the stream holds each event once.
  const stream = (await call(server.url, 'GET', '/v1/streams/crash')).body;
  assert.equal(stream.events, total);
  assert.equal(new Set(results.map((result) => result.seq)).size, total);
});

test('publishes wait in a bounded buffer while the server is down, and are stored once when it is back', async () => {
  const bus = client({ maxBufferedEvents: 20, timeout: 20_000 });
  await bus.publish('buffered.warmup', {});
  await server.stop();
  await waitFor(() => !bus.connected, 'the client to notice');

  const waiting: Promise<PublishResult>[] = Array.from({ length: 20 }, (_, n) => bus.publish('buffered.tick', { n }));
  assert.equal(bus.metrics().bufferedEvents, 20);
  await assert.rejects(bus.publish('buffered.tick', { n: 20 }), (error: unknown) => {
    assert.ok(error instanceof BufferFullError);
    assert.match(error.message, /20 events \(the limit is 20\) wait for the connection/);
    return true;
  });

  await server.start();
  const results = await Promise.all(waiting);
  const seqs = results.map((result) => result.seq!);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in order');
  assert.equal(new Set(seqs).size, 20);
  const stored = (await call(server.url, 'GET', '/v1/streams/buffered/events?from=1&limit=100')).body.events;
  assert.deepEqual(
    stored.filter((event: any) => event.type === 'buffered.tick').map((event: any) => event.data.n),
    Array.from({ length: 20 }, (_, n) => n),
    'each stored once, in order',
  );
  assert.equal(bus.metrics().bufferedEvents, 0);
});

test('a server that hangs (three silent heartbeats) counts as lost; the client reconnects once it answers again', async () => {
  const hanging = await startServer(config('', 'heartbeat = "200ms"'));
  const bus = new EventBusClient({ eventBusUrl: hanging.url, authToken: SERVICE_TOKEN, timeout: 1000, reconnectDelayMs: 50, reconnectDelayMaxMs: 200, logLevel: 'silent' });
  try {
    const seen: number[] = [];
    await bus.subscribe('hang.*', (event) => {
      seen.push(event.data.n);
    });
    const lost = deferred<string>();
    bus.once('disconnected', ({ reason }) => lost.resolve(reason));
    hanging.signal('SIGSTOP');
    const reason = await within(lost.promise, 'the client to notice the silence');
    assert.match(reason, /nothing heard from herald for 600 ms/);
    hanging.signal('SIGCONT');
    await waitFor(() => bus.connected, 'the client to reconnect');
    let n = 0;
    await waitFor(async () => {
      if (seen.length > 0) return true;
      await bus.publish('hang.tick', { n: n++ });
      return false;
    }, 'the re-created subscription to receive');
  } finally {
    hanging.signal('SIGCONT');
    await bus.close();
    await hanging.dispose();
  }
});
