import test, { type ExecutionContext } from 'ava';
import { rmSync } from 'node:fs';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from './db.js';
import { createTestDatabase } from './testing/index.js';
import { first, migrationsFolder, second } from './testing/migrations-fixture.js';

// One connection, so every statement below runs on the backend whose prepared statements we read.
async function openOneConnection(t: ExecutionContext, options: { prepare?: boolean } = {}) {
  const testDb = await createTestDatabase(t);
  const folder = migrationsFolder([first, second]);
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));
  const database = await openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: folder, maxConnections: 1, ...options });
  t.teardown(() => database.close());
  return database.db;
}

const preparedLike = (marker: string) =>
  sql`select count(*)::int as n from pg_prepared_statements where statement like ${`%${marker}%`} and statement not like '%pg_prepared_statements%'`;

test("drizzle's statements with parameters run as named prepared statements, parsed once per connection", async (t) => {
  const db = await openOneConnection(t);
  for (let i = 0; i < 3; i++) await db.execute(sql`select ${i}::int as prepared_marker_a`);
  t.is(resultRows<{ n: number }>(await db.execute(preparedLike('prepared_marker_a')))[0]!.n, 1);

  // Inside a transaction as well (drizzle's tx runs on postgres.js's reserved connection).
  await db.transaction(async (tx) => {
    for (let i = 0; i < 3; i++) await tx.execute(sql`select ${i}::int as prepared_marker_b`);
  });
  t.is(resultRows<{ n: number }>(await db.execute(preparedLike('prepared_marker_b')))[0]!.n, 1);

  // The builders too: an insert and a select by key.
  await db.execute(sql`insert into demo.things (name, size) values (${'p'}, ${1})`);
  const rows = resultRows<{ size: number }>(await db.execute(sql`select size from demo.things where name = ${'p'}`));
  t.is(rows[0]!.size, 1);
});

test('a text without parameters still goes as a simple query: several statements in one text work', async (t) => {
  const db = await openOneConnection(t);
  await db.execute(sql.raw(`insert into demo.things (name, size) values ('a', 1); insert into demo.things (name, size) values ('b', 2)`));
  const rows = resultRows<{ n: number }>(await db.execute(sql`select count(*)::int as n from demo.things`));
  t.is(rows[0]!.n, 2);
});

test('DB_PREPARE=false (prepare: false) sends every statement unnamed, the fixed-SQL path included: nothing a transaction-mode pooler would lose', async (t) => {
  const db = await openOneConnection(t, { prepare: false });
  for (let i = 0; i < 3; i++) await db.execute(sql`select ${i}::int as unprepared_marker_a`);
  const client = (db as unknown as { $client: { unsafe(text: string, params: unknown[], o: { prepare: boolean }): Promise<unknown[]> } }).$client;
  await client.unsafe('select $1::int as unprepared_marker_b', [1], { prepare: true }); // as order/statements.ts asks
  const n = resultRows<{ n: number }>(await db.execute(sql.raw(`select count(*)::int as n from pg_prepared_statements where statement like '%unprepared_marker%' and statement not like '%pg_prepared_statements%'`)))[0]!.n;
  t.is(n, 0);
});
