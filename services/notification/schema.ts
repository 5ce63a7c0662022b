/**
 * The notification context's tables, all in Postgres schema `notification`.
 * Migrations are generated from this file: `npm run db:generate` (drizzle-kit)
 * writes services/notification/migrations/, applied by mesh/db at start.
 */
import { bigserial, index, pgSchema, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';
import { inboxTable, outboxTable } from '../../mesh/events/tables.js';
import type { KindName } from './domain.js';

export const notification = pgSchema('notification');

export const notifications = notification.table(
  'notifications',
  {
    id: uuid('id').primaryKey(),
    /** Keyset order of ListNotifications (newest first): exact, unlike timestamps that can tie. */
    seq: bigserial('seq', { mode: 'bigint' }).notNull(),
    userId: text('user_id').notNull(),
    kind: text('kind').$type<KindName>().notNull(),
    title: text('title').notNull(),
    body: text('body').notNull(),
    orderId: text('order_id').notNull(),
    /** The event that caused it: a second notification for one event cannot exist, even past the inbox. */
    sourceEventId: text('source_event_id').notNull(),
    createTime: timestamp('create_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('notifications_seq_key').on(t.seq),
    uniqueIndex('notifications_source_event_key').on(t.sourceEventId),
    // ListNotifications: one user's notifications, newest first.
    index('notifications_user_seq_idx').on(t.userId, t.seq.desc()),
  ],
);

export const outbox = outboxTable(notification);
export const inbox = inboxTable(notification);

export type NotificationRow = typeof notifications.$inferSelect;
