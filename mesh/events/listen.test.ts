import test from "ava";
import { create, fromBinary } from "@bufbuild/protobuf";
import { PGlite } from "@electric-sql/pglite";
import { isNull } from "drizzle-orm";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { OrderPlacedSchema } from "../../gen/shop/order/v1/order_pb.js";
import type { EventsDb } from "./db.js";
import { streamForType } from "./naming.js";
import { enqueueEvent } from "./outbox.js";
import { startRelay } from "./relay.js";
import { ensureStreams } from "./streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually, type EventsTestEnv } from "./test-support.js";

// PGlite takes seconds to boot, so this lives in its own file and runs beside the others.

let env: EventsTestEnv;
test.before(async () => {
  env = await createEventsTestEnv();
  await ensureStreams(env.jsm, [streamForType(OrderPlacedSchema.typeName, env.prefix)], { prefix: env.prefix, storage: "memory" });
});
test.after.always(() => env?.close());

test.serial("on PGlite: enqueue notifies the relay through pg.listen", async (t) => {
  const pg = await PGlite.create();
  t.teardown(() => pg.close());
  const db = drizzlePglite({ client: pg }) as unknown as EventsDb;
  const s = eventsSchema("relay_pglite");
  await createEventsTables(db, s);
  const relay = await startRelay({ db, outbox: s.outbox, js: env.js, pollIntervalMs: 3_600_000 });
  t.teardown(() => relay.stop());
  await new Promise((r) => setTimeout(r, 100));
  await db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, create(OrderPlacedSchema, { orderId: "pglite-1", userId: "u1" }), { aggregateId: "p", prefix: env.prefix }));
  await eventually("the row to be published", async () => (await db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);
  const [row] = await db.select().from(s.outbox);
  t.is(fromBinary(OrderPlacedSchema, row.payload).orderId, "pglite-1");
  const stream = streamForType(OrderPlacedSchema.typeName, env.prefix).name;
  const msg = await env.jsm.streams.getMessage(stream, { last_by_subj: `${env.prefix}${OrderPlacedSchema.typeName}` });
  t.is(fromBinary(OrderPlacedSchema, msg.data).orderId, "pglite-1");
});
