// Test support: the real herald binary on a free loopback port, tokens, and small helpers
// around the stock socket.io-client.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The binary scripts/test builds; TEST_HERALD_BINARY overrides (another target dir). Not a
 * HERALD_* variable: herald serve reads those as configuration. */
export const HERALD_BIN =
  process.env.TEST_HERALD_BINARY ?? path.join(here, '..', '..', 'target', 'debug', 'herald');

/** The environment without HERALD_* variables, so that only the test's config applies. */
function serverEnv() {
  const env = { RUST_LOG: 'warn' };
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('HERALD_')) env[key] = value;
  }
  return env;
}

/** How long a test waits for any one expected thing. */
export const WAIT_MS = 10_000;

export const SECRET = 'node-tests-secret-0123456789abcdef-0123';
export const AUDIENCE = 'herald';
export const SERVICE_TOKEN = 'service-token-0123456789abcdef';
/** A service that may publish chat.* only. */
export const LIMITED_TOKEN = 'limited-token-0123456789abcdef';

/** The origin of the web app allowed to reach Herald across origins (CORS). */
export const APP_ORIGIN = 'http://app.example.test:8080';

/** herald.toml for the tests: service tokens, HS256 browsers, forwarding rules. */
export function config({ allowAnonymous = false, limits = '', corsOrigins = [APP_ORIGIN] } = {}) {
  return `
[[auth.tokens]]
name = "api"
token = "${SERVICE_TOKEN}"
publish = [">"]
subscribe = [">"]
admin = [">"]

[[auth.tokens]]
name = "limited"
token = "${LIMITED_TOKEN}"
publish = ["chat.*"]

[realtime]
allow_anonymous = ${allowAnonymous}
cors_origins = ${JSON.stringify(corsOrigins)}

[realtime.limits]
${limits}

[realtime.anonymous]
rooms = ["lobby"]
subscribe = ["news.*"]

[realtime.jwt]
algorithm = "HS256"
secret = "${SECRET}"
audience = "${AUDIENCE}"
leeway = "1s"

[[realtime.forward]]
pattern = "photo.processing.*"
to = "user"

[[realtime.forward]]
pattern = "match.*"
to = "room"
target = ["data.matchId"]
prefix = "match."
`;
}

/**
 * Starts `herald serve` with `toml`, and `args` and `env` besides; resolves once it listens.
 */
export async function startServer(toml = config(), { args = [], env = {} } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'herald-node-'));
  const configFile = path.join(dir, 'herald.toml');
  writeFileSync(configFile, toml);
  const child = spawn(
    HERALD_BIN,
    ['serve', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--config', configFile, ...args],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...serverEnv(), ...env } },
  );
  const log = [];
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start: ${log.join('\n')}`)), WAIT_MS);
    let buffered = '';
    child.stderr.on('data', (chunk) => {
      buffered += chunk.toString();
      let newline;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        log.push(line);
        const match = line.match(/listening on (http:\/\/\S+)/);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]);
        }
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`herald exited with ${code}: ${log.join('\n')}`));
    });
  });
  const sockets = [];
  return {
    url,
    log,
    /** A socket.io-client socket, closed with the server. */
    connect(options = {}) {
      const socket = io(url, { reconnection: false, forceNew: true, timeout: WAIT_MS, ...options });
      sockets.push(socket);
      return socket;
    },
    async stop() {
      for (const socket of sockets) socket.close();
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
    /** SIGKILL: the process dies at once, draining nothing; resolves once it has exited. */
    async kill() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** A browser token for `sub`; `claims` and `options` override. */
export function token(sub, claims = {}, options = {}) {
  // jsonwebtoken refuses an `exp` claim together with `expiresIn`.
  const expiry = 'exp' in claims ? {} : { expiresIn: '1h' };
  return jwt.sign({ sub, aud: AUDIENCE, ...claims }, options.secret ?? SECRET, {
    algorithm: 'HS256',
    ...expiry,
    ...(options.sign ?? {}),
  });
}

/** The grants most tests use. */
export const GRANTS = {
  herald: { rooms: ['chat.*', 'match.*', 'session:*'], subscribe: ['photo.>', 'news.*'], publish: ['chat.message'] },
};

/** Resolves once connected; rejects with the connect_error. */
export function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve(socket);
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

/** Resolves with the connect_error's message (fails if the socket connects). */
export function refused(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', () => reject(new Error('the socket connected')));
    socket.once('connect_error', (error) => resolve(error.message));
  });
}

/** Resolves with the next `(data, meta)` of `event` on `socket`. */
export function next(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once(event, (data, meta) => {
      clearTimeout(timer);
      resolve({ data, meta });
    });
  });
}

/** Every `(data, meta)` of `event` received on `socket` from now on. */
export function record(socket, event) {
  const received = [];
  socket.on(event, (data, meta) => received.push({ data, meta }));
  return received;
}

/** Emits with an ack and resolves with the answer. */
export function request(socket, event, ...args) {
  return socket.timeout(WAIT_MS).emitWithAck(event, ...args);
}

/** A service-side HTTP call with the service token; resolves with {status, body}. */
export async function call(url, method, route, body, serviceToken = SERVICE_TOKEN) {
  const response = await fetch(url + route, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${serviceToken}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Prometheus text stays text.
  }
  return { status: response.status, body: parsed };
}

/** A masked WebSocket text frame, as a client sends it. */
function clientFrame(text) {
  const payload = Buffer.from(text);
  const header =
    payload.length < 126
      ? Buffer.from([0x81, 0x80 | payload.length])
      : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  const mask = randomBytes(4);
  const masked = Buffer.from(payload.map((byte, index) => byte ^ mask[index % 4]));
  return Buffer.concat([header, mask, masked]);
}

/**
 * A Socket.IO socket over a raw WebSocket that connects with `token` and then never reads
 * again: a browser tab that stopped draining its connection.
 */
export async function stalledSocket(url, token) {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  await once(socket, 'connect');
  socket.write(
    'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n' +
      `Host: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
  let received = '';
  const connected = new Promise((resolve) => {
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      // The Socket.IO CONNECT answer carries the socket's sid.
      if (received.includes('40{"sid"')) resolve();
    });
  });
  await new Promise((resolve) => setTimeout(resolve, 100));
  socket.write(clientFrame(`40${JSON.stringify({ token })}`));
  await connected;
  socket.removeAllListeners('data');
  socket.pause();
  return socket;
}

