/**
 * The events the user context reacts to.
 *
 *   shop.order.v1.OrderConfirmed -> award loyalty points (domain.pointsForOrderTotal)
 *
 * Exactly once per order: mesh/events runs the handler in the same
 * transaction as the inbox row for the event id (a redelivery is skipped), and
 * points_awards is keyed by order id (a copy of the event under another id
 * awards nothing either). The new events of a batch are awarded together, in
 * one statement (onOrdersConfirmed); a lone one by onOrderConfirmed.
 */
import { eventConsumer, type ServiceConsumer } from '../../mesh/app.js';
import type { EventsTx } from '../../mesh/events/db.js';
import { PermanentEventError, type BatchEvent, type EventMeta } from '../../mesh/events/consumer.js';
import { OrderConfirmedSchema, type OrderConfirmed } from '../../gen/shop/order/v1/order_pb.js';
import { pointsForOrderTotal } from './domain.js';
import { awardPoints, awardPointsMany } from './repository.js';
import { inbox } from './schema.js';

/** Durable consumer name, shared by every replica. */
export const AWARD_POINTS_CONSUMER = 'user-award-points';

/** The award an order earns; undefined for none. */
function awardFor(event: OrderConfirmed): { orderId: string; userId: string; points: bigint } | undefined {
  if (!event.orderId || !event.userId) {
    throw new PermanentEventError('OrderConfirmed without order_id or user_id');
  }
  const points = pointsForOrderTotal(event.total);
  return points > 0n ? { orderId: event.orderId, userId: event.userId, points } : undefined;
}

export async function onOrderConfirmed(tx: EventsTx, event: OrderConfirmed, _meta: EventMeta): Promise<void> {
  const award = awardFor(event);
  if (award) await awardPoints(tx, award);
}

/**
 * The new events of a batch (mesh/events handleBatch): the same awards, one statement.
 * One bad event fails the batch; mesh/events then redoes it one event at a time, where
 * onOrderConfirmed dead-letters that one alone.
 */
export async function onOrdersConfirmed(tx: EventsTx, events: BatchEvent<typeof OrderConfirmedSchema>[]): Promise<void> {
  const awards = events.map(({ event }) => awardFor(event)).filter((a) => a !== undefined);
  await awardPointsMany(tx, awards);
}

/** The durable consumers of this context; mesh/app starts them (database, JetStream, hooks). */
export function userConsumers(): ServiceConsumer[] {
  return [eventConsumer({ name: AWARD_POINTS_CONSUMER, event: OrderConfirmedSchema, handler: onOrderConfirmed, handleBatch: onOrdersConfirmed, inbox })];
}
