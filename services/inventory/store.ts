/**
 * The inventory's transactions. Each public method is one Postgres
 * transaction; the events it announces go into the outbox inside it.
 *
 * Why it never oversells: a reservation locks its SKU rows (SELECT ... FOR UPDATE,
 * in SKU order) before it reads what they have, and takes a line only when
 * on_hand - reserved covers it. Concurrent reservers queue on the SKU's row lock,
 * and FOR UPDATE hands each the row as the previous one left it (READ COMMITTED
 * reads the latest committed version of a row it had to wait for), so the sum of
 * what succeeds never exceeds what is on hand; the CHECK (reserved <= on_hand)
 * backs that up. Taking the locks in SKU order means two reservations sharing
 * SKUs never deadlock. A reservation with a short line takes none of its lines
 * (reserveMany: the reservations of a batch in one statement, each all or none).
 *
 * Lock order everywhere: the reservation row first, then stock rows in SKU order.
 */
import { create } from '@bufbuild/protobuf';
import { ConnectError } from '@connectrpc/connect';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { and, asc, eq, inArray, lte, sql } from 'drizzle-orm';
import type { Database, Transaction } from '../../mesh/db.js';
import { resultRows } from '../../mesh/db.js';
import { notFound, failedPrecondition } from '../../mesh/errors.js';
import { announceCommitted } from '../../mesh/events/commit-signal.js';
import { enqueueEvent, outboxEvent, outboxSchemaName } from '../../mesh/events/outbox.js';
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
    // One statement decides and answers: on a conflict the row is locked and updated only
    // where reserved <= on_hand (otherwise rewritten as it was), and RETURNING gives the
    // reserved count the decision saw. A second read for the refusal's message could quote
    // a count a release or commit had changed in between.
    const allowed = sql`${stock.reserved} <= excluded.on_hand`;
    const [row] = await this.db
      .insert(stock)
      .values({ sku, onHand, reserved: 0, updateTime: new Date(this.now()) })
      .onConflictDoUpdate({
        target: stock.sku,
        set: {
          onHand: sql`case when ${allowed} then excluded.on_hand else ${stock.onHand} end`,
          updateTime: sql`case when ${allowed} then excluded.update_time else ${stock.updateTime} end`,
        },
      })
      .returning();
    if (row!.reserved <= onHand) return level(row!);
    throw failedPrecondition('BELOW_RESERVED', sku, `on_hand ${onHand} is below the ${row!.reserved} units currently reserved`);
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

  /** ReserveStock: reserveMany with one item (the same statement), its refusal thrown. */
  async reserve(id: string, lines: Line[]): Promise<ReservationRecord> {
    const [answer] = await this.reserveMany([{ id, lines }]);
    if (answer instanceof Error) throw answer;
    return answer!;
  }

  /**
   * Reserves each item, every line or none, in the order given against the running
   * availability (item 2 gets what item 1 left), and answers each as a ReserveStock call of
   * its own would: the reservation, or its refusal as the error that call would throw
   * (INSUFFICIENT_STOCK naming the SKU, ALREADY_EXISTS, RESERVATION_RELEASED). A repeated
   * id, stored before or earlier in the same call, answers the reservation that holds it.
   *
   * One statement for all the items (one round trip and one commit, the SKU rows locked
   * once and released at that one commit): inventory.reserve_batch (migration 0002, which
   * says how it locks, reservation rows in id order, then stock rows in SKU order, the
   * global order, and why it is a function; 0003 keeps its plans off table size). A
   * StockReserved row per new reservation goes into the outbox in the same statement.
   */
  async reserveMany(items: { id: string; lines: Line[] }[]): Promise<(ReservationRecord | Error)[]> {
    const now = this.now();
    const expire = now + this.ttlMs;
    const sortedItems = items.map((item) => ({ id: item.id, lines: sortLines(item.lines) }));
    // Every item carries its event; the function writes those of the items it reserves.
    const param = sortedItems.map(({ id, lines }) => {
      const event = outboxEvent(
        StockReservedSchema,
        create(StockReservedSchema, {
          reservationId: id,
          lines: lines.map((l) => ({ sku: l.sku, quantity: BigInt(l.quantity) })),
          occurTime: timestampFromMs(now),
        }),
        { aggregateId: id, prefix: this.prefix },
      );
      return {
        id,
        lines,
        event: {
          id: event.id,
          aggregate_id: event.aggregateId,
          event_type: event.eventType,
          subject: event.subject,
          payload: Buffer.from(event.payload.buffer, event.payload.byteOffset, event.payload.byteLength).toString('base64'),
          headers: event.headers,
        },
      };
    });
    // The items as one jsonb parameter: one statement text for any batch (mesh/db-prepared.ts).
    // Timestamps as text (postgres.js does not serialise a Date for an inferred type).
    const rows = resultRows<ReserveBatchRow>(
      await this.db.execute(
        sql`select * from inventory.reserve_batch(${JSON.stringify(param)}::jsonb, ${new Date(now).toISOString()}::timestamptz, ${new Date(expire).toISOString()}::timestamptz)`,
      ),
    );
    if (rows.length !== items.length) throw new Error(`reserve_batch answered ${rows.length} rows for ${items.length} items`);
    const answers: (ReservationRecord | Error)[] = [];
    for (const [i, row] of rows.entries()) {
      if (row.item !== i) throw new Error(`reserve_batch answered item ${row.item} in place ${i}`);
      const { id, lines } = sortedItems[i]!;
      switch (row.outcome) {
        case 'reserved':
          answers.push({ id, status: 'RESERVED', lines, expireAt: expire, releaseReason: '', tombstone: false });
          break;
        case 'short': {
          const short = lines.find((l) => l.sku === row.short_sku)!;
          answers.push(insufficientStock(short.sku, short.quantity, Number(row.short_available)));
          break;
        }
        case 'repeat':
          answers.push(repeated(answers[row.ref!]!, lines));
          break;
        case 'stored':
          answers.push(
            row.stored_status === null
              ? new Error(`reservation ${id} conflicted but cannot be read`)
              : repeated(
                  recordFromSql({
                    id,
                    status: row.stored_status,
                    lines: row.stored_lines!,
                    expire_time: row.stored_expire!,
                    release_reason: row.stored_reason!,
                    tombstone: row.stored_tombstone!,
                  }),
                  lines,
                ),
          );
          break;
        default:
          throw new Error(`reserve_batch answered outcome ${String(row.outcome)} for item ${i}`);
      }
    }
    if (rows.some((row) => row.outcome === 'reserved')) announceCommitted(this.db, outboxSchemaName(outbox));
    // Anything but a refusal (a row that cannot be read) fails the call, as it did for one reserve.
    const broken = answers.find((a) => a instanceof Error && !(a instanceof ConnectError));
    if (broken) throw broken;
    return answers;
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

  /**
   * Turns a RESERVED reservation into a sale: on_hand and reserved both go down. One
   * statement, all or nothing: lock the reservation, then its SKU rows in SKU order (the
   * global lock order), and only when every SKU row is there move both. The decision on
   * what it was (committed already, released, unknown) is commitDecision's, on the row as
   * it was before.
   */
  async commit(id: string): Promise<ReservationRecord> {
    const ts = sql`${new Date(this.now()).toISOString()}::timestamptz`;
    const [row] = resultRows<ReservationSql & { ok: boolean; committed: number }>(
      await this.db.execute(sql`
        with cur as (
          select id, status, lines, expire_time, release_reason, tombstone from ${reservations} where id = ${id} for update
        ), want as (
          select x.sku, x.quantity from cur, jsonb_to_recordset(cur.lines) as x(sku text, quantity bigint) where cur.status = 'RESERVED'
        ), held as materialized (
          -- = any(array(...)), not in (select ...): Postgres guesses 100 rows for jsonb_to_recordset
          -- and then reads the whole stock table (a hash join) instead of probing its key per line.
          select s.sku from ${stock} s where s.sku = any(array(select sku from want)) order by s.sku for update
        ), ok as (
          select (select count(*) from held) = (select count(*) from want) as ok
        ), done as (
          update ${reservations} r set status = 'COMMITTED', update_time = ${ts}
          from cur, ok where r.id = cur.id and cur.status = 'RESERVED' and ok.ok
          returning r.id
        ), taken as (
          update ${stock} s set on_hand = s.on_hand - w.quantity, reserved = s.reserved - w.quantity, update_time = ${ts}
          from want w, ok where s.sku = w.sku and s.sku = any(array(select sku from want)) and ok.ok
          returning s.sku
        )
        select cur.*, (select ok from ok) as ok, (select count(*) from done)::int as committed from cur`),
    );
    if (!row) throw notFound('reservation', id);
    const before = recordFromSql(row);
    if (commitDecision(before) === 'already') return before;
    if (!row.ok) throw new Error(`a stock row of reservation ${id} is missing`);
    return { ...before, status: 'COMMITTED' };
  }

  /**
   * CommitReservation for several ids at once, each answered as commit() would (the
   * reservation, or the error it would throw), in one statement: inventory.commit_batch
   * (migration 0004) locks the reservations in id order, then every SKU row they hold in SKU
   * order (the global lock order, so batches and single calls never deadlock), and commits
   * each reservation whose SKU rows are all there, moving each SKU once by the sum of its
   * committed lines (an UPDATE moves a row once, however many lines match it). A repeated id
   * is one reservation. It is a function so that its plans read both tables by key whatever
   * their size was when the plans were made (0004 says how and why).
   */
  async commitMany(ids: string[]): Promise<Map<string, ReservationRecord | Error>> {
    // The ids as one jsonb parameter, not in ($1, ..., $n): one statement text for any number
    // of ids (statements are prepared per text and connection, mesh/db-prepared.ts).
    // The timestamp as text (postgres.js does not serialise a Date for an inferred type).
    const wanted = JSON.stringify([...new Set(ids)]);
    const rows = resultRows<ReservationSql & { ok: boolean }>(
      await this.db.execute(
        sql`select * from inventory.commit_batch(${wanted}::jsonb, ${new Date(this.now()).toISOString()}::timestamptz)`,
      ),
    );
    const found = new Map(rows.map((row) => [row.id, row]));
    const answers = new Map<string, ReservationRecord | Error>();
    for (const id of ids) {
      const row = found.get(id);
      if (!row) {
        answers.set(id, notFound('reservation', id));
        continue;
      }
      const before = recordFromSql(row);
      try {
        if (commitDecision(before) === 'already') answers.set(id, before);
        else if (!row.ok) answers.set(id, new Error(`a stock row of reservation ${id} is missing`));
        else answers.set(id, { ...before, status: 'COMMITTED' });
      } catch (err) {
        answers.set(id, err as Error);
      }
    }
    return answers;
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
        // 'RESERVED' as a literal, not a parameter: the partial index reservations_open_expire_idx
        // (status = 'RESERVED') only serves a plan that can prove it, and a prepared statement's
        // generic plan cannot from `status = $1` (it would read the whole, growing table).
        .where(and(sql`${reservations.status} = 'RESERVED'`, lte(reservations.expireTime, new Date(now))))
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

/** A reservation row as raw SQL answers it (column names, timestamps maybe as text). */
interface ReservationSql {
  id: string;
  status: ReservationRow['status'];
  lines: Line[] | string;
  expire_time: Date | string;
  release_reason: string;
  tombstone: boolean;
}

function recordFromSql(row: ReservationSql): ReservationRecord {
  return {
    id: row.id,
    status: row.status,
    lines: typeof row.lines === 'string' ? (JSON.parse(row.lines) as Line[]) : row.lines,
    expireAt: new Date(row.expire_time).getTime(),
    releaseReason: row.release_reason,
    tombstone: row.tombstone,
  };
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

/** A row of inventory.reserve_batch (migrations 0002, 0003). */
interface ReserveBatchRow {
  item: number;
  outcome: 'reserved' | 'short' | 'repeat' | 'stored';
  ref: number | null;
  short_sku: string | null;
  short_available: number | string | null;
  stored_status: ReservationRow['status'] | null;
  stored_lines: Line[] | string | null;
  stored_expire: Date | string | null;
  stored_reason: string | null;
  stored_tombstone: boolean | null;
}

/** What a repeated reserve answers: the reservation holding the id (answerRepeatedReserve), or why not. */
function repeated(holder: ReservationRecord | Error, requested: Line[]): ReservationRecord | Error {
  if (holder instanceof Error) return holder;
  try {
    return answerRepeatedReserve(holder, requested);
  } catch (err) {
    return err as Error;
  }
}
