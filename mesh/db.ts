/**
 * A service's database: drizzle on postgres.js when DATABASE_URL is set,
 * embedded PGlite otherwise, migrated at open.
 *
 *   const database = await openDatabase({
 *     context: 'catalog',
 *     url: config.DATABASE_URL,                    // unset -> PGlite in .data/catalog
 *     dataDir: config.DATA_DIR,
 *     migrationsFolder: new URL('./migrations', import.meta.url).pathname,
 *   });
 *   await database.db.select().from(products);   // drizzle, tables in pgSchema('catalog')
 *   await database.db.transaction(async (tx) => { ... });
 *   await database.ping();                       // readiness: throws when unreachable
 *   await database.close();
 *
 * PGlite is Postgres compiled to WebAssembly running inside this process, with
 * ONE connection: every query and transaction of the process is serialised
 * through it (a long transaction makes every other request wait), and only one
 * process may open a given data directory at a time (run one replica per
 * context; two processes on one directory corrupt it). It is meant for a
 * newcomer's laptop and demos; anything with replicas sets DATABASE_URL.
 */
import { mkdirSync } from 'node:fs';
import type { DescMethod } from '@bufbuild/protobuf';
import { Code, ConnectError, type Interceptor } from '@connectrpc/connect';
import { join, resolve } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { sql } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import { invalidArgument } from './errors.js';
import { nulFieldPath } from './nul-field.js';
import { openPostgres } from './postgres-url.js';
import { preparedStatements } from './db-prepared.js';
import { migrate, type MigrateResult } from './migrate.js';
import { tracePglite, tracePostgres } from './telemetry/db-spans.js';

export { resultRows } from './migrate.js';

/**
 * The drizzle database type both drivers satisfy. Use the query builder
 * (`select/insert/update/delete`, `transaction`); for raw `db.execute()`
 * read rows through `resultRows()` because the two drivers shape results differently.
 */
export type Database = PgDatabase<PgQueryResultHKT>;
/** What `db.transaction(fn)` hands to `fn`. */
export type Transaction = Parameters<Parameters<Database['transaction']>[0]>[0];

export interface OpenDatabaseOptions {
  /** Bounded context, e.g. 'catalog': names the PGlite directory and the migration bookkeeping table. */
  context: string;
  /** postgres:// URL (DATABASE_URL). Unset = embedded PGlite. */
  url?: string;
  /** Folder written by drizzle-kit generate. */
  migrationsFolder: string;
  /** PGlite only: root of the data directories (DATA_DIR, default `.data`); the context's is `<dataDir>/<context>`. `memory://` keeps it in memory. */
  dataDir?: string;
  /** postgres.js only: pool size (default 10). */
  maxConnections?: number;
  /**
   * postgres.js only: named prepared statements (default true; see db-prepared.ts). false sends
   * every statement unnamed (parsed and planned per call), for a pooler that cannot keep them.
   */
  prepare?: boolean;
  /** Apply migrations at open (default true). */
  migrate?: boolean;
}

export interface MeshDatabase {
  readonly db: Database;
  readonly driver: 'postgres' | 'pglite';
  readonly context: string;
  /** What the migrations at open did (undefined when `migrate: false`). */
  readonly migrations: MigrateResult | undefined;
  /** Resolves when the database answers `select 1` within `timeoutMs` (default 2000); throws otherwise. */
  ping(timeoutMs?: number): Promise<void>;
  /** Closes the pool / the PGlite instance; waits up to `timeoutSeconds` (postgres.js) for running queries. */
  close(timeoutSeconds?: number): Promise<void>;
}

