// CancelOrder's row locks come in the order every other writer of both rows takes them: the
// saga row, then the order row (finishSaga, the batched finish and settleOrder update sagas,
// then orders, in one statement). Taken the other way round, a CancelOrder meeting a saga's
// finish could deadlock; Postgres then aborted one of them after deadlock_timeout.
import test from 'ava';
import { sql } from 'drizzle-orm';
import { OrderChanges } from './changes.js';
import { SagaOrchestrator } from './saga.js';
import { leasedSagas } from './saga-fixture.js';

test('CancelOrder waits behind a finishing saga (saga row, then order row) instead of deadlocking with it', async (t) => {
  const { db, sagas } = await leasedSagas(t, { step: 'authorize' });
  const orderId = sagas[0]!.orderId;
  const saga = new SagaOrchestrator(db, {} as never, new OrderChanges());

  let cancel: ReturnType<SagaOrchestrator['requestCancel']> | undefined;
  // A writer in the finisher's order: the saga row first, and while it holds it, the order row.
  await db.transaction(async (tx) => {
    await tx.execute(sql`update "order".sagas set update_time = now() where order_id = ${orderId}::uuid`);
    cancel = saga.requestCancel(orderId, 'u1', 'changed my mind');
    cancel.catch(() => {}); // awaited below; not an unhandled rejection meanwhile
    await new Promise((r) => setTimeout(r, 300)); // the cancel is now waiting on a row lock
    await tx.execute(sql`update "order".orders set update_time = now() where id = ${orderId}::uuid`);
  });
  // The writer committed first; the cancel then found the saga still cancellable and took it.
  const decision = await cancel!;
  t.is(decision.kind, 'compensate');
});
