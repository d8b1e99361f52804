// Options: checked when the client is made, completed from the environment (EVENT_BUS_URL,
// EVENT_BUS_TOKEN, SERVICE_NAME) and defaults when it first connects, so that the default
// `eventBus` can be imported before the environment is set up (dotenv and the like).

import { InvalidArgumentError } from './errors.js';
import { describe } from './subject.js';
import type { EventBusClientOptions, LogLevel, Logger } from './types.js';

export const URL_DEFAULT = 'http://localhost:3003';

export interface ResolvedOptions {
  httpUrl: string;
  wsUrl: string;
  serviceName: string | undefined;
  authToken: string | undefined;
  maxRetries: number;
  timeout: number;
  batchSize: number;
  enableMetrics: boolean;
  lingerMs: number;
  maxBufferedEvents: number;
  reconnectDelayMs: number;
  reconnectDelayMaxMs: number;
  liveBufferEvents: number;
}

const KNOWN = new Set([
  'eventBusUrl',
  'serviceName',
  'authToken',
  'maxRetries',
  'timeout',
  'batchSize',
  'enableMetrics',
  'logLevel',
  'lingerMs',
  'maxBufferedEvents',
  'reconnectDelayMs',
  'reconnectDelayMaxMs',
  'liveBufferEvents',
  'logger',
]);

const LEVELS: LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];

function integer(options: EventBusClientOptions, name: keyof EventBusClientOptions, min: number, fallback: number): number {
  const value = options[name];
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new InvalidArgumentError(`option ${name} must be an integer >= ${min}, got ${describe(value)}`);
  }
  return value;
}

function text(options: EventBusClientOptions, name: keyof EventBusClientOptions): string | undefined {
  const value = options[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(`option ${name} must be a non-empty string, got ${describe(value)}`);
  }
  return value;
}

/** Checks what the caller gave; throws InvalidArgumentError naming the first bad option. */
export function checkOptions(options: EventBusClientOptions): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`options must be an object, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) {
      throw new InvalidArgumentError(`unknown option ${JSON.stringify(key)}; known options: ${[...KNOWN].join(', ')}`);
    }
  }
  if (options.eventBusUrl !== undefined) endpoints(text(options, 'eventBusUrl')!);
  text(options, 'serviceName');
  text(options, 'authToken');
  integer(options, 'maxRetries', 0, 0);
  integer(options, 'timeout', 1, 1);
  integer(options, 'batchSize', 1, 1);
  integer(options, 'lingerMs', 0, 0);
  integer(options, 'maxBufferedEvents', 1, 1);
  integer(options, 'reconnectDelayMs', 1, 1);
  integer(options, 'reconnectDelayMaxMs', 1, 1);
  integer(options, 'liveBufferEvents', 1, 1);
  if (options.enableMetrics !== undefined && typeof options.enableMetrics !== 'boolean') {
    throw new InvalidArgumentError(`option enableMetrics must be a boolean, got ${describe(options.enableMetrics)}`);
  }
  if (options.logLevel !== undefined && !LEVELS.includes(options.logLevel)) {
    throw new InvalidArgumentError(`option logLevel must be one of ${LEVELS.join(', ')}, got ${describe(options.logLevel)}`);
  }
}

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === '' ? undefined : value;
}

/** The options in force: the caller's, else the environment's, else the defaults. */
export function resolveOptions(options: EventBusClientOptions): ResolvedOptions {
  const url = options.eventBusUrl ?? env('EVENT_BUS_URL') ?? URL_DEFAULT;
  const { httpUrl, wsUrl } = endpoints(url);
  const reconnectDelayMs = integer(options, 'reconnectDelayMs', 1, 100);
  return {
    httpUrl,
    wsUrl,
    serviceName: options.serviceName ?? env('SERVICE_NAME'),
    authToken: options.authToken ?? env('EVENT_BUS_TOKEN'),
    maxRetries: integer(options, 'maxRetries', 0, 3),
    timeout: integer(options, 'timeout', 1, 5000),
    batchSize: integer(options, 'batchSize', 1, 100),
    enableMetrics: options.enableMetrics ?? true,
    lingerMs: integer(options, 'lingerMs', 0, 1),
    maxBufferedEvents: integer(options, 'maxBufferedEvents', 1, 10_000),
    reconnectDelayMs,
    reconnectDelayMaxMs: Math.max(reconnectDelayMs, integer(options, 'reconnectDelayMaxMs', 1, 10_000)),
    liveBufferEvents: integer(options, 'liveBufferEvents', 1, 1024),
  };
}

/** The HTTP base (no trailing slash) and the WebSocket URL of `url`. */
export function endpoints(url: string): { httpUrl: string; wsUrl: string } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError(`eventBusUrl ${JSON.stringify(url)} is not a URL (expected http://host:port)`);
  }
  const wsScheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' }[parsed.protocol];
  if (wsScheme === undefined) {
    throw new InvalidArgumentError(`eventBusUrl ${JSON.stringify(url)}: the scheme must be http or https`);
  }
  const base = parsed.pathname.replace(/\/+$/, '');
  const httpScheme = wsScheme === 'wss:' ? 'https:' : 'http:';
  const httpUrl = `${httpScheme}//${parsed.host}${base}`;
  const wsUrl = `${wsScheme}//${parsed.host}${base}/v1/ws`;
  return { httpUrl, wsUrl };
}

/** Exponential backoff with jitter in the upper half, so that clients restarted together do not
 * reconnect in lockstep. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 20));
  return base / 2 + (base / 2) * Math.random();
}

export function consoleLogger(level: LogLevel): Logger {
  const rank = LEVELS.indexOf(level);
  const line = (at: LogLevel, write: (...args: unknown[]) => void) => (message: string, fields?: Record<string, unknown>) => {
    if (LEVELS.indexOf(at) < rank) return;
    if (fields === undefined) write(`[herald-client] ${at}: ${message}`);
    else write(`[herald-client] ${at}: ${message}`, fields);
  };
  return {
    debug: line('debug', console.debug),
    info: line('info', console.info),
    warn: line('warn', console.warn),
    error: line('error', console.error),
  };
}
