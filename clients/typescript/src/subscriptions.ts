// Subscriptions over the connection (connection.ts), live and in groups.
//
// Subscriptions outlive connections: each new connection re-creates them (groups where the
// group is, live ones from the latest event). Deliveries carry the connection's generation; a
// handler that finishes after its connection is gone does not settle (the server has already
// handed the event out again). Group handlers: success acks (acks of one event-loop turn go out
// in one `ack` frame with `deliveryIds`), a throw nacks with the reason (the group's backoff
// applies), a DeadLetterError rejects (dead-lettered at once).

import type { Link } from './connection.js';
import { Deque } from './deque.js';
import { ClosedError, DeadLetterError, HeraldError, ServerError, TimeoutError } from './errors.js';
import type { ResolvedOptions } from './options.js';
import type { ClientMetrics, DeliveryContext, EventHandler, GroupPolicy, HeraldEvent, Logger } from './types.js';

/** A nack's reason is cut to this many characters. */
const REASON_CHARS_MAX = 1000;

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

/** Refusals of a re-subscribe that a new connection may not meet again. */
const TRANSIENT_CODES = ['unavailable', 'internal', 'rate_limited'];

export class Subscriptions {
  /** By the client's own number for each, which survives reconnects. */
  readonly byLocal = new Map<number, SubState>();
  /** The server's sid on the current connection → local number. */
  private readonly sids = new Map<number, number>();
  private readonly acks = new Map<number, number[]>();
  private ackImmediate: NodeJS.Immediate | undefined;
  private nextLocal = 1;

  constructor(
    private readonly link: Link,
    private readonly options: ResolvedOptions,
    private readonly metrics: ClientMetrics,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.byLocal.size;
  }

  /** Whether any handler is running. */
  get running(): boolean {
    for (const sub of this.byLocal.values()) if (sub.running > 0) return true;
    return false;
  }

