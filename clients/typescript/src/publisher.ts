// Publishing over the connection (connection.ts).
//
// Publishes queue in a bounded buffer (maxBufferedEvents; BufferFullError past it) and go out
// merged into `pub` frames of up to batchSize events, pipelined up to the server's
// pendingPublishesMax unanswered frames. While a frame is unanswered the next one lingers up to
// lingerMs for a fuller batch. Every event carries a client-made id, so frames left unanswered
// by a lost connection are sent again on the next one and the server's dedupe answers
// `duplicate: true` for those it had stored.

import type { Link } from './connection.js';
import { Deque } from './deque.js';
import { BufferFullError, ProtocolError, ServerError, TimeoutError } from './errors.js';
import type { ResolvedOptions } from './options.js';
import type { ClientMetrics, PublishResult } from './types.js';

/** Room kept in a `pub` frame for everything around the events. */
const FRAME_OVERHEAD_BYTES = 1024;

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

export class Publisher {
  private readonly queue = new Deque<PendingPublish>();
  private queuedEvents = 0;
  /** Unanswered `pub` frames by rid, in the order they were sent. */
  private readonly inflight = new Map<number, PendingPublish[]>();
  private sweeper: NodeJS.Timeout | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private flushImmediate: NodeJS.Immediate | undefined;

  constructor(
    private readonly link: Link,
    private readonly options: ResolvedOptions,
    private readonly metrics: ClientMetrics,
  ) {}

  get bufferedEvents(): number {
    return this.queuedEvents;
  }

  /** Whether anything waits to be sent or answered. */
  get hasWork(): boolean {
    return this.queue.length > 0 || this.inflight.size > 0;
  }

  /** Queues one encoded event; resolves with its result once the server stored it. */
  publish(json: string): Promise<PublishResult> {
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
      this.link.ensureConnected();
      this.scheduleFlush();
    });
  }

  private scheduleFlush(): void {
    if (!this.link.open || this.flushImmediate !== undefined) return;
    if (this.queue.length >= this.options.batchSize || this.inflight.size === 0 || this.options.lingerMs === 0) {
      if (this.flushTimer !== undefined) {
        clearTimeout(this.flushTimer);
        this.flushTimer = undefined;
      }
      this.flushImmediate = setImmediate(() => {
        this.flushImmediate = undefined;
        this.flush();
      });
    } else if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.flush(true);
      }, this.options.lingerMs);
    }
  }

  /** Sends queued publishes as merged frames while the connection has room. A partial batch
   * waits for its linger while another frame is unanswered, unless `lingered`. */
  flush(lingered = false): void {
    const limits = this.link.limits;
    if (!this.link.open || limits === undefined) return;
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
          this.fail(
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
      const rid = this.link.nextRid();
      let frame = `{"op":"pub","rid":${rid},"events":[`;
      for (let i = 0; i < batch.length; i += 1) frame += (i === 0 ? '' : ',') + batch[i]!.json;
      frame += ']}';
      this.inflight.set(rid, batch);
      this.link.sendText(frame);
    }
    this.link.updateRef();
  }

  private fail(request: PendingPublish, error: Error): void {
    if (request.settled) return;
    request.settled = true;
    if (request.queued) {
      request.queued = false;
      this.queuedEvents -= 1;
    }
    this.metrics.publishFailures += 1;
    request.reject(error);
  }

  onPuback(rid: number, results: PublishResult[]): void {
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
    this.link.afterSettle();
    if (this.queue.length > 0) this.scheduleFlush();
  }

  /** An `error` frame answering `rid`: false when `rid` is not one of the `pub` frames. */
  onError(rid: number, error: ServerError): boolean {
    const batch = this.inflight.get(rid);
    if (batch === undefined) return false;
    this.inflight.delete(rid);
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
      for (const request of live) this.fail(request, error);
    }
    this.link.afterSettle();
    return true;
  }

  /** The connection is gone: unanswered frames go back to the front of the queue, to be sent
   * again on the next connection (their ids make the resend safe). */
  requeueUnanswered(): void {
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
  }

  /** Fails every publish not yet answered, queued or sent. */
  failAll(error: Error): void {
    for (const request of this.queue.drain()) this.fail(request, error);
    for (const batch of this.inflight.values()) for (const request of batch) this.fail(request, error);
    this.inflight.clear();
    this.queuedEvents = 0;
  }

  /** Stops the timers (the client is closing). */
  stop(): void {
    clearTimeout(this.flushTimer);
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    if (this.flushImmediate !== undefined) clearImmediate(this.flushImmediate);
    this.flushImmediate = undefined;
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
      this.fail(front, timeout());
    }
    for (const batch of this.inflight.values()) {
      if (batch[0] !== undefined && batch[0].deadline > now) break;
      for (const request of batch) {
        if (!request.settled && request.deadline <= now) this.fail(request, timeout());
      }
    }
    if (this.queue.length === 0 && this.inflight.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
    this.link.afterSettle();
  }
}
