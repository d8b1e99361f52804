// The Socket.IO gateway (PRODUCT.md §6) with the stock socket.io-client against the real
// herald binary: handshake auth, users, rooms, broadcast, subscriptions, forwarding rules and
// ack errors.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  GRANTS,
  LIMITED_TOKEN,
  call,
  config,
  connected,
  next,
  record,
  refused,
  request,
  stalledSocket,
  startServer,
  token,
  APP_ORIGIN,
} from './support.js';

const now = () => Math.floor(Date.now() / 1000);

describe('handshake', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('a valid token is accepted, over WebSocket and over long-polling', async () => {
    for (const transports of [['websocket'], ['polling']]) {
      const socket = server.connect({ auth: { token: token('u1') }, transports });
      await connected(socket);
      assert.equal(socket.connected, true);
      socket.close();
    }
  });

  test('a page on the allowed origin may start long-polling across origins; others may not', async () => {
    // What a browser does before io(url) from the app's own origin: a preflight, then the
    // Engine.IO polling handshake, each of which it refuses to use without CORS headers.
    const handshake = `${server.url}/socket.io/?EIO=4&transport=polling`;
    const preflight = await fetch(handshake, {
      method: 'OPTIONS',
      headers: {
        Origin: APP_ORIGIN,
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'content-type',
      },
    });
    assert.ok(preflight.status < 300, `preflight answered ${preflight.status}`);
    assert.equal(preflight.headers.get('access-control-allow-origin'), APP_ORIGIN);
    const allowed = await fetch(handshake, { headers: { Origin: APP_ORIGIN } });
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers.get('access-control-allow-origin'), APP_ORIGIN);
    assert.match(await allowed.text(), /"sid"/);
    const other = await fetch(handshake, { headers: { Origin: 'http://elsewhere.test' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null);
  });

  const refusals = [
    ['an expired token', () => token('u1', { exp: now() - 3600 }), /^unauthorized: the token has expired$/],
    [
      'a token not valid yet',
      () => token('u1', { nbf: now() + 3600 }),
      /^unauthorized: the token is not valid yet/,
    ],
    [
      'a badly signed token',
      () => token('u1', {}, { secret: 'another-secret-another-secret-another' }),
      /^unauthorized: the token's signature is invalid$/,
    ],
    ['a token for another audience', () => token('u1', { aud: 'elsewhere' }), /^unauthorized: the token's audience/],
    [
      'a token with another algorithm',
      () => token('u1', {}, { sign: { algorithm: 'HS384' } }),
      /^unauthorized: the token is signed with another algorithm/,
    ],
    ['no token when anonymous sockets are not allowed', () => undefined, /^unauthorized: a token is required/],
    ['a token that is not a string', () => 42, /^bad_request: auth.token must be a string/],
  ];
  for (const [name, make, expected] of refusals) {
    test(`${name} is refused with a clear connect_error`, async () => {
      const value = make();
      const socket = server.connect(value === undefined ? {} : { auth: { token: value } });
      assert.match(await refused(socket), expected);
    });
  }
});

describe('anonymous sockets', () => {
  let server;
  before(async () => {
    server = await startServer(config({ allowAnonymous: true }));
  });
  after(() => server.stop());

  test('connect where the config allows them, with the anonymous grants only', async () => {
    const socket = await connected(server.connect());
    assert.deepEqual(await request(socket, 'join', 'lobby'), { ok: true });
    const refusal = await request(socket, 'join', 'chat.general');
    assert.equal(refusal.error.code, 'forbidden');
    assert.match(refusal.error.message, /anonymous socket may not join room "chat.general" \(its rooms patterns: lobby\)/);
    const got = next(socket, 'lobby.news');
    const sent = await call(server.url, 'POST', '/v1/realtime/rooms/lobby', { type: 'lobby.news', data: 1 });
    assert.equal(sent.status, 200);
    assert.equal(sent.body.delivered, 1);
    assert.equal((await got).data, 1);
  });

  test('a token is still checked when one is sent', async () => {
    const socket = server.connect({ auth: { token: token('u1', { exp: now() - 3600 }) } });
    assert.match(await refused(socket), /expired/);
  });
});

describe('limits', () => {
  let server;
  before(async () => {
    server = await startServer(
      config({ limits: 'connections_max = 2\nrooms_per_socket_max = 2\nsubscriptions_per_socket_max = 1' }),
    );
  });
  after(() => server.stop());

  test('sockets, rooms and subscriptions per socket are bounded, with clear errors', async () => {
    const socket = await connected(server.connect({ auth: { token: token('pat', GRANTS) } }));
    assert.deepEqual(await request(socket, 'join', 'chat.a'), { ok: true });
    assert.deepEqual(await request(socket, 'join', 'chat.b'), { ok: true });
    const thirdRoom = await request(socket, 'join', 'chat.c');
    assert.equal(thirdRoom.error.code, 'rate_limited');
    assert.match(thirdRoom.error.message, /rooms_per_socket_max/);
    // Leaving makes room.
    assert.deepEqual(await request(socket, 'leave', 'chat.a'), { ok: true });
    assert.deepEqual(await request(socket, 'join', 'chat.c'), { ok: true });

    assert.deepEqual(await request(socket, 'subscribe', 'photo.*'), { ok: true });
    const second = await request(socket, 'subscribe', 'news.*');
    assert.equal(second.error.code, 'rate_limited');
    assert.match(second.error.message, /subscriptions_per_socket_max/);

    const unknown = await request(socket, 'jion', 'chat.d');
    assert.equal(unknown.error.code, 'bad_request');
    assert.match(unknown.error.message, /unknown event "jion"/);

    await connected(server.connect({ auth: { token: token('quinn') } }));
    const third = server.connect({ auth: { token: token('rose') } });
    assert.match(await refused(third), /^rate_limited: the server is at its limit of 2 browser connections$/);
  });
});

describe('users, rooms and broadcast', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('a user-targeted event reaches every socket of that user and no other', async () => {
    const first = await connected(server.connect({ auth: { token: token('alice', GRANTS) } }));
    const second = await connected(
      server.connect({ auth: { token: token('alice', GRANTS) }, transports: ['polling'] }),
    );
    const other = await connected(server.connect({ auth: { token: token('bob', GRANTS) } }));
    const otherSeen = record(other, 'notification.created');
    const gotFirst = next(first, 'notification.created');
    const gotSecond = next(second, 'notification.created');
    const sent = await call(server.url, 'POST', '/v1/realtime/users/alice', {
      type: 'notification.created',
      data: { text: 'hello' },
      correlationId: 'c-1',
    });
    assert.equal(sent.status, 200, JSON.stringify(sent.body));
    assert.equal(sent.body.delivered, 2);
    for (const { data, meta } of [await gotFirst, await gotSecond]) {
      assert.deepEqual(data, { text: 'hello' });
      assert.equal(meta.type, 'notification.created');
      assert.equal(meta.id, sent.body.id);
      assert.equal(meta.correlationId, 'c-1');
      assert.equal(meta.source, 'api');
      assert.equal(meta.data, undefined);
      // Not stored: no stream, no seq.
      assert.equal(meta.seq, undefined);
    }
    // Per-socket order: once bob has the event sent after alice's, alice's never reached him.
    const gotOther = next(other, 'notification.other');
    await call(server.url, 'POST', '/v1/realtime/users/bob', { type: 'notification.other', data: 2 });
    assert.equal((await gotOther).data, 2);
    assert.deepEqual(otherSeen, []);
  });

  test('rooms: join and leave with permission checks', async () => {
    const member = await connected(server.connect({ auth: { token: token('carol', GRANTS) } }));
    const outsider = await connected(server.connect({ auth: { token: token('dave', GRANTS) } }));
    assert.deepEqual(await request(member, 'join', 'chat.general'), { ok: true });
    // Idempotent, and an object argument works too.
    assert.deepEqual(await request(member, 'join', { room: 'chat.general' }), { ok: true });
    const forbidden = await request(outsider, 'join', 'admin.ops');
    assert.equal(forbidden.error.code, 'forbidden');
    assert.match(forbidden.error.message, /user "dave" may not join room "admin.ops" \(its rooms patterns: chat\.\*, match\.\*, session:\*\)/);
    // A user room is Herald's: no socket joins one by name.
    const userRoom = await request(outsider, 'join', 'user:carol');
    assert.equal(userRoom.error.code, 'forbidden');
    assert.match(userRoom.error.message, /reserved for Herald's per-user rooms/);

    const outsiderSeen = record(outsider, 'chat.message');
    const got = next(member, 'chat.message');
    const sent = await call(server.url, 'POST', '/v1/realtime/rooms/chat.general', {
      type: 'chat.message',
      data: { text: 'hi' },
    });
    assert.equal(sent.body.delivered, 1);
    assert.deepEqual((await got).data, { text: 'hi' });

    const stats = await call(server.url, 'GET', '/v1/stats');
    assert.deepEqual(stats.body.realtime.rooms.find((room) => room.name === 'chat.general'), {
      name: 'chat.general',
      members: 1,
    });

    assert.deepEqual(await request(member, 'leave', 'chat.general'), { ok: true });
    const afterLeave = await call(server.url, 'POST', '/v1/realtime/rooms/chat.general', {
      type: 'chat.message',
      data: { text: 'anyone?' },
    });
    assert.equal(afterLeave.body.delivered, 0);
    assert.deepEqual(outsiderSeen, []);
  });

  test("room names with ':' (seed 004's session:abc123), granted by patterns with the same separators", async () => {
    const socket = await connected(server.connect({ auth: { token: token('sam', GRANTS) } }));
    const other = await connected(server.connect({ auth: { token: token('tess', GRANTS) } }));
    assert.deepEqual(await request(socket, 'join', 'session:abc123'), { ok: true });
    assert.deepEqual(await request(other, 'join', { room: 'match-7' }), { error: { code: 'forbidden', message: 'user "tess" may not join room "match-7" (its rooms patterns: chat.*, match.*, session:*)' } });
    // session:* grants session:<id>, not session.<id> nor session:<a>:<b>.
    for (const room of ['session.abc123', 'session:a:b']) {
      const refused = await request(other, 'join', room);
      assert.equal(refused.error.code, 'forbidden', room);
    }
    for (const [room, character] of [['session room', "' ' at byte 8"], ['session/1', "'/' at byte 8"]]) {
      const refused = await request(other, 'join', room);
      assert.equal(refused.error.code, 'invalid_subject', room);
      assert.ok(refused.error.message.includes(`the character ${character}`), refused.error.message);
    }
    const empty = await request(other, 'join', 'session:');
    assert.equal(empty.error.code, 'invalid_subject');
    assert.match(empty.error.message, /token 2 of room name "session:" is empty/);

    const otherSeen = record(other, 'notification.new');
    const got = next(socket, 'notification.new');
    const sent = await call(server.url, 'POST', '/v1/realtime/rooms/session:abc123', {
      type: 'notification.new',
      data: { title: 'Welcome back!' },
    });
    assert.equal(sent.status, 200, JSON.stringify(sent.body));
    assert.equal(sent.body.delivered, 1);
    assert.deepEqual((await got).data, { title: 'Welcome back!' });
    // Percent-encoded, as clients that encode path segments send it.
    const encoded = next(socket, 'notification.new');
    const again = await call(server.url, 'POST', '/v1/realtime/rooms/session%3Aabc123', { type: 'notification.new', data: 2 });
    assert.equal(again.body.delivered, 1);
    assert.equal((await encoded).data, 2);
    const reserved = await call(server.url, 'POST', '/v1/realtime/rooms/user:sam', { type: 'notification.new' });
    assert.equal(reserved.status, 403);
    assert.equal(reserved.body.error.code, 'forbidden');
    assert.deepEqual(await request(socket, 'leave', 'session:abc123'), { ok: true });
    assert.deepEqual(otherSeen, []);
  });

  test('broadcast reaches every socket', async () => {
    const sockets = await Promise.all(
      ['erin', 'frank', 'grace'].map((user) => connected(server.connect({ auth: { token: token(user) } }))),
    );
    const got = sockets.map((socket) => next(socket, 'maintenance.scheduled'));
    const sent = await call(server.url, 'POST', '/v1/realtime/broadcast', {
      type: 'maintenance.scheduled',
      data: { at: '22:00' },
    });
    assert.equal(sent.status, 200);
    assert.ok(sent.body.delivered >= 3, JSON.stringify(sent.body));
    for (const received of await Promise.all(got)) assert.deepEqual(received.data, { at: '22:00' });
  });

  test("a service needs publish permission on the type it sends", async () => {
    const refused = await call(
      server.url,
      'POST',
      '/v1/realtime/users/alice',
      { type: 'billing.invoice', data: 1 },
      LIMITED_TOKEN,
    );
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, 'forbidden');
    const allowed = await call(server.url, 'POST', '/v1/realtime/rooms/chat.general', { type: 'chat.message' }, LIMITED_TOKEN);
    assert.equal(allowed.status, 200);
    const badRoom = await call(server.url, 'POST', '/v1/realtime/rooms/not%20a%20room', { type: 'chat.message' });
    assert.equal(badRoom.status, 400);
    assert.equal(badRoom.body.error.code, 'invalid_subject');
    const badEvent = await call(server.url, 'POST', '/v1/realtime/broadcast', { data: 1 });
    assert.equal(badEvent.status, 400);
    assert.match(badEvent.body.error.message, /type/);
  });

  test('connections, users and rooms are in /v1/stats and /metrics', async () => {
    const socket = await connected(server.connect({ auth: { token: token('heidi', GRANTS) } }));
    await request(socket, 'join', 'chat.stats');
    const stats = await call(server.url, 'GET', '/v1/stats');
    assert.ok(stats.body.realtime.connections >= 1);
    assert.ok(stats.body.realtime.users >= 1);
    assert.ok(stats.body.realtime.roomsTotal >= 1);
    const metrics = await call(server.url, 'GET', '/metrics');
    assert.match(metrics.body, /^herald_realtime_connections [1-9]/m);
    assert.match(metrics.body, /^herald_realtime_room_members\{room="chat.stats"\} 1$/m);
  });
});

