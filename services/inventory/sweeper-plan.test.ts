import test from 'ava';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from '../../mesh/db.js';
import { createTestDatabase } from '../../mesh/testing/index.js';
import { InventoryStore } from './store.js';

// Statements are prepared (mesh/db-prepared.ts), so after a few calls Postgres may run the
// sweeper's query with a generic plan. Forcing that plan here, the sweep must still find the
// expired reservations through the partial index, not by reading every reservation ever made.
test('the expiry sweep uses the open-reservations index even under a generic plan', async (t) => {
  const testDb = await createTestDatabase(t);
  const url = new URL(testDb.url);
  url.searchParams.set('plan_cache_mode', 'force_generic_plan'); // a startup parameter for every connection
  const database = await openDatabase({
    context: 'inventory',
    url: url.toString(),
    maxConnections: 1,
    migrationsFolder: new URL('./migrations', import.meta.url).pathname,
  });
  t.teardown(() => database.close());
  const { db } = database;
  // Many finished reservations and one expired open one.
  await db.execute(sql`
    insert into inventory.reservations (id, status, lines, expire_time)
    select 'done-' || i, 'COMMITTED', '[]'::jsonb, now() - interval '1 hour' from generate_series(1, 5000) i`);
  await db.execute(sql`insert into inventory.reservations (id, status, lines, expire_time) values ('open-1', 'RESERVED', '[]'::jsonb, now() - interval '1 hour')`);
  await db.execute(sql`analyze inventory.reservations`);

  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });
  const scans = async () => {
    await db.execute(sql`select pg_stat_force_next_flush()`);
    await db.execute(sql`select pg_stat_clear_snapshot()`);
    return resultRows<{ seq: number }>(
      await db.execute(sql`select seq_scan::int as seq from pg_stat_user_tables where schemaname = 'inventory' and relname = 'reservations'`),
    )[0]!.seq;
  };
  const before = await scans();
  for (let i = 0; i < 3; i++) await store.sweepExpired();
  t.is(await scans(), before, 'no sequential scan of inventory.reservations');
  const [row] = resultRows<{ status: string }>(await db.execute(sql`select status from inventory.reservations where id = 'open-1'`));
  t.is(row!.status, 'RELEASED');
});
