/**
 * insertOrder (writes.ts) coalesced across concurrent PlaceOrders
 * (mesh/coalesce), as finish-batch.ts does for saga ends: under load each
 * order paid a statement and a commit (a WAL flush wait) of its own. A lone
 * insert goes alone through insertOrder; those arriving while one is in
 * flight go out as one statement of one fixed text (jsonb_to_recordset, so
 * one prepared statement per connection for any batch size), which per order
 * does what insertOrder does: the order PENDING unless (user, idempotency
 * key) exists, and only then its lines, its saga row (leased to this
 * process) and its OrderPlaced outbox row.
 *
 * Each order hears what insertOrder would have answered it: its row's seq and
 * times, or undefined when its key was taken (then the service answers the
 * first order, as for any repeat). A key repeated inside one batch is sent
 * once; its later callers hear undefined and find the first one's order once
 * the batch has committed, as if they had come just after it.
 *
 * One statement is one transaction: every order of the batch or none, so per
 * order still all or nothing. An order the statement cannot take (an id that
 * exists, a value Postgres refuses) fails the whole statement; then, as
 * coalesce's splitOn does, each order of that batch is inserted again alone
 * and only the bad one hears its error. A failure that is not about the
 * statement (the connection dropped) reaches every order of the batch, as it
 * would have reached each alone; PlaceOrder is idempotent and clients retry.
 * The relay is woken once per batch, after its commit.
 *
 * Orders go in by (user, idempotency key), not by arrival: a key another replica's batch is
 * inserting at the same moment is waited for, and two batches holding two such keys in
 * opposite orders deadlocked (Postgres aborted one after deadlock_timeout, and its orders were
 * redone one by one). Taken in one order everywhere, one batch simply waits for the other.
 */
import { Coalescer } from '../../mesh/coalesce.js';
import { announceCommitted } from '../../mesh/events/commit-signal.js';
import type { Database } from '../../mesh/db.js';
import { runStatement } from './statements.js';
import { insertOrder, SCHEMA, type NewOrder } from './writes.js';

export type Inserted = Awaited<ReturnType<typeof insertOrder>>;

const INSERT_ORDERS = `
      with v as (
        select * from jsonb_to_recordset($1::jsonb) as v(position integer, id uuid, user_id text, idempotency_key text,
          currency text, total_minor bigint, payment_token text, lease_token uuid, lease_ms double precision,
          deadline_ms double precision, event_id uuid, aggregate_id text, event_type text, subject text,
          payload text, headers jsonb, lines jsonb)
      ), o as (
        insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor)
        select v.id, v.user_id, v.idempotency_key, 'PENDING', v.currency, v.total_minor from v order by v.user_id, v.idempotency_key
        on conflict (user_id, idempotency_key) do nothing
        returning id, seq, create_time, update_time
      ), l as (
        insert into "order".order_lines (order_id, position, sku, name, quantity, unit_price_minor)
        select o.id, x.position, x.sku, x.name, x.quantity, x.unit_price_minor
        from o join v on v.id = o.id
        cross join lateral jsonb_to_recordset(v.lines) as x(position integer, sku text, name text, quantity bigint, unit_price_minor bigint)
      ), s as (
        insert into "order".sagas (order_id, step, payment_token, lease_token, next_run_at, deadline_at)
        select o.id, 'reserve', v.payment_token, v.lease_token,
               now() + v.lease_ms * interval '1 millisecond', now() + v.deadline_ms * interval '1 millisecond'
        from o join v on v.id = o.id
        returning order_id, deadline_at
      ), e as (
        insert into "order".outbox (id, aggregate_id, event_type, subject, payload, headers)
        select v.event_id, v.aggregate_id, v.event_type, v.subject, decode(v.payload, 'base64'), v.headers
        from v join o on o.id = v.id
        order by v.position
      )
      select o.id::text as id, o.seq, o.create_time, o.update_time, s.deadline_at
      from o join s on s.order_id = o.id`;

type Row = { id: string; seq: string | number; create_time: string | Date; update_time: string | Date; deadline_at: string | Date };

/**
 * Whether a failed batch statement was refused by Postgres for what it wrote (a constraint,
 * a value, a deadlock with another replica's batch): then one order may be to blame and each
 * goes again alone. Not for a lost connection or a server going away (SQLSTATE classes 08,
 * 53, 57, 58): those would fail each order alone too.
 */
function refusedByPostgres(err: unknown): boolean {
  const e = err as { code?: unknown; severity?: unknown } | null;
  if (!e || typeof e.code !== 'string' || typeof e.severity !== 'string') return false;
  return !/^(08|53|57|58)/.test(e.code);
}

/** Inserts orders; each answer is what insertOrder would have answered for it. */
export function createOrderInserter(db: Database): { insert(o: NewOrder): Promise<Inserted>; readonly calls: number } {
  const coalescer = new Coalescer<NewOrder, Inserted>({
    name: 'order insert',
    sendOne: (o) => insertOrder(db, o),
    sendBatch: async (batch) => {
      // The first order of each (user, key) is written; a repeat inside the batch is not sent.
      const firstOfKey = new Map<string, NewOrder>();
      for (const o of batch) {
        const k = JSON.stringify([o.userId, o.idempotencyKey]);
        if (!firstOfKey.has(k)) firstOfKey.set(k, o);
      }
      const input = [...firstOfKey.values()].map((o, position) => ({
        position,
        id: o.id,
        user_id: o.userId,
        idempotency_key: o.idempotencyKey,
        currency: o.currency,
        total_minor: String(o.totalMinor),
        payment_token: o.paymentToken,
        lease_token: o.leaseToken,
        lease_ms: o.leaseMs,
        deadline_ms: o.deadlineMs,
        event_id: o.event.id,
        aggregate_id: o.event.aggregateId,
        event_type: o.event.eventType,
        subject: o.event.subject,
        payload: o.event.payload.toString('base64'),
        headers: JSON.parse(o.event.headers) as unknown,
        lines: o.lines.map((l, i) => ({
          position: i,
          sku: l.sku,
          name: l.name,
          quantity: String(l.quantity),
          unit_price_minor: String(l.unitPriceMinor),
        })),
      }));
      const rows = await runStatement<Row>(db, INSERT_ORDERS, [JSON.stringify(input)]);
      if (rows.length > 0) announceCommitted(db, SCHEMA);
      const byId = new Map(rows.map((r) => [r.id.toLowerCase(), r]));
      return batch.map((o) => {
        const r = byId.get(o.id.toLowerCase());
        if (!r) return undefined; // its key was taken: before, or by an order earlier in this batch
        return { seq: BigInt(r.seq), createTime: new Date(r.create_time), updateTime: new Date(r.update_time), deadlineAt: new Date(r.deadline_at) };
      });
    },
    splitOn: refusedByPostgres,
  });
  return {
    insert: (o) => coalescer.call(o),
    get calls() {
      return coalescer.calls;
    },
  };
}
