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
 * SKUs never deadlock. A short line fails the statement (ReserveStock is one
 * statement, an implicit transaction of its own), which undoes it whole: all
 * lines or none.
 *
 * Lock order everywhere: the reservation row first, then stock rows in SKU order.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { and, asc, eq, inArray, lte, sql } from 'drizzle-orm';
import type { Database, Transaction } from '../../mesh/db.js';
import { resultRows } from '../../mesh/db.js';
import { notFound, failedPrecondition } from '../../mesh/errors.js';
import { announceCommitted } from '../../mesh/events/commit-signal.js';
import { enqueueEvent, outboxInsertSql, outboxSchemaName } from '../../mesh/events/outbox.js';
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

  /**
   * Reserves every line or none; a repeated id answers the stored reservation.
   *
   * One statement does the work (a round trip per line and per row saved, and the SKU
   * rows stay locked for one round trip, not one per line): insert the reservation
   * unless the id exists (the id's lock comes first: a concurrent call with the same id
   * waits for this transaction, then finds the row), then lock the SKU rows in SKU order
   * and read what they have (FOR UPDATE reads the latest committed row, so each reserver
   * sees what the previous one left), take every line that fits, write StockReserved.
   * If any line did not fit, the statement raises, which undoes all of it.
   */
  async reserve(id: string, lines: Line[]): Promise<ReservationRecord> {
    const sorted = sortLines(lines);
    const now = new Date(this.now());
    const expire = new Date(now.getTime() + this.ttlMs);
    // Raw statements take timestamps as text (postgres.js does not serialise a Date for an inferred type).
    const ts = sql`${now.toISOString()}::timestamptz`;
    const event = outboxInsertSql(
      outbox,
      StockReservedSchema,
      create(StockReservedSchema, {
        reservationId: id,
        lines: sorted.map((l) => ({ sku: l.sku, quantity: BigInt(l.quantity) })),
        occurTime: timestampFromMs(now.getTime()),
      }),
      { aggregateId: id, prefix: this.prefix },
      sql`r`,
    );
    // One statement and no explicit transaction (one round trip instead of three): a
    // statement is all or nothing by itself, and a line that cannot be covered makes it
    // fail (inventory.short_stock, migration 0001), which undoes the reservation, the
    // stock already taken and the event.
    let res: { inserted: number } | undefined;
    try {
      [res] = resultRows<{ inserted: number }>(
        await this.db.execute(sql`
          with r as (
            insert into ${reservations} (id, status, lines, expire_time, create_time, update_time)
            values (${id}, 'RESERVED', ${JSON.stringify(sorted)}::jsonb, ${expire.toISOString()}::timestamptz, ${ts}, ${ts})
            on conflict (id) do nothing
            returning id
          ), want as materialized (
            -- The lines as jsonb, not a values row per line: one statement text for any number
            -- of lines (statements are prepared per text and connection, mesh/db-prepared.ts).
            select x.sku, x.quantity from jsonb_to_recordset(${JSON.stringify(sorted)}::jsonb) as x(sku text, quantity bigint)
          ), held as materialized (
            -- = any(array(...)), not in (select ...): Postgres guesses 100 rows for jsonb_to_recordset
            -- and would read the whole stock table instead of probing its key per line.
            select s.sku, s.on_hand - s.reserved as available from ${stock} s
            where s.sku = any(array(select sku from want)) and exists (select 1 from r)
            order by s.sku
            for update
          ), taken as (
            update ${stock} s set reserved = s.reserved + w.quantity, update_time = ${ts}
            from want w join held h on h.sku = w.sku
            where s.sku = w.sku and s.sku = any(array(select sku from held)) and h.available >= w.quantity
            returning s.sku
          ), e as (${event})
          select (select count(*) from r)::int as inserted,
            case when (select count(*) from r) > 0 and (select count(*) from taken) < ${sorted.length}::int
              then inventory.short_stock((select coalesce(json_agg(json_build_object('sku', sku, 'available', available)), '[]'::json) from held))
              else 0 end as short`),
      );
    } catch (err) {
      const held = shortStockDetail(err);
      if (!held) throw err;
      const available = new Map(held.map((h) => [h.sku, Number(h.available)]));
      const short = sorted.find((l) => (available.get(l.sku) ?? 0) < l.quantity)!;
      throw insufficientStock(short.sku, short.quantity, available.get(short.sku) ?? 0);
    }
    if (!res || Number(res.inserted) === 0) {
      const [existing] = await this.db.select().from(reservations).where(eq(reservations.id, id));
      if (!existing) throw new Error(`reservation ${id} conflicted but cannot be read`);
      return answerRepeatedReserve(record(existing), sorted);
    }
    announceCommitted(this.db, outboxSchemaName(outbox));
    return { id, status: 'RESERVED', lines: sorted, expireAt: expire.getTime(), releaseReason: '', tombstone: false };
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
   * reservation, or the error it would throw), in one statement: lock the reservations in
   * id order, then every SKU row they hold in SKU order (the global lock order, so batches
   * and single calls never deadlock), and commit each reservation whose SKU rows are all
   * there, moving each SKU once by the sum of its committed lines (an UPDATE moves a row
   * once, however many lines match it). A repeated id is one reservation.
   */
  async commitMany(ids: string[]): Promise<Map<string, ReservationRecord | Error>> {
    const ts = sql`${new Date(this.now()).toISOString()}::timestamptz`;
    // The ids as one jsonb parameter, not in ($1, ..., $n): one statement text for any number
    // of ids (statements are prepared per text and connection, mesh/db-prepared.ts).
    const wanted = JSON.stringify([...new Set(ids)]);
    const rows = resultRows<ReservationSql & { ok: boolean }>(
      await this.db.execute(sql`
        with cur as materialized (
          select id, status, lines, expire_time, release_reason, tombstone from ${reservations}
          where id = any(array(select jsonb_array_elements_text(${wanted}::jsonb))) order by id for update
        ), want as materialized (
          select cur.id, x.sku, x.quantity from cur, jsonb_to_recordset(cur.lines) as x(sku text, quantity bigint) where cur.status = 'RESERVED'
        ), held as materialized (
          select s.sku from ${stock} s where s.sku = any(array(select sku from want)) order by s.sku for update
        ), ok as materialized (
          select cur.id, not exists (select 1 from want w where w.id = cur.id and w.sku not in (select sku from held)) as ok from cur
        ), done as (
          update ${reservations} r set status = 'COMMITTED', update_time = ${ts}
          from cur join ok on ok.id = cur.id where r.id = cur.id and cur.status = 'RESERVED' and ok.ok
          returning r.id
        ), taken as (
          update ${stock} s set on_hand = s.on_hand - t.quantity, reserved = s.reserved - t.quantity, update_time = ${ts}
          from (select w.sku, sum(w.quantity)::bigint as quantity from want w join ok on ok.id = w.id where ok.ok group by w.sku) t
          where s.sku = t.sku and s.sku = any(array(select sku from held))
          returning s.sku
        )
        select cur.*, ok.ok from cur join ok on ok.id = cur.id`),
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

/** The held rows carried by inventory.short_stock's error (SQLSTATE PMI01), or undefined for any other error. */
function shortStockDetail(err: unknown): { sku: string; available: number | string }[] | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const { code, detail } = e as { code?: unknown; detail?: unknown };
    if (code === 'PMI01' && typeof detail === 'string') return JSON.parse(detail) as { sku: string; available: number | string }[];
  }
  return undefined;
}
