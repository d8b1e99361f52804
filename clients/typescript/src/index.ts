// @herald/client: seed 004's event bus interface on Herald (PRODUCT.md §11).
//
//   import { eventBus } from '@herald/client';            // EVENT_BUS_URL, EVENT_BUS_TOKEN, SERVICE_NAME
//   await eventBus.publish('user.registered', { userId: '123' });
//   await eventBus.subscribe('user.*', (event) => console.log(event.type, event.data));

import { EventBusClient } from './client.js';

export { EventBusClient, uuidv7 } from './client.js';
export type { SendResult } from './client.js';
export {
  BufferFullError,
  ClosedError,
  ConnectionError,
  ConnectionLostError,
  DeadLetterError,
  HeraldError,
  InvalidArgumentError,
  ProtocolError,
  ServerError,
  TimeoutError,
  UnsupportedError,
} from './errors.js';
export type { ClientErrorCode, ErrorCode, ServerErrorCode } from './errors.js';
export type * from './types.js';

/**
 * The default client, configured from EVENT_BUS_URL (default http://localhost:3003),
 * EVENT_BUS_TOKEN and SERVICE_NAME, read when it is first used. It connects on first use.
 */
export const eventBus: EventBusClient = new EventBusClient();

export default eventBus;
