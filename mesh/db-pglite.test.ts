// The embedded path of mesh/db, in its own file (its own process): PGlite's
// start-up is CPU-heavy and would stall the Postgres tests beside it.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from './db.js';
import { first, migrationsFolder, second } from './testing/migrations-fixture.js';

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
