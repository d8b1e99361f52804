// Seed 004's snippets run as the seed writes them (test/seed004-snippets.ts), with the default
// eventBus configured from EVENT_BUS_URL, EVENT_BUS_TOKEN and SERVICE_NAME.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { io, type Socket } from 'socket.io-client';

import { eventBus, type HeraldEvent } from '@herald/client';

import * as seed from './seed004-snippets.js';
import { SERVICE_TOKEN, startServer, token, waitFor, within, type Server } from './support.js';

let server: Server;
const sockets: Socket[] = [];
const logged: unknown[][] = [];
const consoleLog = console.log;

async function browser(user: string, claims: Record<string, unknown> = {}): Promise<Socket> {
  const socket = io(server.url, { auth: { token: token(user, claims) }, reconnection: false, forceNew: true });
  sockets.push(socket);
  await within(new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('connect_error', reject);
  }), `browser ${user}`);
  return socket;
}

function nextOn(socket: Socket, type: string): Promise<any> {
  return within(new Promise((resolve) => socket.once(type, (data: unknown) => resolve(data))), `${type} on a browser`);
}

before(async () => {
  server = await startServer();
  process.env.EVENT_BUS_URL = server.url;
  process.env.EVENT_BUS_TOKEN = SERVICE_TOKEN;
  process.env.SERVICE_NAME = 'photo-api-service';
  console.log = (...args: unknown[]) => {
    logged.push(args);
  };
});

after(async () => {
  console.log = consoleLog;
  for (const socket of sockets) socket.close();
  await eventBus.close();
  await server.dispose();
});

test('Basic Setup: the default eventBus publishes; the result says where it is stored', async () => {
  const result = await seed.basicSetup();
  assert.equal(result.stream, 'user');
  assert.ok(result.seq! >= 1);
  assert.equal(eventBus.options.httpUrl, server.url);
  assert.equal(eventBus.options.serviceName, 'photo-api-service');
});

test("Getting Started: publish, subscribe('user.*'), sendToUser", async () => {
  const user = await browser('user-123');
  const notification = nextOn(user, 'notification.new');
  await seed.gettingStarted();
  assert.deepEqual(await notification, { message: 'Your photo is ready!' });
  // The subscription is live: it sees user.* events published from now on.
  await eventBus.publish('user.logged_in', { userId: '123' });
  await eventBus.publish('user.profile.updated', { userId: '123' });
  await eventBus.publish('user.logged_out', { userId: '123' });
  await waitFor(() => logged.filter((line) => line[0] === 'User event received:').length === 2, 'two user.* events');
  const types = logged.filter((line) => line[0] === 'User event received:').map((line) => (line[1] as { type: string }).type);
  assert.deepEqual(types, ['user.logged_in', 'user.logged_out'], "'user.*' is one token: not user.profile.updated");
});

test("Real-time User Notifications: publishToUser reaches the user; publishToRoom('session:abc123') reaches the session's browser and a listening service", async () => {
  const user = await browser('user-123', { herald: { rooms: ['session:*'] } });
  const notification = nextOn(user, 'notification.new');
  await seed.notifyUser();
  assert.deepEqual(await notification, { title: 'Photo processed', message: 'Your vacation photo is ready!', photoId: '456' });

  // The seed's room name as written: the browser joins it, a service listens to it.
  assert.deepEqual(await user.timeout(5000).emitWithAck('join', 'session:abc123'), { ok: true });
  const heard: HeraldEvent[] = [];
  const listening = await eventBus.subscribeToRoom('session:abc123', (event) => {
    heard.push(event);
  });
  const welcome = nextOn(user, 'notification.new');
  await seed.notifySessionRoom();
  assert.deepEqual(await welcome, { title: 'Welcome back!', message: 'We missed you!' });
  await waitFor(() => heard.length === 1, 'the room event at the listening service');
  assert.equal(heard[0]!.type, 'notification.new');
  assert.deepEqual(heard[0]!.data, { title: 'Welcome back!', message: 'We missed you!' });
  await eventBus.leaveRoom('session:abc123');
  assert.equal(await listening.ended, undefined);
});

test('System-wide Broadcasts: every socket, and every service', async () => {
  const a = await browser('user-a');
  const b = await browser('user-b');
  const received = Promise.all([nextOn(a, 'system.maintenance'), nextOn(b, 'system.maintenance')]);
  const configs: unknown[] = [];
  await eventBus.subscribe('system.config.*', (event) => {
    configs.push(event.data);
  });
  await seed.systemBroadcasts();
  for (const data of await received) assert.equal(data.duration, '30 minutes');
  await waitFor(() => configs.length === 1, 'system.config.updated');
  assert.deepEqual(configs[0], { configKey: 'upload.limits', newValue: '50MB', updatedBy: 'admin-789' });
});

test('Check Service Health: healthCheck and getStats', async () => {
  await seed.checkServiceHealth();
  const line = (label: string) => logged.find((entry) => entry[0] === label)?.[1];
  assert.equal(line('Event Bus Health:'), 'healthy');
  assert.ok((line('Events published:') as number) >= 4);
  assert.ok((line('Active subscriptions:') as number) >= 2);
});

test('Debug Event Flow: traceId and source travel with the event', async () => {
  const seen: any[] = [];
  await eventBus.subscribe('photo.uploaded', (event) => {
    seen.push(event);
  });
  await seed.debugEventFlow();
  await waitFor(() => seen.length === 1, 'photo.uploaded');
  assert.equal(seen[0].traceId, 'trace-abc-123');
  // With auth on, the server sets source to the token's name, whatever the publisher says.
  assert.equal(seen[0].source, 'api');
});

test('Advanced Configuration: seed 004 options', async () => {
  const client = seed.advancedConfiguration();
  try {
    assert.equal(client.options.batchSize, 10);
    assert.equal(client.options.serviceName, 'photo-api-service');
    assert.equal((await client.publish('photo.uploaded', { photoId: '1' })).stream, 'photo');
  } finally {
    await client.close();
  }
});
