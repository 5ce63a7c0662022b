import test, { type ExecutionContext } from 'ava';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows, type Database } from '../../mesh/db.js';
import { createTestDatabase } from '../../mesh/testing/index.js';
import { InventoryStore } from './store.js';

// The plans of the store's statements on tables that grow (reservations with every order,
// stock with the catalog): each test counts sequential scans through pg_stat_user_tables on a
// one-connection pool, so the statistics it reads are the ones its own statements left.
async function openInventory(t: ExecutionContext, planCacheMode?: string) {
  const testDb = await createTestDatabase(t);
  const url = new URL(testDb.url);
  if (planCacheMode) url.searchParams.set('plan_cache_mode', planCacheMode); // a startup parameter for every connection
  const database = await openDatabase({
    context: 'inventory',
    url: url.toString(),
    maxConnections: 1,
    migrationsFolder: new URL('./migrations', import.meta.url).pathname,
  });
  t.teardown(() => database.close());
  return database.db;
}

async function seqScans(db: Database, table: string): Promise<number> {
  await db.execute(sql`select pg_stat_force_next_flush()`);
  await db.execute(sql`select pg_stat_clear_snapshot()`);
  return resultRows<{ seq: number }>(
    await db.execute(sql`select seq_scan::int as seq from pg_stat_user_tables where schemaname = 'inventory' and relname = ${table}`),
  )[0]!.seq;
}

// Statements are prepared (mesh/db-prepared.ts), so after a few calls Postgres may run the
// sweeper's query with a generic plan. Forcing that plan here, the sweep must still find the
// expired reservations through the partial index, not by reading every reservation ever made.
test('the expiry sweep uses the open-reservations index even under a generic plan', async (t) => {
  const db = await openInventory(t, 'force_generic_plan');
  // Many finished reservations and one expired open one.
  await db.execute(sql`
    insert into inventory.reservations (id, status, lines, expire_time)
    select 'done-' || i, 'COMMITTED', '[]'::jsonb, now() - interval '1 hour' from generate_series(1, 5000) i`);
  await db.execute(sql`insert into inventory.reservations (id, status, lines, expire_time) values ('open-1', 'RESERVED', '[]'::jsonb, now() - interval '1 hour')`);
  await db.execute(sql`analyze inventory.reservations`);

  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });
  const before = await seqScans(db, 'reservations');
  for (let i = 0; i < 3; i++) await store.sweepExpired();
  t.is(await seqScans(db, 'reservations'), before, 'no sequential scan of inventory.reservations');
  const [row] = resultRows<{ status: string }>(await db.execute(sql`select status from inventory.reservations where id = 'open-1'`));
  t.is(row!.status, 'RELEASED');
});

// Postgres guesses 100 rows for jsonb_to_recordset over a reservation's lines; with `sku in
// (select ...)` that guess made it hash-join the whole stock table, once to lock the rows and
// once to move them, on every CommitReservation: O(catalog) per order.
test('committing a reservation reads its stock rows by key, not the whole stock table', async (t) => {
  const db = await openInventory(t);
  await db.execute(sql`insert into inventory.stock (sku, on_hand) select 'SKU-' || i, 100 from generate_series(1, 20000) i`);
  await db.execute(sql`analyze inventory.stock`);
  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });
  await store.reserve('order-a', [{ sku: 'SKU-7', quantity: 2 }]);
  await store.reserve('order-b', [{ sku: 'SKU-7', quantity: 1 }, { sku: 'SKU-9', quantity: 1 }]);
  await store.reserve('order-c', [{ sku: 'SKU-9', quantity: 3 }]);

  const before = await seqScans(db, 'stock');
  t.is((await store.commit('order-a')).status, 'COMMITTED');
  const many = await store.commitMany(['order-b', 'order-c']);
  t.deepEqual([...many.values()].map((r) => (r instanceof Error ? r.message : r.status)), ['COMMITTED', 'COMMITTED']);
  t.is(await seqScans(db, 'stock'), before, 'no sequential scan of inventory.stock');

  const levels = resultRows<{ sku: string; on_hand: string; reserved: string }>(
    await db.execute(sql`select sku, on_hand::text, reserved::text from inventory.stock where sku in ('SKU-7', 'SKU-9') order by sku`),
  );
  t.deepEqual([...levels], [
    { sku: 'SKU-7', on_hand: '97', reserved: '0' },
    { sku: 'SKU-9', on_hand: '96', reserved: '0' },
  ]);
});

