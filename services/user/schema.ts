/**
 * The user context's tables, all in Postgres schema `user` (a reserved word in
 * SQL: drizzle always quotes it, write `"user".users` by hand). Migrations are
 * generated from this file: `npm run db:generate` (drizzle-kit) writes
 * services/user/migrations/, applied by mesh/db at start.
 */
import { sql } from 'drizzle-orm';
import { bigint, bigserial, check, index, pgSchema, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';
import { inboxTable, outboxTable } from '../../mesh/events/tables.js';
import type { RoleName } from './domain.js';

export const user = pgSchema('user');

export const users = user.table(
  'users',
  {
    id: uuid('id').primaryKey(),
    /** Normalised (trimmed, lower-case) by domain.normalizeEmail, so a plain unique index is case-insensitive in effect. */
    email: text('email').notNull(),
    /** scrypt$N$r$p$salt$key (password.ts); never the password. */
    passwordHash: text('password_hash').notNull(),
    displayName: text('display_name').notNull(),
    role: text('role').$type<RoleName>().notNull().default('user'),
    createTime: timestamp('create_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('users_email_key').on(t.email),
    check('users_role_check', sql`${t.role} in ('user', 'admin')`),
  ],
);

/**
 * One row per confirmed order that earned points. The order id is the key:
 * a second award for the same order cannot exist, whatever the inbox says.
 * The balance is the sum of a user's rows (no running total to drift).
 */
export const pointsAwards = user.table(
  'points_awards',
  {
    orderId: text('order_id').primaryKey(),
    /** Not a foreign key: the event comes from another context and must not become poison if it races a user. */
    userId: text('user_id').notNull(),
    points: bigint('points', { mode: 'bigint' }).notNull(),
    /** Tie-breaker for "newest first" (timestamps of one transaction are equal). */
    seq: bigserial('seq', { mode: 'bigint' }).notNull(),
    awardTime: timestamp('award_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [index('points_awards_user_seq_idx').on(t.userId, t.seq.desc())],
);

export const outbox = outboxTable(user);
export const inbox = inboxTable(user);

export type UserRow = typeof users.$inferSelect;
export type PointsAwardRow = typeof pointsAwards.$inferSelect;
