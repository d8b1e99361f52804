// The one WebSocket to Herald's /v1/ws (docs/PROTOCOL.md): connecting, reconnecting, the
// heartbeat watchdog, frames in and out, and requests answered by rid. What rides on it lives
// beside it: publishing in publisher.ts, subscriptions in subscriptions.ts, room listening in
// rooms.ts; each reaches the connection through `Link`.
//
// - Connects lazily, on the first request. The first connection is tried 1 + maxRetries times,
//   then what waits for it fails with ConnectionError; once connected, a lost connection is
//   re-established with jittered exponential backoff for as long as the client has work.
// - Three heartbeats without a frame or ping from the server count as a dead connection.

import { EventEmitter } from 'node:events';
import WebSocket from 'ws';

import { BufferFullError, ClosedError, ConnectionError, ConnectionLostError, HeraldError, ProtocolError, ServerError, TimeoutError } from './errors.js';
import { backoffDelay, type ResolvedOptions } from './options.js';
import { Publisher } from './publisher.js';
import { Subscriptions, type SubSpec, type SubState } from './subscriptions.js';
import type { ClientMetrics, EventHandler, Logger, PublishResult } from './types.js';

export type { SubSpec, SubState } from './subscriptions.js';

const SILENT_HEARTBEATS_MAX = 3;
/** How much of a refused handshake's body is read for its error. */
const REFUSAL_BODY_BYTES_MAX = 64 * 1024;
/** Largest frame accepted from the server. */
const INCOMING_FRAME_BYTES_MAX = 64 * 1024 * 1024;

/** The server's limits, from its `welcome`. */
export interface Limits {
  eventBytesMax: number;
  frameBytesMax: number;
  batchEventsMax: number;
  pendingPublishesMax: number;
  subscriptionsMax: number;
  publishEventsPerSecondMax: number;
}

type RequestKind = 'sub' | 'unsub' | 'send' | 'verb' | 'ping' | 'room';

/** A frame sent with a rid, waiting for the `ok`, `pong`, `subscribed` or `error` that answers it. */
export interface PendingRequest {
  kind: RequestKind;
  what: string;
  /** A `sub`'s subscription (Subscriptions' own number for it). */
  local?: number;
  resolve(value: any): void;
  reject(error: Error): void;
}

/** What the publisher and the subscriptions use of the connection. */
export interface Link {
  /** Welcomed and not lost: frames sent now reach the server. */
  readonly open: boolean;
  /** Closing: no new handler starts. */
  readonly closing: boolean;
  /** Counts the connections made: a delivery belongs to the one that brought it. */
  readonly generation: number;
  readonly limits: Limits | undefined;
  nextRid(): number;
  sendFrame(frame: Record<string, unknown>): void;
  sendText(text: string): void;
  /** Waits for the answer to `rid`. */
  expect(rid: number, request: PendingRequest): void;
  /** Stops waiting for the answer to `rid` (its caller gave up). */
  forget(rid: number): void;
  ensureConnected(): void;
  /** Something finished: the process may exit, close may go on. */
  afterSettle(): void;
  updateRef(): void;
  emit(event: string, payload: unknown): boolean;
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

export class Connection extends EventEmitter implements Link {
  private state: State = 'idle';
  private ws: WebSocket | undefined;
  private connections = 0;
  /** Rooms joined (set by the room listener): like subscriptions, they keep the process alive. */
  private roomsJoined = 0;
  private everConnected = false;
  private attempts = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private welcomeTimer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private lastHeard = 0;
  private heartbeatMs = 15_000;
  private serverLimits: Limits | undefined;
  private rid = 1;
  private readonly pending = new Map<number, PendingRequest>();
  private readonly outbox: Outgoing[] = [];
  private stopping = false;

  readonly metrics: ClientMetrics = zeroMetrics();
  private readonly publisher: Publisher;
  private readonly subscriptions: Subscriptions;

  constructor(
    private readonly options: ResolvedOptions,
    private readonly log: Logger,
  ) {
    super();
    this.publisher = new Publisher(this, options, this.metrics);
    this.subscriptions = new Subscriptions(this, options, this.metrics, log);
  }

  get connected(): boolean {
    return this.state === 'open';
  }

  get open(): boolean {
    return this.state === 'open' && this.ws !== undefined;
  }

  get isClosed(): boolean {
    return this.state === 'closed' || this.stopping;
  }

  get closing(): boolean {
    return this.stopping;
  }

  get generation(): number {
    return this.connections;
  }

  get limits(): Limits | undefined {
    return this.serverLimits;
  }

  get bufferedEvents(): number {
    return this.publisher.bufferedEvents;
  }

  nextRid(): number {
    return this.rid++;
  }

  expect(rid: number, request: PendingRequest): void {
    this.pending.set(rid, request);
  }

  forget(rid: number): void {
    this.pending.delete(rid);
  }

  /** Queues one encoded event; resolves with its result once the server stored it. */
  publish(json: string): Promise<PublishResult> {
    if (this.isClosed) return Promise.reject(new ClosedError());
    return this.publisher.publish(json);
  }

