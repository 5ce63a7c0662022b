/**
 * The inventory's transactions. Each public method is one Postgres
 * transaction; the events it announces go into the outbox inside it.
 *
 * Why it never oversells: a line is reserved by one conditional statement,
 *   UPDATE stock SET reserved = reserved + q WHERE sku = $1 AND on_hand - reserved >= q
 * Concurrent reservers queue on the SKU's row lock and each re-checks the
 * condition against the row as the previous one left it (READ COMMITTED
 * re-evaluates the WHERE on the latest row version), so the sum of what
 * succeeds never exceeds what is on hand; the CHECK (reserved <= on_hand)
 * backs that up. Lines are taken in SKU order, so two reservations sharing
 * SKUs never deadlock. A short line throws, which rolls back the whole
 * transaction: all lines or none.
 *
 * Lock order everywhere: the reservation row first, then stock rows in SKU order.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { and, asc, eq, inArray, lte, sql } from 'drizzle-orm';
import type { Database, Transaction } from '../../mesh/db.js';
import { notFound, failedPrecondition } from '../../mesh/errors.js';
import { enqueueEvent } from '../../mesh/events/outbox.js';
import { StockReleasedSchema, StockReservedSchema } from '../../gen/shop/inventory/v1/inventory_pb.js';
import {
  answerRepeatedReserve,
  commitDecision,
  insufficientStock,
  releaseDecision,
  sortLines,
  type Line,
  type ReservationRecord,
} from './domain.js';
import { outbox, reservations, stock, type ReservationRow } from './schema.js';

export interface StockLevelRecord {
  sku: string;
  onHand: number;
  reserved: number;
}

export interface InventoryStoreOptions {
  db: Database;
  /** How long a RESERVED reservation holds stock before the sweeper releases it. */
  reservationTtlMs: number;
  /** NATS_SUBJECT_PREFIX: written into the outbox subject. */
  subjectPrefix?: string;
  /** Clock, epoch ms; tests move it. */
  now?: () => number;
}

/** The reason StockReleased carries when the sweeper gives a reservation back. */
export const EXPIRED_REASON = 'expired';

export class InventoryStore {
  private readonly db: Database;
  private readonly ttlMs: number;
  private readonly prefix: string;
  private readonly now: () => number;

  constructor(options: InventoryStoreOptions) {
    this.db = options.db;
    this.ttlMs = options.reservationTtlMs;
    this.prefix = options.subjectPrefix ?? '';
    this.now = options.now ?? Date.now;
  }

  async getStock(sku: string): Promise<StockLevelRecord> {
    const [row] = await this.db.select().from(stock).where(eq(stock.sku, sku));
    return row ? level(row) : { sku, onHand: 0, reserved: 0 };
  }

  /** Sets on_hand; refuses (FAILED_PRECONDITION) to go below what is reserved. */
  async setStock(sku: string, onHand: number): Promise<StockLevelRecord> {
    const updated = await this.db
      .insert(stock)
      .values({ sku, onHand, reserved: 0, updateTime: new Date(this.now()) })
      .onConflictDoUpdate({
        target: stock.sku,
        set: { onHand, updateTime: new Date(this.now()) },
        setWhere: sql`${stock.reserved} <= ${onHand}`,
      })
      .returning();
    if (updated[0]) return level(updated[0]);
    const current = await this.getStock(sku);
    throw failedPrecondition(
      'BELOW_RESERVED',
      sku,
      `on_hand ${onHand} is below the ${current.reserved} units currently reserved`,
    );
  }

  /** Stocks a SKU that has no row yet (the seed); answers false when it already had one. */
  async stockIfAbsent(sku: string, onHand: number): Promise<boolean> {
    const inserted = await this.db
      .insert(stock)
      .values({ sku, onHand, reserved: 0, updateTime: new Date(this.now()) })
      .onConflictDoNothing({ target: stock.sku })
      .returning({ sku: stock.sku });
    return inserted.length > 0;
  }

  /** Reserves every line or none; a repeated id answers the stored reservation. `lines` sorted by SKU. */
  async reserve(id: string, lines: Line[]): Promise<ReservationRecord> {
    const sorted = sortLines(lines);
    return this.db.transaction(async (tx) => {
      const now = this.now();
      // Takes the id first: a concurrent call with the same id waits here for
      // this transaction, then finds the row (or, if this one rolled back, inserts).
      const [inserted] = await tx
        .insert(reservations)
        .values({
          id,
          status: 'RESERVED',
          lines: sorted,
          expireTime: new Date(now + this.ttlMs),
          createTime: new Date(now),
          updateTime: new Date(now),
        })
        .onConflictDoNothing({ target: reservations.id })
        .returning();
      if (!inserted) {
        const [existing] = await tx.select().from(reservations).where(eq(reservations.id, id));
        if (!existing) throw new Error(`reservation ${id} conflicted but cannot be read`);
        return answerRepeatedReserve(record(existing), sorted);
      }
      // The event first, the stock last: the SKU rows stay locked only from
      // their UPDATE to COMMIT, which is what concurrent reservers queue on.
      await enqueueEvent(
        tx,
        outbox,
        StockReservedSchema,
        create(StockReservedSchema, {
          reservationId: id,
          lines: sorted.map((l) => ({ sku: l.sku, quantity: BigInt(l.quantity) })),
          occurTime: timestampFromMs(now),
        }),
        { aggregateId: id, prefix: this.prefix },
      );
      for (const line of sorted) {
        const taken = await tx
          .update(stock)
          .set({ reserved: sql`${stock.reserved} + ${line.quantity}`, updateTime: new Date(now) })
          .where(and(eq(stock.sku, line.sku), sql`${stock.onHand} - ${stock.reserved} >= ${line.quantity}`))
          .returning({ sku: stock.sku });
        if (taken.length === 0) {
          const [row] = await tx.select().from(stock).where(eq(stock.sku, line.sku));
          throw insufficientStock(line.sku, line.quantity, row ? row.onHand - row.reserved : 0);
        }
      }
      return record(inserted);
    });
  }

