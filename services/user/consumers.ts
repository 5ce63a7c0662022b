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
import { eventConsumer, type ServiceConsumer } from '../../mesh/app.js';
import type { EventsTx } from '../../mesh/events/db.js';
import { PermanentEventError, type EventMeta } from '../../mesh/events/consumer.js';
import { OrderConfirmedSchema, type OrderConfirmed } from '../../gen/shop/order/v1/order_pb.js';
import { pointsForOrderTotal } from './domain.js';
import { awardPoints } from './repository.js';
import { inbox } from './schema.js';

/** Durable consumer name, shared by every replica. */
export const AWARD_POINTS_CONSUMER = 'user-award-points';

export async function onOrderConfirmed(tx: EventsTx, event: OrderConfirmed, _meta: EventMeta): Promise<void> {
  if (!event.orderId || !event.userId) {
    throw new PermanentEventError('OrderConfirmed without order_id or user_id');
  }
  const points = pointsForOrderTotal(event.total);
  if (points > 0n) await awardPoints(tx, { orderId: event.orderId, userId: event.userId, points });
}

/** The durable consumers of this context; mesh/app starts them (database, JetStream, hooks). */
export function userConsumers(): ServiceConsumer[] {
  return [eventConsumer({ name: AWARD_POINTS_CONSUMER, event: OrderConfirmedSchema, handler: onOrderConfirmed, inbox })];
}
