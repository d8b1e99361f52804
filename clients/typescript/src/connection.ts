// The one WebSocket to Herald's /v1/ws (docs/PROTOCOL.md) and everything that rides on it.
//
// - Connects lazily, on the first request. The first connection is tried 1 + maxRetries times,
//   then what waits for it fails with ConnectionError; once connected, a lost connection is
//   re-established with jittered exponential backoff for as long as the client has work.
// - Publishes queue in a bounded buffer (maxBufferedEvents; BufferFullError past it) and go out
//   merged into `pub` frames of up to batchSize events, pipelined up to the server's
//   pendingPublishesMax unanswered frames. While a frame is unanswered the next one lingers up
//   to lingerMs for a fuller batch. Every event carries a client-made id, so frames left
//   unanswered by a lost connection are sent again on the next one and the server's dedupe
//   answers `duplicate: true` for those it had stored.
// - Subscriptions outlive connections: each new connection re-creates them (groups where the
//   group is, live ones from the latest event). Deliveries carry the connection's generation;
//   a handler that finishes after its connection is gone does not settle (the server has
//   already handed the event out again).
// - Group handlers: success acks (acks of one event-loop turn go out in one `ack` frame with
//   `deliveryIds`), a throw nacks with the reason (the group's backoff applies), a
//   DeadLetterError rejects (dead-lettered at once).
// - Three heartbeats without a frame or ping from the server count as a dead connection.

import { EventEmitter } from 'node:events';
import WebSocket from 'ws';

import { Deque } from './deque.js';
import {
  BufferFullError,
  ClosedError,
  ConnectionError,
  ConnectionLostError,
  DeadLetterError,
  HeraldError,
  ProtocolError,
  ServerError,
  TimeoutError,
} from './errors.js';
import { backoffDelay, type ResolvedOptions } from './options.js';
import type { ClientMetrics, DeliveryContext, EventHandler, GroupPolicy, HeraldEvent, Logger, PublishResult } from './types.js';

const SILENT_HEARTBEATS_MAX = 3;
/** Room kept in a `pub` frame for everything around the events. */
const FRAME_OVERHEAD_BYTES = 1024;
/** A nack's reason is cut to this many characters. */
const REASON_CHARS_MAX = 1000;
/** How much of a refused handshake's body is read for its error. */
const REFUSAL_BODY_BYTES_MAX = 64 * 1024;
/** Largest frame accepted from the server. */
const INCOMING_FRAME_BYTES_MAX = 64 * 1024 * 1024;

interface Limits {
  eventBytesMax: number;
  frameBytesMax: number;
  batchEventsMax: number;
  pendingPublishesMax: number;
  subscriptionsMax: number;
  publishEventsPerSecondMax: number;
}

interface PendingPublish {
  json: string;
  bytes: number;
  deadline: number;
  resolve(result: PublishResult): void;
  reject(error: Error): void;
  settled: boolean;
  queued: boolean;
  /** Send in a frame of its own (after a merged frame was refused). */
  alone: boolean;
}

type RequestKind = 'sub' | 'unsub' | 'send' | 'verb' | 'ping' | 'room';

interface PendingRequest {
  kind: RequestKind;
  what: string;
  local?: number;
  resolve(value: any): void;
  reject(error: Error): void;
}

/** A request that waits for the connection (a real-time send, a ping). */
interface Outgoing {
  kind: 'send' | 'ping' | 'room';
  what: string;
  frame(rid: number): Record<string, unknown>;
  resolve(value: any): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
  done: boolean;
}

export interface SubSpec {
  pattern: string;
  group?: string;
  from?: string | number;
  maxInFlight?: number;
  policy?: GroupPolicy;
  concurrency: number;
}

interface Incoming {
  event: HeraldEvent;
  deliveryId?: number;
  attempt: number;
  generation: number;
}

export interface SubState {
  local: number;
  id: string;
  spec: SubSpec;
  handler: EventHandler;
  sid?: number;
  confirmed: boolean;
  waiter?: { resolve(): void; reject(error: Error): void; timer: NodeJS.Timeout };
  queue: Deque<Incoming>;
  running: number;
  ended: boolean;
  /** Resolves when the subscription ends: undefined when asked to, else why. */
  endedPromise: Promise<Error | undefined>;
  end(error?: Error): void;
}

type State = 'idle' | 'connecting' | 'waiting' | 'open' | 'closed';

/** Every counter at zero: a new connection's, and a client's before it has one. */
export function zeroMetrics(): ClientMetrics {
  return {
    eventsPublished: 0,
    publishFailures: 0,
    eventsReceived: 0,
    acked: 0,
    nacked: 0,
    rejected: 0,
    handlerErrors: 0,
    sent: 0,
    reconnects: 0,
    bufferedEvents: 0,
    activeSubscriptions: 0,
  };
}

