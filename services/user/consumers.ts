/**
 * The events the user context reacts to.
 *
 *   shop.order.v1.OrderConfirmed -> award loyalty points (domain.pointsForOrderTotal)
 *
 * Exactly once per order: mesh/events runs the handler in the same
 * transaction as the inbox row for the event id (a redelivery is skipped), and
 * points_awards is keyed by order id (a copy of the event under another id
 * awards nothing either).
 */
import type { JetStreamClient } from 'nats';
import type { Database } from '../../mesh/db.js';
import type { EventsTx } from '../../mesh/events/db.js';
import {
  PermanentEventError,
  startConsumer,
  type ConsumerHooks,
  type EventMeta,
  type RunningConsumer,
} from '../../mesh/events/consumer.js';
import { OrderConfirmedSchema, type OrderConfirmed } from '../../gen/shop/order/v1/order_pb.js';
import { pointsForOrderTotal } from './domain.js';
import { awardPoints } from './repository.js';
import { inbox } from './schema.js';

/** Durable consumer name, shared by every replica. */
export const AWARD_POINTS_CONSUMER = 'user-award-points';

/** Streams this context reads from (so they exist whichever service starts first). */
export const CONSUMED_EVENTS = [OrderConfirmedSchema] as const;

export async function onOrderConfirmed(tx: EventsTx, event: OrderConfirmed, _meta: EventMeta): Promise<void> {
  if (!event.orderId || !event.userId) {
    throw new PermanentEventError('OrderConfirmed without order_id or user_id');
  }
  const points = pointsForOrderTotal(event.total);
  if (points > 0n) await awardPoints(tx, { orderId: event.orderId, userId: event.userId, points });
}

export interface UserConsumersOptions {
  db: Database;
  js: JetStreamClient;
  prefix: string;
  maxDeliver?: number;
  /** Handlers running at once per consumer; events are independent, so order does not matter here. */
  concurrency?: number;
  hooks?: ConsumerHooks;
}

export async function startUserConsumers(opts: UserConsumersOptions): Promise<RunningConsumer[]> {
  return [
    await startConsumer({
      name: AWARD_POINTS_CONSUMER,
      event: OrderConfirmedSchema,
      handler: onOrderConfirmed,
      db: opts.db,
      inbox,
      js: opts.js,
      prefix: opts.prefix,
      maxDeliver: opts.maxDeliver,
      concurrency: opts.concurrency,
      hooks: opts.hooks,
    }),
  ];
}
