// Concurrent saga ends share one statement, each answered as finishSaga would answer it: the
// saga closed under its own lease, the order moved and its event written only when it was
// still PENDING; a lost lease writes nothing.
import test from 'ava';
import { create, fromBinary } from '@bufbuild/protobuf';
import { sql } from 'drizzle-orm';
import { resultRows } from '../../mesh/db.js';
import { leasedSagas } from './saga-fixture.js';
import { OrderConfirmedSchema } from '../../gen/shop/order/v1/order_pb.js';
import { createSagaFinisher } from './finish-batch.js';
import { outboxRow } from './writes.js';

test('concurrent finishes go out together, each under its own lease, each event written once', async (t) => {
  // Order 4 was already settled (CANCELLED) at its bound; saga 3's lease is another worker's.
  const { db, sagas, statements } = await leasedSagas(t, { step: 'commit', orderStatus: (i) => (i === 4 ? 'CANCELLED' : 'PENDING') });

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
