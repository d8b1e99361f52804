// EventBusClient: seed 004's interface on Herald (PRODUCT.md §11).

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';

import { Connection, zeroMetrics, type SubSpec, type SubState } from './connection.js';
import { ClosedError, ConnectionError, HeraldError, InvalidArgumentError, ServerError, TimeoutError } from './errors.js';
import { checkOptions, consoleLogger, resolveOptions, type ResolvedOptions } from './options.js';
import { RoomListener } from './rooms.js';
import { checkName, checkPattern, checkType, describe } from './subject.js';
import type {
  DeadLetter,
  EventBusClientOptions,
  EventBusStats,
  EventHandler,
  HealthState,
  HealthStatus,
  Logger,
  PublishOptions,
  PublishResult,
  StartFrom,
  SubscribeOptions,
  Subscription,
} from './types.js';

const PUBLISH_OPTIONS = new Set(['id', 'traceId', 'correlationId', 'key', 'userId', 'source', 'version', 'timestamp', 'metadata']);
const SUBSCRIBE_OPTIONS = new Set(['group', 'from', 'maxInFlight', 'policy', 'concurrency']);
const FORWARDED_EVENTS = ['connected', 'disconnected', 'reconnecting', 'subscriptionClosed', 'handlerError'] as const;

/** Where a real-time send goes (docs/PROTOCOL.md `send`). */
type Target = { user: string } | { room: string } | { broadcast: true };

/** The answer to a real-time send: how many sockets it was queued for (it is not stored). */
export interface SendResult {
  delivered: number;
}

/**
 * A Herald client: one WebSocket to `/v1/ws` for publishes, subscriptions and real-time sends,
 * and HTTP for stats, health and dead letters. Connects on first use and reconnects by itself.
 *
 * Events (`client.on(name, listener)`): `connected` ({reconnected}), `disconnected` ({reason}),
 * `reconnecting` ({attempt, delayMs}), `subscriptionClosed` ({subscriptionId, pattern, error}),
 * `handlerError` ({subscriptionId, event, attempt, error}).
 */
export class EventBusClient extends EventEmitter {
  private readonly given: EventBusClientOptions;
  private resolved: ResolvedOptions | undefined;
  private connection: Connection | undefined;
  private rooms: RoomListener | undefined;
  private readonly subscriptions = new Map<string, SubscriptionHandle>();
  private readonly logger: Logger;
  private closed = false;

  constructor(options: EventBusClientOptions = {}) {
    super();
    checkOptions(options);
    this.given = { ...options };
    this.logger = options.logger ?? consoleLogger(options.logLevel ?? 'warn');
  }

  /** The options in force (environment and defaults filled in on first use). */
  get options(): Readonly<ResolvedOptions> {
    if (this.resolved === undefined) this.resolved = resolveOptions(this.given);
    return this.resolved;
  }

  /** Whether the WebSocket is open right now. */
  get connected(): boolean {
    return this.connection?.connected ?? false;
  }

  private conn(): Connection {
    if (this.closed) throw new ClosedError();
    if (this.connection === undefined) {
      this.connection = new Connection(this.options, this.logger);
      for (const name of FORWARDED_EVENTS) this.connection.on(name, (payload) => this.emit(name, payload));
    }
    return this.connection;
  }

  /** Connects now instead of on first use; resolves once connected. */
  async connect(): Promise<void> {
    await this.conn().request('ping', 'connect', () => ({ op: 'ping' }));
  }

  // ---- publishing ----

  /** Stores one event; resolves with where it was stored once it is durable on the server. */
  async publish<T = unknown>(type: string, data: T, options: PublishOptions = {}): Promise<PublishResult> {
    const json = this.encode(type, data, options);
    return this.conn().publish(json);
  }

  private encode(type: string, data: unknown, options: PublishOptions, forSend = false): string {
    checkType(type);
    if (data === undefined) throw new InvalidArgumentError(`data of ${type} must be a JSON value, got undefined`);
    const envelope = this.envelope(type, data, options, forSend);
    try {
      return JSON.stringify(envelope);
    } catch (error) {
      throw new InvalidArgumentError(`data of ${type} does not encode as JSON: ${(error as Error).message}`);
    }
  }

