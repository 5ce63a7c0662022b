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
import { dbQuerySeries, registerDbPool, type DbQuerySeries } from "./metrics.js";
import { spansRecorded } from "./recording.js";

export interface DbTraceOptions {
  /** Bounded context that owns the database ("order"): the db.namespace and the metric label. */
  context: string;
  /** Pool size (postgres.js `max`); PGlite has one connection. */
  maxConnections?: number;
}

const MAX_QUERY_TEXT = 2_000;

/** What a statement text needs on every run, worked out once per text per wrapped client. */
interface StatementInfo {
  operation: string;
  spanName: string;
  attributes: Record<string, string>;
  ok: DbQuerySeries;
  error: DbQuerySeries;
}

function operationOf(query: string): string {
  const m = /^\s*([A-Za-z]+)/.exec(query);
  return m ? m[1]!.toLowerCase() : "query";
}

/**
 * Statement texts are few and fixed (drizzle's builders and mesh/db-prepared's texts repeat),
 * so their operation, span name, attributes and metric series are kept per text. Bounded, in
 * case a caller builds texts with values inlined.
 */
const MAX_CACHED_TEXTS = 2_000;
function statementInfo(cache: Map<string, StatementInfo>, opts: DbTraceOptions, query: string): StatementInfo {
  let info = cache.get(query);
  if (info) return info;
  const operation = operationOf(query);
  info = {
    operation,
    spanName: `${operation} ${opts.context}`,
    attributes: {
      "db.system.name": "postgresql",
      "db.namespace": opts.context,
      "db.operation.name": operation.toUpperCase(),
      "db.query.text": query.length > MAX_QUERY_TEXT ? `${query.slice(0, MAX_QUERY_TEXT)}…` : query,
    },
    ok: dbQuerySeries(opts.context, operation, true),
    error: dbQuerySeries(opts.context, operation, false),
  };
  if (cache.size >= MAX_CACHED_TEXTS) cache.clear();
  cache.set(query, info);
  return info;
}

interface Counter {
  inUse: number;
}

/** Per wrapped client: the pool estimate and the per-text cache. */
interface Tracked {
  opts: DbTraceOptions;
  pool: Counter;
  texts: Map<string, StatementInfo>;
}

/**
 * Starts timing one statement; the returned function ends it (with the error, if any). A
 * span is made only while spans are recorded: a statement's span has no children and
 * propagates nowhere, so an unrecorded one would be ids and garbage for nothing.
 */
function startStatement(tracked: Tracked, query: string, parent: Context, inTransaction: boolean): (err?: unknown) => void {
  const info = statementInfo(tracked.texts, tracked.opts, query);
  const span = spansRecorded()
    ? trace.getTracer("protomesh-db").startSpan(info.spanName, { kind: SpanKind.CLIENT, attributes: info.attributes }, parent)
    : undefined;
  const pool = inTransaction ? undefined : tracked.pool;
  const started = performance.now();
  if (pool) pool.inUse++;
  return (err?: unknown) => {
    if (pool) pool.inUse--;
    (err === undefined ? info.ok : info.error).record((performance.now() - started) / 1000);
    if (!span) return;
    if (err !== undefined) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message });
    }
    span.end();
  };
}

/** Times `run` as one statement; returns what it returns. */
function observeStatement<T>(tracked: Tracked, query: string, parent: Context, inTransaction: boolean, run: () => Promise<T>): Promise<T> {
  const finish = startStatement(tracked, query, parent, inTransaction);
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
 * A postgres.js query is lazy: it runs when first awaited. Keep it that way, and start
 * timing at that moment, by taking over `then` on this one query object (`.values()` and
 * friends return the same object, so they stay traced).
 */
function traceLazyQuery(pending: any, tracked: Tracked, query: string, parent: Context, inTransaction: boolean): any {
  if (!pending || typeof pending.then !== "function") return pending;
  const originalThen: AnyFn = pending.then;
  let observed = false;
  pending.then = function (onFulfilled?: AnyFn, onRejected?: AnyFn) {
    if (!observed) {
      observed = true; // before running: postgres.js calls then() again from inside
      const finish = startStatement(tracked, query, parent, inTransaction);
      originalThen.call(
        pending,
        () => finish(),
        (err: unknown) => finish(err),
      );
    }
    return originalThen.call(pending, onFulfilled, onRejected);
  };
  return pending;
}

/** Wrap a postgres.js `Sql` (or a transaction's) so drizzle's statements are traced. */
export function tracePostgres<T extends object>(sql: T, opts: DbTraceOptions): T {
  const tracked: Tracked = { opts, pool: { inUse: 0 }, texts: new Map() };
  const { pool } = tracked;
  if (opts.maxConnections !== undefined) {
    const max = opts.maxConnections;
    registerDbPool(opts.context, () => ({ inUse: Math.min(pool.inUse, max), idle: Math.max(0, max - pool.inUse), max }));
  }
  return wrapPostgres(sql, tracked, false);
}

function wrapPostgres<T extends object>(sql: T, tracked: Tracked, inTransaction: boolean): T {
  const { pool } = tracked;
  return new Proxy(sql, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      if (prop === "unsafe") {
        return (query: string, ...rest: unknown[]) =>
          traceLazyQuery(value.call(target, query, ...rest), tracked, query, otelContext.active(), inTransaction);
      }
      if (prop === "begin" || prop === "savepoint") {
        return (...args: unknown[]) => {
          const fnIndex = args.findIndex((a) => typeof a === "function");
          if (fnIndex < 0) return value.apply(target, args);
          const fn = args[fnIndex] as AnyFn;
          const parent = otelContext.active();
          args[fnIndex] = (tx: object) => otelContext.with(parent, () => fn(wrapPostgres(tx, tracked, true)));
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
  const tracked: Tracked = { opts, pool: { inUse: 0 }, texts: new Map() };
  const { pool } = tracked;
  registerDbPool(opts.context, () => ({ inUse: Math.min(pool.inUse, 1), idle: pool.inUse > 0 ? 0 : 1, max: 1 }));
  return wrapPglite(client, tracked, false);
}

function wrapPglite<T extends object>(client: T, tracked: Tracked, inTransaction: boolean): T {
  const { pool } = tracked;
  return new Proxy(client, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      if (prop === "query" || prop === "exec") {
        return (query: string, ...rest: unknown[]) =>
          observeStatement(tracked, query, otelContext.active(), inTransaction, () => value.call(target, query, ...rest));
      }
      if (prop === "transaction") {
        return (fn: AnyFn) => {
          const parent = otelContext.active();
          pool.inUse++;
          const done = () => void pool.inUse--;
          const result = value.call(target, (tx: object) => otelContext.with(parent, () => fn(wrapPglite(tx, tracked, true))));
          Promise.resolve(result).then(done, done);
          return result;
        };
      }
      return value.bind(target);
    },
  });
}
