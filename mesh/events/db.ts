// The slice of drizzle the event backbone needs, loose enough to accept a database or
// transaction from any Postgres driver drizzle supports (postgres.js, PGlite).
import { getTableColumns, type Table } from "drizzle-orm";
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

/**
 * A row read by raw SQL (`tx.execute`: column names, driver values) shaped as drizzle's
 * select would answer it (field names, mapped values), for statements drizzle's builder
 * cannot write (a function call, a CTE that locks and reads in one round trip).
 */
export function rowFromDriver<T extends Table>(table: T, raw: Record<string, unknown>): T["$inferSelect"] {
  const row: Record<string, unknown> = {};
  for (const [key, column] of Object.entries(getTableColumns(table))) {
    const value = raw[column.name];
    row[key] = value === null || value === undefined ? value : column.mapFromDriverValue(value);
  }
  return row as T["$inferSelect"];
}