  /**
   * Gives the stock of a RESERVED reservation back (StockReleased). A released
   * or committed one is answered unchanged; an unknown id gets a tombstone so
   * a late ReserveStock for it is refused.
   */
  async release(id: string, reason: string): Promise<ReservationRecord> {
    return this.db.transaction(async (tx) => {
      const now = this.now();
      const [tombstone] = await tx
        .insert(reservations)
        .values({
          id,
          status: 'RELEASED',
          lines: [],
          expireTime: new Date(now),
          releaseReason: reason || 'released before reserved',
          tombstone: true,
          createTime: new Date(now),
          updateTime: new Date(now),
        })
        .onConflictDoNothing({ target: reservations.id })
        .returning();
      // Nothing was held, so nothing is announced.
      if (tombstone) return record(tombstone);

      const [row] = await tx.select().from(reservations).where(eq(reservations.id, id)).for('update');
      if (!row) throw new Error(`reservation ${id} conflicted but cannot be read`);
      const current = record(row);
      if (releaseDecision(current) === 'unchanged') return current;
      const [released] = await this.releaseHeld(tx, [current], reason || 'released', now);
      return released!;
    });
  }

  /** Turns a RESERVED reservation into a sale: on_hand and reserved both go down. */
  async commit(id: string): Promise<ReservationRecord> {
    return this.db.transaction(async (tx) => {
      const now = this.now();
      const [row] = await tx.select().from(reservations).where(eq(reservations.id, id)).for('update');
      if (!row) throw notFound('reservation', id);
      const current = record(row);
      if (commitDecision(current) === 'already') return current;
      for (const line of current.lines) {
        const done = await tx
          .update(stock)
          .set({
            onHand: sql`${stock.onHand} - ${line.quantity}`,
            reserved: sql`${stock.reserved} - ${line.quantity}`,
            updateTime: new Date(now),
          })
          .where(eq(stock.sku, line.sku))
          .returning({ sku: stock.sku });
        if (done.length === 0) throw new Error(`stock row ${line.sku} of reservation ${id} is missing`);
      }
      const [committed] = await tx
        .update(reservations)
        .set({ status: 'COMMITTED', updateTime: new Date(now) })
        .where(eq(reservations.id, id))
        .returning();
      return record(committed!);
    });
  }

  /**
   * Releases up to `limit` RESERVED reservations whose time is up, with
   * StockReleased reason "expired"; answers how many. Safe with several
   * replicas sweeping at once: SKIP LOCKED hands each expired reservation to
   * exactly one of them, and one a caller is committing right now is skipped
   * (and, once committed, no longer RESERVED).
   */
  async sweepExpired(limit = 100): Promise<number> {
    return this.db.transaction(async (tx) => {
      const now = this.now();
      const rows = await tx
        .select()
        .from(reservations)
        .where(and(eq(reservations.status, 'RESERVED'), lte(reservations.expireTime, new Date(now))))
        .orderBy(asc(reservations.expireTime))
        .limit(limit)
        .for('update', { skipLocked: true });
      if (rows.length === 0) return 0;
      await this.releaseHeld(tx, rows.map(record), EXPIRED_REASON, now);
      return rows.length;
    });
  }

  /**
   * Releases RESERVED reservations whose rows `tx` already holds locked: the
   * quantities are summed per SKU and applied in SKU order (the global lock
   * order), then each reservation is marked and announced.
   */
  private async releaseHeld(
    tx: Transaction,
    held: ReservationRecord[],
    reason: string,
    now: number,
  ): Promise<ReservationRecord[]> {
    const totals = new Map<string, number>();
    for (const r of held) for (const l of r.lines) totals.set(l.sku, (totals.get(l.sku) ?? 0) + l.quantity);
    for (const sku of [...totals.keys()].sort()) {
      await tx
        .update(stock)
        .set({ reserved: sql`${stock.reserved} - ${totals.get(sku)!}`, updateTime: new Date(now) })
        .where(eq(stock.sku, sku));
    }
    const released = await tx
      .update(reservations)
      .set({ status: 'RELEASED', releaseReason: reason, updateTime: new Date(now) })
      .where(inArray(reservations.id, held.map((r) => r.id)))
      .returning();
    for (const r of held) {
      await enqueueEvent(
        tx,
        outbox,
        StockReleasedSchema,
        create(StockReleasedSchema, {
          reservationId: r.id,
          lines: r.lines.map((l) => ({ sku: l.sku, quantity: BigInt(l.quantity) })),
          reason,
          occurTime: timestampFromMs(now),
        }),
        { aggregateId: r.id, prefix: this.prefix },
      );
    }
    return released.map(record);
  }
}

function level(row: { sku: string; onHand: number; reserved: number }): StockLevelRecord {
  return { sku: row.sku, onHand: row.onHand, reserved: row.reserved };
}

function record(row: ReservationRow): ReservationRecord {
  return {
    id: row.id,
    status: row.status,
    lines: row.lines,
    expireAt: row.expireTime.getTime(),
    releaseReason: row.releaseReason,
    tombstone: row.tombstone,
  };
}