describe('subscriptions, publishing and forwarding', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('pattern subscriptions inside the permissions deliver stored events', async () => {
    const socket = await connected(server.connect({ auth: { token: token('ivan', GRANTS) } }));
    assert.deepEqual(await request(socket, 'subscribe', 'photo.*'), { ok: true });
    const got = next(socket, 'photo.uploaded');
    const stored = await call(server.url, 'POST', '/v1/events', { type: 'photo.uploaded', data: { photoId: 'p1' } });
    assert.equal(stored.status, 200);
    const { data, meta } = await got;
    assert.deepEqual(data, { photoId: 'p1' });
    assert.equal(meta.stream, 'photo');
    assert.equal(meta.seq, stored.body.seq);
    assert.equal(meta.id, stored.body.id);

    assert.deepEqual(await request(socket, 'unsubscribe', 'photo.*'), { ok: true });
    const seen = record(socket, 'photo.uploaded');
    const marker = next(socket, 'marker.done');
    await call(server.url, 'POST', '/v1/events', { type: 'photo.uploaded', data: { photoId: 'p2' } });
    await call(server.url, 'POST', '/v1/realtime/users/ivan', { type: 'marker.done' });
    await marker;
    assert.deepEqual(seen, []);
  });

  test('pattern subscriptions outside the permissions are refused', async () => {
    const socket = await connected(server.connect({ auth: { token: token('judy', GRANTS) } }));
    for (const pattern of ['billing.*', '>', 'photo']) {
      const answer = await request(socket, 'subscribe', pattern);
      assert.equal(answer.error.code, 'forbidden', pattern);
      assert.match(answer.error.message, /its subscribe patterns: photo\.>, news\.\*/);
    }
    const invalid = await request(socket, 'subscribe', 'photo..x');
    assert.equal(invalid.error.code, 'invalid_subject');
  });

  test('forwarding rules send stored events to the user they name', async () => {
    const owner = await connected(server.connect({ auth: { token: token('kim', GRANTS) } }));
    const other = await connected(server.connect({ auth: { token: token('leo', GRANTS) } }));
    const otherSeen = record(other, 'photo.processing.progress');
    const got = next(owner, 'photo.processing.progress');
    // A worker's plain publish: the user is in the data.
    await call(server.url, 'POST', '/v1/events', {
      type: 'photo.processing.progress',
      data: { photoId: 'p9', userId: 'kim', progress: 50 },
    });
    const { data, meta } = await got;
    assert.deepEqual(data, { photoId: 'p9', userId: 'kim', progress: 50 });
    assert.equal(meta.stream, 'photo');
    // Or in the envelope.
    const completed = next(owner, 'photo.processing.completed');
    await call(server.url, 'POST', '/v1/events', {
      type: 'photo.processing.completed',
      userId: 'kim',
      data: { photoId: 'p9' },
    });
    assert.deepEqual((await completed).data, { photoId: 'p9' });
    const marker = next(other, 'marker.done');
    await call(server.url, 'POST', '/v1/realtime/users/leo', { type: 'marker.done' });
    await marker;
    assert.deepEqual(otherSeen, []);
  });

  test('forwarding rules send to the room they name', async () => {
    const fan = await connected(server.connect({ auth: { token: token('mia', GRANTS) } }));
    assert.deepEqual(await request(fan, 'join', 'match.m7'), { ok: true });
    const got = next(fan, 'match.goal');
    await call(server.url, 'POST', '/v1/events', { type: 'match.goal', data: { matchId: 'm7', minute: 12 } });
    assert.deepEqual((await got).data, { matchId: 'm7', minute: 12 });
  });

  test('publish from a browser is stored, as the token allows', async () => {
    const socket = await connected(server.connect({ auth: { token: token('nina', GRANTS) } }));
    const answer = await request(socket, 'publish', {
      type: 'chat.message',
      data: { text: 'hello' },
      userId: 'someone-else',
      source: 'billing',
    });
    assert.equal(answer.ok, true, JSON.stringify(answer));
    assert.equal(answer.stream, 'chat');
    const replay = await call(server.url, 'GET', `/v1/streams/chat/events?from=${answer.seq}&limit=1`);
    const [event] = replay.body.events;
    assert.equal(event.id, answer.id);
    // Who published is the token's, never the payload's.
    assert.equal(event.userId, 'nina');
    assert.equal(event.source, 'browser');
  });

  test('ack callbacks carry errors', async () => {
    const socket = await connected(server.connect({ auth: { token: token('oscar', GRANTS) } }));
    const cases = [
      [['publish', { type: 'billing.invoice', data: 1 }], 'forbidden', /may not publish "billing.invoice"/],
      [['publish', { data: 1 }], 'invalid_event', /type/],
      [['publish', 'chat.message'], 'bad_request', /publish takes an event/],
      [['join', 'chat..x'], 'invalid_subject', /invalid room name: token 2 of room name "chat..x" is empty/],
      [['join', 7], 'bad_request', /expected a room name/],
      [['leave', { name: 'x' }], 'bad_request', /expected a room name/],
      [['subscribe', 'billing.>'], 'forbidden', /may not subscribe to "billing.>"/],
    ];
    for (const [args, code, message] of cases) {
      const answer = await request(socket, ...args);
      assert.equal(answer.error?.code, code, JSON.stringify([args, answer]));
      assert.match(answer.error.message, message);
    }
  });
});