  private envelope(type: string, data: unknown, options: PublishOptions, forSend: boolean): Record<string, unknown> {
    if (options === null || typeof options !== 'object' || Array.isArray(options)) {
      throw new InvalidArgumentError(`publish options must be an object, got ${describe(options)}`);
    }
    for (const key of Object.keys(options)) {
      if (!PUBLISH_OPTIONS.has(key)) {
        throw new InvalidArgumentError(`unknown publish option ${JSON.stringify(key)}; known: ${[...PUBLISH_OPTIONS].join(', ')}`);
      }
    }
    const event: Record<string, unknown> = {};
    const id = options.id ?? (forSend ? undefined : uuidv7());
    if (id !== undefined) event.id = stringOption('id', id);
    event.type = type;
    if (options.version !== undefined) event.version = stringOption('version', options.version);
    if (options.timestamp !== undefined) {
      const timestamp = options.timestamp;
      if (timestamp instanceof Date) {
        if (Number.isNaN(timestamp.getTime())) throw new InvalidArgumentError('timestamp is an invalid Date');
        event.timestamp = timestamp.toISOString();
      } else {
        event.timestamp = stringOption('timestamp', timestamp);
      }
    }
    const source = options.source ?? this.options.serviceName;
    if (source !== undefined) event.source = stringOption('source', source);
    for (const field of ['correlationId', 'traceId', 'userId', 'key'] as const) {
      if (options[field] !== undefined) event[field] = stringOption(field, options[field]);
    }
    event.data = data;
    if (options.metadata !== undefined) {
      const metadata = options.metadata;
      if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) {
        throw new InvalidArgumentError(`metadata must be an object of strings, got ${describe(metadata)}`);
      }
      for (const [key, value] of Object.entries(metadata)) {
        if (typeof value !== 'string') {
          throw new InvalidArgumentError(`metadata.${key} must be a string, got ${describe(value)}`);
        }
      }
      event.metadata = metadata;
    }
    return event;
  }

  // ---- subscribing ----

  /**
   * Calls `handler` for each event matching `pattern` (`user.*`, `photo.>`).
   *
   * Without `group` the subscription is live: from now on (or `from`), at most once, every
   * live subscriber gets every event. With `group` it joins that consumer group: at least once,
   * the group's members share the events; the handler resolving acks, throwing nacks (retried
   * with the group's backoff, dead-lettered after its maxRetries), throwing a DeadLetterError
   * dead-letters at once.
   */
  async subscribe<T = any>(pattern: string, handler: EventHandler<T>, options: SubscribeOptions = {}): Promise<Subscription> {
    checkPattern(pattern);
    if (typeof handler !== 'function') throw new InvalidArgumentError(`handler must be a function, got ${describe(handler)}`);
    const spec = subscribeSpec(pattern, options);
    const state = await this.conn().subscribe(spec, handler as EventHandler);
    const handle = new SubscriptionHandle(state, (local) => this.dropSubscription(local));
    this.subscriptions.set(handle.id, handle);
    void handle.ended.then(() => this.subscriptions.delete(handle.id));
    return handle;
  }

  private async dropSubscription(local: number): Promise<void> {
    this.subscriptions.delete(`sub-${local}`);
    await this.connection?.unsubscribe(local);
  }

  /** Ends a subscription, by its handle or its id. */
  async unsubscribe(subscription: Subscription | string): Promise<void> {
    const id = typeof subscription === 'string' ? subscription : subscription?.id;
    if (typeof id !== 'string') throw new InvalidArgumentError(`unsubscribe takes a Subscription or its id, got ${describe(subscription)}`);
    const handle = this.subscriptions.get(id);
    if (handle !== undefined) {
      await handle.unsubscribe();
      return;
    }
    if (this.rooms?.has(id)) {
      await this.rooms.unsubscribe(id);
      return;
    }
    throw new InvalidArgumentError(`no subscription ${JSON.stringify(id)} on this client`);
  }

  // ---- real-time sends to browsers ----

  /** Sends an event to every socket in `room` (not stored). */
  async publishToRoom<T = unknown>(room: string, type: string, data: T, options: PublishOptions = {}): Promise<SendResult> {
    return this.send({ room: checkName('room', room) }, type, data, options);
  }

  /** Sends an event to every socket of user `userId` (the browsers' JWT `sub`); not stored. */
  async publishToUser<T = unknown>(userId: string, type: string, data: T, options: PublishOptions = {}): Promise<SendResult> {
    return this.send({ user: checkName('user id', userId) }, type, data, options);
  }

  /** The same as publishToUser (seed 004 has both names). */
  async sendToUser<T = unknown>(userId: string, type: string, data: T, options: PublishOptions = {}): Promise<SendResult> {
    return this.publishToUser(userId, type, data, options);
  }

  /** Sends an event to every connected socket (not stored). */
  async broadcast<T = unknown>(type: string, data: T, options: PublishOptions = {}): Promise<SendResult> {
    return this.send({ broadcast: true }, type, data, options);
  }

  private async send(to: Target, type: string, data: unknown, options: PublishOptions): Promise<SendResult> {
    const event = JSON.parse(this.encode(type, data, options, true));
    const conn = this.conn();
    const delivered: number = await conn.request('send', `send ${type} to ${JSON.stringify(to)}`, () => ({ op: 'send', to, event }));
    conn.metrics.sent += 1;
    return { delivered };
  }

  // ---- rooms, listened to from the service ----

  /**
   * Puts this service's connection in `room` (the /v1/ws `join` frame): events sent to the room
   * (publishToRoom, POST /v1/realtime/rooms/{room}, forwarding rules with to = "room") reach
   * subscribeToRoom handlers. Needs the token's `rooms` patterns (or its `subscribe` ones) to
   * match the room. Rooms are joined again after a reconnect.
   */
  async joinRoom(room: string): Promise<void> {
    await this.roomListener().join(checkName('room', room));
  }

  async leaveRoom(room: string): Promise<void> {
    await this.roomListener().leave(checkName('room', room));
  }

  /** Joins `room` and calls `handler` for each event sent to it, one at a time, in order. */
  async subscribeToRoom<T = any>(room: string, handler: EventHandler<T>): Promise<Subscription> {
    checkName('room', room);
    if (typeof handler !== 'function') throw new InvalidArgumentError(`handler must be a function, got ${describe(handler)}`);
    return this.roomListener().subscribe(room, handler as EventHandler);
  }

  private roomListener(): RoomListener {
    if (this.closed) throw new ClosedError();
    if (this.rooms === undefined) this.rooms = new RoomListener(() => this.conn(), this.options, this.logger);
    return this.rooms;
  }

  // ---- monitoring and operations (HTTP) ----

  /** Server-wide figures (`GET /v1/stats`), with this client's counters when enableMetrics. */
  async getStats(): Promise<EventBusStats> {
    const stats = await this.http('GET', '/v1/stats');
    const streams: any[] = stats.streams ?? [];
    const groups: any[] = stats.groups ?? [];
    const result: EventBusStats = {
      eventsPublished: streams.reduce((sum, stream) => sum + (stream.published ?? 0), 0),
      activeSubscriptions:
        streams.reduce((sum, stream) => sum + (stream.liveSubscribers ?? 0), 0) + groups.reduce((sum, group) => sum + (group.members ?? 0), 0),
      connections: stats.connections ?? 0,
      streams,
      groups,
      realtime: stats.realtime ?? {},
      version: stats.version,
      uptimeSeconds: stats.uptimeSeconds,
    };
    if (this.options.enableMetrics) result.client = this.metrics();
    return result;
  }

  /** This client's own counters. */
  metrics(): NonNullable<EventBusStats['client']> {
    const base = this.connection?.metrics ?? zeroMetrics();
    return {
      ...base,
      bufferedEvents: this.connection?.bufferedEvents ?? 0,
      activeSubscriptions: this.subscriptions.size + (this.rooms?.size ?? 0),
    };
  }

  /** The server's readiness (`GET /readyz`): 'healthy', 'degraded' or 'unhealthy'. Never throws:
   * a server that cannot be reached is 'unhealthy' with the reason in `error`. */
  async healthCheck(): Promise<HealthStatus> {
    const started = performance.now();
    try {
      const readiness = await this.http('GET', '/readyz', undefined, [200, 503]);
      return {
        status: readiness.status as HealthState,
        parts: readiness.parts ?? [],
        connected: this.connected,
        latencyMs: Math.round((performance.now() - started) * 10) / 10,
      };
    } catch (error) {
      return {
        status: 'unhealthy',
        parts: [],
        connected: this.connected,
        latencyMs: Math.round((performance.now() - started) * 10) / 10,
        error: (error as Error).message,
      };
    }
  }

  /** A group's figures: lag, in flight, dead letters, … (`GET /v1/groups/{name}`). */
  async getGroup(name: string): Promise<Record<string, any>> {
    return this.http('GET', `/v1/groups/${encodeURIComponent(stringOption('group', name))}`);
  }

  /** The dead letters of `group`, oldest first. */
  async deadLetters<T = any>(group: string, limit?: number): Promise<DeadLetter<T>[]> {
    const query = limit === undefined ? '' : `?limit=${limit}`;
    const list = await this.http('GET', `/v1/groups/${encodeURIComponent(group)}/dead-letters${query}`);
    return list.deadLetters;
  }

  /** Puts every dead letter of `group` back into the group (attempts reset); returns how many. */
  async redriveDeadLetters(group: string): Promise<number> {
    return (await this.http('POST', `/v1/groups/${encodeURIComponent(group)}/dead-letters/redrive`)).redriven;
  }

  /** Drops every dead letter of `group`; returns how many. */
  async purgeDeadLetters(group: string): Promise<number> {
    return (await this.http('DELETE', `/v1/groups/${encodeURIComponent(group)}/dead-letters`)).purged;
  }

  private async http(method: string, route: string, body?: unknown, okStatuses = [200]): Promise<any> {
    if (this.closed) throw new ClosedError();
    const options = this.options;
    const url = options.httpUrl + route;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (options.authToken !== undefined) headers.authorization = `Bearer ${options.authToken}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const attempts = method === 'GET' ? options.maxRetries + 1 : 1;
    let lastError: Error | undefined;
    for (let attempt = 0; attempt < attempts; attempt += 1) {
      let response: Response;
      try {
        response = await fetch(url, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(options.timeout),
        });
      } catch (error) {
        const cause = error as Error;
        lastError =
          cause.name === 'TimeoutError'
            ? new TimeoutError(`${method} ${url}`, options.timeout)
            : new ConnectionError(`${method} ${url} failed: ${(cause as { cause?: Error }).cause?.message ?? cause.message}`, { cause });
        continue;
      }
      const text = await response.text();
      let parsed: any;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new HeraldError('protocol', `${method} ${url}: HTTP ${response.status} with a body that is not JSON: ${text.slice(0, 200)}`);
      }
      if (okStatuses.includes(response.status)) return parsed;
      const detail = parsed?.error ?? {};
      throw new ServerError(detail.code ?? `http_${response.status}`, detail.message ?? text.slice(0, 200), detail.details, response.status);
    }
    throw lastError!;
  }

  /**
   * Finishes what was taken — publishes and sends are answered, running handlers finish and
   * their acks are sent (up to `timeout`) — then closes the connection. Group deliveries not yet
   * started go to other members. Later calls fail with ClosedError.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.rooms?.close();
    await this.connection?.close();
    this.closed = true;
  }
}

class SubscriptionHandle implements Subscription {
  readonly id: string;
  readonly pattern: string;
  readonly group: string | undefined;
  readonly ended: Promise<Error | undefined>;

  constructor(
    state: SubState,
    private readonly drop: (local: number) => Promise<void>,
  ) {
    this.id = state.id;
    this.pattern = state.spec.pattern;
    this.group = state.spec.group;
    this.ended = state.endedPromise;
    this.local = state.local;
  }

  private readonly local: number;

  unsubscribe(): Promise<void> {
    return this.drop(this.local);
  }
}

function subscribeSpec(pattern: string, options: SubscribeOptions): SubSpec {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`subscribe options must be an object, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!SUBSCRIBE_OPTIONS.has(key)) {
      throw new InvalidArgumentError(`unknown subscribe option ${JSON.stringify(key)}; known: ${[...SUBSCRIBE_OPTIONS].join(', ')}`);
    }
  }
  const spec: SubSpec = { pattern, concurrency: 1 };
  if (options.group !== undefined) spec.group = stringOption('group', options.group);
  if (options.from !== undefined) spec.from = startFrom(options.from);
  if (options.maxInFlight !== undefined) spec.maxInFlight = positiveInteger('maxInFlight', options.maxInFlight);
  if (options.concurrency !== undefined) spec.concurrency = positiveInteger('concurrency', options.concurrency);
  if (options.policy !== undefined) {
    if (spec.group === undefined) throw new InvalidArgumentError('policy applies to a consumer group: give group too');
    if (options.policy === null || typeof options.policy !== 'object') {
      throw new InvalidArgumentError(`policy must be an object, got ${describe(options.policy)}`);
    }
    spec.policy = options.policy;
  }
  return spec;
}

