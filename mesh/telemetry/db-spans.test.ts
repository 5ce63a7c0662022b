// Real Postgres (DATABASE_URL or root@127.0.0.1:5432, a fresh database per run) and PGlite.
import test from "ava";
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { PGlite } from "@electric-sql/pglite";
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { sql } from "drizzle-orm";
import { integer, pgTable, text } from "drizzle-orm/pg-core";
import { context as otelContext, INVALID_SPAN_CONTEXT, trace, SpanKind } from "@opentelemetry/api";
import { startTracing, type TracingHandle } from "./tracing.js";
import { tracePostgres, tracePglite } from "./db-spans.js";
import { metricsRegistry } from "./metrics.js";

const base = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/postgres";
const dbName = `telemetry_db_${randomBytes(4).toString("hex")}`;
let admin: postgres.Sql;
let tracing: TracingHandle;

const accounts = pgTable("accounts", { id: integer("id").primaryKey(), secret: text("secret").notNull() });

test.before(async () => {
  tracing = await startTracing({ exporter: "memory", instrumentations: [] });
  admin = postgres(base, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${dbName}`);
});

test.after.always(async () => {
  await admin?.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => undefined);
  await admin?.end();
});

const dbSpans = (context: string) => tracing.finishedSpans().filter((s) => s.attributes["db.namespace"] === context);

async function metricsText(): Promise<string> {
  return metricsRegistry.metrics();
}

test.serial("postgres.js through drizzle: a span per statement, children of the caller's span, no parameter values", async (t) => {
  const url = new URL(base);
  url.pathname = `/${dbName}`;
  const client = tracePostgres(postgres(url.toString(), { max: 4, onnotice: () => {} }), { context: "pgtest", maxConnections: 4 });
  t.teardown(() => client.end());
  const db = drizzlePostgres({ client });
  await db.execute(sql`create table accounts (id integer primary key, secret text not null)`);

  const parent = await trace.getTracer("test").startActiveSpan("handler", async (span) => {
    await db.insert(accounts).values({ id: 1, secret: "s3cr3t-value" });
    await db.transaction(async (tx) => {
      await tx.insert(accounts).values({ id: 2, secret: "other" });
      await tx.select().from(accounts);
    });
    const rows = await db.select().from(accounts);
    t.is(rows.length, 2);
    await t.throwsAsync(db.execute(sql`select * from no_such_table`));
    span.end();
    return span.spanContext();
  });

  const spans = dbSpans("pgtest").filter((s) => s.spanContext().traceId === parent.traceId);
  const names = spans.map((s) => s.name);
  t.true(names.filter((n) => n === "insert pgtest").length >= 2, names.join());
  t.true(names.includes("select pgtest"));
  for (const s of spans) {
    t.is(s.kind, SpanKind.CLIENT);
    t.is(s.attributes["db.system.name"], "postgresql");
    t.false(String(s.attributes["db.query.text"]).includes("s3cr3t-value"), "parameters stay out of spans");
  }
  t.true(spans.every((s) => s.parentSpanContext?.spanId === parent.spanId), "statements are children of the handler span");
  const failed = spans.find((s) => String(s.attributes["db.query.text"]).includes("no_such_table"));
  t.is(failed?.status.code, 2, "the failing statement's span is an error");

  const text = await metricsText();
  t.regex(text, /mesh_db_query_duration_seconds_count\{[^}]*context="pgtest"[^}]*operation="insert"[^}]*outcome="ok"[^}]*\} [1-9]/);
  t.regex(text, /mesh_db_query_duration_seconds_count\{[^}]*context="pgtest"[^}]*operation="select"[^}]*outcome="error"[^}]*\} 1/);
  t.regex(text, /mesh_db_pool_connections\{[^}]*context="pgtest"[^}]*state="max"[^}]*\} 4/);
  t.regex(text, /mesh_db_pool_connections\{[^}]*context="pgtest"[^}]*state="in_use"[^}]*\} 0/);
});

test.serial("PGlite through drizzle: the same spans", async (t) => {
  const client = tracePglite(await PGlite.create(), { context: "litetest" });
  t.teardown(() => client.close());
  const db = drizzlePglite({ client });
  await db.execute(sql`create table accounts (id integer primary key, secret text not null)`);
  await trace.getTracer("test").startActiveSpan("handler", async (span) => {
    await db.transaction(async (tx) => {
      await tx.insert(accounts).values({ id: 1, secret: "pw" });
    });
    t.is((await db.select().from(accounts)).length, 1);
    span.end();
  });
  const names = dbSpans("litetest").map((s) => s.name);
  t.true(names.includes("insert litetest"), names.join());
  t.true(names.includes("select litetest"), names.join());
});

test.serial("spans not recorded: no span is started per statement, the metrics still count it", async (t) => {
  // Tracing stopped (as in a process with no exporter): a DB span would have no children and
  // go nowhere, so none is made. The global provider here counts what is asked of it.
  await tracing.shutdown();
  t.teardown(async () => {
    trace.disable();
    tracing = await startTracing({ exporter: "memory", instrumentations: [] });
  });
  let started = 0;
  trace.disable();
  trace.setGlobalTracerProvider({
    getTracer: () => ({
      startSpan: () => {
        started++;
        return trace.wrapSpanContext(trace.getSpanContext(otelContext.active()) ?? INVALID_SPAN_CONTEXT);
      },
      startActiveSpan: () => {
        throw new Error("not used");
      },
    }),
  });
  const url = new URL(base);
  url.pathname = `/${dbName}`;
  const client = tracePostgres(postgres(url.toString(), { max: 2, onnotice: () => {} }), { context: "quiettest", maxConnections: 2 });
  t.teardown(() => client.end());
  const db = drizzlePostgres({ client });
  for (let i = 0; i < 3; i++) await db.execute(sql`select 1`);
  await db.transaction(async (tx) => {
    await tx.execute(sql`select 2`);
  });
  t.is(started, 0, "no span started for a statement");
  t.regex(await metricsText(), /mesh_db_query_duration_seconds_count\{[^}]*context="quiettest"[^}]*operation="select"[^}]*outcome="ok"[^}]*\} 4/);
});
