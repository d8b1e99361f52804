// Test support: the real herald binary on a free loopback port (as tests/node does), stopped and
// started again on the same port and data directory, browser tokens, and waiting on conditions
// with deadlines.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The binary to test; scripts/test sets TEST_HERALD_BINARY (not a HERALD_* variable: herald
 * serve reads those as configuration). */
export const HERALD_BIN = process.env.TEST_HERALD_BINARY ?? path.join(here, '..', '..', '..', '..', 'target', 'debug', 'herald');

/** How long a test waits for any one expected thing. */
export const WAIT_MS = 10_000;

export const SECRET = 'ts-client-tests-secret-0123456789abcdef';
export const AUDIENCE = 'herald';
export const SERVICE_TOKEN = 'ts-service-token-0123456789abcdef';
/** A service that may publish chat.* only. */
export const LIMITED_TOKEN = 'ts-limited-token-0123456789abcdef';

/** herald.toml for the tests: service tokens, HS256 browser tokens, forwarding rules for the
 * photo pipeline (progress and completion to the user's browsers). */
export function config(extra = '', top = ''): string {
  return `
${top}

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
subscribe = ["chat.*"]

[realtime.jwt]
algorithm = "HS256"
secret = "${SECRET}"
audience = "${AUDIENCE}"
leeway = "1s"

[[realtime.forward]]
pattern = "photo.processing.*"
to = "user"
${extra}
`;
}

/** The environment without HERALD_* variables, so that only the test's config applies. */
function serverEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { RUST_LOG: 'warn' };
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('HERALD_')) env[key] = value;
  }
  return env;
}

export interface Server {
  url: string;
  log: string[];
  /** SIGTERM (drain) and wait for the exit; the data directory stays. */
  stop(): Promise<void>;
  /** Sends `signal` to the running server (SIGSTOP / SIGCONT: a server that hangs). */
  signal(signal: NodeJS.Signals): void;
  /** SIGKILL: a crash, no drain. */
  kill(): Promise<void>;
  /** Starts again on the same port and data directory. */
  start(): Promise<void>;
  restart(): Promise<void>;
  /** Stops for good and removes the data directory. */
  dispose(): Promise<void>;
}

/** Starts `herald serve` with `toml`; resolves once it listens. */
export async function startServer(toml = config()): Promise<Server> {
  const dir = mkdtempSync(path.join(tmpdir(), 'herald-ts-'));
  const configFile = path.join(dir, 'herald.toml');
  writeFileSync(configFile, toml);
  const log: string[] = [];
  let child: ChildProcess | undefined;
  let listen = '127.0.0.1:0';

  async function launch(): Promise<string> {
    const started = spawn(HERALD_BIN, ['serve', '--listen', listen, '--data-dir', path.join(dir, 'data'), '--config', configFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: serverEnv(),
    });
    child = started;
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`herald did not start: ${log.join('\n')}`)), WAIT_MS);
      let buffered = '';
      started.stderr!.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        let newline: number;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          log.push(line);
          const match = line.match(/listening on (http:\/\/\S+)/);
          if (match) {
            clearTimeout(timer);
            resolve(match[1]!);
          }
        }
      });
      started.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`herald exited with ${code}: ${log.join('\n')}`));
      });
    });
  }

  async function stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const running = child;
    child = undefined;
    if (running === undefined || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill(signal);
    await exited;
  }

  const url = await launch();
  listen = new URL(url).host;
  async function start(): Promise<void> {
      // The port was just released; retry briefly should another bind still hold it.
      await waitFor(async () => {
        try {
          await launch();
          return true;
        } catch (error) {
          if (!String(error).includes('in use')) throw error;
          return false;
        }
      }, 'herald to start again on the same port');
  }
  return {
    url,
    log,
    stop: () => stop(),
    kill: () => stop('SIGKILL'),
    signal: (signal) => {
      child?.kill(signal);
    },
    start,
    async restart() {
      await stop();
      await start();
    },
    async dispose() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A browser token (HS256 JWT) for user `sub` with `claims`. */
export function token(sub: string, claims: Record<string, unknown> = {}): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const header = encode({ alg: 'HS256', typ: 'JWT' });
  const payload = encode({ sub, aud: AUDIENCE, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const signature = createHmac('sha256', SECRET).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

/** Resolves once `condition` holds (polled every 10 ms); fails after `ms` with what was awaited. */
export async function waitFor(condition: () => boolean | Promise<boolean>, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A promise with its resolve, for "the handler saw this". */
export function deferred<T = void>(): { promise: Promise<T>; resolve(value: T): void; reject(error: unknown): void } {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Rejects with `what` if `promise` does not settle within `ms`. */
export function within<T>(promise: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

/** A service-side HTTP call with the service token. */
export async function call(url: string, method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
  const response = await fetch(url + route, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${SERVICE_TOKEN}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: response.status, body: parsed };
}

/** A group policy with short backoff, so retries happen within a test. */
export const FAST_POLICY = { maxRetries: 3, ackTimeoutMs: 30_000, backoff: { initialMs: 50, factor: 2, maxMs: 400, jitter: 0 } };