export async function openDatabase(options: OpenDatabaseOptions): Promise<MeshDatabase> {
  const { context } = options;
  let db: Database;
  let closeDriver: (timeoutSeconds: number) => Promise<void>;
  let driver: MeshDatabase['driver'];

  if (options.url) {
    const client = openPostgres(options.url, {
      max: options.maxConnections ?? 10,
      // false wins over every per-statement prepare: true (postgres.js), runStatement's included.
      prepare: options.prepare ?? true,
      connect_timeout: 5,
      idle_timeout: 60,
      onnotice: () => {}, // "schema already exists, skipping" and friends
      connection: { application_name: `protomesh-${context}` },
    });
    // Spans and mesh_db_* metrics per statement (a pass-through when telemetry is off), over
    // named prepared statements (drizzle would send each one unnamed: parsed and planned per call).
    const statements = options.prepare === false ? client : preparedStatements(client);
    db = drizzlePostgres({ client: tracePostgres(statements, { context, maxConnections: options.maxConnections ?? 10 }) });
    closeDriver = (timeout) => client.end({ timeout });
    driver = 'postgres';
  } else {
    const root = options.dataDir ?? '.data';
    let dataDir: string | undefined;
    if (!root.startsWith('memory://')) {
      dataDir = resolve(join(root, context));
      mkdirSync(dataDir, { recursive: true });
    }
    const client = await PGlite.create(dataDir ? { dataDir } : {});
    db = drizzlePglite({ client: tracePglite(client, { context }) });
    closeDriver = async () => {
      if (!client.closed) await client.close();
    };
    driver = 'pglite';
  }

  let migrations: MigrateResult | undefined;
  if (options.migrate ?? true) {
    try {
      migrations = await migrate(db, { context, migrationsFolder: options.migrationsFolder });
    } catch (err) {
      await closeDriver(0).catch(() => {});
      throw err;
    }
  }

  let closed = false;
  return {
    db,
    driver,
    context,
    migrations,
    async ping(timeoutMs = 2000) {
      if (closed) throw new Error(`${context} database is closed`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${context} database did not answer within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        await Promise.race([db.execute(sql`select 1`), timeout]);
      } catch (err) {
        // drizzle wraps driver errors as "Failed query: select 1"; the cause says why.
        throw new Error(`${context} database unreachable: ${rootCause(err)}`, { cause: err });
      } finally {
        clearTimeout(timer);
      }
    },
    async close(timeoutSeconds = 5) {
      if (closed) return;
      closed = true;
      await closeDriver(timeoutSeconds);
    },
  };
}

/** The innermost message of an error chain (drizzle wraps the driver's error in `cause`). */
function rootCause(err: unknown): string {
  let e: unknown = err;
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return e instanceof Error ? e.message : String(e);
}

/**
 * Postgres SQLSTATEs and client error codes that mean "the database is not
 * reachable right now" rather than "this query is wrong": connection
 * exceptions (class 08), shutdowns and restarts (57P01-57P03), too many
 * connections (53300), the database gone (3D000), connections refused
 * (55000 "not currently accepting connections"), and postgres.js / socket
 * failures.
 */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300', '3D000', '55000']);
const UNAVAILABLE_CLIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'CONNECT_TIMEOUT',
]);

/** The string `code`s of an error and its causes (drizzle wraps the driver's error), outermost first. */
function* errorCodes(err: unknown): Generator<string> {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') yield code;
  }
}

/** True when an error (or one of its causes) says the database is unreachable. */
export function isDatabaseUnavailable(err: unknown): boolean {
  for (const code of errorCodes(err)) {
    if (code.startsWith('08') || UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_CLIENT_CODES.has(code)) return true;
  }
  return false;
}

/**
 * What a handler's error is answered as: UNAVAILABLE (retryable, "try another
 * replica or later") instead of INTERNAL when it failed because the database
 * is unreachable; any other error as it is. Pass it to
 * startMeshServer({ mapError }), which mesh/app does.
 */
export function databaseUnavailableError(err: unknown): unknown {
  if (!(err instanceof ConnectError) && isDatabaseUnavailable(err)) {
    return new ConnectError('database unavailable, try again later', Code.Unavailable, undefined, undefined, err);
  }
  return err;
}

/** SQLSTATEs of a string value Postgres cannot store: NUL in text (22021), in jsonb (22P05). */
const REFUSED_STRING_SQLSTATES = new Set(['22021', '22P05']);

/**
 * What a handler's database error is answered as, for startMeshServer({ mapError }), which
 * mesh/app passes it to:
 * - the database unreachable: UNAVAILABLE (databaseUnavailableError);
 * - a string Postgres cannot store (U+0000) that came in the request: INVALID_ARGUMENT naming
 *   the field (mesh/nul-field.ts), rather than INTERNAL. The statement failed, so its
 *   transaction wrote nothing. A NUL from anywhere else stays INTERNAL: that is a bug here.
 * Anything else as it is.
 */
export function answerDatabaseError(err: unknown, method?: DescMethod, request?: unknown): unknown {
  if (err instanceof ConnectError) return err;
  const unavailable = databaseUnavailableError(err);
  if (unavailable !== err) return unavailable;
  if (method && request !== undefined && [...errorCodes(err)].some((code) => REFUSED_STRING_SQLSTATES.has(code))) {
    const field = nulFieldPath(method.input, request);
    if (field) return invalidArgument(field, 'must not contain the NUL character (U+0000)', 'NUL_CHARACTER');
  }
  return err;
}

/**
 * databaseUnavailableError as a server interceptor, for servers that already
 * run interceptors (startMeshServer's mapError costs less: see there).
 */
export function databaseUnavailableInterceptor(): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      throw databaseUnavailableError(err);
    }
  };
}
