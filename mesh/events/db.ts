// The slice of drizzle the event backbone needs, loose enough to accept a database or
// transaction from any Postgres driver drizzle supports (postgres.js, PGlite).
import type { PgDatabase, PgTransaction } from "drizzle-orm/pg-core";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type EventsDb = PgDatabase<any, any, any>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type EventsTx = PgTransaction<any, any, any>;

/** `tx.execute()` answers an array (postgres.js) or `{ rows }` (PGlite, node-postgres). */
export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  const rows = (result as { rows?: unknown } | null)?.rows;
  if (Array.isArray(rows)) return rows as T[];
  throw new Error("unrecognised result shape from tx.execute()");
}
