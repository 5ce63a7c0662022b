// Concurrent order inserts share one statement, each answered as insertOrder would answer it:
// written whole (order, lines, saga row, OrderPlaced event) unless its key is taken, a key
// repeated inside the batch written once, and an order the statement refuses failing alone.
import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { create, fromBinary } from '@bufbuild/protobuf';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows, type Database } from '../../mesh/db.js';
import { createTestDatabase, recordStatements } from '../../mesh/testing/index.js';
import type postgres from 'postgres';
import { openPostgres } from '../../mesh/postgres-url.js';
import { OrderPlacedSchema } from '../../gen/shop/order/v1/order_pb.js';
import { orderMigrations } from './main.js';
import { createOrderInserter, type Inserted } from './place-batch.js';
import { insertOrder, outboxRow, type NewOrder } from './writes.js';

/** An order database (and its URL), and the texts of the statements sent since that insert into "order".orders. */
async function orderDatabase(t: ExecutionContext): Promise<{ db: Database; url: string; statements: string[] }> {
  const testDb = await createTestDatabase(t);
  const database = await openDatabase({ context: 'order', url: testDb.url, migrationsFolder: orderMigrations, maxConnections: 2 });
  t.teardown(() => database.close());
  return { db: database.db, url: testDb.url, statements: recordStatements(t, database.db, 'insert into "order".orders') };
}

function newOrder(userId: string, key: string, over: { id?: string; name?: string } = {}): NewOrder {
  const id = over.id ?? randomUUID();
  const lines = [
    { sku: 'A-1', name: over.name ?? 'Apple', quantity: 2n, unitPriceMinor: 150n, lineTotalMinor: 300n },
    { sku: 'B-2', name: 'Banana', quantity: 1n, unitPriceMinor: 40n, lineTotalMinor: 40n },
  ];
  return {
    id,
    userId,
    idempotencyKey: key,
    currency: 'EUR',
    totalMinor: 340n,
    lines,
    paymentToken: `tok-${key}`,
    leaseToken: randomUUID(),
    leaseMs: 15_000,
    deadlineMs: 60_000,
    event: outboxRow(OrderPlacedSchema, create(OrderPlacedSchema, { orderId: id, userId }), id, 'test'),
  };
}

async function stored(db: Database) {
  const orders = resultRows<{ id: string; user_id: string; idempotency_key: string; seq: string; total_minor: string }>(
    await db.execute(sql`select id::text, user_id, idempotency_key, seq::text, total_minor::text from "order".orders`),
  );
  const lines = resultRows<{ order_id: string; position: number; sku: string; name: string; quantity: string; unit_price_minor: string }>(
    await db.execute(sql`select order_id::text, position, sku, name, quantity::text, unit_price_minor::text from "order".order_lines order by order_id, position`),
  );
  const sagas = resultRows<{ order_id: string; step: string; lease_token: string; payment_token: string; leased: boolean; deadline_in_s: number }>(
    await db.execute(sql`select order_id::text, step, lease_token::text, payment_token, next_run_at > now() + interval '10 seconds' as leased,
      extract(epoch from deadline_at - now())::float8 as deadline_in_s from "order".sagas`),
  );
  const events = resultRows<{ id: string; aggregate_id: string; event_type: string; payload: Buffer; headers: unknown }>(
    await db.execute(sql`select id::text, aggregate_id, event_type, payload, headers from "order".outbox order by seq`),
  );
  return { orders, lines, sagas, events };
}

/** Asserts `o` stored whole, as insertOrder writes it. */
function storedWhole(t: ExecutionContext, s: Awaited<ReturnType<typeof stored>>, o: NewOrder): void {
  const row = s.orders.find((r) => r.id === o.id);
  t.truthy(row, `order ${o.idempotencyKey} stored`);
  t.is(row?.total_minor, '340');
  t.deepEqual(
    s.lines.filter((l) => l.order_id === o.id).map((l) => [l.position, l.sku, l.name, l.quantity, l.unit_price_minor]),
    [[0, 'A-1', 'Apple', '2', '150'], [1, 'B-2', 'Banana', '1', '40']],
  );
  const saga = s.sagas.find((r) => r.order_id === o.id);
  t.is(saga?.step, 'reserve');
  t.is(saga?.lease_token, o.leaseToken);
  t.is(saga?.payment_token, o.paymentToken);
  t.true(saga?.leased, 'leased to the caller');
  t.true(saga!.deadline_in_s > 50 && saga!.deadline_in_s <= 60);
  const event = s.events.find((e) => e.id === o.event.id);
  t.is(event?.event_type, 'shop.order.v1.OrderPlaced');
  t.is(event?.aggregate_id, o.id);
  t.is(fromBinary(OrderPlacedSchema, event!.payload).orderId, o.id, 'the payload bytes as given');
  t.deepEqual(event?.headers, JSON.parse(o.event.headers));
}

test('concurrent inserts go out as one statement; each order is written whole and answered its own row', async (t) => {
  const { db, statements } = await orderDatabase(t);
  const inserter = createOrderInserter(db);
  const orders = Array.from({ length: 6 }, (_, i) => newOrder(`u${i % 2}`, `k-${i}`));
  const answers = await Promise.all(orders.map((o) => inserter.insert(o)));
  t.is(statements.length, 2, 'the first alone, the five that arrived meanwhile together');
  t.regex(statements[1]!, /jsonb_to_recordset/);

  const s = await stored(db);
  t.is(s.orders.length, 6);
  t.is(s.lines.length, 12);
  t.is(s.sagas.length, 6);
  t.is(s.events.length, 6);
  orders.forEach((o, i) => {
    storedWhole(t, s, o);
    const a = answers[i];
    t.truthy(a, `order ${i} answered`);
    t.is(String(a?.seq), s.orders.find((r) => r.id === o.id)!.seq);
    t.true(a!.createTime instanceof Date && a!.updateTime instanceof Date);
    t.true(a!.deadlineAt.getTime() > a!.createTime.getTime() + 50_000);
  });
});

