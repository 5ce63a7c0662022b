// recordInboxMany against a second writer: two batches of one consumer that share events must
// wait for each other, never deadlock. (Its single-text property is in batch-texts.test.ts,
// pruning in consumer.test.ts.)
import test from "ava";
import { drizzle } from "drizzle-orm/postgres-js";
import { openPostgres } from "../postgres-url.js";
import { createTestDatabase } from "../testing/index.js";
import type { EventsDb } from "./db.js";
import { recordInboxMany } from "./inbox.js";
import { createEventsTables, eventsSchema } from "./test-support.js";

test("two batches sharing two events in opposite orders: one waits for the other and skips them, no deadlock", async (t) => {
  const testDb = await createTestDatabase(t);
  const client = openPostgres(testDb.url, { max: 2, onnotice: () => {} });
  const other = openPostgres(testDb.url, { max: 2, onnotice: () => {} });
  t.teardown(() => Promise.all([client.end({ timeout: 2 }), other.end({ timeout: 2 })]));
  const db = drizzle({ client }) as unknown as EventsDb;
  const s = eventsSchema("inboxorder");
  await createEventsTables(db, s);
  const entry = (id: string) => ({ consumer: "c", eventId: id, eventType: "T" });
  const insertOne = (tx: typeof other, id: string) => tx`insert into inboxorder.inbox (consumer, event_id, event_type) values ('c', ${id}, 'T')`;

  let batch: Promise<Set<string>> | undefined;
  await other.begin(async (tx) => {
    await insertOne(tx as unknown as typeof other, "e-1"); // the other batch (another replica) has taken e-1 ...
    // ... while this one was delivered e-2, then e-1.
    batch = db.transaction((btx) => recordInboxMany(btx, s.inbox, [entry("e-2"), entry("e-1")]));
    batch.catch(() => {});
    // Until this batch waits on the other's row.
    for (;;) {
      const [w] = await other`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`;
      if (w!.n > 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    // ... and the other goes on to e-2. Taken in delivery order, this batch would hold it: a deadlock.
    await insertOne(tx as unknown as typeof other, "e-2");
  });
  t.deepEqual([...(await batch!)], [], "both events were the other batch's: nothing new here");
  const rows = await other`select event_id from inboxorder.inbox order by event_id`;
  t.deepEqual(rows.map((r) => r.event_id), ["e-1", "e-2"]);
});
