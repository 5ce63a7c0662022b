import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import postgres from 'postgres';
import { createTestDatabase, freePort, testNatsPrefix, withAdmin } from './index.js';

test('createTestDatabase makes a usable fresh database and drop removes it', async (t) => {
  const db = await createTestDatabase();
  t.regex(db.name, /^pm_t_[0-9a-z]+_[0-9a-f]{8}$/);
  const sql = postgres(db.url, { max: 1 });
  const [row] = await sql<{ current_database: string }[]>`select current_database()`;
  t.is(row!.current_database, db.name);
  // drop succeeds even with a connection still open (WITH (FORCE)).
  await db.drop();
  await sql.end({ timeout: 1 }).catch(() => {});
  const left = await withAdmin((q) => q`select 1 from pg_database where datname = ${db.name}`);
  t.is(left.length, 0);
  await t.notThrowsAsync(db.drop());
});

test('testNatsPrefix is unique per call and valid for subjects and stream names', (t) => {
  const a = testNatsPrefix();
  const b = testNatsPrefix();
  t.not(a.subjectPrefix, b.subjectPrefix);
  t.regex(a.subjectPrefix, /^[a-z0-9_]+\.$/);
  t.regex(a.streamPrefix, /^[A-Z0-9_]+_$/);
});

test('freePort returns a port a service can then listen on, below the ephemeral range where there is one', async (t) => {
  const port = await freePort();
  t.true(port > 0 && port < 65536);
  // Bound where the services bind (every interface).
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer().once('error', reject);
    server.listen(port, () => server.close(() => resolve()));
  });
  // Outgoing connections take their local port from the ephemeral range: below it, none can
  // take this port between freePort() and the listen.
  const range = '/proc/sys/net/ipv4/ip_local_port_range';
  if (existsSync(range)) t.true(port < Number(readFileSync(range, 'utf8').trim().split(/\s+/)[0]), `port ${port}`);
});