/** The Redis the engine tests use: HERALD_TEST_REDIS_URL, else the machine's. */
export const REDIS_URL = process.env.HERALD_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** One RESP reply from `buffer`: [value, bytes used], or undefined while incomplete. */
function parseReply(buffer, at = 0) {
  const end = buffer.indexOf('\r\n', at);
  if (end < 0) return undefined;
  const kind = String.fromCharCode(buffer[at]);
  const line = buffer.toString('utf8', at + 1, end);
  const next = end + 2;
  switch (kind) {
    case '+':
      return [line, next];
    case '-':
      return [new Error(line), next];
    case ':':
      return [Number(line), next];
    case '$': {
      const length = Number(line);
      if (length < 0) return [null, next];
      if (buffer.length < next + length + 2) return undefined;
      return [buffer.toString('utf8', next, next + length), next + length + 2];
    }
    case '*': {
      const count = Number(line);
      const items = [];
      let offset = next;
      for (let i = 0; i < count; i += 1) {
        const item = parseReply(buffer, offset);
        if (item === undefined) return undefined;
        items.push(item[0]);
        offset = item[1];
      }
      return [items, offset];
    }
    default:
      throw new Error(`not a RESP reply: ${line}`);
  }
}

/**
 * Runs one command on the Redis at `url` (RESP spoken by hand: the tests need PING, KEYS and
 * DEL only) and resolves with its reply; rejects when Redis cannot be reached.
 */
export async function redisCommand(url, ...args) {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port || 6379), hostname);
  socket.setTimeout(2000, () => socket.destroy(new Error(`no answer from Redis at ${url}`)));
  try {
    await once(socket, 'connect');
    const parts = args.map((arg) => `$${Buffer.byteLength(String(arg))}\r\n${arg}\r\n`);
    socket.write(`*${args.length}\r\n${parts.join('')}`);
    let buffer = Buffer.alloc(0);
    for await (const chunk of socket) {
      buffer = Buffer.concat([buffer, chunk]);
      const reply = parseReply(buffer);
      if (reply === undefined) continue;
      if (reply[0] instanceof Error) throw reply[0];
      return reply[0];
    }
    throw new Error(`Redis at ${url} closed the connection`);
  } finally {
    socket.destroy();
  }
}

/**
 * Whether tests needing Redis can run: true if it answers; false after saying loudly why they
 * are skipped — or throws under HERALD_REQUIRE_ENGINES=1 (CI), where they must run.
 */
export async function redisReachable(url = REDIS_URL) {
  try {
    await redisCommand(url, 'PING');
    return true;
  } catch (error) {
    if (process.env.HERALD_REQUIRE_ENGINES === '1') {
      throw new Error(`HERALD_REQUIRE_ENGINES=1 but no Redis answers at ${url}: ${error.message}`);
    }
    console.error(`\n********\nSKIPPED: no Redis answers at ${url} (${error.message})\n********\n`);
    return false;
  }
}

/** A key prefix no other test uses, and a function deleting its keys. */
export function isolatedPrefix(url = REDIS_URL) {
  const prefix = `herald-node-${process.pid}-${randomBytes(6).toString('hex')}`;
  return {
    prefix,
    async cleanup() {
      const keys = await redisCommand(url, 'KEYS', `${prefix}:*`);
      for (const key of keys) await redisCommand(url, 'DEL', key);
    },
  };
}
