import test from 'ava';
import { rmSync } from 'node:fs';
import { sql } from 'drizzle-orm';
import { Code, ConnectError } from '@connectrpc/connect';
import { EchoService } from '../gen/protomesh/testing/v1/echo_pb.js';
import { createMeshClient } from './client.js';
import { answerDatabaseError, isDatabaseUnavailable, openDatabase, resultRows, type MeshDatabase } from './db.js';
import { fieldViolations } from './errors.js';
import { serve, startMeshServer } from './server.js';
import { MigrationError } from './migrate.js';
import { createTestDatabase, withAdmin } from './testing/index.js';
import { first, migrationsFolder, second } from './testing/migrations-fixture.js';

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

test('isDatabaseUnavailable tells an unreachable database from a bad query', (t) => {
  const wrapped = (code: string) => new Error('Failed query: select 1', { cause: Object.assign(new Error('x'), { code }) });
  t.true(isDatabaseUnavailable(wrapped('ECONNREFUSED')));
  t.true(isDatabaseUnavailable(wrapped('08006')));
  t.true(isDatabaseUnavailable(wrapped('57P01')));
  t.true(isDatabaseUnavailable(wrapped('CONNECTION_ENDED')));
  t.false(isDatabaseUnavailable(wrapped('23505'))); // unique_violation
  t.false(isDatabaseUnavailable(wrapped('42P01'))); // undefined_table
  t.false(isDatabaseUnavailable(new Error('plain')));
});

test('answerDatabaseError: a request string Postgres cannot store is INVALID_ARGUMENT naming the field, and nothing is written', async (t) => {
  const testDb = await createTestDatabase(t);
  const folder = migrationsFolder([first]);
  t.teardown(() => rmSync(folder, { recursive: true, force: true }));
  const database: MeshDatabase = await openDatabase({ context: 'demo', url: testDb.url, migrationsFolder: folder });
  t.teardown(() => database.close());
  await database.db.execute(sql`create table demo.notes (label text not null)`);
  const server = await startMeshServer({
    name: 'demo',
    host: '127.0.0.1',
    port: 0,
    services: [
      serve(EchoService, {
        // Two inserts in one transaction: the first lands before the second fails on the NUL.
        async echo(req) {
          await database.db.transaction(async (tx) => {
            await tx.execute(sql`insert into demo.notes (label) values (${'before'})`);
            await tx.execute(sql`insert into demo.notes (label) values (${req.id === 'ours' ? 'bad\u0000' : req.nested?.label ?? ''})`);
          });
          return { request: req };
        },
      }),
    ],
    mapError: answerDatabaseError,
    onInternalError: () => {},
  });
  t.teardown(() => server.close(100));
  const client = createMeshClient(EchoService, `127.0.0.1:${server.port}`, { retry: { maxAttempts: 1 } });

  const refused = ConnectError.from(await t.throwsAsync(client.echo({ id: 'x', nested: { label: 'a\u0000b' } })));
  t.is(refused.code, Code.InvalidArgument);
  t.deepEqual(
    fieldViolations(refused).map((v) => [v.field, v.reason]),
    [['nested.label', 'NUL_CHARACTER']],
  );
  // A NUL the handler made itself is a bug of the service: still INTERNAL.
  t.is(ConnectError.from(await t.throwsAsync(client.echo({ id: 'ours' }))).code, Code.Internal);
  t.is((await client.echo({ id: 'fine', nested: { label: 'ok' } })).request?.id, 'fine');
  const rows = resultRows<{ label: string }>(await database.db.execute(sql`select label from demo.notes order by label`));
  t.deepEqual(rows.map((r) => r.label), ['before', 'ok'], 'the refused calls wrote nothing');
});
