// Spans and metrics for database queries. There is no OpenTelemetry instrumentation for
// postgres.js or PGlite, and drizzle's own tracing hook is not wired to a tracer, so this
// wraps the driver client that drizzle is given: every statement drizzle sends goes through
// `unsafe()` (postgres.js) or `query()` (PGlite), inside transactions too.
//
//   const client = tracePostgres(postgres(url, { max }), { context: "order", maxConnections: max });
//   const db = drizzle({ client });
//
// Each statement becomes a CLIENT span `<operation> <context>` (db.system.name=postgresql,
// db.namespace, db.operation.name, db.query.text: drizzle's parameterised text, never the
// parameter values) and a sample of mesh_db_query_duration_seconds. The pool gauge
// (mesh_db_pool_connections) is estimated from what passes through the wrapper: statements
// in flight outside transactions plus open transactions, against the configured maximum.
import { context as otelContext, trace, SpanKind, SpanStatusCode, type Context } from "@opentelemetry/api";
import { observeDbQuery, registerDbPool } from "./metrics.js";

export interface DbTraceOptions {
  /** Bounded context that owns the database ("order"): the db.namespace and the metric label. */
  context: string;
  /** Pool size (postgres.js `max`); PGlite has one connection. */
  maxConnections?: number;
}

const MAX_QUERY_TEXT = 2_000;

function operationOf(query: string): string {
  const m = /^\s*([A-Za-z]+)/.exec(query);
  return m ? m[1]!.toLowerCase() : "query";
}

interface Counter {
  inUse: number;
}

/** Times `run` (called lazily, once) as one statement; returns what it returns. */
function observeStatement<T>(
  opts: DbTraceOptions,
  query: string,
  parent: Context,
  pool: Counter | undefined,
  run: () => Promise<T>,
): Promise<T> {
  const operation = operationOf(query);
  const span = trace.getTracer("protomesh-db").startSpan(
    `${operation} ${opts.context}`,
    {
      kind: SpanKind.CLIENT,
      attributes: {
        "db.system.name": "postgresql",
        "db.namespace": opts.context,
        "db.operation.name": operation.toUpperCase(),
        "db.query.text": query.length > MAX_QUERY_TEXT ? `${query.slice(0, MAX_QUERY_TEXT)}…` : query,
      },
    },
    parent,
  );
  const started = performance.now();
  if (pool) pool.inUse++;
  const finish = (err?: unknown) => {
    if (pool) pool.inUse--;
    observeDbQuery(opts.context, operation, (performance.now() - started) / 1000, err === undefined);
    if (err !== undefined) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message });
    }
    span.end();
  };
  let result: Promise<T>;
  try {
    result = run();
  } catch (err) {
    finish(err);
    throw err;
  }
  result.then(
    () => finish(),
    (err) => finish(err),
  );
  return result;
}

type AnyFn = (...args: any[]) => any;

/**
 * A postgres.js query is lazy: it runs when first awaited. Keep it that way, and start the
 * span at that moment, by taking over `then` on this one query object (`.values()` and
 * friends return the same object, so they stay traced).
 */
function traceLazyQuery(pending: any, opts: DbTraceOptions, query: string, parent: Context, pool: Counter | undefined): any {
  if (!pending || typeof pending.then !== "function") return pending;
  const originalThen: AnyFn = pending.then;
  let observed = false;
  pending.then = function (onFulfilled?: AnyFn, onRejected?: AnyFn) {
    if (!observed) {
      observed = true; // before running: postgres.js calls then() again from inside
      void observeStatement(opts, query, parent, pool, () => new Promise((resolve, reject) => originalThen.call(pending, resolve, reject))).catch(
        () => undefined,
      );
    }
    return originalThen.call(pending, onFulfilled, onRejected);
  };
  return pending;
}

/** Wrap a postgres.js `Sql` (or a transaction's) so drizzle's statements are traced. */
export function tracePostgres<T extends object>(sql: T, opts: DbTraceOptions): T {
  const pool: Counter = { inUse: 0 };
  if (opts.maxConnections !== undefined) {
    const max = opts.maxConnections;
    registerDbPool(opts.context, () => ({ inUse: Math.min(pool.inUse, max), idle: Math.max(0, max - pool.inUse), max }));
  }
  return wrapPostgres(sql, opts, pool, false);
}

function wrapPostgres<T extends object>(sql: T, opts: DbTraceOptions, pool: Counter, inTransaction: boolean): T {
  return new Proxy(sql, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      if (prop === "unsafe") {
        return (query: string, ...rest: unknown[]) =>
          traceLazyQuery(value.call(target, query, ...rest), opts, query, otelContext.active(), inTransaction ? undefined : pool);
      }
      if (prop === "begin" || prop === "savepoint") {
        return (...args: unknown[]) => {
          const fnIndex = args.findIndex((a) => typeof a === "function");
          if (fnIndex < 0) return value.apply(target, args);
          const fn = args[fnIndex] as AnyFn;
          const parent = otelContext.active();
          args[fnIndex] = (tx: object) => otelContext.with(parent, () => fn(wrapPostgres(tx, opts, pool, true)));
          if (inTransaction) return value.apply(target, args);
          pool.inUse++; // a transaction holds one connection for its whole life
          const done = () => void pool.inUse--;
          const result = value.apply(target, args);
          Promise.resolve(result).then(done, done);
          return result;
        };
      }
      return value;
    },
  });
}

/** Wrap a PGlite instance (`query`, `exec`, `transaction`) the same way. */
export function tracePglite<T extends object>(client: T, opts: DbTraceOptions): T {
  const pool: Counter = { inUse: 0 };
  registerDbPool(opts.context, () => ({ inUse: Math.min(pool.inUse, 1), idle: pool.inUse > 0 ? 0 : 1, max: 1 }));
  return wrapPglite(client, opts, pool, false);
}

function wrapPglite<T extends object>(client: T, opts: DbTraceOptions, pool: Counter, inTransaction: boolean): T {
  return new Proxy(client, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      if (prop === "query" || prop === "exec") {
        return (query: string, ...rest: unknown[]) =>
          observeStatement(opts, query, otelContext.active(), inTransaction ? undefined : pool, () => value.call(target, query, ...rest));
      }
      if (prop === "transaction") {
        return (fn: AnyFn) => {
          const parent = otelContext.active();
          pool.inUse++;
          const done = () => void pool.inUse--;
          const result = value.call(target, (tx: object) => otelContext.with(parent, () => fn(wrapPglite(tx, opts, pool, true))));
          Promise.resolve(result).then(done, done);
          return result;
        };
      }
      return value.bind(target);
    },
  });
}
