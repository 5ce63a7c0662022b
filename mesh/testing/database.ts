/**
 * A fresh Postgres database per test file (or per test), dropped afterwards.
 *
 *   import { createTestDatabase, type TestDatabase } from '../../mesh/testing/index.js';
 *
 *   // one per file: create in before, drop in after.always (ava forbids t.teardown in hooks)
 *   let testDb: TestDatabase;
 *   test.before(async () => { testDb = await createTestDatabase(); });
 *   test.after.always(() => testDb?.drop());
 *
 *   // or one per test: pass `t` and it is dropped when the test ends
 *   test('x', async (t) => { const { url } = await createTestDatabase(t); ... });
 *
 * The server is DATABASE_URL (any database on it; only its host/credentials
 * are used) or postgres://root@127.0.0.1:5432/postgres. The new database is
 * named `pm_t_<creation time base36>_<random>` so leftovers from a killed run are easy to spot
 * (`dropLeftoverTestDatabases()` removes them).
 */
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { openPostgres } from '../postgres-url.js';

export const DEFAULT_TEST_SERVER = 'postgres://root@127.0.0.1:5432/postgres';
const PREFIX = 'pm_t_';

export interface TestDatabase {
  /** Database name, `pm_t_<time>_<random>`. */
  readonly name: string;
  /** URL of the new database: pass it as DATABASE_URL / openDatabase({ url }). */
  readonly url: string;
  /** URL of the server's maintenance database (for admin tricks like pg_terminate_backend). */
  readonly adminUrl: string;
  /** Terminates its connections and drops it; safe to call twice. */
  drop(): Promise<void>;
}

/** The minimal part of ava's ExecutionContext we use. */
export interface Teardownable {
  teardown(fn: () => unknown): void;
}

/** The server tests use: DATABASE_URL or the local default, pointed at its `postgres` database. */
export function testServerUrl(): string {
  const u = new URL(process.env.DATABASE_URL || DEFAULT_TEST_SERVER);
  u.pathname = '/postgres';
  return u.toString();
}

/** Runs `fn` with a one-connection admin client on the maintenance database. */
export async function withAdmin<T>(fn: (sql: postgres.Sql) => Promise<T>, adminUrl = testServerUrl()): Promise<T> {
  const sql = openPostgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

export async function createTestDatabase(t?: Teardownable): Promise<TestDatabase> {
  const adminUrl = testServerUrl();
  // The creation time is in the name so a sweep can tell a leftover from a running test's database.
  const name = `${PREFIX}${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await withAdmin((sql) => sql.unsafe(`create database "${name}"`), adminUrl);
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  let dropped = false;
  const db: TestDatabase = {
    name,
    url: u.toString(),
    adminUrl,
    async drop() {
      if (dropped) return;
      dropped = true;
      // WITH (FORCE) (Postgres 13+) terminates connections a test forgot to close.
      await withAdmin((sql) => sql.unsafe(`drop database if exists "${name}" with (force)`), adminUrl);
    },
  };
  t?.teardown(() => db.drop());
  return db;
}

/** Drops every `pm_t_*` database created more than `olderThanMinutes` ago (default 60): leftovers of killed runs. */
export async function dropLeftoverTestDatabases(olderThanMinutes = 60): Promise<string[]> {
  return withAdmin(async (sql) => {
    const rows = await sql<{ datname: string }[]>`select datname from pg_database where datname like ${PREFIX + '%'}`;
    const cutoff = Date.now() - olderThanMinutes * 60_000;
    const old = rows
      .map((r) => r.datname)
      .filter((name) => {
        const created = parseInt(name.slice(PREFIX.length).split('_')[0] ?? '', 36);
        return Number.isFinite(created) && created < cutoff;
      });
    for (const name of old) await sql.unsafe(`drop database if exists "${name}" with (force)`);
    return old;
  });
}