// inventory.reserve_batch (migrations 0002, 0003) runs its statements through plpgsql's plan cache,
// which switches to generic plans too: forced here, reserving (new ids, a stored id, a short
// line, a repeated id) must still reach stock and reservation rows by key.
test('reserving a batch reads stock and reservations by key, even under a generic plan', async (t) => {
  const db = await openInventory(t, 'force_generic_plan');
  await db.execute(sql`insert into inventory.stock (sku, on_hand) select 'SKU-' || i, 100 from generate_series(1, 20000) i`);
  await db.execute(sql`
    insert into inventory.reservations (id, status, lines, expire_time)
    select 'done-' || i, 'COMMITTED', '[]'::jsonb, now() - interval '1 hour' from generate_series(1, 5000) i`);
  await db.execute(sql`analyze inventory.stock`);
  await db.execute(sql`analyze inventory.reservations`);
  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });

  const before = { stock: await seqScans(db, 'stock'), reservations: await seqScans(db, 'reservations') };
  for (let round = 0; round < 3; round++) {
    const answers = await store.reserveMany([
      { id: `new-${round}`, lines: [{ sku: 'SKU-7', quantity: 2 }, { sku: 'SKU-9', quantity: 1 }] },
      { id: 'done-17', lines: [] },
      { id: `short-${round}`, lines: [{ sku: 'SKU-9', quantity: 500 }] },
      { id: `new-${round}`, lines: [{ sku: 'SKU-7', quantity: 2 }, { sku: 'SKU-9', quantity: 1 }] },
    ]);
    t.deepEqual(answers.map((r) => (r instanceof Error ? r.constructor.name : r.status)), ['RESERVED', 'COMMITTED', 'ConnectError', 'RESERVED']);
  }
  t.deepEqual(
    { stock: await seqScans(db, 'stock'), reservations: await seqScans(db, 'reservations') },
    before,
    'no sequential scan of inventory.stock or inventory.reservations',
  );
});

// A plan is cached for the connection's life (plpgsql's plans as a prepared statement's), and
// a shop starts with empty tables: a plan made then must not read the table whole once it
// has grown (no ANALYZE in between to make Postgres plan again, as in bench/orders.ts).
test('reserving a batch reads reservations by key even with plans cached while the table was empty', async (t) => {
  const db = await openInventory(t);
  await db.execute(sql`insert into inventory.stock (sku, on_hand) select 'SKU-' || i, 1000000 from generate_series(1, 100) i`);
  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });
  const batch = (round: number) =>
    store.reserveMany(Array.from({ length: 4 }, (_, i) => ({ id: `r-${round}-${i}`, lines: [{ sku: `SKU-${i + 1}`, quantity: 1 }] })));
  for (let round = 0; round < 10; round++) await batch(round);
  await db.execute(sql`
    insert into inventory.reservations (id, status, lines, expire_time)
    select 'done-' || i, 'COMMITTED', '[]'::jsonb, now() - interval '1 hour' from generate_series(1, 20000) i`);
  const before = await seqScans(db, 'reservations');
  for (let round = 10; round < 20; round++) {
    t.true((await batch(round)).every((r) => !(r instanceof Error) && r.status === 'RESERVED'));
  }
  t.is(await seqScans(db, 'reservations'), before, 'no sequential scan of inventory.reservations');
});

