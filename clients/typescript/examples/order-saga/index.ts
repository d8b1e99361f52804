// Seed 003's choreographed order saga on Herald, with compensation. No service calls another;
// each reacts to events in its own consumer group (at least once, so each handler is
// idempotent: a redelivered event changes nothing twice).
//
//   order.created        → inventory reserves the items  → inventory.reserved | inventory.unavailable
//   inventory.reserved   → payment charges the card      → payment.processed  | payment.failed
//   payment.processed    → shipping creates the shipment → shipment.created
//   payment.failed       → inventory releases the items  → inventory.released (compensation)
//
// Stock is reserved before the payment (the seed reserves after it, which leaves its
// `payment:failed → inventory:release` compensation nothing to release). Every event carries
// the order id as `key` and `correlationId`.
//
//   EVENT_BUS_URL=… EVENT_BUS_TOKEN=… node build/examples/order-saga/index.js

import type { EventBusClient, HeraldEvent } from '@herald/client';

import { outcome, runIfMain, serviceClient, type ExampleOptions } from '../shared.js';

export interface Order {
  orderId: string;
  customerId: string;
  items: { sku: string; quantity: number }[];
  amount: number;
  card: string;
}

type OrderStatus = 'pending' | 'reserved' | 'paid' | 'completed' | 'cancelled';

/** Publishes with the order as key and correlation id, so one order's events can be followed. */
function publisher(eventBus: EventBusClient) {
  return (type: string, orderId: string, data: Record<string, unknown>) =>
    eventBus.publish(type, { orderId, ...data }, { key: orderId, correlationId: orderId });
}

export async function startInventoryService(options: ExampleOptions, stock: Map<string, number>) {
  const eventBus = serviceClient('inventory-service', options);
  const publish = publisher(eventBus);
  const reservations = new Map<string, Order['items']>();

  await eventBus.subscribe(
    'order.created',
    async (event: HeraldEvent<Order>) => {
      const order = event.data;
      if (reservations.has(order.orderId)) return; // already reserved: a redelivery
      const short = order.items.find((item) => (stock.get(item.sku) ?? 0) < item.quantity);
      if (short !== undefined) {
        await publish('inventory.unavailable', order.orderId, { sku: short.sku });
        return;
      }
      for (const item of order.items) stock.set(item.sku, stock.get(item.sku)! - item.quantity);
      reservations.set(order.orderId, order.items);
      await publish('inventory.reserved', order.orderId, { items: order.items, amount: order.amount, card: order.card });
    },
    { group: 'inventory' },
  );

  // Compensation: the payment failed, so the reserved items go back on the shelf.
  await eventBus.subscribe(
    'payment.failed',
    async (event) => {
      const items = reservations.get(event.data.orderId);
      if (items === undefined) return; // nothing reserved, or already released
      for (const item of items) stock.set(item.sku, stock.get(item.sku)! + item.quantity);
      reservations.delete(event.data.orderId);
      await publish('inventory.released', event.data.orderId, { items });
    },
    { group: 'inventory-compensation' },
  );
  return eventBus;
}

export async function startPaymentService(options: ExampleOptions) {
  const eventBus = serviceClient('payment-service', options);
  const publish = publisher(eventBus);
  const charged = new Set<string>();
  await eventBus.subscribe(
    'inventory.reserved',
    async (event) => {
      const { orderId, amount, card } = event.data;
      if (charged.has(orderId)) return;
      if (card.endsWith('0002')) {
        await publish('payment.failed', orderId, { reason: 'card declined' });
        return;
      }
      charged.add(orderId);
      await publish('payment.processed', orderId, { amount, paymentId: `pay-${orderId}` });
    },
    { group: 'payments' },
  );
  return eventBus;
}

export async function startShipmentService(options: ExampleOptions) {
  const eventBus = serviceClient('shipment-service', options);
  const publish = publisher(eventBus);
  const shipped = new Set<string>();
  await eventBus.subscribe(
    'payment.processed',
    async (event) => {
      const { orderId } = event.data;
      if (shipped.has(orderId)) return;
      shipped.add(orderId);
      await publish('shipment.created', orderId, { trackingNumber: `TRK-${orderId.toUpperCase()}` });
    },
    { group: 'shipments' },
  );
  return eventBus;
}

/** The order service: takes orders, and follows each one's saga to its end. */
export async function startOrderService(options: ExampleOptions, onStatus: (orderId: string, status: OrderStatus, event: HeraldEvent) => void) {
  const eventBus = serviceClient('order-service', options);
  const publish = publisher(eventBus);
  const track = (pattern: string, group: string, status: (type: string) => OrderStatus | undefined) =>
    eventBus.subscribe(
      pattern,
      (event) => {
        const now = status(event.type);
        if (now !== undefined) onStatus(event.data.orderId, now, event);
      },
      { group },
    );
  const inventoryStatus: Record<string, OrderStatus> = { 'inventory.reserved': 'reserved', 'inventory.unavailable': 'cancelled' };
  await track('inventory.*', 'orders-inventory', (type) => inventoryStatus[type]);
  await track('payment.*', 'orders-payment', (type) => (type === 'payment.processed' ? 'paid' : 'cancelled'));
  await track('shipment.created', 'orders-shipment', () => 'completed');
  return {
    eventBus,
    async createOrder(order: Order) {
      onStatus(order.orderId, 'pending', undefined as unknown as HeraldEvent);
      await publish('order.created', order.orderId, { ...order });
    },
  };
}

export async function main(options: ExampleOptions = {}) {
  const stock = new Map([
    ['widget', 10],
    ['gadget', 5],
  ]);
  const initialStock = Object.fromEntries(stock);
  const orders: Order[] = [
    { orderId: 'order-1001', customerId: 'cust-1', items: [{ sku: 'widget', quantity: 2 }], amount: 40, card: '4242-4242-4242-4242' },
    { orderId: 'order-1002', customerId: 'cust-2', items: [{ sku: 'widget', quantity: 3 }, { sku: 'gadget', quantity: 1 }], amount: 95, card: '4000-0000-0000-0002' },
  ];
  const history: Record<string, { status: OrderStatus; event?: string }[]> = {};
  const finals = new Map<string, ReturnType<typeof outcome<OrderStatus>>>(orders.map((order) => [order.orderId, outcome<OrderStatus>(`${order.orderId} to finish`)]));
  const compensated = outcome('the inventory released for the declined order');

  const inventory = await startInventoryService(options, stock);
  inventory.on('handlerError', ({ error }) => console.error(error));
  const payment = await startPaymentService(options);
  const shipment = await startShipmentService(options);
  const orderService = await startOrderService(options, (orderId, status, event) => {
    (history[orderId] ??= []).push({ status, event: event?.type });
    if (status === 'completed' || status === 'cancelled') finals.get(orderId)?.done(status);
  });
  const watcher = serviceClient('saga-watcher', options);
  await watcher.subscribe('inventory.released', () => compensated.done());

  try {
    for (const order of orders) await orderService.createOrder(order);
    const outcomes = Object.fromEntries(
      await Promise.all(orders.map(async (order) => [order.orderId, await finals.get(order.orderId)!.promise] as const)),
    );
    await compensated.promise;
    return { outcomes, history, initialStock, stock: Object.fromEntries(stock) };
  } finally {
    await Promise.all([inventory.close(), payment.close(), shipment.close(), orderService.eventBus.close(), watcher.close()]);
  }
}

runIfMain(import.meta.url, main);