  subscribe(spec: SubSpec, handler: EventHandler): Promise<SubState> {
    if (this.isClosed) return Promise.reject(new ClosedError());
    return this.subscriptions.subscribe(spec, handler);
  }

  unsubscribe(local: number): Promise<void> {
    return this.subscriptions.unsubscribe(local);
  }

  /** The room listener tells how many rooms it holds, so that they keep the process alive. */
  setRoomsJoined(count: number): void {
    this.roomsJoined = count;
    this.updateRef();
  }

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
      const rid = this.nextRid();
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
    this.connections += 1;
    this.serverLimits = frame.limits as Limits;
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
    this.subscriptions.resubscribeAll();
    this.flushOutbox();
    this.publisher.flush(true);
    this.emit('connected', { reconnected, connectionId: frame.connectionId, server: frame.server });
  }

  private onFrame(frame: any): void {
    switch (frame.op) {
      case 'event':
        // An event sent to a room this connection joined: the room listener's (rooms.ts).
        if (frame.room !== undefined) this.emit('roomEvent', frame);
        else this.subscriptions.onEvent(frame);
        return;
      case 'events':
        // Several deliveries of one group subscription (it asked with `batch`), in order.
        for (const item of frame.events) this.subscriptions.onEvent({ op: 'event', sid: frame.sid, ...item });
        return;
      case 'puback':
        this.publisher.onPuback(frame.rid, frame.results);
        return;
      case 'subscribed': {
        const pending = this.pending.get(frame.rid);
        if (pending?.kind !== 'sub') throw new ProtocolError(`subscribed for unknown rid ${frame.rid}`);
        this.pending.delete(frame.rid);
        this.subscriptions.onSubscribed(pending.local!, frame.sid);
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
        this.subscriptions.onClosed(frame.sid, detail);
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
    if (this.publisher.onError(frame.rid, error)) return;
    const pending = this.pending.get(frame.rid);
    if (pending === undefined) return;
    this.pending.delete(frame.rid);
    if (pending.kind === 'sub') {
      this.subscriptions.onRefused(pending.local!, detail.code, detail.message, error);
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
    this.publisher.requeueUnanswered();
    for (const [, pending] of this.pending) {
      if (pending.kind === 'unsub') pending.resolve(undefined);
      else if (pending.kind !== 'sub') pending.reject(new ConnectionLostError(pending.what));
    }
    this.pending.clear();
    this.subscriptions.onLost();
    this.emit('disconnected', { reason });
    this.state = 'waiting';
    this.attempts = 0;
    this.scheduleReconnect();
  }

  /** The first connection failed for good: fail what waits for it. */
  private failWaiting(error: Error): void {
    this.publisher.failAll(error);
    this.failOutbox(error);
    this.subscriptions.failWaiting(error);
    this.updateRef();
  }

  private failOutbox(error: Error): void {
    for (const outgoing of this.outbox.splice(0)) {
      if (outgoing.done) continue;
      outgoing.done = true;
      clearTimeout(outgoing.timer);
      outgoing.reject(error);
    }
  }

  private hasWork(): boolean {
    return this.subscriptions.size > 0 || this.roomsJoined > 0 || this.publisher.hasWork || this.outbox.length > 0 || this.pending.size > 0;
  }

  /** Keeps the process alive while the client has work, and lets it exit when it has none
   * (a script that only publishes ends once its publishes are answered). */
  updateRef(): void {
    const socket = (this.ws as unknown as { _socket?: { ref(): void; unref(): void } | null } | undefined)?._socket;
    if (socket === undefined || socket === null) return;
    if (this.hasWork() || this.subscriptions.running) socket.ref();
    else socket.unref();
  }

  afterSettle(): void {
    this.updateRef();
    if (this.stopping) this.emit('settled');
  }

  sendFrame(frame: Record<string, unknown>): void {
    this.sendText(JSON.stringify(frame));
  }

  sendText(text: string): void {
    if (this.ws === undefined || this.state !== 'open') return;
    this.ws.send(text);
  }

  /** Whether everything taken has been answered and no handler runs. */
  private drained(): boolean {
    if (this.publisher.hasWork || this.outbox.some((o) => !o.done)) return false;
    for (const pending of this.pending.values()) if (pending.kind === 'send') return false;
    return !this.subscriptions.running;
  }

  /** Stops taking work, waits (up to the timeout) for publishes and sends to be answered and
   * running handlers to finish and settle, then closes the connection. The server hands the
   * group deliveries this client had not started to other members. */
  async close(): Promise<void> {
    if (this.state === 'closed' || this.stopping) return;
    this.stopping = true;
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
    this.subscriptions.flushAcks();
    this.state = 'closed';
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.welcomeTimer);
    clearInterval(this.watchdog);
    this.publisher.stop();
    const ws = this.ws;
    this.ws = undefined;
    if (ws !== undefined) {
      ws.on('error', () => {});
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'client closed');
      else ws.terminate();
    }
    const closed = new ClosedError();
    this.publisher.failAll(closed);
    this.failOutbox(closed);
    for (const pending of this.pending.values()) {
      if (pending.kind === 'unsub') pending.resolve(undefined);
      else pending.reject(closed);
    }
    this.pending.clear();
    this.subscriptions.dropAll();
  }
}
