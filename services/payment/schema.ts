/**
 * The payment context's tables, all in Postgres schema `payment`. Migrations
 * are generated from this file: `npm run db:generate` (drizzle-kit) writes
 * services/payment/migrations/, applied by mesh/db at start.
 */
import { sql } from 'drizzle-orm';
import { bigint, check, pgSchema, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';
import { inboxTable, outboxTable } from '../../mesh/events/tables.js';
import type { PaymentState } from './domain.js';

export const payment = pgSchema('payment');

/**
 * One row per order: the unique order_id is what makes a retried or
 * concurrent AuthorizePayment charge once. A TOMBSTONE row (an order refunded
 * before it was authorized) has no user, amount or card.
 */
export const payments = payment.table(
  'payments',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    orderId: text('order_id').notNull(),
    userId: text('user_id').notNull(),
    /** Integer minor units (int64 in the contract). */
    amountMinor: bigint('amount_minor', { mode: 'bigint' }).notNull(),
    currencyCode: text('currency_code').notNull(),
    status: text('status').$type<PaymentState>().notNull(),
    declineReason: text('decline_reason').notNull().default(''),
    cardLast4: text('card_last4').notNull().default(''),
    /** The processor's reference for capture, void and refund. */
    authorizationCode: text('authorization_code').notNull().default(''),
    /** Why it was voided, refunded or tombstoned. */
    refundReason: text('refund_reason').notNull().default(''),
    createTime: timestamp('create_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
    updateTime: timestamp('update_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('payments_order_id_key').on(t.orderId),
    check(
      'payments_status',
      sql`${t.status} in ('AUTHORIZED', 'CAPTURED', 'DECLINED', 'VOIDED', 'REFUNDED', 'TOMBSTONE')`,
    ),
    check('payments_amount_nonnegative', sql`${t.amountMinor} >= 0`),
  ],
);

/** Events to publish (PaymentAuthorized, PaymentFailed, PaymentRefunded), written with the change. */
export const outbox = outboxTable(payment);
/** Events consumed (none yet; kept so a future consumer needs no migration of its own). */
export const inbox = inboxTable(payment);

export type PaymentRow = typeof payments.$inferSelect;