export class Connection extends EventEmitter {
  private state: State = 'idle';
  private ws: WebSocket | undefined;
  private generation = 0;
  /** Rooms joined (set by the room listener): like subscriptions, they keep the process alive. */
  private roomsJoined = 0;
  private everConnected = false;
  private attempts = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private welcomeTimer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private lastHeard = 0;
  private heartbeatMs = 15_000;
  private limits: Limits | undefined;
  private nextRid = 1;
  private nextLocal = 1;

  private readonly queue = new Deque<PendingPublish>();
  private queuedEvents = 0;
  private readonly inflight = new Map<number, PendingPublish[]>();
  private sweeper: NodeJS.Timeout | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private flushImmediate: NodeJS.Immediate | undefined;

  private readonly pending = new Map<number, PendingRequest>();
  private readonly outbox: Outgoing[] = [];
  readonly subs = new Map<number, SubState>();
  private readonly sids = new Map<number, number>();
  private readonly acks = new Map<number, number[]>();
  private ackImmediate: NodeJS.Immediate | undefined;
  private closing = false;

  readonly metrics: ClientMetrics = zeroMetrics();

  constructor(
    private readonly options: ResolvedOptions,
    private readonly log: Logger,
  ) {
    super();
  }

  get connected(): boolean {
    return this.state === 'open';
  }

  get isClosed(): boolean {
    return this.state === 'closed' || this.closing;
  }

  // ---- publishing ----

  /** Queues one encoded event; resolves with its result once the server stored it. */
  publish(json: string): Promise<PublishResult> {
    if (this.isClosed) return Promise.reject(new ClosedError());
    if (this.queuedEvents + 1 > this.options.maxBufferedEvents) {
      this.metrics.publishFailures += 1;
      return Promise.reject(new BufferFullError(this.queuedEvents, this.options.maxBufferedEvents));
    }
    return new Promise<PublishResult>((resolve, reject) => {
      const request: PendingPublish = {
        json,
        bytes: Buffer.byteLength(json) + 1,
        deadline: Date.now() + this.options.timeout,
        resolve,
        reject,
        settled: false,
        queued: true,
        alone: false,
      };
      this.queue.push(request);
      this.queuedEvents += 1;
      this.startSweeper();
      this.ensureConnected();
      this.scheduleFlush();
    });
  }

