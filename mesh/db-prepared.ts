/**
 * Named prepared statements for drizzle on postgres.js.
 *
 * drizzle's postgres-js session sends every statement not built with `.prepare(name)` as
 * `unsafe(text, params, { prepare: false })`: an unnamed statement, so Postgres parses,
 * analyses and plans it again on every call. Under `bench/orders.ts` (32×4, a private
 * Postgres with pg_stat_statements and perf) that was a fifth of the backends' CPU:
 * parse + analyse ~10 %, planning ~10 %, for statements whose text never changes.
 * postgres.js prepares by default (one named statement per text and connection, parsed
 * once; Postgres then keeps a generic plan when it is no worse than the custom ones), so
 * this wrapper drops drizzle's `prepare: false`, inside transactions too.
 *
 * Statements without parameters stay on the simple protocol (postgres.js sends them as a
 * plain Query: migrations, DDL, several statements in one text), as before. Each distinct
 * text costs one prepared statement per connection for the connection's life: keep texts
 * few (`= any($1)` rather than `in ($1, $2, ...)` for lists of any length).
 *
 * Two things differ from unnamed statements. A generic plan cannot use a partial index whose
 * predicate the query states with a parameter (`status = $1` against `where status =
 * 'RESERVED'`): write such constants as literals. And when another replica's migration
 * changes the columns a prepared statement returns, Postgres refuses the old statement
 * ("cached plan must not change result type"); postgres.js prepares it again and retries
 * outside a transaction, but inside one the transaction fails once (the caller's retry of an
 * idempotent write covers it).
 *
 *   const client = preparedStatements(postgres(url));
 *   const db = drizzle({ client });
 */
type AnyFn = (...args: any[]) => any;

export function preparedStatements<T extends object>(sql: T): T {
  return new Proxy(sql, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      if (prop === 'unsafe') {
        return (...args: unknown[]) => {
          const [, params, options] = args as [string, unknown, { prepare?: boolean } | undefined];
          if (Array.isArray(params) && params.length > 0 && options?.prepare === false) args[2] = { ...options, prepare: true };
          return value.apply(target, args);
        };
      }
      if (prop === 'begin' || prop === 'savepoint') {
        return (...args: unknown[]) => {
          const fnIndex = args.findIndex((a) => typeof a === 'function');
          if (fnIndex >= 0) {
            const fn = args[fnIndex] as AnyFn;
            args[fnIndex] = (tx: object) => fn(preparedStatements(tx));
          }
          return value.apply(target, args);
        };
      }
      return value;
    },
  });
}
