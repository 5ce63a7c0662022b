/**
 * The order path's hottest statements as fixed SQL text, sent straight to
 * the driver behind drizzle (`db.$client`: postgres.js or PGlite).
 *
 * Why not drizzle's builder: it rebuilds the SQL of every call from its
 * template chunks, maps it through its query objects and opens three of its
 * own tracer spans per statement; in the order process, the ceiling of the
 * orders bench, that was ~7 % of its CPU for five statements an order. Here
 * the text is a constant (built once per shape), so Postgres still gets one
 * named prepared statement per text (postgres.js prepares by default) and the
 * per-call work is the parameter array. The client is the one drizzle was
 * given, so mesh/telemetry's statement spans and metrics still see these.
 *
 * Values go in as the driver takes them: strings, numbers, Buffers, null;
 * int8 as a string with an explicit cast. Rows come back as the driver
 * shapes them (int8 as string or bigint, timestamptz as Date): callers
 * convert, as they do for `db.execute` through resultRows.
 */
import type { Database } from '../../mesh/db.js';

type Param = string | number | boolean | Buffer | Date | null;

interface PostgresJsClient {
  unsafe(text: string, params: Param[], options?: { prepare?: boolean }): PromiseLike<unknown[]>;
}
interface PgliteClient {
  query(text: string, params: Param[]): Promise<{ rows: unknown[] }>;
}

/** Runs one statement with positional parameters ($1, $2, ...); answers its rows. */
export async function runStatement<T>(db: Database, text: string, params: Param[]): Promise<T[]> {
  const client = (db as unknown as { $client?: Partial<PostgresJsClient & PgliteClient> }).$client;
  if (client && typeof client.unsafe === 'function') return (await client.unsafe(text, params, { prepare: true })) as T[];
  if (client && typeof client.query === 'function') return (await client.query(text, params)).rows as T[];
  throw new Error('runStatement: the database has neither a postgres.js nor a PGlite client behind it');
}