  subscribe(spec: SubSpec, handler: EventHandler): Promise<SubState> {
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
          this.drop(sub, undefined);
          reject(new TimeoutError(`subscribe to ${JSON.stringify(spec.pattern)}`, this.options.timeout));
        }, this.options.timeout),
      };
      this.byLocal.set(local, sub);
      this.metrics.activeSubscriptions = this.byLocal.size;
      this.link.ensureConnected();
      if (this.link.open) this.send(sub);
      this.link.updateRef();
    });
  }

  /** Sends every subscription again (a new connection). */
  resubscribeAll(): void {
    for (const sub of this.byLocal.values()) this.send(sub);
  }

  private send(sub: SubState): void {
    const rid = this.link.nextRid();
    const frame: Record<string, unknown> = { op: 'sub', rid, pattern: sub.spec.pattern };
    if (sub.spec.group !== undefined) {
      frame.group = sub.spec.group;
      // Group deliveries may then arrive several per `events` frame (docs/PROTOCOL.md).
      frame.batch = true;
    }
    // A live subscription resumes from the latest event after a reconnect: what it missed
    // while the connection was down is gone (at-most-once). A group resumes where it is.
    const from = sub.confirmed && sub.spec.group === undefined ? undefined : sub.spec.from;
    if (from !== undefined) frame.from = from;
    if (sub.spec.maxInFlight !== undefined) frame.maxInFlight = sub.spec.maxInFlight;
    if (sub.spec.policy !== undefined) frame.policy = sub.spec.policy;
    this.link.expect(rid, { kind: 'sub', what: `subscribe to ${sub.spec.pattern}`, local: sub.local, resolve: () => {}, reject: () => {} });
    this.link.sendFrame(frame);
  }

  /** The server confirmed subscription `local` as `sid`. */
  onSubscribed(local: number, sid: number): void {
    const sub = this.byLocal.get(local);
    if (sub === undefined) {
      // Dropped (timed out, unsubscribed) before the server confirmed it.
      this.link.sendFrame({ op: 'unsub', rid: this.link.nextRid(), sid });
      return;
    }
    sub.sid = sid;
    sub.confirmed = true;
    this.sids.set(sid, sub.local);
    if (sub.waiter !== undefined) {
      clearTimeout(sub.waiter.timer);
      sub.waiter.resolve();
      sub.waiter = undefined;
    }
  }

  /** The server refused subscription `local`. Throws (the connection is then dropped and made
   * again) for a passing refusal of a subscription the caller already has. */
  onRefused(local: number, code: string, message: string, error: ServerError): void {
    const sub = this.byLocal.get(local);
    if (sub === undefined) return;
    if (sub.waiter === undefined && TRANSIENT_CODES.includes(code)) {
      // A subscription the caller already has must not end over a passing refusal: try
      // again on a new connection, after the reconnect backoff.
      throw new HeraldError(code, `re-subscribing to ${sub.spec.pattern} was refused: ${message}`);
    }
    this.drop(sub, error);
  }

  /** The server ended subscription `sid` (a `closed` frame). */
  onClosed(sid: number, detail: { code?: string; message?: string; details?: unknown }): void {
    const local = this.sids.get(sid);
    const sub = local === undefined ? undefined : this.byLocal.get(local);
    if (sub === undefined) return;
    sub.sid = undefined;
    this.sids.delete(sid);
    this.drop(sub, new ServerError(detail.code ?? 'internal', `subscription to ${sub.spec.pattern} ended: ${detail.message}`, detail.details));
  }

  /** Ends a subscription: tells the server (when it has a sid) and waits for its answer. */
  async unsubscribe(local: number): Promise<void> {
    const sub = this.byLocal.get(local);
    if (sub === undefined) return;
    const sid = sub.sid;
    this.drop(sub, undefined);
    if (sid === undefined || !this.link.open) return;
    await new Promise<void>((resolve, reject) => {
      const rid = this.link.nextRid();
      const timer = setTimeout(() => {
        this.link.forget(rid);
        reject(new TimeoutError('unsubscribe', this.options.timeout));
      }, this.options.timeout);
      this.link.expect(rid, {
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
      this.link.sendFrame({ op: 'unsub', rid, sid });
    });
  }

  /** Forgets a subscription on the client's side (the caller tells the server if needed). */
  private drop(sub: SubState, error: Error | undefined): void {
    if (!this.byLocal.has(sub.local)) return;
    this.byLocal.delete(sub.local);
    if (sub.sid !== undefined) this.sids.delete(sub.sid);
    sub.queue.drain();
    this.metrics.activeSubscriptions = this.byLocal.size;
    if (sub.waiter !== undefined) {
      clearTimeout(sub.waiter.timer);
      sub.waiter.reject(error ?? new ClosedError('the subscription ended before herald confirmed it'));
      sub.waiter = undefined;
    }
    sub.end(error);
    if (error !== undefined && sub.confirmed) this.link.emit('subscriptionClosed', { subscriptionId: sub.id, pattern: sub.spec.pattern, error });
    this.link.updateRef();
  }

  /** The first connection failed for good: subscriptions still waiting for it fail. */
  failWaiting(error: Error): void {
    for (const sub of [...this.byLocal.values()]) {
      if (sub.waiter !== undefined) this.drop(sub, error);
    }
  }

  /** The connection is gone: sids and unsent acks belong to it (the server redelivers). */
  onLost(): void {
    this.sids.clear();
    this.acks.clear();
    for (const sub of this.byLocal.values()) sub.sid = undefined;
  }

  /** Ends every subscription (the client is closing). */
  dropAll(): void {
    for (const sub of [...this.byLocal.values()]) this.drop(sub, undefined);
  }

  /** `extend` for one delivery; resolves once the server restarted its ack timer. */
  private extend(sub: SubState, incoming: Incoming): Promise<void> {
    if (!this.link.open || incoming.generation !== this.link.generation || sub.sid === undefined) {
      return Promise.reject(
        new HeraldError('delivery_expired', `delivery ${incoming.deliveryId} is no longer held: the connection was lost and the event will be redelivered`),
      );
    }
    const sid = sub.sid;
    return new Promise((resolve, reject) => {
      const rid = this.link.nextRid();
      const timer = setTimeout(() => {
        this.link.forget(rid);
        reject(new TimeoutError('extend', this.options.timeout));
      }, this.options.timeout);
      const done = (fn: (value: any) => void) => (value: any) => {
        clearTimeout(timer);
        fn(value);
      };
      this.link.expect(rid, { kind: 'verb', what: 'extend', resolve: done(resolve), reject: done(reject) });
      this.link.sendFrame({ op: 'extend', rid, sid, deliveryId: incoming.deliveryId });
    });
  }

  /** An `event` frame for a subscription. */
  onEvent(frame: any): void {
    const local = this.sids.get(frame.sid);
    if (local === undefined) return; // still in flight for a subscription just ended
    const sub = this.byLocal.get(local);
    if (sub === undefined) return;
    this.metrics.eventsReceived += 1;
    if (sub.spec.group === undefined && sub.queue.length >= this.options.liveBufferEvents) {
      // A live subscription never slows publishers (as on the server): drop it.
      const sid = sub.sid;
      this.drop(
        sub,
        new HeraldError(
          'slow_consumer',
          `live subscription to ${JSON.stringify(sub.spec.pattern)} dropped: its handler fell ${this.options.liveBufferEvents} events behind`,
        ),
      );
      if (sid !== undefined) this.link.sendFrame({ op: 'unsub', rid: this.link.nextRid(), sid });
      return;
    }
    sub.queue.push({
      event: frame.event,
      deliveryId: frame.deliveryId,
      attempt: frame.attempt ?? 1,
      generation: this.link.generation,
    });
    this.pump(sub);
  }

  private pump(sub: SubState): void {
    while (!this.link.closing && sub.running < sub.spec.concurrency && sub.queue.length > 0 && this.byLocal.has(sub.local)) {
      const incoming = sub.queue.shift()!;
      if (sub.spec.group !== undefined && incoming.generation !== this.link.generation) continue; // redelivered already
      sub.running += 1;
      void this.handle(sub, incoming).finally(() => {
        sub.running -= 1;
        this.link.afterSettle();
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
      this.link.emit('handlerError', { subscriptionId: sub.id, event: incoming.event, attempt: incoming.attempt, error: failure });
    }
    if (sub.spec.group === undefined || incoming.deliveryId === undefined) return;
    if (incoming.generation !== this.link.generation || !this.link.open || sub.sid === undefined || !this.byLocal.has(sub.local)) {
      return; // the connection that brought it is gone: the server has redelivered it
    }
    if (!failed) {
      this.queueAck(sub.sid, incoming.deliveryId);
      return;
    }
    const reason = (failure instanceof Error ? `${failure.name}: ${failure.message}` : String(failure)).slice(0, REASON_CHARS_MAX);
    if (failure instanceof DeadLetterError) {
      this.metrics.rejected += 1;
      this.link.sendFrame({ op: 'reject', sid: sub.sid, deliveryId: incoming.deliveryId, reason });
    } else {
      this.metrics.nacked += 1;
      this.link.sendFrame({ op: 'nack', sid: sub.sid, deliveryId: incoming.deliveryId, reason });
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

  /** Sends the acks queued this turn, one frame per subscription. */
  flushAcks(): void {
    if (this.ackImmediate !== undefined) {
      clearImmediate(this.ackImmediate);
      this.ackImmediate = undefined;
    }
    for (const [sid, ids] of this.acks) {
      if (ids.length === 1) this.link.sendFrame({ op: 'ack', sid, deliveryId: ids[0] });
      else this.link.sendFrame({ op: 'ack', sid, deliveryIds: ids });
    }
    this.acks.clear();
  }
}
