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
 */
import type { DescMessage } from '@bufbuild/protobuf';
import { eventConsumer, type ServiceConsumer } from '../../mesh/app.js';
import { PermanentEventError, type EventHandler } from '../../mesh/events/consumer.js';
import { OrderCancelledSchema, OrderConfirmedSchema } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentFailedSchema } from '../../gen/shop/payment/v1/payment_pb.js';
import { orderCancelledText, orderConfirmedText, paymentFailedText, type KindName, type MessageText } from './domain.js';
import { recordNotification } from './repository.js';
import { inbox } from './schema.js';

/** A handler that records one notification of `kind` from an event that names an order and a user. */
function notifyOn<Desc extends DescMessage>(
  kind: KindName,
  text: (event: Parameters<EventHandler<Desc>>[1]) => MessageText,
  subjectPrefix: string,
): EventHandler<Desc> {
  return async (tx, event, meta) => {
    const { orderId, userId } = event as unknown as { orderId: string; userId: string };
    if (!orderId || !userId) throw new PermanentEventError(`${meta.eventType} without order_id or user_id`);
    await recordNotification(tx, { kind, userId, orderId, sourceEventId: meta.eventId, ...text(event) }, subjectPrefix);
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
    eventConsumer({ name: CONSUMER_NAMES.orderConfirmed, event: OrderConfirmedSchema, handler: handlers.orderConfirmed, inbox }),
    eventConsumer({ name: CONSUMER_NAMES.orderCancelled, event: OrderCancelledSchema, handler: handlers.orderCancelled, inbox }),
    eventConsumer({ name: CONSUMER_NAMES.paymentFailed, event: PaymentFailedSchema, handler: handlers.paymentFailed, inbox }),
  ];
}
