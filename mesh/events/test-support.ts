// Test fixtures for the event backbone: a fresh database holding a schema with the
// outbox and inbox tables (created from the drizzle definitions by drizzle-kit, the same
// DDL a service's migration gets), a NATS connection and a unique subject prefix.
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { sql } from "drizzle-orm";
import { pgSchema } from "drizzle-orm/pg-core";
import { drizzle } from "drizzle-orm/postgres-js";
import { connect, type JetStreamClient, type JetStreamManager, type NatsConnection } from "nats";
import postgres from "postgres";
import { openPostgres } from "../postgres-url.js";
import { createTestDatabase, testNatsPrefix, testNatsUrl, type TestDatabase } from "../testing/index.js";
import type { EventsDb } from "./db.js";
import { inboxTable, outboxTable, type InboxTable, type OutboxTable } from "./tables.js";

/** The DDL drizzle-kit would write for these tables, as statements. */
export async function ddlFor(tables: Record<string, unknown>): Promise<string[]> {
  return generateMigration(generateDrizzleJson({}), generateDrizzleJson(tables));
}

export interface EventsSchema {
  name: string;
  outbox: OutboxTable;
  inbox: InboxTable;
}

export function eventsSchema(name: string): EventsSchema {
  const schema = pgSchema(name);
  return { name, outbox: outboxTable(schema), inbox: inboxTable(schema) };
}

/** Creates the schema and its outbox/inbox tables in `db`. */
export async function createEventsTables(db: EventsDb, s: EventsSchema): Promise<void> {
  const schema = pgSchema(s.name);
  for (const stmt of await ddlFor({ schema, outbox: s.outbox, inbox: s.inbox })) {
    await db.execute(sql.raw(stmt));
  }
}

export interface EventsTestEnv {
  testDb: TestDatabase;
  /** postgres.js client (pool) behind `db`. */
  client: postgres.Sql;
  db: EventsDb;
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  prefix: string;
  streamPrefix: string;
  /** Opens another postgres.js drizzle database on the same test database (a second "replica"). */
  openDb(): { db: EventsDb; client: postgres.Sql };
  close(): Promise<void>;
}

export async function createEventsTestEnv(opts: { poolSize?: number } = {}): Promise<EventsTestEnv> {
  const testDb = await createTestDatabase();
  const clients: postgres.Sql[] = [];
  const openDb = () => {
    const client = openPostgres(testDb.url, { max: opts.poolSize ?? 5, onnotice: () => {} });
    clients.push(client);
    return { client, db: drizzle({ client }) as unknown as EventsDb };
  };
  const { client, db } = openDb();
  const nc = await connect({ servers: testNatsUrl() });
  const { subjectPrefix, streamPrefix } = testNatsPrefix();
  const jsm = await nc.jetstreamManager();
  return {
    testDb,
    client,
    db,
    nc,
    js: nc.jetstream(),
    jsm,
    prefix: subjectPrefix,
    streamPrefix,
    openDb,
    async close() {
      for await (const name of jsm.streams.names()) {
        if (name.startsWith(streamPrefix)) await jsm.streams.delete(name).catch(() => {});
      }
      await nc.close();
      await Promise.all(clients.map((c) => c.end({ timeout: 2 })));
      await testDb.drop();
    },
  };
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function eventually<T>(what: string, check: () => Promise<T> | T, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * A private nats-server child process with JetStream, on a fixed port and store directory
 * so it can be stopped and started again (an outage the client reconnects through).
 */
export interface NatsChild {
  url: string;
  port: number;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Stops it and removes its store. */
  dispose(): Promise<void>;
}

export async function natsChild(): Promise<NatsChild> {
  const { spawn } = await import("node:child_process");
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { createConnection } = await import("node:net");
  const { freePort } = await import("../testing/index.js");
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), "pm-nats-"));
  let child: import("node:child_process").ChildProcess | undefined;
  const reachable = () =>
    new Promise<boolean>((resolve) => {
      const s = createConnection({ port, host: "127.0.0.1" });
      s.once("connect", () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
  const self: NatsChild = {
    url: `nats://127.0.0.1:${port}`,
    port,
    async start() {
      if (child) return;
      child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], { stdio: "ignore" });
      await eventually("nats-server to listen", reachable, 10_000, 20);
    },
    async stop() {
      const c = child;
      child = undefined;
      if (!c || c.exitCode !== null) return;
      const exited = new Promise((r) => c.once("exit", r));
      c.kill("SIGKILL");
      await exited;
    },
    async dispose() {
      await self.stop();
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
  return self;
}
