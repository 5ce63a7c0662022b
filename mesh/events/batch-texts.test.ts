// The batch writes of the event backbone (recordInboxMany, outboxInsertManySql) are one
// statement text whatever the batch size: statements are prepared per text and connection
// (mesh/db-prepared.ts), so a text per size would be parsed and planned once per size.
import test, { type ExecutionContext } from "ava";
import { create } from "@bufbuild/protobuf";
import { StructSchema } from "@bufbuild/protobuf/wkt";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import { preparedStatements } from "../db-prepared.js";
import { createTestDatabase } from "../testing/index.js";
import { rowsOf, type EventsDb } from "./db.js";
import { recordInboxMany } from "./inbox.js";
import { eventsEnqueued, outboxEvent, outboxInsertManySql } from "./outbox.js";
import { createEventsTables, eventsSchema } from "./test-support.js";

async function oneConnection(t: ExecutionContext) {
  const testDb = await createTestDatabase(t);
  // One connection, so every statement runs on the backend whose prepared statements we read.
  const client = preparedStatements(postgres(testDb.url, { max: 1, onnotice: () => {} }));
  t.teardown(() => client.end({ timeout: 2 }));
  const db = drizzle({ client }) as unknown as EventsDb;
  const s = eventsSchema("batchtexts");
  await createEventsTables(db, s);
  return { db, s };
}

async function preparedTexts(db: EventsDb, like: string): Promise<number> {
  const [row] = rowsOf<{ n: number }>(
    await db.execute(sql`select count(*)::int as n from pg_prepared_statements
      where statement like ${like} and statement not like '%pg_prepared_statements%'`),
  );
  return row!.n;
}

test("recordInboxMany: one prepared text for batches of 1, 2 and 3; new ids answered, repeats skipped", async (t) => {
  const { db, s } = await oneConnection(t);
  const entry = (id: string) => ({ consumer: "c", eventId: id, eventType: "T" });
  const answers: string[][] = [];
  for (const ids of [["a"], ["b", "c"], ["c", "d", "d"]]) {
    answers.push([...(await db.transaction((tx) => recordInboxMany(tx, s.inbox, ids.map(entry))))].sort());
  }
  t.deepEqual(answers, [["a"], ["b", "c"], ["d"]]);
  t.is(await preparedTexts(db, "%insert into \"batchtexts\".\"inbox\"%"), 1);
});

test("outboxInsertManySql: one prepared text for 2 and 3 events; rows, payloads and headers in the order given", async (t) => {
  const { db, s } = await oneConnection(t);
  const event = (n: number) =>
    outboxEvent(StructSchema, create(StructSchema, { fields: { n: { kind: { case: "numberValue", value: n } } } }), {
      aggregateId: `agg-${n}`,
      headers: { "x-n": String(n) },
    });
  const written = [[event(1), event(2)], [event(3), event(4), event(5)]];
  for (const events of written) {
    await db.transaction(async (tx) => {
      await tx.execute(sql`with e as (${outboxInsertManySql(s.outbox, events)}) select 1`);
      await eventsEnqueued(tx, s.outbox);
    });
  }
  const rows = await db.select().from(s.outbox).orderBy(s.outbox.seq);
  const expected = written.flat();
  t.deepEqual(rows.map((r) => r.id), expected.map((e) => e.id));
  t.deepEqual(rows.map((r) => [r.aggregateId, r.eventType, r.subject, r.headers["x-n"]]), expected.map((e) => [e.aggregateId, e.eventType, e.subject, e.headers["x-n"]]));
  t.deepEqual(rows.map((r) => Buffer.from(r.payload).toString("hex")), expected.map((e) => Buffer.from(e.payload).toString("hex")));
  t.is(await preparedTexts(db, "%insert into \"batchtexts\".\"outbox\"%"), 1);
});