  private scheduleFlush(): void {
    if (this.state !== 'open' || this.flushImmediate !== undefined) return;
    if (this.queue.length >= this.options.batchSize || this.inflight.size === 0 || this.options.lingerMs === 0) {
      if (this.flushTimer !== undefined) {
        clearTimeout(this.flushTimer);
        this.flushTimer = undefined;
      }
      this.flushImmediate = setImmediate(() => {
        this.flushImmediate = undefined;
        this.flushPublishes();
      });
    } else if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.flushPublishes(true);
      }, this.options.lingerMs);
    }
  }

  /** Sends queued publishes as merged frames while the connection has room. A partial batch
   * waits for its linger while another frame is unanswered, unless `lingered`. */
  private flushPublishes(lingered = false): void {
    if (this.state !== 'open' || this.limits === undefined || this.ws === undefined) return;
    const limits = this.limits;
    const frameBytesMax = limits.frameBytesMax - FRAME_OVERHEAD_BYTES;
    const batchMax = Math.max(1, Math.min(this.options.batchSize, limits.batchEventsMax));
    while (this.inflight.size < Math.max(1, limits.pendingPublishesMax) && this.queue.length > 0) {
      const partial = this.queue.length < batchMax;
      if (partial && !lingered && this.inflight.size > 0 && this.options.lingerMs > 0) {
        this.scheduleFlush();
        return;
      }
      lingered = false;
      const batch: PendingPublish[] = [];
      let bytes = 0;
      while (batch.length < batchMax) {
        const next = this.queue.peek();
        if (next === undefined) break;
        if (next.settled) {
          this.queue.shift();
          continue;
        }
        if (batch.length > 0 && (next.alone || batch[0]!.alone || bytes + next.bytes > frameBytesMax)) break;
        this.queue.shift();
        next.queued = false;
        this.queuedEvents -= 1;
        if (next.bytes > frameBytesMax) {
          this.failPublish(
            next,
            new ServerError(
              'too_large',
              `the event is ${next.bytes} bytes, more than the server's frame limit of ${limits.frameBytesMax} bytes`,
            ),
          );
          continue;
        }
        batch.push(next);
        bytes += next.bytes;
      }
      if (batch.length === 0) continue;
      const rid = this.nextRid++;
      let frame = `{"op":"pub","rid":${rid},"events":[`;
      for (let i = 0; i < batch.length; i += 1) frame += (i === 0 ? '' : ',') + batch[i]!.json;
      frame += ']}';
      this.inflight.set(rid, batch);
      this.ws.send(frame);
    }
    this.updateRef();
  }

  private failPublish(request: PendingPublish, error: Error): void {
    if (request.settled) return;
    request.settled = true;
    if (request.queued) {
      request.queued = false;
      this.queuedEvents -= 1;
    }
    this.metrics.publishFailures += 1;
    request.reject(error);
  }

  private onPuback(rid: number, results: PublishResult[]): void {
    const batch = this.inflight.get(rid);
    if (batch === undefined) throw new ProtocolError(`puback for unknown rid ${rid}`);
    this.inflight.delete(rid);
    if (results.length !== batch.length) {
      throw new ProtocolError(`puback ${rid} has ${results.length} results for ${batch.length} events`);
    }
    batch.forEach((request, index) => {
      if (request.settled) return;
      request.settled = true;
      this.metrics.eventsPublished += 1;
      const result = results[index]!;
      request.resolve({
        id: result.id,
        stream: result.stream ?? null,
        seq: result.seq ?? null,
        duplicate: result.duplicate ?? false,
      });
    });
    this.afterSettle();
    if (this.queue.length > 0) this.scheduleFlush();
  }

  /** Fails timed-out publishes, oldest first; runs while any publish waits. */
  private startSweeper(): void {
    if (this.sweeper !== undefined) return;
    const every = Math.max(5, Math.min(100, Math.floor(this.options.timeout / 5)));
    this.sweeper = setInterval(() => this.sweep(), every);
  }

  private sweep(): void {
    const now = Date.now();
    const timeout = () => new TimeoutError('publish', this.options.timeout);
    while (this.queue.length > 0) {
      const front = this.queue.peek()!;
      if (front.settled) {
        this.queue.shift();
        continue;
      }
      if (front.deadline > now) break;
      this.queue.shift();
      this.failPublish(front, timeout());
    }
    for (const batch of this.inflight.values()) {
      if (batch[0] !== undefined && batch[0].deadline > now) break;
      for (const request of batch) {
        if (!request.settled && request.deadline <= now) this.failPublish(request, timeout());
      }
    }
    if (this.queue.length === 0 && this.inflight.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
    this.afterSettle();
  }

  /** The room listener tells how many rooms it holds, so that they keep the process alive. */
  setRoomsJoined(count: number): void {
    this.roomsJoined = count;
    this.updateRef();
  }

  get bufferedEvents(): number {
    return this.queuedEvents;
  }

  // ---- real-time sends, pings ----

  /** Sends a request that needs the connection; waits for it up to the timeout. */
  request(kind: 'send' | 'ping' | 'room', what: string, frame: (rid: number) => Record<string, unknown>): Promise<any> {
    if (this.isClosed) return Promise.reject(new ClosedError());
    if (kind === 'send' && this.outbox.length >= this.options.maxBufferedEvents) {
      return Promise.reject(new BufferFullError(this.outbox.length, this.options.maxBufferedEvents));
    }
    return new Promise((resolve, reject) => {
      const outgoing: Outgoing = {
        kind,
        what,
        frame,
        resolve,
        reject,
        done: false,
        timer: setTimeout(() => {
          if (outgoing.done) return;
          outgoing.done = true;
          reject(new TimeoutError(what, this.options.timeout));
          this.afterSettle();
        }, this.options.timeout),
      };
      this.outbox.push(outgoing);
      this.ensureConnected();
      this.flushOutbox();
    });
  }

  private flushOutbox(): void {
    if (this.state !== 'open') return;
    while (this.outbox.length > 0) {
      const outgoing = this.outbox.shift()!;
      if (outgoing.done) continue;
      const rid = this.nextRid++;
      const settle = (fn: (value: any) => void) => (value: any) => {
        if (outgoing.done) return;
        outgoing.done = true;
        clearTimeout(outgoing.timer);
        fn(value);
      };
      this.pending.set(rid, {
        kind: outgoing.kind,
        what: outgoing.what,
        resolve: settle(outgoing.resolve),
        reject: settle(outgoing.reject),
      });
      this.sendFrame({ ...outgoing.frame(rid), rid });
    }
    this.updateRef();
  }

  // ---- subscriptions ----

  subscribe(spec: SubSpec, handler: EventHandler): Promise<SubState> {
    if (this.isClosed) return Promise.reject(new ClosedError());
    const local = this.nextLocal++;
    let end!: (error?: Error) => void;
    const ended = new Promise<Error | undefined>((resolve) => {
      end = resolve;
    });
    const sub: SubState = {
      local,
      id: `sub-${local}`,
      spec,
      handler,
      confirmed: false,
      queue: new Deque<Incoming>(),
      running: 0,
      ended: false,
      endedPromise: ended,
      end: (error) => {
        if (sub.ended) return;
        sub.ended = true;
        end(error);
      },
    };
    return new Promise<SubState>((resolve, reject) => {
      sub.waiter = {
        resolve: () => resolve(sub),
        reject,
        timer: setTimeout(() => {
          sub.waiter = undefined;
          this.dropSub(sub, undefined);
          reject(new TimeoutError(`subscribe to ${JSON.stringify(spec.pattern)}`, this.options.timeout));
        }, this.options.timeout),
      };
      this.subs.set(local, sub);
      this.metrics.activeSubscriptions = this.subs.size;
      this.ensureConnected();
      if (this.state === 'open') this.sendSub(sub);
      this.updateRef();
    });
  }

  private sendSub(sub: SubState): void {
    const rid = this.nextRid++;
    const frame: Record<string, unknown> = { op: 'sub', rid, pattern: sub.spec.pattern };
    if (sub.spec.group !== undefined) frame.group = sub.spec.group;
    // A live subscription resumes from the latest event after a reconnect: what it missed
    // while the connection was down is gone (at-most-once). A group resumes where it is.
    const from = sub.confirmed && sub.spec.group === undefined ? undefined : sub.spec.from;
    if (from !== undefined) frame.from = from;
    if (sub.spec.maxInFlight !== undefined) frame.maxInFlight = sub.spec.maxInFlight;
    if (sub.spec.policy !== undefined) frame.policy = sub.spec.policy;
    this.pending.set(rid, { kind: 'sub', what: `subscribe to ${sub.spec.pattern}`, local: sub.local, resolve: () => {}, reject: () => {} });
    this.sendFrame(frame);
  }

  /** Ends a subscription: tells the server (when it has a sid) and waits for its answer. */
  async unsubscribe(local: number): Promise<void> {
    const sub = this.subs.get(local);
    if (sub === undefined) return;
    const sid = sub.sid;
    this.dropSub(sub, undefined);
    if (sid === undefined || this.state !== 'open') return;
    await new Promise<void>((resolve, reject) => {
      const rid = this.nextRid++;
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new TimeoutError('unsubscribe', this.options.timeout));
      }, this.options.timeout);
      this.pending.set(rid, {
        kind: 'unsub',
        what: 'unsubscribe',
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.sendFrame({ op: 'unsub', rid, sid });
    });
  }

  /** Forgets a subscription on the client's side (the caller tells the server if needed). */
  private dropSub(sub: SubState, error: Error | undefined): void {
    if (!this.subs.has(sub.local)) return;
    this.subs.delete(sub.local);
    if (sub.sid !== undefined) this.sids.delete(sub.sid);
    sub.queue.drain();
    this.metrics.activeSubscriptions = this.subs.size;
    if (sub.waiter !== undefined) {
      clearTimeout(sub.waiter.timer);
      sub.waiter.reject(error ?? new ClosedError('the subscription ended before herald confirmed it'));
      sub.waiter = undefined;
    }
    sub.end(error);
    if (error !== undefined && sub.confirmed) this.emit('subscriptionClosed', { subscriptionId: sub.id, pattern: sub.spec.pattern, error });
    this.updateRef();
  }

  /** `extend` for one delivery; resolves once the server restarted its ack timer. */
  extend(sub: SubState, incoming: Incoming): Promise<void> {
    if (this.state !== 'open' || incoming.generation !== this.generation || sub.sid === undefined) {
      return Promise.reject(
        new HeraldError('delivery_expired', `delivery ${incoming.deliveryId} is no longer held: the connection was lost and the event will be redelivered`),
      );
    }
    const sid = sub.sid;
    return new Promise((resolve, reject) => {
      const rid = this.nextRid++;
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new TimeoutError('extend', this.options.timeout));
      }, this.options.timeout);
      const done = (fn: (value: any) => void) => (value: any) => {
        clearTimeout(timer);
        fn(value);
      };
      this.pending.set(rid, { kind: 'verb', what: 'extend', resolve: done(resolve), reject: done(reject) });
      this.sendFrame({ op: 'extend', rid, sid, deliveryId: incoming.deliveryId });
    });
  }

  private onEvent(frame: any): void {
    const local = this.sids.get(frame.sid);
    if (local === undefined) return; // still in flight for a subscription just ended
    const sub = this.subs.get(local);
    if (sub === undefined) return;
    this.metrics.eventsReceived += 1;
    if (sub.spec.group === undefined && sub.queue.length >= this.options.liveBufferEvents) {
      // A live subscription never slows publishers (as on the server): drop it.
      const sid = sub.sid;
      this.dropSub(
        sub,
        new HeraldError(
          'slow_consumer',
          `live subscription to ${JSON.stringify(sub.spec.pattern)} dropped: its handler fell ${this.options.liveBufferEvents} events behind`,
        ),
      );
      if (sid !== undefined) this.sendFrame({ op: 'unsub', rid: this.nextRid++, sid });
      return;
    }
    sub.queue.push({
      event: frame.event,
      deliveryId: frame.deliveryId,
      attempt: frame.attempt ?? 1,
      generation: this.generation,
    });
    this.pump(sub);
  }

  private pump(sub: SubState): void {
    while (!this.closing && sub.running < sub.spec.concurrency && sub.queue.length > 0 && this.subs.has(sub.local)) {
      const incoming = sub.queue.shift()!;
      if (sub.spec.group !== undefined && incoming.generation !== this.generation) continue; // redelivered already
      sub.running += 1;
      void this.handle(sub, incoming).finally(() => {
        sub.running -= 1;
        this.afterSettle();
        this.pump(sub);
      });
    }
  }

  private async handle(sub: SubState, incoming: Incoming): Promise<void> {
    const context: DeliveryContext = {
      subscriptionId: sub.id,
      attempt: incoming.attempt,
      extend: () => this.extend(sub, incoming),
    };
    if (sub.spec.group !== undefined) {
      context.group = sub.spec.group;
      context.deliveryId = incoming.deliveryId;
    }
    let failure: unknown;
    let failed = false;
    try {
      await sub.handler(incoming.event, context);
    } catch (error) {
      failed = true;
      failure = error;
    }
    if (failed) {
      this.metrics.handlerErrors += 1;
      this.log.warn(`handler of ${sub.spec.pattern} failed on ${incoming.event?.type} ${incoming.event?.id}`, {
        attempt: incoming.attempt,
        group: sub.spec.group,
        error: failure instanceof Error ? failure.message : String(failure),
      });
      this.emit('handlerError', { subscriptionId: sub.id, event: incoming.event, attempt: incoming.attempt, error: failure });
    }
    if (sub.spec.group === undefined || incoming.deliveryId === undefined) return;
    if (incoming.generation !== this.generation || this.state !== 'open' || sub.sid === undefined || !this.subs.has(sub.local)) {
      return; // the connection that brought it is gone: the server has redelivered it
    }
    if (!failed) {
      this.queueAck(sub.sid, incoming.deliveryId);
      return;
    }
    const reason = (failure instanceof Error ? `${failure.name}: ${failure.message}` : String(failure)).slice(0, REASON_CHARS_MAX);
    if (failure instanceof DeadLetterError) {
      this.metrics.rejected += 1;
      this.sendFrame({ op: 'reject', sid: sub.sid, deliveryId: incoming.deliveryId, reason });
    } else {
      this.metrics.nacked += 1;
      this.sendFrame({ op: 'nack', sid: sub.sid, deliveryId: incoming.deliveryId, reason });
    }
  }

  private queueAck(sid: number, deliveryId: number): void {
    let ids = this.acks.get(sid);
    if (ids === undefined) {
      ids = [];
      this.acks.set(sid, ids);
    }
    ids.push(deliveryId);
    this.metrics.acked += 1;
    if (this.ackImmediate === undefined) {
      this.ackImmediate = setImmediate(() => {
        this.ackImmediate = undefined;
        this.flushAcks();
      });
    }
  }

  private flushAcks(): void {
    if (this.ackImmediate !== undefined) {
      clearImmediate(this.ackImmediate);
      this.ackImmediate = undefined;
    }
    for (const [sid, ids] of this.acks) {
      if (ids.length === 1) this.sendFrame({ op: 'ack', sid, deliveryId: ids[0] });
      else this.sendFrame({ op: 'ack', sid, deliveryIds: ids });
    }
    this.acks.clear();
  }

  // ---- the connection ----

  ensureConnected(): void {
    if (this.state === 'idle') this.connect();
  }

  private connect(): void {
    this.state = 'connecting';
    const headers: Record<string, string> = {};
    if (this.options.authToken !== undefined) headers.authorization = `Bearer ${this.options.authToken}`;
    const ws = new WebSocket(this.options.wsUrl, {
      headers,
      perMessageDeflate: false,
      handshakeTimeout: this.options.timeout,
      maxPayload: INCOMING_FRAME_BYTES_MAX,
    });
    this.ws = ws;
    let welcomed = false;
    ws.on('unexpected-response', (request, response) => {
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        if (size < REFUSAL_BODY_BYTES_MAX) chunks.push(chunk);
        size += chunk.length;
      });
      response.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        let error: Error;
        try {
          const parsed = JSON.parse(body).error;
          error = new ServerError(parsed.code, parsed.message, parsed.details, response.statusCode);
        } catch {
          error = new ConnectionError(`cannot connect to ${this.options.wsUrl}: HTTP ${response.statusCode}: ${body.slice(0, 200)}`);
        }
        request.destroy();
        if (this.ws === ws) this.connectFailed(ws, error);
      });
    });
    ws.on('error', (error: Error) => {
      if (this.ws !== ws) return;
      if (!welcomed) this.connectFailed(ws, new ConnectionError(`cannot connect to ${this.options.wsUrl}: ${error.message}`, { cause: error }));
      else this.lost(ws, error.message);
    });
    ws.on('open', () => {
      if (this.ws !== ws) return;
      this.welcomeTimer = setTimeout(() => {
        if (this.ws === ws && !welcomed) {
          this.connectFailed(ws, new ConnectionError(`no welcome from ${this.options.wsUrl} within ${this.options.timeout} ms`));
        }
      }, this.options.timeout);
    });
    ws.on('ping', () => {
      this.lastHeard = Date.now();
    });
    ws.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      let frame: any;
      try {
        if (isBinary) throw new ProtocolError('a binary frame');
        frame = JSON.parse(data.toString());
      } catch (error) {
        this.lost(ws, `unreadable frame: ${(error as Error).message}`);
        return;
      }
      if (!welcomed) {
        if (frame.op !== 'welcome' || typeof frame.limits !== 'object') {
          this.connectFailed(ws, new ProtocolError(`expected welcome as the first frame, got ${String(frame.op)}`));
          return;
        }
        welcomed = true;
        this.onWelcome(ws, frame);
        return;
      }
      try {
        this.onFrame(frame);
      } catch (error) {
        this.log.error(`closing the connection: ${(error as Error).message}`);
        this.lost(ws, (error as Error).message);
      }
    });
    ws.on('close', (code: number, reason: Buffer) => {
      if (this.ws !== ws) return;
      const why = `closed by the server (${code}${reason.length > 0 ? `: ${reason.toString()}` : ''})`;
      if (!welcomed) this.connectFailed(ws, new ConnectionError(`cannot connect to ${this.options.wsUrl}: ${why}`));
      else this.lost(ws, why);
    });
  }

  private connectFailed(ws: WebSocket, error: Error): void {
    if (this.ws !== ws) return;
    this.ws = undefined;
    clearTimeout(this.welcomeTimer);
    ws.removeAllListeners('message');
    ws.on('error', () => {});
    ws.terminate();
    if (this.state === 'closed') return;
    this.attempts += 1;
    const refused = error instanceof ServerError && (error.code === 'unauthorized' || error.code === 'forbidden');
    if (!this.everConnected && (refused || this.attempts > this.options.maxRetries)) {
      this.log.error(`${error.message}; giving up after ${this.attempts} attempt(s)`);
      this.attempts = 0;
      this.state = 'idle';
      this.failWaiting(error);
      return;
    }
    this.log.debug(`connection attempt ${this.attempts} failed: ${error.message}`);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (!this.hasWork()) {
      // Nothing needs the connection: the next request connects again.
      this.state = 'idle';
      this.attempts = 0;
      this.updateRef();
      return;
    }
    this.state = 'waiting';
    const delay = backoffDelay(Math.max(0, this.attempts - 1), this.options.reconnectDelayMs, this.options.reconnectDelayMaxMs);
    this.emit('reconnecting', { attempt: this.attempts, delayMs: Math.round(delay) });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.state === 'waiting') this.connect();
    }, delay);
  }

  private onWelcome(ws: WebSocket, frame: any): void {
    clearTimeout(this.welcomeTimer);
    const reconnected = this.everConnected;
    this.state = 'open';
    this.everConnected = true;
    this.attempts = 0;
    this.generation += 1;
    this.limits = frame.limits as Limits;
    this.heartbeatMs = Math.max(1, Number(frame.heartbeatMs) || 15_000);
    this.lastHeard = Date.now();
    this.watchdog = setInterval(() => {
      const silence = this.heartbeatMs * SILENT_HEARTBEATS_MAX;
      if (this.ws === ws && Date.now() - this.lastHeard > silence) {
        this.lost(ws, `nothing heard from herald for ${silence} ms`);
      }
    }, this.heartbeatMs);
    this.watchdog.unref();
    if (reconnected) {
      this.metrics.reconnects += 1;
      this.log.info(`reconnected to ${this.options.wsUrl}`);
    } else {
      this.log.debug(`connected to ${this.options.wsUrl} (${frame.server}, connection ${frame.connectionId})`);
    }
    for (const sub of this.subs.values()) this.sendSub(sub);
    this.flushOutbox();
    this.flushPublishes(true);
    this.emit('connected', { reconnected, connectionId: frame.connectionId, server: frame.server });
  }

  private onFrame(frame: any): void {
    switch (frame.op) {
      case 'event':
        // An event sent to a room this connection joined: the room listener's (rooms.ts).
        if (frame.room !== undefined) this.emit('roomEvent', frame);
        else this.onEvent(frame);
        return;
      case 'puback':
        this.onPuback(frame.rid, frame.results);
        return;
      case 'subscribed': {
        const pending = this.pending.get(frame.rid);
        if (pending?.kind !== 'sub') throw new ProtocolError(`subscribed for unknown rid ${frame.rid}`);
        this.pending.delete(frame.rid);
        const sub = this.subs.get(pending.local!);
        if (sub === undefined) {
          // Dropped (timed out, unsubscribed) before the server confirmed it.
          this.sendFrame({ op: 'unsub', rid: this.nextRid++, sid: frame.sid });
          return;
        }
        sub.sid = frame.sid;
        sub.confirmed = true;
        this.sids.set(frame.sid, sub.local);
        if (sub.waiter !== undefined) {
          clearTimeout(sub.waiter.timer);
          sub.waiter.resolve();
          sub.waiter = undefined;
        }
        return;
      }
      case 'ok':
      case 'pong': {
        if (frame.rid === undefined) return;
        const pending = this.pending.get(frame.rid);
        if (pending === undefined) return; // its caller gave up (timeout)
        this.pending.delete(frame.rid);
        pending.resolve(frame.op === 'ok' && pending.kind === 'send' ? Number(frame.delivered ?? 0) : undefined);
        this.afterSettle();
        return;
      }
      case 'error':
        this.onError(frame);
        return;
      case 'closed': {
        const detail = frame.error ?? {};
        if (frame.room !== undefined) {
          // The server made this connection leave a room (it fell behind).
          this.emit('roomClosed', frame);
          return;
        }
        if (detail.code === 'unavailable') {
          // The server is stopping: reconnect (to it or a sibling) and subscribe again.
          throw new HeraldError('unavailable', `subscription closed: ${detail.message}`);
        }
        const local = this.sids.get(frame.sid);
        const sub = local === undefined ? undefined : this.subs.get(local);
        if (sub !== undefined) {
          sub.sid = undefined;
          this.sids.delete(frame.sid);
          this.dropSub(sub, new ServerError(detail.code ?? 'internal', `subscription to ${sub.spec.pattern} ended: ${detail.message}`, detail.details));
        }
        return;
      }
      case 'welcome':
        throw new ProtocolError('a second welcome');
      default:
        throw new ProtocolError(`unexpected op ${JSON.stringify(frame.op)}`);
    }
  }

  private onError(frame: any): void {
    const detail = frame.error ?? { code: 'internal', message: 'an error frame without error' };
    const error = new ServerError(detail.code, detail.message, detail.details);
    if (frame.rid === undefined) {
      this.log.warn(`herald reported an error: ${detail.code}: ${detail.message}`, { sid: frame.sid });
      return;
    }
    const batch = this.inflight.get(frame.rid);
    if (batch !== undefined) {
      this.inflight.delete(frame.rid);
      const live = batch.filter((request) => !request.settled);
      if (live.length > 1) {
        // Someone's event spoiled a merged frame: send each on its own so the others succeed.
        for (const request of live) {
          request.alone = true;
          request.queued = true;
          this.queuedEvents += 1;
        }
        this.queue.unshiftAll(live);
        this.scheduleFlush();
      } else {
        for (const request of live) this.failPublish(request, error);
      }
      this.afterSettle();
      return;
    }
    const pending = this.pending.get(frame.rid);
    if (pending === undefined) return;
    this.pending.delete(frame.rid);
    if (pending.kind === 'sub') {
      const sub = this.subs.get(pending.local!);
      if (sub === undefined) return;
      const transient = ['unavailable', 'internal', 'rate_limited'].includes(detail.code);
      if (sub.waiter === undefined && transient) {
        // A subscription the caller already has must not end over a passing refusal: try
        // again on a new connection, after the reconnect backoff.
        throw new HeraldError(detail.code, `re-subscribing to ${sub.spec.pattern} was refused: ${detail.message}`);
      }
      this.dropSub(sub, error);
      return;
    }
    pending.reject(error);
    this.afterSettle();
  }

  /** The connection is gone: unanswered publishes go back to the front of the queue,
   * subscriptions wait for the next connection, and waiting requests learn their fate. */
  private lost(ws: WebSocket, reason: string): void {
    if (this.ws !== ws) return;
    this.ws = undefined;
    clearInterval(this.watchdog);
    ws.removeAllListeners('message');
    ws.on('error', () => {});
    ws.terminate();
    if (this.state === 'closed') return;
    this.log.warn(`connection to herald lost (${reason}); reconnecting`);
    const unanswered: PendingPublish[] = [];
    for (const batch of this.inflight.values()) {
      for (const request of batch) {
        if (request.settled) continue;
        request.queued = true;
        this.queuedEvents += 1;
        unanswered.push(request);
      }
    }
    this.inflight.clear();
    this.queue.unshiftAll(unanswered);
    for (const [, pending] of this.pending) {
      if (pending.kind === 'unsub') pending.resolve(undefined);
      else if (pending.kind !== 'sub') pending.reject(new ConnectionLostError(pending.what));
    }
    this.pending.clear();
    this.sids.clear();
    this.acks.clear();
    for (const sub of this.subs.values()) sub.sid = undefined;
    this.emit('disconnected', { reason });
    this.state = 'waiting';
    this.attempts = 0;
    this.scheduleReconnect();
  }

  /** The first connection failed for good: fail what waits for it. */
  private failWaiting(error: Error): void {
    for (const request of this.queue.drain()) this.failPublish(request, error);
    this.queuedEvents = 0;
    for (const outgoing of this.outbox.splice(0)) {
      if (outgoing.done) continue;
      outgoing.done = true;
      clearTimeout(outgoing.timer);
      outgoing.reject(error);
    }
    for (const sub of [...this.subs.values()]) {
      if (sub.waiter !== undefined) this.dropSub(sub, error);
    }
    this.updateRef();
  }

  private hasWork(): boolean {
    return this.subs.size > 0 || this.roomsJoined > 0 || this.queue.length > 0 || this.inflight.size > 0 || this.outbox.length > 0 || this.pending.size > 0;
  }

  /** Keeps the process alive while the client has work, and lets it exit when it has none
   * (a script that only publishes ends once its publishes are answered). */
  private updateRef(): void {
    const socket = (this.ws as unknown as { _socket?: { ref(): void; unref(): void } | null } | undefined)?._socket;
    if (socket === undefined || socket === null) return;
    let busy = this.hasWork();
    for (const sub of this.subs.values()) if (sub.running > 0) busy = true;
    if (busy) socket.ref();
    else socket.unref();
  }

  private afterSettle(): void {
    this.updateRef();
    if (this.closing) this.emit('settled');
  }

  private sendFrame(frame: Record<string, unknown>): void {
    if (this.ws === undefined || this.state !== 'open') return;
    this.ws.send(JSON.stringify(frame));
  }

  /** Whether everything taken has been answered and no handler runs. */
  private drained(): boolean {
    if (this.queue.length > 0 || this.inflight.size > 0 || this.outbox.some((o) => !o.done)) return false;
    for (const pending of this.pending.values()) if (pending.kind === 'send') return false;
    for (const sub of this.subs.values()) if (sub.running > 0) return false;
    return true;
  }

  /** Stops taking work, waits (up to the timeout) for publishes and sends to be answered and
   * running handlers to finish and settle, then closes the connection. The server hands the
   * group deliveries this client had not started to other members. */
  async close(): Promise<void> {
    if (this.state === 'closed' || this.closing) return;
    this.closing = true;
    if (!this.drained() && this.state !== 'idle') {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(finish, this.options.timeout);
        const check = () => {
          if (this.drained()) finish();
        };
        function finish() {
          clearTimeout(timer);
          resolve();
        }
        this.on('settled', check);
        check();
      });
      this.removeAllListeners('settled');
    }
    this.flushAcks();
    this.state = 'closed';
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.welcomeTimer);
    clearTimeout(this.flushTimer);
    clearInterval(this.watchdog);
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    if (this.flushImmediate !== undefined) clearImmediate(this.flushImmediate);
    const ws = this.ws;
    this.ws = undefined;
    if (ws !== undefined) {
      ws.on('error', () => {});
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'client closed');
      else ws.terminate();
    }
    const closed = new ClosedError();
    for (const request of this.queue.drain()) this.failPublish(request, closed);
    for (const batch of this.inflight.values()) for (const request of batch) this.failPublish(request, closed);
    this.inflight.clear();
    this.queuedEvents = 0;
    for (const outgoing of this.outbox.splice(0)) {
      if (outgoing.done) continue;
      outgoing.done = true;
      clearTimeout(outgoing.timer);
      outgoing.reject(closed);
    }
    for (const pending of this.pending.values()) {
      if (pending.kind === 'unsub') pending.resolve(undefined);
      else pending.reject(closed);
    }
    this.pending.clear();
    for (const sub of [...this.subs.values()]) this.dropSub(sub, undefined);
  }
}
