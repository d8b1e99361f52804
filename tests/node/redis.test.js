// Several herald processes on one Redis are one bus for browsers too (issue 7), seen with the
// stock socket.io-client: a send to a user, a room or everyone made through one process's
// HTTP API reaches every socket it targets on every process exactly once, and no other; a
// forwarding rule's stored event reaches each of the user's sockets once; /v1/stats adds the
// processes up; and once one process is killed (SIGKILL), sends still reach the survivors.
// Needs the machine's Redis (HERALD_TEST_REDIS_URL); skipped loudly without one, except under
// HERALD_REQUIRE_ENGINES=1.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  GRANTS,
  REDIS_URL,
  WAIT_MS,
  call,
  config,
  connected,
  isolatedPrefix,
  redisReachable,
  request,
  startServer,
  token,
} from './support.js';

const available = await redisReachable();

/** Resolves once `condition()` holds; fails with `what` after WAIT_MS. */
async function until(condition, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`never happened: ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('three processes on one Redis', { skip: !available && 'no Redis' }, () => {
  const { prefix, cleanup } = available ? isolatedPrefix() : {};
  const servers = [];
  /** name → { socket, received: ["event=data", …] } */
  const sockets = {};

  const open = async (name, server, user) => {
    const socket = server.connect({ auth: { token: token(user, GRANTS) }, transports: ['websocket'] });
    const received = [];
    socket.onAny((event, data) => received.push(`${event}=${JSON.stringify(data)}`));
    await connected(socket);
    sockets[name] = { socket, received };
  };

  /** Broadcasts a sentinel through `server` and resolves with what each of `names` received
   * before it, clearing their records. Sends from one process reach each other process in
   * order, so whatever came twice or to the wrong socket came before the sentinel. */
  const receivedUntilSentinel = async (server, names, n) => {
    const sentinel = `test.end=${n}`;
    const sent = await call(server.url, 'POST', '/v1/realtime/broadcast', { type: 'test.end', data: n });
    assert.equal(sent.status, 200, JSON.stringify(sent.body));
    const result = {};
    for (const name of names) {
      const { received } = sockets[name];
      await until(() => received.includes(sentinel), () => `${name} gets ${sentinel}: ${received}`);
      result[name] = received.splice(0).filter((entry) => entry !== sentinel);
    }
    return result;
  };

  const send = async (server, route, type, data) => {
    const sent = await call(server.url, 'POST', route, { type, data });
    assert.equal(sent.status, 200, JSON.stringify(sent.body));
    return sent.body;
  };

  const realtimeStats = async (server) => (await call(server.url, 'GET', '/v1/stats')).body.realtime;

  before(async () => {
    for (let i = 0; i < 3; i += 1) {
      servers.push(
        await startServer(config(), {
          args: ['--engine', 'redis', '--redis-url', REDIS_URL],
          env: { HERALD_REDIS__KEY_PREFIX: prefix, HERALD_REDIS__PROCESS_TTL: '1s' },
        }),
      );
    }
    const [a, b, c] = servers;
    await open('alice@a', a, 'alice');
    await open('carol@a', a, 'carol');
    await open('alice@b', b, 'alice');
    await open('bob@c', c, 'bob');
    await open('dave@c', c, 'dave');
    for (const name of ['alice@b', 'bob@c']) {
      assert.deepEqual(await request(sockets[name].socket, 'join', 'chat.general'), { ok: true });
    }
  });

  after(async () => {
    for (const server of servers) await server.stop();
    await cleanup?.();
  });

  test('sends through one process reach the targeted sockets on every process exactly once', async () => {
    const [a] = servers;
    // `delivered` counts the sockets of the process that answered.
    assert.equal((await send(a, '/v1/realtime/users/alice', 'notification.new', 1)).delivered, 1);
    assert.equal((await send(a, '/v1/realtime/rooms/chat.general', 'chat.message', 2)).delivered, 0);
    assert.equal((await send(a, '/v1/realtime/broadcast', 'news.flash', 3)).delivered, 2);
    assert.deepEqual(await receivedUntilSentinel(a, Object.keys(sockets), 1), {
      'alice@a': ['notification.new=1', 'news.flash=3'],
      'carol@a': ['news.flash=3'],
      'alice@b': ['notification.new=1', 'chat.message=2', 'news.flash=3'],
      'bob@c': ['chat.message=2', 'news.flash=3'],
      'dave@c': ['news.flash=3'],
    });
  });

  test('a forwarding rule sends a stored event to each socket of its user once', async () => {
    const [a, b] = servers;
    const published = await send(b, '/v1/events', 'photo.processing.progress', { userId: 'alice', progress: 50 });
    assert.equal(published.seq, 1);
    for (const name of ['alice@a', 'alice@b']) {
      const { received } = sockets[name];
      await until(() => received.length > 0, () => `${name} gets the forwarded event`);
    }
    assert.deepEqual(await receivedUntilSentinel(a, Object.keys(sockets), 2), {
      'alice@a': ['photo.processing.progress={"progress":50,"userId":"alice"}'],
      'carol@a': [],
      'alice@b': ['photo.processing.progress={"progress":50,"userId":"alice"}'],
      'bob@c': [],
      'dave@c': [],
    });
  });

  test('/v1/stats adds up the sockets, users and rooms of every process', async () => {
    const wanted = { connections: 5, users: 4, roomsTotal: 1, rooms: [{ name: 'chat.general', members: 2 }] };
    for (const server of servers) {
      let last;
      await until(
        async () => {
          last = await realtimeStats(server);
          return JSON.stringify(last) === JSON.stringify(wanted);
        },
        () => `stats add up on ${server.url}: ${JSON.stringify(last)}`,
      );
    }
  });

  test('after one process is killed, sends still reach the sockets on the survivors', async () => {
    const [a, b, c] = servers;
    await c.kill();
    delete sockets['bob@c'];
    delete sockets['dave@c'];
    await send(a, '/v1/realtime/users/alice', 'notification.new', 4);
    await send(a, '/v1/realtime/rooms/chat.general', 'chat.message', 5);
    await send(a, '/v1/realtime/broadcast', 'news.flash', 6);
    assert.deepEqual(await receivedUntilSentinel(a, Object.keys(sockets), 3), {
      'alice@a': ['notification.new=4', 'news.flash=6'],
      'carol@a': ['news.flash=6'],
      'alice@b': ['notification.new=4', 'chat.message=5', 'news.flash=6'],
    });
    // And through the other survivor.
    await send(b, '/v1/realtime/users/alice', 'notification.new', 7);
    assert.deepEqual(await receivedUntilSentinel(b, Object.keys(sockets), 4), {
      'alice@a': ['notification.new=7'],
      'carol@a': [],
      'alice@b': ['notification.new=7'],
    });
    // The dead process's sockets leave the stats once its report expires (the process TTL).
    let last;
    await until(
      async () => {
        last = await realtimeStats(a);
        return last.connections === 3 && last.users === 2;
      },
      () => `stats forget the dead process: ${JSON.stringify(last)}`,
    );
  });
});
