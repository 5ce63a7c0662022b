/**
 * Applies a service's drizzle-kit migrations at start, safely with N replicas.
 *
 * Why not drizzle's own `migrate()`: it creates its bookkeeping schema and
 * reads the last applied migration outside any lock, so two replicas starting
 * together can both try to create the schema or apply the same migration.
 * Here everything happens in one transaction that first takes a Postgres
 * advisory transaction lock: the second replica waits, then sees the first
 * one's bookkeeping rows and applies nothing. A failing migration rolls back
 * with the rest, so a half-migrated schema is never left behind.
 *
 * Bookkeeping lives outside the service schema, in
 * `protomesh_migrations."<context>"`, with drizzle's column layout
 * (id, hash, created_at = the journal's `when`) plus `applied_at`.
 */
import { sql } from 'drizzle-orm';
import { readMigrationFiles, type MigrationMeta } from 'drizzle-orm/migrator';
import type { Database } from './db.js';

export const MIGRATIONS_SCHEMA = 'protomesh_migrations';

/**
 * One lock for all contexts, not one per context: different services may share a
 * Postgres database, and `CREATE SCHEMA IF NOT EXISTS protomesh_migrations` itself
 * races when two of them run it at once. Migrations are short, so serialising them
 * costs nothing worth having.
 */
const LOCK_KEY = sql`hashtext('protomesh_migrations')`;

export interface MigrateOptions {
  /** The bounded context; names the bookkeeping table. */
  context: string;
  /** Folder written by `drizzle-kit generate` (holds meta/_journal.json). */
  migrationsFolder: string;
}

export interface MigrateResult {
  /** `created_at` (journal millis) of the migrations applied by this call. */
  applied: number[];
  /** How many migrations the folder holds. */
  total: number;
}

export class MigrationError extends Error {
  override name = 'MigrationError';
}

/** Normalises `db.execute()` results: postgres.js returns an array, PGlite `{ rows }`. */
export function resultRows<T = Record<string, unknown>>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  const rows = (result as { rows?: unknown[] } | undefined)?.rows;
  return (rows ?? []) as T[];
}

export async function migrate(db: Database, options: MigrateOptions): Promise<MigrateResult> {
  if (!/^[a-z][a-z0-9_]*$/.test(options.context)) {
    throw new MigrationError(`context must be a lower-case identifier, got ${JSON.stringify(options.context)}`);
  }
  const migrations: MigrationMeta[] = readMigrationFiles({ migrationsFolder: options.migrationsFolder });
  const table = sql`${sql.identifier(MIGRATIONS_SCHEMA)}.${sql.identifier(options.context)}`;

  return db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${LOCK_KEY})`);
    await tx.execute(sql`create schema if not exists ${sql.identifier(MIGRATIONS_SCHEMA)}`);
    await tx.execute(sql`
      create table if not exists ${table} (
        id serial primary key,
        hash text not null,
        created_at bigint not null,
        applied_at timestamptz not null default now()
      )`);
    const done = new Map<number, string>();
    for (const row of resultRows<{ hash: string; created_at: string | number }>(
      await tx.execute(sql`select hash, created_at from ${table}`),
    )) {
      done.set(Number(row.created_at), row.hash);
    }

    const applied: number[] = [];
    for (const m of migrations) {
      const hash = done.get(m.folderMillis);
      if (hash !== undefined) {
        if (hash !== m.hash) {
          throw new MigrationError(
            `${options.context}: the migration created at ${m.folderMillis} changed after it was applied; ` +
              'add a new migration instead (on a dev PGlite directory: delete it and start again)',
          );
        }
        continue;
      }
      for (const statement of m.sql) {
        if (statement.trim()) await tx.execute(sql.raw(statement));
      }
      await tx.execute(sql`insert into ${table} (hash, created_at) values (${m.hash}, ${m.folderMillis})`);
      applied.push(m.folderMillis);
    }
    return { applied, total: migrations.length };
  });
}
