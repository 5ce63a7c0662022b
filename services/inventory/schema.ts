/**
 * The inventory's tables, all in Postgres schema `inventory`. Migrations are
 * generated from this file: `npm run db:generate` (drizzle-kit) writes
 * services/inventory/migrations/, applied by mesh/db at start.
 */
import { sql } from 'drizzle-orm';
import { bigint, boolean, check, index, jsonb, pgSchema, text, timestamp } from 'drizzle-orm/pg-core';
import { inboxTable, outboxTable } from '../../mesh/events/tables.js';
import type { Line, ReservationState } from './domain.js';

export const inventory = pgSchema('inventory');

/**
 * One row per SKU ever stocked. `reserved` is the sum of the lines of RESERVED
 * reservations; the checks make overselling impossible even for a buggy query.
 */
export const stock = inventory.table(
  'stock',
  {
    sku: text('sku').primaryKey(),
    onHand: bigint('on_hand', { mode: 'number' }).notNull(),
    reserved: bigint('reserved', { mode: 'number' }).notNull().default(0),
    updateTime: timestamp('update_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    check('stock_on_hand_nonnegative', sql`${t.onHand} >= 0`),
    check('stock_reserved_nonnegative', sql`${t.reserved} >= 0`),
    check('stock_reserved_within_on_hand', sql`${t.reserved} <= ${t.onHand}`),
  ],
);

/**
 * One row per reservation id (= order id), kept after release or commit so a
 * retried or late call gets the same answer.
 */
export const reservations = inventory.table(
  'reservations',
  {
    id: text('id').primaryKey(),
    status: text('status').$type<ReservationState>().notNull(),
    /** Sorted by SKU. Empty for a tombstone. */
    lines: jsonb('lines').$type<Line[]>().notNull(),
    expireTime: timestamp('expire_time', { withTimezone: true, mode: 'date' }).notNull(),
    releaseReason: text('release_reason').notNull().default(''),
    /** Released before it was ever reserved: a late ReserveStock is refused. */
    tombstone: boolean('tombstone').notNull().default(false),
    createTime: timestamp('create_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
    updateTime: timestamp('update_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    check('reservations_status', sql`${t.status} in ('RESERVED', 'RELEASED', 'COMMITTED')`),
    // The expiry sweeper reads only open reservations, oldest deadline first.
    index('reservations_open_expire_idx').on(t.expireTime).where(sql`${t.status} = 'RESERVED'`),
  ],
);

/** Events to publish (StockReserved, StockReleased), written in the same transaction as the change. */
export const outbox = outboxTable(inventory);
/** Events consumed (none yet; kept so a future consumer needs no migration of its own). */
export const inbox = inboxTable(inventory);

export type StockRow = typeof stock.$inferSelect;
export type ReservationRow = typeof reservations.$inferSelect;
