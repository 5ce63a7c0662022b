import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { openDatabase, resultRows } from './db.js';
import { postgresConnection } from './postgres-url.js';
import { createTestDatabase, testServerUrl, withAdmin } from './testing/index.js';
import { sql } from 'drizzle-orm';

test('a URL without host or port parameters is passed through as it is', (t) => {
  const url = 'postgres://root@127.0.0.1:5432/shop?sslmode=disable';
  t.deepEqual(postgresConnection(url), { url, options: {} });
});

test("libpq's host and port parameters become postgres.js options and leave the URL", (t) => {
  const c = postgresConnection('postgres://root@localhost/shop?host=/var/run/postgresql&port=5433&application_name=x');
  t.deepEqual(c.options, { host: '/var/run/postgresql', port: 5433 });
  t.is(c.url, 'postgres://root@localhost/shop?application_name=x');
  t.deepEqual(postgresConnection('postgres://root@localhost/shop?host=db.internal').options, { host: 'db.internal' });
});

test('a bad port or an empty host is refused, naming the parameter', (t) => {
  t.throws(() => postgresConnection('postgres://root@localhost/shop?port=abc'), { message: /DATABASE_URL: port="abc" is not a port number/ });
  t.throws(() => postgresConnection('postgres://root@localhost/shop?port=70000'), { message: /port="70000"/ });
  t.throws(() => postgresConnection('postgres://root@localhost/shop?host='), { message: /DATABASE_URL: host= is empty/ });
});

// Over a socket means on this machine: a test server elsewhere (DATABASE_URL naming another
// host) has no socket here to reach, and the test is skipped, saying so.
const serverIsLocal = ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(testServerUrl()).hostname);

(serverIsLocal ? test : test.skip)('openDatabase reaches the server over its Unix socket from a libpq-style DATABASE_URL', async (t) => {
  const socket = await withAdmin(async (admin) => {
    const [row] = await admin.unsafe<{ setting: string; port: string }[]>(
      `select current_setting('unix_socket_directories') as setting, current_setting('port') as port`,
    );
    const dir = row.setting.split(',').map((d) => d.trim()).find((d) => d.startsWith('/') && existsSync(join(d, `.s.PGSQL.${row.port}`)));
    return { dir, port: row.port, setting: row.setting };
  });
  if (!socket.dir) return t.fail(`the local test server has no socket to reach (unix_socket_directories = '${socket.setting}')`);
  const testDb = await createTestDatabase(t);
  const u = new URL(testDb.url);
  u.hostname = 'localhost';
  u.port = '';
  u.searchParams.set('host', socket.dir);
  u.searchParams.set('port', socket.port);
  const db = await openDatabase({ context: 'socketcheck', url: u.toString(), migrationsFolder: '', migrate: false });
  try {
    // Over a socket, Postgres reports no client address.
    const [row] = resultRows<{ addr: string | null; db: string }>(
      await db.db.execute(sql`select inet_client_addr()::text as addr, current_database() as db`),
    );
    t.is(row.addr, null);
    t.is(row.db, testDb.name);
  } finally {
    await db.close();
  }
});
