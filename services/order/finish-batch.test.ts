// Concurrent saga ends share one statement, each answered as finishSaga would answer it: the
// saga closed under its own lease, the order moved and its event written only when it was
// still PENDING; a lost lease writes nothing.
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { create, fromBinary } from '@bufbuild/protobuf';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from '../../mesh/db.js';
import { createTestDatabase } from '../../mesh/testing/index.js';
import { OrderConfirmedSchema } from '../../gen/shop/order/v1/order_pb.js';
import { createSagaFinisher } from './finish-batch.js';
import { orderMigrations } from './main.js';
import { outboxRow } from './writes.js';

test('concurrent finishes go out together, each under its own lease, each event written once', async (t) => {
  const testDb = await createTestDatabase(t);
  const database = await openDatabase({ context: 'order', url: testDb.url, migrationsFolder: orderMigrations, maxConnections: 2 });
  t.teardown(() => database.close());
  const { db } = database;
  const sagas = Array.from({ length: 6 }, () => ({ orderId: randomUUID(), lease: randomUUID() }));
  for (const [i, s] of sagas.entries()) {
    await db.execute(sql`insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor)
      values (${s.orderId}::uuid, 'u1', ${s.orderId}, ${i === 4 ? 'CANCELLED' : 'PENDING'}, 'EUR', 100)`);
    await db.execute(sql`insert into "order".sagas (order_id, step, deadline_at, lease_token, payment_token)
      values (${s.orderId}::uuid, 'commit', now() + interval '1 minute', ${s.lease}::uuid, 'tok')`);
  }
  // Saga 3's lease went to another worker; order 4 was already settled (CANCELLED) at its bound.
  await db.execute(sql`update "order".sagas set lease_token = ${randomUUID()}::uuid where order_id = ${sagas[3]!.orderId}::uuid`);

  const statements: string[] = [];
  const client = (db as unknown as { $client: { unsafe: (...a: unknown[]) => unknown } }).$client;
  const unsafe = client.unsafe.bind(client);
  client.unsafe = (text: unknown, ...rest: unknown[]) => {
    if (typeof text === 'string' && text.includes('"order".sagas')) statements.push(text);
    return unsafe(text, ...rest);
  };
  t.teardown(() => (client.unsafe = unsafe));

  const finisher = createSagaFinisher(db);
  const finish = (i: number) =>
    finisher.finish({
      orderId: sagas[i]!.orderId,
      leaseToken: sagas[i]!.lease,
      status: 'CONFIRMED',
      cancelReason: '',
      lastError: i === 2 ? 'slow' : null,
      event: outboxRow(OrderConfirmedSchema, create(OrderConfirmedSchema, { orderId: sagas[i]!.orderId, userId: 'u1' }), sagas[i]!.orderId, 'test'),
    });
  const answers = await Promise.all(sagas.map((_, i) => finish(i)));
  t.deepEqual(
    answers.map((a) => [a.lease, a.moved, a.updateTime instanceof Date]),
    [[true, true, true], [true, true, true], [true, true, true], [false, false, false], [true, false, false], [true, true, true]],
  );
  t.is(statements.length, 2, 'the first alone, the five that arrived meanwhile together');
  t.regex(statements[1]!, /jsonb_to_recordset/);

  const orders = new Map(
    resultRows<{ id: string; status: string }>(await db.execute(sql`select id::text, status from "order".orders`)).map((r) => [r.id, r.status]),
  );
  const saga = new Map(
    resultRows<{ order_id: string; step: string; lease_token: string | null; last_error: string | null }>(
      await db.execute(sql`select order_id::text, step, lease_token::text, last_error from "order".sagas`),
    ).map((r) => [r.order_id, r]),
  );
  const events = resultRows<{ aggregate_id: string; payload: Buffer; event_type: string }>(
    await db.execute(sql`select aggregate_id, payload, event_type from "order".outbox order by seq`),
  );
  t.deepEqual(
    events.map((e) => e.aggregate_id).sort(),
    [0, 1, 2, 5].map((i) => sagas[i]!.orderId).sort(),
  );
  for (const e of events) {
    t.is(e.event_type, 'shop.order.v1.OrderConfirmed');
    t.is(fromBinary(OrderConfirmedSchema, e.payload).orderId, e.aggregate_id, 'the payload bytes as given');
  }
  sagas.forEach((s, i) => {
    t.is(orders.get(s.orderId), i === 3 ? 'PENDING' : i === 4 ? 'CANCELLED' : 'CONFIRMED', `order ${i}`);
    t.is(saga.get(s.orderId)!.step, i === 3 ? 'commit' : 'done', `saga ${i}`);
    if (i !== 3) t.is(saga.get(s.orderId)!.lease_token, null);
  });
  t.is(saga.get(sagas[2]!.orderId)!.last_error, 'slow');
  // The event's payload and headers are the ones finishSaga would have written.
  const single = resultRows<{ n: number }>(
    await db.execute(sql`select count(*)::int as n from "order".outbox where headers is not null and length(payload) > 0`),
  );
  t.is(single[0]!.n, 4);
});
