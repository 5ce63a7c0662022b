// The payment batch statements (lock, insert of payments with their events, capture) are one
// statement text whatever the batch size: statements are prepared per text and connection
// (mesh/db-prepared.ts), so a text per size would be parsed and planned once per size.
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from '../../mesh/db.js';
import { createTestDatabase } from '../../mesh/testing/index.js';
import { paymentMigrations } from './main.js';
import { SimulatedProcessor, TEST_TOKENS } from './processor.js';
import { outbox, payments } from './schema.js';
import { PaymentStore } from './store.js';

test('authorizeMany and captureMany prepare one text per statement for batches of 2 and 3, and write every payment and event', async (t) => {
  const testDb = await createTestDatabase(t);
  // One connection, so every statement runs on the backend whose prepared statements we read.
  const database = await openDatabase({ context: 'payment', url: testDb.url, migrationsFolder: paymentMigrations, maxConnections: 1 });
  t.teardown(() => database.close());
  const store = new PaymentStore({ db: database.db, processor: new SimulatedProcessor({ slowMs: 0 }) });
  const req = (token: string) => ({ orderId: `o-${randomUUID()}`, userId: 'u1', amountMinor: 1234n, currencyCode: 'EUR', cardToken: token });

  const batches = [
    [req(TEST_TOKENS.approve), req(TEST_TOKENS.decline)],
    [req(TEST_TOKENS.approve), req(TEST_TOKENS.approve), req(TEST_TOKENS.decline)],
  ];
  for (const batch of batches) {
    const answers = await store.authorizeMany(batch);
    t.deepEqual(answers.map((a) => (a instanceof Error ? a.message : a.status)), batch.map((r) => (r.cardToken === TEST_TOKENS.approve ? 'AUTHORIZED' : 'DECLINED')));
    const approved = batch.filter((r) => r.cardToken === TEST_TOKENS.approve).map((r) => r.orderId);
    const captured = await store.captureMany(approved);
    t.deepEqual(captured.map((c) => (c instanceof Error ? c.message : c.status)), approved.map(() => 'CAPTURED'));
  }

  const rows = await database.db.select().from(payments);
  t.is(rows.length, 5);
  for (const row of rows) t.is(row.amountMinor, 1234n);
  const events = await database.db.select().from(outbox);
  // (In the order the processor answered, which a batch does not fix: compare as sets.)
  t.deepEqual(
    events.map((e) => `${e.aggregateId} ${e.eventType}`).sort(),
    batches.flat().map((r) => `${r.orderId} shop.payment.v1.${r.cardToken === TEST_TOKENS.approve ? 'PaymentAuthorized' : 'PaymentFailed'}`).sort(),
  );

  const texts = resultRows<{ statement: string }>(
    await database.db.execute(sql`select statement from pg_prepared_statements where statement not like '%pg_prepared_statements%'`),
  ).map((r) => r.statement);
  const count = (pattern: RegExp) => texts.filter((s) => pattern.test(s)).length;
  t.is(count(/insert into "payment"\."payments"/), 1, 'the payments + events insert');
  t.is(count(/payment\.lock_order\(u\.id\)/), 1, 'the batch lock');
  t.is(count(/set status = 'CAPTURED'/), 1, 'the batch capture');
});
