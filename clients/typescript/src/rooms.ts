// joinRoom / leaveRoom / subscribeToRoom: a service listening to a room.
//
// Herald keeps rooms only for Socket.IO sockets (docs/REALTIME.md): `/v1/ws` has no verb for a
// service connection to join a room or to receive what is sent to one. So a service listens
// the way a browser does: with a browser token (`realtimeToken`, a JWT whose `herald.rooms`
// claim covers the room) over the Socket.IO gateway, through the stock `socket.io-client`
// (an optional peer dependency, loaded only when a room is used). Each room gets a socket of
// its own, because a socket's events do not say which room they were sent to; such a socket
// also receives what is sent to the token's user and broadcasts.

import { ClosedError, HeraldError, InvalidArgumentError, TimeoutError, UnsupportedError } from './errors.js';
import type { ResolvedOptions } from './options.js';
import type { DeliveryContext, EventHandler, HeraldEvent, Logger, Subscription } from './types.js';

/** The part of a socket.io-client Socket used here. */
interface RoomSocket {
  connected: boolean;
  on(event: string, listener: (...args: any[]) => void): unknown;
  once(event: string, listener: (...args: any[]) => void): unknown;
  onAny(listener: (event: string, ...args: any[]) => void): unknown;
  timeout(ms: number): { emitWithAck(event: string, ...args: unknown[]): Promise<any> };
  close(): unknown;
}

interface Room {
  name: string;
  socket: RoomSocket;
  joined: Promise<void>;
  handlers: Map<string, { handler: EventHandler; end(error?: Error): void }>;
}

let nextId = 1;

export class RoomListener {
  private readonly rooms = new Map<string, Room>();
  private readonly byId = new Map<string, Room>();
  private closed = false;

  constructor(
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
    this.rooms.delete(name);
    try {
      await room.joined;
      await this.ask(room.socket, 'leave', name);
    } catch {
      // Leaving a room that was never joined is leaving it.
    } finally {
      room.socket.close();
      for (const [id, entry] of room.handlers) {
        this.byId.delete(id);
        entry.end(undefined);
      }
    }
  }

  async subscribe(name: string, handler: EventHandler): Promise<Subscription> {
    const room = this.room(name);
    await room.joined;
    const id = `room-${nextId++}`;
    let end!: (error?: Error) => void;
    const ended = new Promise<Error | undefined>((resolve) => {
      end = resolve;
    });
    room.handlers.set(id, { handler, end });
    this.byId.set(id, room);
    return {
      id,
      pattern: name,
      group: undefined,
      ended,
      unsubscribe: () => this.unsubscribe(id),
    };
  }

  async unsubscribe(id: string): Promise<void> {
    const room = this.byId.get(id);
    if (room === undefined) return;
    this.byId.delete(id);
    room.handlers.get(id)?.end(undefined);
    room.handlers.delete(id);
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.rooms.keys()].map((name) => this.leave(name)));
  }

  private room(name: string): Room {
    if (this.closed) throw new ClosedError();
    const existing = this.rooms.get(name);
    if (existing !== undefined) return existing;
    if (this.options.realtimeToken === undefined) {
      throw new UnsupportedError(
        `cannot listen to room ${JSON.stringify(name)}: herald keeps rooms only for Socket.IO sockets, and /v1/ws has no verb ` +
          'for a service to join a room. Give the client a realtimeToken (a browser JWT whose herald.rooms claim covers the ' +
          'room) to listen through the Socket.IO gateway, or publish the events to a subject and subscribe to that.',
      );
    }
    const room: Room = { name, socket: undefined as unknown as RoomSocket, joined: Promise.resolve(), handlers: new Map() };
    room.joined = this.open(room);
    room.joined.catch(() => {
      if (this.rooms.get(name) === room) this.rooms.delete(name);
    });
    this.rooms.set(name, room);
    return room;
  }

  private async open(room: Room): Promise<void> {
    let io: (url: string, options: Record<string, unknown>) => RoomSocket;
    try {
      ({ io } = (await import('socket.io-client')) as unknown as { io: typeof io });
    } catch {
      throw new UnsupportedError('joinRoom/subscribeToRoom need the socket.io-client package: npm install socket.io-client');
    }
    const socket = io(this.options.httpUrl, {
      auth: { token: this.options.realtimeToken },
      forceNew: true,
      timeout: this.options.timeout,
      reconnectionDelay: this.options.reconnectDelayMs,
      reconnectionDelayMax: this.options.reconnectDelayMaxMs,
    });
    room.socket = socket;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.close();
        reject(new TimeoutError(`connecting to the Socket.IO gateway for room ${room.name}`, this.options.timeout));
      }, this.options.timeout);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('connect_error', (error: Error) => {
        clearTimeout(timer);
        socket.close();
        const [code, ...rest] = error.message.split(': ');
        reject(new HeraldError(rest.length > 0 ? code! : 'connection_failed', `room ${room.name}: ${error.message}`));
      });
    });
    // Rejoin after the gateway's own reconnects.
    socket.on('connect', () => {
      this.ask(socket, 'join', room.name).catch((error) => this.log.warn(`rejoining room ${room.name} failed: ${error.message}`));
    });
    socket.onAny((type: string, data: unknown, meta: Record<string, unknown> | undefined) => {
      if (type.startsWith('herald:')) {
        this.log.warn(`room ${room.name}: ${type} ${JSON.stringify(data)}`);
        return;
      }
      const event = { ...(meta ?? {}), type, data } as HeraldEvent;
      for (const [id, entry] of room.handlers) {
        const context: DeliveryContext = { subscriptionId: id, attempt: 1, extend: async () => {} };
        Promise.resolve()
          .then(() => entry.handler(event, context))
          .catch((error) => this.log.warn(`room ${room.name} handler failed on ${type}: ${(error as Error).message}`));
      }
    });
    try {
      await this.ask(socket, 'join', room.name);
    } catch (error) {
      socket.close();
      throw error;
    }
  }

  private async ask(socket: RoomSocket, verb: 'join' | 'leave', name: string): Promise<void> {
    let answer: any;
    try {
      answer = await socket.timeout(this.options.timeout).emitWithAck(verb, name);
    } catch {
      throw new TimeoutError(`${verb} room ${name}`, this.options.timeout);
    }
    if (answer?.error !== undefined) {
      const { code, message } = answer.error;
      if (code === 'invalid_subject') throw new InvalidArgumentError(`room ${JSON.stringify(name)}: ${message}`);
      throw new HeraldError(code, `${verb} room ${name}: ${message}`);
    }
  }
}