function startFrom(from: StartFrom): string | number {
  if (from === 'latest' || from === 'earliest') return from;
  if (typeof from === 'number') {
    if (!Number.isInteger(from) || from < 0) throw new InvalidArgumentError(`from must be a seq (an integer >= 0), got ${from}`);
    return from;
  }
  if (from instanceof Date) {
    if (Number.isNaN(from.getTime())) throw new InvalidArgumentError('from is an invalid Date');
    return from.toISOString();
  }
  if (typeof from === 'string' && !Number.isNaN(Date.parse(from))) return from;
  throw new InvalidArgumentError(`from must be 'latest', 'earliest', a seq, an RFC 3339 time or a Date, got ${describe(from)}`);
}

function stringOption(name: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidArgumentError(`${name} must be a non-empty string, got ${describe(value)}`);
  return value;
}

function positiveInteger(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${name} must be an integer >= 1, got ${describe(value)}`);
  }
  return value;
}

/** A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, the version, then random bits. The
 * random bits and the variant come from randomUUID, which draws its entropy in bulk. */
export function uuidv7(): string {
  const random = randomUUID(); // xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx
  const time = Date.now().toString(16).padStart(12, '0');
  return `${time.slice(0, 8)}-${time.slice(8, 12)}-7${random.slice(15)}`;
}
