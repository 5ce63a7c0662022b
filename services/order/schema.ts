/**
 * The order context's tables, all in Postgres schema `order`. Migrations are
 * generated from this file: `npm run db:generate` (drizzle-kit) writes
 * services/order/migrations/, applied by mesh/db at start.
 *
 * `sagas` is the saga's persisted state, one row per order: the step to run
 * next, how many times it failed transiently, when it is due, and a lease
 * token. A worker claims due rows with FOR UPDATE SKIP LOCKED and stamps its
 * own lease token while pushing next_run_at to the end of the lease; a
 * transition is stored only while that token is still there. So two replicas
 * never run one saga at the same time, and a replica that dies mid-step leaves
 * a row that becomes due again when its lease runs out.
 */
import { sql } from 'drizzle-orm';
import { bigint, bigserial, index, integer, pgSchema, primaryKey, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';
import { inboxTable, outboxTable } from '../../mesh/events/tables.js';
import type { OrderStatusName, SagaStep } from './domain.js';

export const order = pgSchema('order');

export const orders = order.table(
  'orders',
  {
    id: uuid('id').primaryKey(),
    /** Keyset order of ListOrders (newest first): exact, unlike timestamps that can tie. */
    seq: bigserial('seq', { mode: 'bigint' }).notNull(),
    userId: text('user_id').notNull(),
    idempotencyKey: text('idempotency_key').notNull(),
    status: text('status').$type<OrderStatusName>().notNull(),
    currency: text('currency').notNull(),
    totalMinor: bigint('total_minor', { mode: 'bigint' }).notNull(),
    cancelReason: text('cancel_reason').notNull().default(''),
    createTime: timestamp('create_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
    updateTime: timestamp('update_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    // A repeated PlaceOrder (same user, same key) finds the first order; concurrent ones collide here.
    uniqueIndex('orders_user_idempotency_key').on(t.userId, t.idempotencyKey),
    // ListOrders: one user's orders, newest first.
    index('orders_user_seq_idx').on(t.userId, t.seq.desc()),
  ],
);

export const orderLines = order.table(
  'order_lines',
  {
    orderId: uuid('order_id')
      .notNull()
      .references(() => orders.id, { onDelete: 'cascade' }),
    /** Position in the request, so lines read back in the order they were placed. */
    position: integer('position').notNull(),
    sku: text('sku').notNull(),
    name: text('name').notNull(),
    quantity: bigint('quantity', { mode: 'bigint' }).notNull(),
    unitPriceMinor: bigint('unit_price_minor', { mode: 'bigint' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.orderId, t.position] })],
);

export const sagas = order.table(
  'sagas',
  {
    orderId: uuid('order_id')
      .primaryKey()
      .references(() => orders.id, { onDelete: 'cascade' }),
    step: text('step').$type<SagaStep>().notNull(),
    /** Transient failures of the current step so far (drives the backoff). */
    attempt: integer('attempt').notNull().default(0),
    /** When a worker should run the step next; also the end of the current lease while one holds it. */
    nextRunAt: timestamp('next_run_at', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
    /** Past this, reserve/authorize give up and the saga compensates with "timeout". */
    deadlineAt: timestamp('deadline_at', { withTimezone: true, mode: 'date' }).notNull(),
    /** Set by the worker that holds the saga; a transition is stored only with a matching token. */
    leaseToken: uuid('lease_token'),
    lastError: text('last_error'),
    /** Why the order will be cancelled, once the saga compensates. */
    cancelReason: text('cancel_reason'),
    /** The card token to authorize: the saga needs it after PlaceOrder has answered. */
    paymentToken: text('payment_token').notNull(),
    updateTime: timestamp('update_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    // The claim query: due sagas that are not finished, earliest first. Finished ones stay out of the index.
    index('sagas_due_idx').on(t.nextRunAt).where(sql`${t.step} <> 'done'`),
  ],
);

export const outbox = outboxTable(order);
export const inbox = inboxTable(order);

export type OrderRow = typeof orders.$inferSelect;
export type OrderLineRow = typeof orderLines.$inferSelect;
export type SagaRow = typeof sagas.$inferSelect;
