// The client's errors. Every error is a HeraldError with a stable `code`, so callers can branch
// on `error.code` (or `instanceof`) instead of parsing messages. Codes the server sends
// (docs/PROTOCOL.md "Error codes") arrive as ServerError with the server's code.

/** The codes of errors made by the client itself. */
export type ClientErrorCode =
  | 'invalid_argument'
  | 'timeout'
  | 'buffer_full'
  | 'connection_failed'
  | 'connection_lost'
  | 'delivery_expired'
  | 'closed'
  | 'protocol'
  | 'unsupported'
  | 'slow_consumer';

/** The codes the server answers with (docs/PROTOCOL.md). */
export type ServerErrorCode =
  | 'bad_request'
  | 'invalid_event'
  | 'invalid_subject'
  | 'bad_frame'
  | 'unknown_subscription'
  | 'unknown_delivery'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'unsupported_media_type'
  | 'rate_limited'
  | 'internal'
  | 'unavailable';

export type ErrorCode = ClientErrorCode | ServerErrorCode;

export class HeraldError extends Error {
  readonly code: ErrorCode | string;
  constructor(code: ErrorCode | string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HeraldError';
    this.code = code;
  }

  /** Whether trying the same request again later may succeed. */
  get retryable(): boolean {
    return ['timeout', 'buffer_full', 'connection_failed', 'connection_lost', 'rate_limited', 'unavailable', 'internal'].includes(
      this.code,
    );
  }
}

/** A bad argument: nothing was sent. The message names the argument and what is wrong. */
export class InvalidArgumentError extends HeraldError {
  constructor(message: string) {
    super('invalid_argument', message);
    this.name = 'InvalidArgumentError';
  }
}

/** The server refused the request (docs/PROTOCOL.md error codes); nothing it asked for happened. */
export class ServerError extends HeraldError {
  readonly details: unknown;
  readonly status: number | undefined;
  constructor(code: string, message: string, details?: unknown, status?: number) {
    super(code, `herald refused the request (${code}): ${message}`);
    this.name = 'ServerError';
    this.details = details;
    this.status = status;
  }
}

/** No answer within the client's `timeout`. For a publish the outcome is unknown: publishing
 * the same event again (same `id`) is safe, the server's dedupe stores it once. */
export class TimeoutError extends HeraldError {
  readonly timeoutMs: number;
  constructor(what: string, timeoutMs: number) {
    super('timeout', `${what}: no answer within ${timeoutMs} ms`);
    this.name = 'TimeoutError';
    this.timeoutMs = timeoutMs;
  }
}

/** Publishes wait in a bounded buffer while the connection is down; this one did not fit. */
export class BufferFullError extends HeraldError {
  readonly bufferedEvents: number;
  constructor(bufferedEvents: number, limit: number) {
    super(
      'buffer_full',
      `publish buffer is full: ${bufferedEvents} events (the limit is ${limit}) wait for the connection to herald to come back; publish again later`,
    );
    this.name = 'BufferFullError';
    this.bufferedEvents = bufferedEvents;
  }
}

/** The client could not connect (or reconnect within maxRetries on the first connection). */
export class ConnectionError extends HeraldError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('connection_failed', message, options);
    this.name = 'ConnectionError';
  }
}

/** The connection dropped before the server answered: the request may or may not have taken effect. */
export class ConnectionLostError extends HeraldError {
  constructor(what: string) {
    super('connection_lost', `${what}: the connection was lost before herald answered`);
    this.name = 'ConnectionLostError';
  }
}

/** The client was closed. */
export class ClosedError extends HeraldError {
  constructor(what = 'the client is closed') {
    super('closed', what);
    this.name = 'ClosedError';
  }
}

/** The server sent something this client does not understand. */
export class ProtocolError extends HeraldError {
  constructor(message: string) {
    super('protocol', `protocol error: ${message}`);
    this.name = 'ProtocolError';
  }
}

/** The server has no verb for what was asked (see the message for the missing verb). */
export class UnsupportedError extends HeraldError {
  constructor(message: string) {
    super('unsupported', message);
    this.name = 'UnsupportedError';
  }
}

/**
 * Throw this from a group handler to dead-letter the event at once (the server's `reject`):
 * for events no retry can fix, such as a payload that fails validation. Any other error nacks,
 * and the event is retried with the group's backoff until its retries are used up.
 */
export class DeadLetterError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DeadLetterError';
  }
}
