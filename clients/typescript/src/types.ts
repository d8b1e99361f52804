// The public types: options, events as published and received, results, stats.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Seed 004's options, plus a few of Herald's own. Every field is optional. */
export interface EventBusClientOptions {
  /** `http://host:port` of Herald. Default: EVENT_BUS_URL, else `http://localhost:3003`. */
  eventBusUrl?: string;
  /** Set as `source` on published events (with auth on, the server uses the token's name).
   * Default: SERVICE_NAME. */
  serviceName?: string;
  /** A service token (`[[auth.tokens]]`), sent as `Authorization: Bearer`. Default: EVENT_BUS_TOKEN. */
  authToken?: string;
  /** Connection attempts after the first one fails, before requests waiting for the first
   * connection fail; also retries of an HTTP read. Once connected, the client reconnects
   * without limit. Default 3. */
  maxRetries?: number;
  /** Milliseconds any one request (publish, subscribe, send, HTTP call) may take. Default 5000. */
  timeout?: number;
  /** At most this many events go in one `pub` frame. Default 100. */
  batchSize?: number;
  /** Count what this client does; `getStats().client` reports it. Default true. */
  enableMetrics?: boolean;
  /** Default 'warn'. */
  logLevel?: LogLevel;
  /** While a `pub` frame is unanswered, wait up to this many ms for a full batch before sending
   * the next one. When nothing is in flight a publish goes out at once (publishes made in the
   * same event-loop turn still share a frame). Default 1. */
  lingerMs?: number;
  /** Events that may wait for the connection (or for room on it); past it publish fails with
   * BufferFullError. Default 10000. */
  maxBufferedEvents?: number;
  /** Reconnect backoff: first delay and cap, in ms (exponential, jittered). Default 100 and 10000. */
  reconnectDelayMs?: number;
  reconnectDelayMaxMs?: number;
  /** Events a live subscription may hold for a slow handler before it is dropped. Default 1024. */
  liveBufferEvents?: number;
  /** Where log lines go. Default: the console, filtered by logLevel. */
  logger?: Logger;
}

/** What a publisher may set besides type and data (PRODUCT.md §1). */
export interface PublishOptions {
  /** Your own id makes retries safe: the server stores an id once within its dedupe window. */
  id?: string;
  traceId?: string;
  correlationId?: string;
  /** Ordering / aggregate key. */
  key?: string;
  /** Whose event it is. Forwarding rules (`to = "user"`) use it to reach the user's browsers. */
  userId?: string;
  /** Overrides serviceName for this event (the server forces the token's name when auth is on). */
  source?: string;
  /** Schema version, default "1.0". */
  version?: string;
  /** RFC 3339, or a Date; the server sets the receive time when absent. */
  timestamp?: string | Date;
  /** String values only. */
  metadata?: Record<string, string>;
}

/** The event envelope as stored and delivered (PRODUCT.md §1). */
export interface HeraldEvent<T = any> {
  id: string;
  type: string;
  version: string;
  timestamp: string;
  source?: string;
  correlationId?: string;
  traceId?: string;
  userId?: string;
  key?: string;
  data: T;
  metadata?: Record<string, string>;
  /** Set on stored events; absent on ephemeral subjects. */
  stream?: string;
  seq?: number;
}

/** One publish's answer: where the event is stored. */
export interface PublishResult {
  id: string;
  /** null for an ephemeral subject (delivered live, never stored). */
  stream: string | null;
  seq: number | null;
  /** The id was already stored within the dedupe window; `seq` is the original's. */
  duplicate: boolean;
}

/** The second argument of a handler. */
export interface DeliveryContext {
  subscriptionId: string;
  /** The group, for group subscriptions. */
  group?: string;
  /** 1 on the first delivery, 2 on the first retry, … (always 1 for live subscriptions). */
  attempt: number;
  deliveryId?: number;
  /** Still working: restarts the group's ack timer for this delivery. */
  extend(): Promise<void>;
}

export type EventHandler<T = any> = (event: HeraldEvent<T>, context: DeliveryContext) => unknown;

export interface BackoffPolicy {
  initialMs: number;
  factor: number;
  maxMs: number;
  jitter: number;
}

/** A group's policy (PRODUCT.md §4); used only when this subscription creates the group. */
export interface GroupPolicy {
  ackTimeoutMs?: number;
  maxRetries?: number;
  backoff?: BackoffPolicy;
  maxInFlight?: number;
}

export type StartFrom = 'latest' | 'earliest' | number | string | Date;

export interface SubscribeOptions {
  /** Join (or create) this consumer group: at-least-once, load shared with the group's other
   * members, handler success acks and a throw nacks. Without a group the subscription is live:
   * at-most-once, every subscriber gets every event. */
  group?: string;
  /** Where a new group (or a live subscription) starts: 'latest' (default), 'earliest', a seq,
   * or an RFC 3339 time / Date. */
  from?: StartFrom;
  /** Deliveries the server may have out to this member at once (group prefetch). Default: the
   * group's policy (100). */
  maxInFlight?: number;
  /** The group's retry policy, when this subscription creates it. */
  policy?: GroupPolicy;
  /** Handlers run at once for this subscription. Default 1: one after the other, in order. */
  concurrency?: number;
}

export interface Subscription {
  readonly id: string;
  readonly pattern: string;
  readonly group: string | undefined;
  /** Resolves when the subscription ends: undefined after unsubscribe/close, the error when the
   * server or the client ended it (dropped as slow, group deleted). */
  readonly ended: Promise<Error | undefined>;
  unsubscribe(): Promise<void>;
}

export type HealthState = 'healthy' | 'degraded' | 'unhealthy';

export interface HealthStatus {
  status: HealthState;
  /** The server's parts (`GET /readyz`), e.g. the engine. */
  parts: { name: string; status: HealthState; message?: string }[];
  /** Whether this client's WebSocket is open right now. */
  connected: boolean;
  latencyMs: number;
  /** Why the server could not be asked, when it could not. */
  error?: string;
}

/** This client's own counters (enableMetrics). */
export interface ClientMetrics {
  eventsPublished: number;
  publishFailures: number;
  eventsReceived: number;
  acked: number;
  nacked: number;
  rejected: number;
  handlerErrors: number;
  sent: number;
  reconnects: number;
  bufferedEvents: number;
  activeSubscriptions: number;
}

export interface EventBusStats {
  /** Events stored, server-wide (the sum over streams). */
  eventsPublished: number;
  /** Live subscribers and group members, server-wide. */
  activeSubscriptions: number;
  /** Open /v1/ws connections. */
  connections: number;
  streams: Record<string, any>[];
  groups: Record<string, any>[];
  realtime: Record<string, any>;
  version: string;
  uptimeSeconds: number;
  /** This client's counters, when enableMetrics. */
  client?: ClientMetrics;
}

export interface DeadLetter<T = any> {
  group: string;
  event: HeraldEvent<T>;
  attempts: number;
  lastError?: string;
  firstDeliveredAt: string;
  deadAt: string;
}
