// joinRoom / leaveRoom / subscribeToRoom: a service listening to a room.
//
// On the client's one /v1/ws connection (docs/PROTOCOL.md, "Listening to rooms"): `join` and
// `leave` frames, each answered with `ok`; what is sent to a joined room arrives as
// `{"op":"event","room":…,"event":…}`. Rooms outlive connections: each new connection joins them
// again (events sent while it was down are lost: room events are live, at most once). The
// server bounds what waits for the connection; here each subscribeToRoom handler runs one event
// at a time and holds at most liveBufferEvents of them, past which it is dropped (its `ended`
// resolves with the error), as a live subscription is. When the server makes the connection
// leave a room (it fell behind), the room's handlers end with that error and the room is
// forgotten; join it again to listen again.

import type { Connection } from './connection.js';
import { Deque } from './deque.js';
import { ClosedError, ConnectionLostError, HeraldError, ServerError } from './errors.js';
import type { ResolvedOptions } from './options.js';
import type { DeliveryContext, EventHandler, HeraldEvent, Logger, Subscription } from './types.js';

interface RoomHandler {
  id: string;
  handler: EventHandler;
  queue: Deque<HeraldEvent>;
  running: boolean;
  end(error?: Error): void;
}

interface Room {
  name: string;
  joined: Promise<void>;
  handlers: Map<string, RoomHandler>;
}

let nextId = 1;

export class RoomListener {
  private readonly rooms = new Map<string, Room>();
  private readonly byId = new Map<string, Room>();
  private closed = false;
  private connection: Connection | undefined;

  constructor(
    private readonly conn: () => Connection,
    private readonly options: ResolvedOptions,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.byId.size;
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  async join(name: string): Promise<void> {
    await this.room(name).joined;
  }

  async leave(name: string): Promise<void> {
    const room = this.rooms.get(name);
    if (room === undefined) return;
    this.forget(room, undefined);
    try {
      await room.joined;
    } catch {
      return; // never joined: nothing to leave
    }
    await this.connect().request('room', `leave room ${name}`, () => ({ op: 'leave', room: name }));
  }

  async subscribe(name: string, handler: EventHandler): Promise<Subscription> {
    const room = this.room(name);
    await room.joined;
    if (this.rooms.get(name) !== room) throw new ClosedError(`room ${name} was left before it was joined`);
    const id = `room-${nextId++}`;
    let resolveEnded!: (error?: Error) => void;
    const ended = new Promise<Error | undefined>((resolve) => {
      resolveEnded = resolve;
    });
    const entry: RoomHandler = {
      id,
      handler,
      queue: new Deque<HeraldEvent>(),
      running: false,
      end: (error) => {
        room.handlers.delete(id);
        this.byId.delete(id);
        entry.queue.drain();
        resolveEnded(error);
      },
    };
    room.handlers.set(id, entry);
    this.byId.set(id, room);
    return {
      id,
      pattern: name,
      group: undefined,
      ended,
      unsubscribe: () => this.unsubscribe(id),
    };
  }

  /** Ends one handler; the service stays in the room (leaveRoom leaves it). */
  async unsubscribe(id: string): Promise<void> {
    this.byId.get(id)?.handlers.get(id)?.end(undefined);
  }

  /** Ends every handler; closing the connection leaves the rooms on the server's side. */
  close(): void {
    this.closed = true;
    for (const room of [...this.rooms.values()]) this.forget(room, undefined);
  }

  private connect(): Connection {
    if (this.connection !== undefined) return this.connection;
    const connection = this.conn();
    connection.on('roomEvent', (frame) => this.onEvent(frame));
    connection.on('roomClosed', (frame) => this.onClosed(frame));
    connection.on('connected', ({ reconnected }: { reconnected: boolean }) => {
      if (!reconnected) return;
      for (const room of this.rooms.values()) {
        this.ask(room.name).catch((error: Error) => this.log.warn(`joining room ${room.name} again failed: ${error.message}`));
      }
    });
    this.connection = connection;
    return connection;
  }

  private room(name: string): Room {
    if (this.closed) throw new ClosedError();
    const existing = this.rooms.get(name);
    if (existing !== undefined) return existing;
    const room: Room = { name, joined: Promise.resolve(), handlers: new Map() };
    this.rooms.set(name, room);
    this.connect().setRoomsJoined(this.rooms.size);
    room.joined = this.joinWithRetries(name);
    room.joined.catch(() => {
      if (this.rooms.get(name) === room) this.forget(room, undefined);
    });
    return room;
  }

  /** A join cut off by a lost connection is made again on the next one. */
  private async joinWithRetries(name: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.ask(name);
        return;
      } catch (error) {
        if (!(error instanceof ConnectionLostError) || attempt >= this.options.maxRetries) throw error;
      }
    }
  }

  private ask(name: string): Promise<void> {
    return this.connect().request('room', `join room ${name}`, () => ({ op: 'join', room: name }));
  }

  private forget(room: Room, error: Error | undefined): void {
    if (this.rooms.get(room.name) === room) this.rooms.delete(room.name);
    this.connection?.setRoomsJoined(this.rooms.size);
    for (const entry of [...room.handlers.values()]) entry.end(error);
  }

  private onEvent(frame: { room: string; event: HeraldEvent }): void {
    const room = this.rooms.get(frame.room);
    if (room === undefined) return; // still in flight for a room just left
    for (const entry of [...room.handlers.values()]) {
      if (entry.queue.length >= this.options.liveBufferEvents) {
        const error = new HeraldError(
          'slow_consumer',
          `handler of room ${JSON.stringify(room.name)} dropped: it fell ${this.options.liveBufferEvents} events behind`,
        );
        this.log.warn(error.message);
        entry.end(error);
        continue;
      }
      entry.queue.push(frame.event);
      this.pump(room, entry);
    }
  }

  private pump(room: Room, entry: RoomHandler): void {
    if (entry.running || entry.queue.length === 0 || room.handlers.get(entry.id) !== entry) return;
    const event = entry.queue.shift()!;
    entry.running = true;
    const context: DeliveryContext = { subscriptionId: entry.id, attempt: 1, extend: async () => {} };
    Promise.resolve()
      .then(() => entry.handler(event, context))
      .catch((error) => this.log.warn(`room ${room.name} handler failed on ${event?.type}: ${(error as Error)?.message ?? error}`))
      .finally(() => {
        entry.running = false;
        this.pump(room, entry);
      });
  }

  private onClosed(frame: { room: string; error?: { code?: string; message?: string; details?: unknown } }): void {
    const room = this.rooms.get(frame.room);
    if (room === undefined) return;
    const detail = frame.error ?? {};
    const error = new ServerError(detail.code ?? 'internal', `room ${room.name} left: ${detail.message ?? ''}`, detail.details);
    this.log.warn(error.message);
    this.forget(room, error);
  }
}