describe('slow browsers', () => {
  let server;
  before(async () => {
    server = await startServer(config({ limits: 'outbound_buffer_packets = 8' }));
  });
  after(() => server.stop());

  test('a browser that stops reading is dropped, and never slows the others', async () => {
    const stalled = await stalledSocket(server.url, token('slowpoke'));
    const healthy = await connected(server.connect({ auth: { token: token('speedy') } }));
    const big = 'x'.repeat(64 * 1024);
    let dropped = false;
    // Loopback buffers hold a few MB; past them the stalled socket's queue fills.
    for (let sent = 0; sent < 1000 && !dropped; sent++) {
      const answer = await call(server.url, 'POST', '/v1/realtime/users/slowpoke', { type: 'bulk.data', data: big });
      assert.equal(answer.status, 200);
      dropped = answer.body.delivered === 0;
    }
    assert.ok(dropped, 'the stalled socket was never found slow');
    const metrics = await call(server.url, 'GET', '/metrics');
    assert.match(metrics.body, /^herald_realtime_slow_disconnects_total 1$/m);
    const got = next(healthy, 'still.here');
    await call(server.url, 'POST', '/v1/realtime/users/speedy', { type: 'still.here', data: 1 });
    assert.equal((await got).data, 1);
    stalled.destroy();
  });
});