test('a batch with new orders, a key repeated inside it and a key already stored writes one order per key', async (t) => {
  const { db, statements } = await orderDatabase(t);
  const first = newOrder('u1', 'k-stored');
  t.truthy(await insertOrder(db, first));
  statements.length = 0;

  const inserter = createOrderInserter(db);
  const batch = [
    newOrder('u1', 'k-a'), // alone: nothing in flight yet
    newOrder('u1', 'k-b'),
    newOrder('u1', 'k-stored'),
    newOrder('u1', 'k-b'), // repeated inside the batch
    newOrder('u2', 'k-b'), // the same key, another user: an order of its own
    newOrder('u1', 'k-c'),
  ];
  const answers = await Promise.all(batch.map((o) => inserter.insert(o)));
  t.is(statements.length, 2);
  t.deepEqual(
    answers.map((a) => a !== undefined),
    [true, true, false, false, true, true],
    'a taken key answers undefined (the service then answers the first order)',
  );

  const s = await stored(db);
  const byKey = new Map<string, string[]>();
  for (const r of s.orders) byKey.set(`${r.user_id}/${r.idempotency_key}`, [...(byKey.get(`${r.user_id}/${r.idempotency_key}`) ?? []), r.id]);
  t.deepEqual(Object.fromEntries(byKey), {
    'u1/k-stored': [first.id],
    'u1/k-a': [batch[0]!.id],
    'u1/k-b': [batch[1]!.id],
    'u2/k-b': [batch[4]!.id],
    'u1/k-c': [batch[5]!.id],
  });
  for (const o of [first, batch[0]!, batch[1]!, batch[4]!, batch[5]!]) storedWhole(t, s, o);
  // Nothing of the orders not written: no lines, saga rows or events.
  t.is(s.lines.length, 10);
  t.is(s.sagas.length, 5);
  t.is(s.events.length, 5);
});

test('an order the batch statement refuses fails alone; its batch-mates are written', async (t) => {
  const { db, statements } = await orderDatabase(t);
  const taken = newOrder('u1', 'k-taken');
  t.truthy(await insertOrder(db, taken));
  statements.length = 0;

  const inserter = createOrderInserter(db);
  const batch = [
    newOrder('u1', 'k-a'),
    newOrder('u1', 'k-b'),
    newOrder('u1', 'k-same-id', { id: taken.id }), // an id that exists: the primary key refuses it
    newOrder('u1', 'k-c'),
    newOrder('u1', 'k-nul', { name: 'Apple\u0000' }), // a value Postgres refuses
    newOrder('u1', 'k-d'),
  ];
  const outcomes = await Promise.all(batch.map((o) => inserter.insert(o).then((a) => a !== undefined, (e: unknown) => e as Error)));
  t.deepEqual(outcomes.map((o) => o === true), [true, true, false, true, false, true]);
  t.regex(String((outcomes[2] as Error).message), /duplicate key/);
  t.true(outcomes[4] instanceof Error);
  // The first alone, the batch refused, then each of its five alone.
  t.is(statements.length, 7);
  t.regex(statements[1]!, /jsonb_to_recordset/);

  const s = await stored(db);
  t.deepEqual(s.orders.map((r) => r.idempotency_key).sort(), ['k-a', 'k-b', 'k-c', 'k-d', 'k-taken']);
  for (const o of [taken, batch[0]!, batch[1]!, batch[3]!, batch[5]!]) storedWhole(t, s, o);
  t.is(s.lines.length, 10, 'nothing of the refused orders');
  t.is(s.sagas.length, 5);
  t.is(s.events.length, 5);
});

test("two replicas' batches holding the same keys wait for each other instead of deadlocking: a batch takes its keys in key order", async (t) => {
  const { db, url, statements } = await orderDatabase(t);
  // The other replica: its own connections, unseen by the hook above.
  const other = openPostgres(url, { max: 2 });
  t.teardown(() => other.end());
  const insertRow = (tx: postgres.TransactionSql, key: string) =>
    tx`insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor)
       values (${randomUUID()}::uuid, 'u1', ${key}, 'PENDING', 'EUR', 100)`;

  const inserter = createOrderInserter(db);
  let answers: Promise<Inserted[]> | undefined;
  await other.begin(async (tx) => {
    await insertRow(tx, 'k-1'); // the other replica's batch has taken k-1 ...
    // ... while this one sends k-0 alone and then k-2, k-1 together, in that arrival order.
    answers = Promise.all([inserter.insert(newOrder('u1', 'k-0')), inserter.insert(newOrder('u1', 'k-2')), inserter.insert(newOrder('u1', 'k-1'))]);
    answers.catch(() => {});
    // Until our batch waits on k-1.
    for (;;) {
      const [w] = await other`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`;
      if (w!.n > 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await insertRow(tx, 'k-2'); // ... and goes on to k-2. Arrival order held k-2 here: a deadlock.
  });
  const [zero, two, one] = await answers!;
  t.truthy(zero, 'k-0 written');
  t.is(two, undefined, 'k-2 was taken by the other replica');
  t.is(one, undefined, 'k-1 was taken by the other replica');
  t.is(statements.length, 2, 'k-0 alone, then one batch; no batch aborted by a deadlock and redone order by order');
  t.regex(statements[1]!, /jsonb_to_recordset/);
});
