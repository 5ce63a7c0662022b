// Concurrent step stores share one statement, each still under its own lease: a store whose
// lease was taken answers false and writes nothing, the others are written as their own would.
import test from 'ava';
import { sql } from 'drizzle-orm';
import { resultRows } from '../../mesh/db.js';
import { leasedSagas } from './saga-fixture.js';
import { createStepStore, type StepStore } from './step-store.js';

test('concurrent stores go out together; each row is written only under its own lease', async (t) => {
  const { db, sagas, statements } = await leasedSagas(t, { step: 'authorize' });

  const steps = createStepStore(db);
  const store = (i: number, over: Partial<StepStore> = {}) =>
    steps.store({
      orderId: sagas[i]!.orderId,
      leaseToken: sagas[i]!.lease,
      step: 'confirm',
      attempt: i,
      runInMs: 30_000,
      nextLeaseToken: i === 5 ? null : sagas[i]!.lease,
      lastError: i === 4 ? 'was slow' : null,
      ...over,
    });
  const answers = await Promise.all(sagas.map((_, i) => store(i)));
  t.deepEqual(answers, [true, true, true, false, true, true]);
  // The first went alone, the five that arrived meanwhile as one statement.
  t.is(statements.length, 2);
  t.regex(statements[1]!, /jsonb_to_recordset/);

  const rows = resultRows<{ order_id: string; step: string; attempt: number; lease_token: string | null; last_error: string | null; later: boolean }>(
    await db.execute(sql`select order_id, step, attempt, lease_token, last_error, next_run_at > now() + interval '20 seconds' as later
      from "order".sagas order by order_id`),
  );
  const byId = new Map(rows.map((r) => [r.order_id, r]));
  sagas.forEach((s, i) => {
    const row = byId.get(s.orderId)!;
    if (i === 3) {
      t.is(row.step, 'authorize', 'a store without the lease writes nothing');
      return;
    }
    t.is(row.step, 'confirm');
    t.is(row.attempt, i);
    t.is(row.lease_token, i === 5 ? null : s.lease);
    t.is(row.last_error, i === 4 ? 'was slow' : null);
    t.true(row.later);
  });

  // A store after the row moved on under another lease is refused alone too.
  t.false(await store(3));
});
