// What the examples share: how a service makes its client, a way for the app's login to sign
// a browser token, and waiting for an outcome with a deadline.

import { createHmac } from 'node:crypto';
import { pathToFileURL } from 'node:url';

import { EventBusClient, type EventBusClientOptions } from '@herald/client';

/** Where the examples find Herald: their caller's options, else EVENT_BUS_URL / EVENT_BUS_TOKEN. */
export interface ExampleOptions {
  eventBusUrl?: string;
  authToken?: string;
}

/** One client per service, named after it. */
export function serviceClient(serviceName: string, options: ExampleOptions, extra: EventBusClientOptions = {}): EventBusClient {
  const { eventBusUrl, authToken } = options;
  return new EventBusClient({ eventBusUrl, authToken, serviceName, logLevel: 'error', ...extra });
}

/**
 * What the app's login does for a browser: sign a JWT (HS256) whose `sub` is the user, for
 * Herald's `[realtime.jwt]` with the same secret and audience.
 */
export function signBrowserToken(userId: string, secret: string, audience = 'herald', claims: Record<string, unknown> = {}): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const header = encode({ alg: 'HS256', typ: 'JWT' });
  const payload = encode({ sub: userId, aud: audience, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  return `${header}.${payload}.${createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url')}`;
}

/** Resolves when `done` is called; rejects with `what` after `ms`. */
export function outcome<T = void>(what: string, ms = 15_000): { promise: Promise<T>; done(value: T): void } {
  let done!: (value: T) => void;
  let timer: NodeJS.Timeout;
  const promise = new Promise<T>((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    done = (value) => {
      clearTimeout(timer);
      resolve(value);
    };
  });
  return { promise, done };
}

/** Runs `main` when the file is run directly (node build/examples/…/index.js). */
export function runIfMain(moduleUrl: string, main: () => Promise<unknown>): void {
  if (process.argv[1] !== undefined && moduleUrl === pathToFileURL(process.argv[1]).href) {
    main().then(
      (report) => {
        console.log(JSON.stringify(report, null, 2));
      },
      (error) => {
        console.error(error);
        process.exit(1);
      },
    );
  }
}
