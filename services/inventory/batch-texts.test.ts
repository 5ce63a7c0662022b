// The reservation statements (reserve and reserveMany with their items and lines, the batch
// commit) are one statement text whatever the number of items, lines or ids: statements are prepared per text and connection
// (mesh/db-prepared.ts), so a text per size would be parsed and planned once per size.
import test from 'ava';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from '../../mesh/db.js';
import { createTestDatabase } from '../../mesh/testing/index.js';
import { inventoryMigrations } from './seed.js';
import { InventoryStore } from './store.js';

test('reserve (2 and 3 lines), reserveMany (2 and 3 items) and commitMany (2 and 3 ids) prepare one text each, and move the stock', async (t) => {
  const testDb = await createTestDatabase(t);
  // One connection, so every statement runs on the backend whose prepared statements we read.
  const database = await openDatabase({ context: 'inventory', url: testDb.url, migrationsFolder: inventoryMigrations, maxConnections: 1 });
  t.teardown(() => database.close());
  const store = new InventoryStore({ db: database.db, reservationTtlMs: 60_000 });
  for (const sku of ['A', 'B', 'C']) await store.setStock(sku, 100);

  const reserve = async (id: string, skus: string[]) => (await store.reserve(id, skus.map((sku) => ({ sku, quantity: 2 })))).status;
  t.is(await reserve('r1', ['A', 'B']), 'RESERVED');
  t.is(await reserve('r2', ['C', 'A', 'B']), 'RESERVED');
  t.is(await reserve('r3', ['B', 'C']), 'RESERVED');
  t.is(await reserve('r4', ['A']), 'RESERVED');
  t.is(await reserve('r5', ['C']), 'RESERVED');
  const reserveMany = async (ids: string[]) =>
    (await store.reserveMany(ids.map((id) => ({ id, lines: [{ sku: 'A', quantity: 1 }, { sku: 'B', quantity: 1 }] })))).map((r) =>
      r instanceof Error ? r.message : r.status,
    );
  t.deepEqual(await reserveMany(['m1', 'm2']), ['RESERVED', 'RESERVED']);
  t.deepEqual(await reserveMany(['m3', 'm4', 'm5']), ['RESERVED', 'RESERVED', 'RESERVED']);
  const statuses = async (ids: string[]) => [...(await store.commitMany(ids)).values()].map((r) => (r instanceof Error ? r.message : r.status));
  t.deepEqual(await statuses(['r1', 'r2']), ['COMMITTED', 'COMMITTED']);
  t.deepEqual(await statuses(['r3', 'r4', 'r5']), ['COMMITTED', 'COMMITTED', 'COMMITTED']);
  for (const [sku, left] of [['A', 94], ['B', 94], ['C', 94]] as const) {
    t.deepEqual(await store.getStock(sku), { sku, onHand: left, reserved: sku === 'C' ? 0 : 5 });
  }

  const texts = resultRows<{ statement: string }>(
    await database.db.execute(sql`select statement from pg_prepared_statements where statement not like '%pg_prepared_statements%'`),
  ).map((r) => r.statement);
  const count = (pattern: RegExp) => texts.filter((s) => pattern.test(s)).length;
  t.is(count(/inventory\.reserve_batch\(/), 1, 'reserve and reserveMany');
  t.is(count(/inventory\.commit_batch\(/), 1, 'commitMany');
});
