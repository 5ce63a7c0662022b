/**
 * The two multi-row writes on the hot path, each as ONE SQL statement.
 *
 * Placing an order writes the order, its lines, its saga row and its
 * OrderPlaced outbox row; finishing a saga moves the saga, the order and
 * writes OrderConfirmed/OrderCancelled. Written as BEGIN + four or five
 * statements + COMMIT, each is six or seven round trips to Postgres; under
 * load every round trip costs, and these two sit on the PlaceOrder answer
 * and on the PlaceOrder-to-CONFIRMED path. A statement whose sub-statements
 * are data-modifying CTEs is one transaction by itself (all or nothing, one
 * snapshot), so the outbox rule still holds: the state change and its event
 * commit together. The outbox row has exactly the columns mesh/events'
 * enqueueEvent writes (same subject, payload and headers). The relay is woken
 * after the commit (announceCommitted: this process's relay directly, others
 * by one coalesced NOTIFY), not by a NOTIFY inside the statement: that would
 * take Postgres' server-wide notify lock across the commit's WAL flush and
 * line up every writer behind it.
 */
import { randomUUID } from 'node:crypto';
import { toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { context, propagation } from '@opentelemetry/api';
import type { Database } from '../../mesh/db.js';
import { eventSubject } from '../../mesh/events/naming.js';
import { announceCommitted } from '../../mesh/events/commit-signal.js';
import type { PricedLine } from './domain.js';
import { runStatement } from './statements.js';

/** The schema these statements write (the tables of schema.ts). */
export const SCHEMA = 'order';

/** An outbox row's values, as enqueueEvent would write them. */
export function outboxRow<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, aggregateId: string, prefix: string) {
  const headers: Record<string, string> = {};
  propagation.inject(context.active(), headers);
  const payload = toBinary(schema, message);
  return {
    id: randomUUID(),
    aggregateId,
    eventType: schema.typeName,
    subject: eventSubject(schema.typeName, prefix),
    payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
    headers: JSON.stringify(headers),
  };
}

type OutboxRow = ReturnType<typeof outboxRow>;

/**
 * `insert into outbox ... select ... from <from>`: one event row, written only when <from>
 * has a row. Its six values are the parameters from $<first> on, in OutboxRow's order
 * (id, aggregateId, eventType, subject, payload, headers).
 */
function outboxInsertFrom(from: string, first: number): string {
  const [id, aggregate, type, subject, payload, headers] = [0, 1, 2, 3, 4, 5].map((k) => `$${first + k}`);
  return `insert into "order".outbox (id, aggregate_id, event_type, subject, payload, headers)
    select ${id}::uuid, ${aggregate}, ${type}, ${subject}, ${payload}::bytea, ${headers}::jsonb from ${from}`;
}

export interface NewOrder {
  id: string;
  userId: string;
  idempotencyKey: string;
  currency: string;
  totalMinor: bigint;
  lines: PricedLine[];
  paymentToken: string;
  leaseToken: string;
  leaseMs: number;
  deadlineMs: number;
  event: OutboxRow;
}

/**
 * Inserts the order PENDING with its lines, its saga row (leased to the
 * caller) and its OrderPlaced event, unless (user, idempotency key) exists:
 * then nothing is written and the answer is undefined. A concurrent insert
 * of the same key waits for the other to commit, then writes nothing.
 */
export async function insertOrder(
  db: Database,
  o: NewOrder,
): Promise<{ seq: bigint; createTime: Date; updateTime: Date; deadlineAt: Date } | undefined> {
  const e = o.event;
  const params: (string | number | Buffer)[] = [
    o.id, o.userId, o.idempotencyKey, o.currency, String(o.totalMinor),
    o.paymentToken, o.leaseToken, o.leaseMs, o.deadlineMs,
    e.id, e.aggregateId, e.eventType, e.subject, e.payload, e.headers,
  ];
  for (const [i, l] of o.lines.entries()) params.push(i, l.sku, l.name, String(l.quantity), String(l.unitPriceMinor));
  const rows = await runStatement<{ seq: string | number; create_time: string | Date; update_time: string | Date; deadline_at: string | Date }>(
    db,
    insertOrderText(o.lines.length),
    params,
  );
  const row = rows[0];
  if (!row) return undefined;
  announceCommitted(db, SCHEMA);
  return { seq: BigInt(row.seq), createTime: new Date(row.create_time), updateTime: new Date(row.update_time), deadlineAt: new Date(row.deadline_at) };
}

