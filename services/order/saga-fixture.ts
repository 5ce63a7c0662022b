/**
 * Test fixture for the saga's coalesced writes (step-store.test.ts, finish-batch.test.ts):
 * an order database with six PENDING orders whose sagas stand at `step` under a lease
 * each, saga 3's lease taken by another worker, and a record of every statement sent to
 * the driver that touches "order".sagas (to count how many went out).
 */
import type { ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { openDatabase, type Database } from '../../mesh/db.js';
import { createTestDatabase, recordStatements } from '../../mesh/testing/index.js';
import { orderMigrations } from './main.js';

export interface LeasedSagas {
  db: Database;
  sagas: { orderId: string; lease: string }[];
  /** Statement texts sent so far that touch "order".sagas. */
  statements: string[];
}

export async function leasedSagas(
  t: ExecutionContext,
  options: { step: string; orderStatus?: (i: number) => 'PENDING' | 'CONFIRMED' | 'CANCELLED' },
): Promise<LeasedSagas> {
  const testDb = await createTestDatabase(t);
  const database = await openDatabase({ context: 'order', url: testDb.url, migrationsFolder: orderMigrations, maxConnections: 2 });
  t.teardown(() => database.close());
  const { db } = database;
  const sagas = Array.from({ length: 6 }, () => ({ orderId: randomUUID(), lease: randomUUID() }));
  for (const [i, s] of sagas.entries()) {
    await db.execute(sql`insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor)
      values (${s.orderId}::uuid, 'u1', ${s.orderId}, ${options.orderStatus?.(i) ?? 'PENDING'}, 'EUR', 100)`);
    await db.execute(sql`insert into "order".sagas (order_id, step, deadline_at, lease_token, payment_token)
      values (${s.orderId}::uuid, ${options.step}, now() + interval '1 minute', ${s.lease}::uuid, 'tok')`);
  }
  // Saga 3's lease went to another worker meanwhile.
  await db.execute(sql`update "order".sagas set lease_token = ${randomUUID()}::uuid where order_id = ${sagas[3]!.orderId}::uuid`);

  const statements = recordStatements(t, db, '"order".sagas');
  return { db, sagas, statements };
}