// commitMany (BatchCommitReservations) is one prepared statement: forced generic here, on
// grown and analyzed tables, a batch of stored ids (reserved, committed, released, unknown,
// repeated) must lock and move its reservation and stock rows by key.
test('committing a batch reads reservations and stock by key, even under a generic plan', async (t) => {
  const db = await openInventory(t, 'force_generic_plan');
  await db.execute(sql`insert into inventory.stock (sku, on_hand) select 'SKU-' || i, 100 from generate_series(1, 20000) i`);
  await db.execute(sql`
    insert into inventory.reservations (id, status, lines, expire_time)
    select 'done-' || i, 'COMMITTED', '[]'::jsonb, now() - interval '1 hour' from generate_series(1, 20000) i`);
  await db.execute(sql`analyze inventory.stock`);
  await db.execute(sql`analyze inventory.reservations`);
  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });

  for (let round = 0; round < 3; round++) {
    await store.reserve(`a-${round}`, [{ sku: 'SKU-7', quantity: 2 }, { sku: 'SKU-9', quantity: 1 }]);
    await store.reserve(`b-${round}`, [{ sku: 'SKU-9', quantity: 1 }]);
    await store.reserve(`gone-${round}`, [{ sku: 'SKU-11', quantity: 1 }]);
    await store.release(`gone-${round}`, 'declined');
  }
  const before = { stock: await seqScans(db, 'stock'), reservations: await seqScans(db, 'reservations') };
  for (let round = 0; round < 3; round++) {
    const answers = await store.commitMany([`a-${round}`, 'done-17', `gone-${round}`, `never-${round}`, `b-${round}`, `a-${round}`]);
    t.deepEqual(
      [...answers.values()].map((r) => (r instanceof Error ? r.constructor.name : r.status)),
      ['COMMITTED', 'COMMITTED', 'ConnectError', 'ConnectError', 'COMMITTED'],
    );
  }
  t.deepEqual(
    { stock: await seqScans(db, 'stock'), reservations: await seqScans(db, 'reservations') },
    before,
    'no sequential scan of inventory.stock or inventory.reservations',
  );
  const levels = resultRows<{ sku: string; on_hand: string; reserved: string }>(
    await db.execute(sql`select sku, on_hand::text, reserved::text from inventory.stock where sku in ('SKU-7', 'SKU-9', 'SKU-11') order by sku`),
  );
  t.deepEqual([...levels], [
    { sku: 'SKU-11', on_hand: '100', reserved: '0' },
    { sku: 'SKU-7', on_hand: '94', reserved: '0' },
    { sku: 'SKU-9', on_hand: '94', reserved: '0' },
  ]);
});

// As for reserve_batch above: the batch commit's plan, cached while the shop was new, must
// still read reservations and stock by key once both have grown (no ANALYZE in between).
test('committing a batch reads reservations and stock by key even with plans cached while the tables were empty', async (t) => {
  const db = await openInventory(t);
  await db.execute(sql`insert into inventory.stock (sku, on_hand) select 'SKU-' || i, 1000000 from generate_series(1, 100) i`);
  const store = new InventoryStore({ db, reservationTtlMs: 60_000 });
  const round = async (n: number) => {
    const ids = Array.from({ length: 4 }, (_, i) => `r-${n}-${i}`);
    await store.reserveMany(ids.map((id, i) => ({ id, lines: [{ sku: `SKU-${i + 1}`, quantity: 1 }, { sku: `SKU-${i + 2}`, quantity: 1 }] })));
    return [...(await store.commitMany([...ids, `never-${n}`])).values()].map((r) => (r instanceof Error ? r.constructor.name : r.status));
  };
  for (let n = 0; n < 10; n++) await round(n);
  await db.execute(sql`
    insert into inventory.reservations (id, status, lines, expire_time)
    select 'done-' || i, 'COMMITTED', '[]'::jsonb, now() - interval '1 hour' from generate_series(1, 20000) i`);
  await db.execute(sql`insert into inventory.stock (sku, on_hand) select 'MORE-' || i, 100 from generate_series(1, 20000) i`);
  const before = { stock: await seqScans(db, 'stock'), reservations: await seqScans(db, 'reservations') };
  for (let n = 10; n < 20; n++) t.deepEqual(await round(n), ['COMMITTED', 'COMMITTED', 'COMMITTED', 'COMMITTED', 'ConnectError']);
  t.deepEqual(
    { stock: await seqScans(db, 'stock'), reservations: await seqScans(db, 'reservations') },
    before,
    'no sequential scan of inventory.stock or inventory.reservations',
  );
});