/** insertOrder's statement for `lineCount` lines: built once per count (parameters $16 on are the lines, five each). */
const insertOrderTexts = new Map<number, string>();
function insertOrderText(lineCount: number): string {
  let text = insertOrderTexts.get(lineCount);
  if (text) return text;
  const values = Array.from({ length: lineCount }, (_, i) => {
    const p = 16 + i * 5;
    return `($${p}::int, $${p + 1}::text, $${p + 2}::text, $${p + 3}::bigint, $${p + 4}::bigint)`;
  }).join(', ');
  text = `
      with o as (
        insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor)
        values ($1::uuid, $2, $3, 'PENDING', $4, $5::bigint)
        on conflict (user_id, idempotency_key) do nothing
        returning id, seq, create_time, update_time
      ), l as (
        insert into "order".order_lines (order_id, position, sku, name, quantity, unit_price_minor)
        select o.id, x.position, x.sku, x.name, x.quantity, x.unit_price_minor
        from o, (values ${values}) as x(position, sku, name, quantity, unit_price_minor)
      ), s as (
        insert into "order".sagas (order_id, step, payment_token, lease_token, next_run_at, deadline_at)
        select o.id, 'reserve', $6, $7::uuid,
               now() + $8 * interval '1 millisecond', now() + $9 * interval '1 millisecond'
        from o
        returning deadline_at
      ), e as (
        ${outboxInsertFrom('o', 10)}
      )
      select o.seq, o.create_time, o.update_time, s.deadline_at
      from o, s`;
  insertOrderTexts.set(lineCount, text);
  return text;
}

export interface FinishSaga {
  orderId: string;
  leaseToken: string;
  status: 'CONFIRMED' | 'CANCELLED';
  cancelReason: string;
  lastError: string | null;
  /** Only when the order moves now (it is still PENDING). */
  event: OutboxRow;
}

/**
 * Ends the saga under our lease and moves the order PENDING -> status with
 * its event, in one statement. `lease` is false when the lease was lost
 * (nothing written); `moved` is false when the order was already final
 * (the saga row is still closed, no event is written twice).
 */
export async function finishSaga(db: Database, f: FinishSaga): Promise<{ lease: boolean; moved: boolean; updateTime?: Date }> {
  const e = f.event;
  const rows = await runStatement<MoveRow>(db, FINISH_SAGA, [
    f.lastError, f.orderId, f.leaseToken, f.status, f.cancelReason,
    e.id, e.aggregateId, e.eventType, e.subject, e.payload, e.headers,
  ]);
  return orderMoved(db, rows[0]!);
}

type MoveRow = { saga: string | number; update_time: string | Date | null };

/** What FINISH_SAGA and SETTLE_ORDER answer: whether our lease held, and whether the order moved (then the relay is told). */
function orderMoved(db: Database, row: MoveRow): { lease: boolean; moved: boolean; updateTime?: Date } {
  if (row.update_time !== null) announceCommitted(db, SCHEMA);
  return { lease: Number(row.saga) > 0, moved: row.update_time !== null, updateTime: row.update_time === null ? undefined : new Date(row.update_time) };
}

const FINISH_SAGA = `
      with s as (
        update "order".sagas set step = 'done', attempt = 0, next_run_at = now(), lease_token = null,
          last_error = $1, update_time = now()
        where order_id = $2::uuid and lease_token = $3::uuid
        returning order_id
      ), o as (
        update "order".orders set status = $4, cancel_reason = $5, update_time = now()
        where id = (select order_id from s) and status = 'PENDING'
        returning id, update_time
      ), e as (
        ${outboxInsertFrom('o', 6)}
      )
      select (select count(*) from s) as saga, (select update_time from o) as update_time`;

export interface SettleOrder {
  orderId: string;
  leaseToken: string;
  /** Where the saga goes on: its step, attempt, when it is due, who holds it, last error and cancel reason. */
  step: string;
  attempt: number;
  /** ms from now until it is due: the backoff, or (going on at once) the rest of our lease. */
  dueInMs: number;
  /** Our lease token when we go on at once, else null (the poller picks it up when due). */
  nextLeaseToken: string | null;
  lastError: string | null;
  sagaCancelReason: string | null;
  /** What the order becomes now (when it is still PENDING), with this event. */
  status: 'CONFIRMED' | 'CANCELLED';
  cancelReason: string;
  event: OutboxRow;
}

/**
 * The saga's bound passed (domain.ts): moves the order PENDING -> status with its event
 * while the saga row stays open on its next step (ours still when we go on at once, else
 * unleased and due after its backoff), all under our lease in one statement. Same answer as finishSaga;
 * when the saga ends later, finishSaga finds the order final and writes nothing twice.
 */
export async function settleOrder(db: Database, f: SettleOrder): Promise<{ lease: boolean; moved: boolean; updateTime?: Date }> {
  const e = f.event;
  const rows = await runStatement<MoveRow>(db, SETTLE_ORDER, [
    f.step, f.attempt, f.dueInMs, f.lastError, f.sagaCancelReason, f.orderId, f.leaseToken, f.status, f.cancelReason, f.nextLeaseToken,
    e.id, e.aggregateId, e.eventType, e.subject, e.payload, e.headers,
  ]);
  return orderMoved(db, rows[0]!);
}

const SETTLE_ORDER = `
      with s as (
        update "order".sagas set step = $1, attempt = $2, next_run_at = now() + $3 * interval '1 millisecond',
          lease_token = $10::uuid, last_error = $4, cancel_reason = $5, update_time = now()
        where order_id = $6::uuid and lease_token = $7::uuid
        returning order_id
      ), o as (
        update "order".orders set status = $8, cancel_reason = $9, update_time = now()
        where id = (select order_id from s) and status = 'PENDING'
        returning id, update_time
      ), e as (
        ${outboxInsertFrom('o', 11)}
      )
      select (select count(*) from s) as saga, (select update_time from o) as update_time`;
