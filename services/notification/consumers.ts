/**
 * The events the notification context reacts to, one durable consumer each:
 *
 *   shop.order.v1.OrderConfirmed     -> "Order confirmed"
 *   shop.order.v1.OrderCancelled     -> "Order cancelled"
 *   shop.payment.v1.PaymentFailed    -> "Payment declined"
 *
 * Each records one notification for the order's user (texts in domain.ts),
 * its NotificationSent outbox row and the live announcement, in the same
 * transaction as the inbox row (mesh/events), so a redelivery records nothing.
 * The new events of a batch are recorded together, in one statement
 * (handleBatch: recordNotifications); a lone one by recordNotification.
 */
import type { DescMessage } from '@bufbuild/protobuf';
import { eventConsumer, type ServiceConsumer } from '../../mesh/app.js';
import { PermanentEventError, type BatchEventHandler, type EventHandler, type EventMeta } from '../../mesh/events/consumer.js';
import { OrderCancelledSchema, OrderConfirmedSchema } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentFailedSchema } from '../../gen/shop/payment/v1/payment_pb.js';
import { orderCancelledText, orderConfirmedText, paymentFailedText, type KindName, type MessageText } from './domain.js';
import { prepareNotification, recordNotification, recordNotifications, type NewNotification } from './repository.js';
import { inbox } from './schema.js';

/** The handlers of one consumer: `handler` for a lone event, `handleBatch` for the new events of a batch. */
export interface NotifyHandlers<Desc extends DescMessage> {
  handler: EventHandler<Desc>;
  handleBatch: BatchEventHandler<Desc>;
}

/** Handlers that record one notification of `kind` per event that names an order and a user. */
function notifyOn<Desc extends DescMessage>(
  kind: KindName,
  text: (event: Parameters<EventHandler<Desc>>[1]) => MessageText,
  subjectPrefix: string,
): NotifyHandlers<Desc> {
  const notification = (event: Parameters<EventHandler<Desc>>[1], meta: EventMeta): NewNotification => {
    const { orderId, userId } = event as unknown as { orderId: string; userId: string };
    if (!orderId || !userId) throw new PermanentEventError(`${meta.eventType} without order_id or user_id`);
    return { kind, userId, orderId, sourceEventId: meta.eventId, ...text(event) };
  };
  return {
    handler: async (tx, event, meta) => {
      await recordNotification(tx, notification(event, meta), subjectPrefix);
    },
    // One bad event fails the batch; mesh/events then redoes it one event at a time, where
    // `handler` dead-letters that one alone.
    handleBatch: async (tx, events) => {
      // Each NotificationSent is made in its own event's trace (inTrace), as `handler` makes it.
      const batch = events.map(({ event, meta, inTrace }) => inTrace(() => prepareNotification(notification(event, meta), subjectPrefix)));
      await recordNotifications(tx, batch);
    },
  };
}

export function notificationHandlers(subjectPrefix: string) {
  return {
    orderConfirmed: notifyOn<typeof OrderConfirmedSchema>('order_confirmed', orderConfirmedText, subjectPrefix),
    orderCancelled: notifyOn<typeof OrderCancelledSchema>('order_cancelled', orderCancelledText, subjectPrefix),
    paymentFailed: notifyOn<typeof PaymentFailedSchema>('payment_failed', paymentFailedText, subjectPrefix),
  };
}

export const CONSUMER_NAMES = {
  orderConfirmed: 'notification-order-confirmed',
  orderCancelled: 'notification-order-cancelled',
  paymentFailed: 'notification-payment-failed',
} as const;

/** The durable consumers of this context, one per event; mesh/app starts them (database, JetStream, hooks). */
export function notificationConsumers(subjectPrefix: string): ServiceConsumer[] {
  const handlers = notificationHandlers(subjectPrefix);
  return [
    eventConsumer({ name: CONSUMER_NAMES.orderConfirmed, event: OrderConfirmedSchema, ...handlers.orderConfirmed, inbox }),
    eventConsumer({ name: CONSUMER_NAMES.orderCancelled, event: OrderCancelledSchema, ...handlers.orderCancelled, inbox }),
    eventConsumer({ name: CONSUMER_NAMES.paymentFailed, event: PaymentFailedSchema, ...handlers.paymentFailed, inbox }),
  ];
}
