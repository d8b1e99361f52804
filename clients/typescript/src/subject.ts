// Event types and patterns (PRODUCT.md §2), checked before anything is sent so that a typo
// fails at the call with a message naming the token, not later as a server error.

import { InvalidArgumentError } from './errors.js';

const TOKEN = /^[A-Za-z0-9_-]+$/;
const TOKENS_MAX = 16;
const SUBJECT_BYTES_MAX = 255;

function check(kind: 'event type' | 'pattern', value: unknown, wildcards: boolean): string {
  if (typeof value !== 'string') {
    throw new InvalidArgumentError(`${kind} must be a string, got ${describe(value)}`);
  }
  if (value.length === 0) throw new InvalidArgumentError(`${kind} must not be empty`);
  if (Buffer.byteLength(value) > SUBJECT_BYTES_MAX) {
    throw new InvalidArgumentError(`${kind} ${JSON.stringify(value)} is longer than ${SUBJECT_BYTES_MAX} bytes`);
  }
  const tokens = value.split('.');
  if (tokens.length > TOKENS_MAX) {
    throw new InvalidArgumentError(`${kind} ${JSON.stringify(value)} has ${tokens.length} tokens; at most ${TOKENS_MAX}`);
  }
  tokens.forEach((token, index) => {
    const position = index + 1;
    if (wildcards && token === '*') return;
    if (wildcards && token === '>') {
      if (position === tokens.length) return;
      throw new InvalidArgumentError(
        `${kind} ${JSON.stringify(value)}: '>' (token ${position}) may only be the last token`,
      );
    }
    if (!TOKEN.test(token)) {
      const allowed = wildcards ? "[A-Za-z0-9_-], '*' or a final '>'" : '[A-Za-z0-9_-]';
      throw new InvalidArgumentError(
        `${kind} ${JSON.stringify(value)}: token ${position} ${JSON.stringify(token)} is not ${allowed}`,
      );
    }
  });
  return value;
}

/** Types already found valid; most services publish a handful of types over and over. */
const validTypes = new Set<string>();
const VALID_TYPES_CACHED_MAX = 1024;

/** A concrete event type such as `photo.uploaded`. */
export function checkType(value: unknown): string {
  if (typeof value === 'string' && validTypes.has(value)) return value;
  const type = check('event type', value, false);
  if (validTypes.size >= VALID_TYPES_CACHED_MAX) validTypes.clear();
  validTypes.add(type);
  return type;
}

/** A pattern such as `user.*` or `photo.>`. */
export function checkPattern(value: unknown): string {
  return check('pattern', value, true);
}

/** A room or user id: a non-empty string. The server checks the name itself (room names are
 * tokens separated by `.` or `:`, docs/PROTOCOL.md), so that its rules are kept in one place. */
export function checkName(kind: 'room' | 'user id', value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(`${kind} must be a non-empty string, got ${describe(value)}`);
  }
  return value;
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return typeof value;
}
