import test from 'ava';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows, type MeshDatabase } from './db.js';
import { MigrationError } from './migrate.js';
import { createTestDatabase, withAdmin } from './testing/index.js';

/** Writes a drizzle-kit shaped migrations folder (meta/_journal.json + <tag>.sql). */
function migrationsFolder(migrations: { tag: string; when: number; sql: string[] }[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'pm-migrations-'));
  mkdirSync(join(dir, 'meta'));
  writeFileSync(
    join(dir, 'meta', '_journal.json'),
    JSON.stringify({
      version: '7',
      dialect: 'postgresql',
      entries: migrations.map((m, idx) => ({ idx, version: '7', when: m.when, tag: m.tag, breakpoints: true })),
    }),
  );
  for (const m of migrations) writeFileSync(join(dir, `${m.tag}.sql`), m.sql.join('\n--> statement-breakpoint\n'));
  return dir;
}

const first = {
  tag: '0000_init',
  when: 1_700_000_000_000,
  sql: [
    'CREATE SCHEMA "demo";',
    // Slow on purpose, so two migrators starting together surely overlap.
    'SELECT pg_sleep(0.3);',
    'CREATE TABLE "demo"."things" ("id" serial PRIMARY KEY, "name" text NOT NULL);',
  ],
};
const second = {
  tag: '0001_more',
  when: 1_700_000_100_000,
  sql: ['ALTER TABLE "demo"."things" ADD COLUMN "size" integer;'],
};

test('two replicas migrating one fresh database together: one applies, the other waits and applies nothing', async (t) => {
  const testDb = await createTestDatabase(t);
  const folder = migrationsFolder([first, second]);
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));

  const open = () => openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: folder });
  const [a, b] = await Promise.all([open(), open()]);
  t.teardown(() => Promise.all([a.close(), b.close()]));

  t.deepEqual([a.migrations!.applied.length, b.migrations!.applied.length].sort(), [0, 2]);
  const rows = resultRows<{ n: number }>(
    await a.db.execute(sql`select count(*)::int as n from protomesh_migrations.demo`),
  );
  t.is(rows[0]!.n, 2);
  // The service schema holds only the service's tables: bookkeeping is elsewhere.
  const tables = resultRows<{ table_name: string }>(
    await a.db.execute(sql`select table_name from information_schema.tables where table_schema = 'demo'`),
  );
  t.deepEqual(tables.map((r) => r.table_name), ['things']);
  await a.db.execute(sql`insert into demo.things (name, size) values ('x', 1)`);

  // A restart applies nothing.
  const c = await open();
  t.deepEqual(c.migrations!.applied, []);
  await c.close();
});

test('a failing migration rolls back completely', async (t) => {
  const testDb = await createTestDatabase(t);
  const broken = { tag: '0001_broken', when: second.when, sql: ['ALTER TABLE "demo"."nope" ADD COLUMN "x" int;'] };
  const folder = migrationsFolder([first, broken]);
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));

  await t.throwsAsync(openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: folder }), {
    message: /nope/,
  });
  const schemas = await withAdmin(
    async (q) => q`select nspname from pg_namespace where nspname in ('demo', 'protomesh_migrations')`,
    testDb.url,
  );
  t.is(schemas.length, 0);
});

test('a migration edited after it was applied is refused', async (t) => {
  const testDb = await createTestDatabase(t);
  const folder = migrationsFolder([first]);
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));
  await (await openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: folder })).close();

  const edited = migrationsFolder([{ ...first, sql: [...first.sql, 'SELECT 1;'] }]);
  t.teardown(() => rmSync(edited, { recursive: true, force: true }));
  await t.throwsAsync(openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: edited }), {
    instanceOf: MigrationError,
    message: /changed after it was applied/,
  });
});

test('ping answers while the database is up and throws once it goes away', async (t) => {
  const testDb = await createTestDatabase(t);
  const folder = migrationsFolder([first]);
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));
  const database: MeshDatabase = await openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: folder });
  t.teardown(() => database.close());
  await t.notThrowsAsync(database.ping());

  await withAdmin(async (q) => {
    await q.unsafe(`alter database "${testDb.name}" allow_connections false`);
    await q`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${testDb.name}`;
  });
  await t.throwsAsync(database.ping());

  await withAdmin((q) => q.unsafe(`alter database "${testDb.name}" allow_connections true`));
  await t.notThrowsAsync(database.ping());
});

test('without a URL the same migrations run on embedded PGlite, one directory per context', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'pm-pglite-'));
  const folder = migrationsFolder([first, second]);
  t.teardown(() => {
    rmSync(root, { recursive: true, force: true });
    rmSync(folder, { recursive: true, force: true });
  });

  const database = await openDatabase({ context: 'demo', dataDir: root, migrationsFolder: folder });
  t.is(database.driver, 'pglite');
  t.deepEqual(database.migrations!.applied, [first.when, second.when]);
  await database.db.execute(sql`insert into demo.things (name, size) values ('kept', 2)`);
  await database.db.transaction(async (tx) => {
    await tx.execute(sql`insert into demo.things (name) values ('rolled back')`);
    tx.rollback();
  }).catch(() => {});
  await database.ping();
  await database.close();
  await t.throwsAsync(database.ping());

  // Reopening the directory keeps the data and applies nothing.
  const again = await openDatabase({ context: 'demo', dataDir: root, migrationsFolder: folder });
  t.deepEqual(again.migrations!.applied, []);
  const rows = resultRows<{ name: string }>(await again.db.execute(sql`select name from demo.things`));
  t.deepEqual(rows.map((r) => r.name), ['kept']);
  await again.close();
});
