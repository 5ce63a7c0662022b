import test from "ava";
import { create } from "@bufbuild/protobuf";
import { sql } from "drizzle-orm";
import { connect } from "nats";
import { OrderPlacedSchema } from "../../gen/shop/order/v1/order_pb.js";
import { transactionWithEvents } from "./commit-signal.js";
import { startConsumer } from "./consumer.js";
import { rowsOf } from "./db.js";
import { packageStream } from "./naming.js";
import { enqueueEvent } from "./outbox.js";
import { startRelay } from "./relay.js";
import { ensureStreams } from "./streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually, natsChild, type EventsTestEnv } from "./test-support.js";

let env: EventsTestEnv;
test.before(async () => {
  env = await createEventsTestEnv();
});
test.after.always(() => env?.close());

test("a NATS restart during a burst of writes loses no event and applies none twice", async (t) => {
  const server = await natsChild();
  t.teardown(() => server.dispose());
  await server.start();
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, pingInterval: 1000 });
  t.teardown(() => nc.close());
  const js = nc.jetstream();
  await ensureStreams(await nc.jetstreamManager(), [packageStream("shop.order.v1", env.prefix)], { prefix: env.prefix });

  const s = eventsSchema("restart");
  await createEventsTables(env.db, s);
  await env.db.execute(sql.raw(`create table restart.effects (order_id text not null)`));
  const relay = await startRelay({ db: env.db, outbox: s.outbox, js, nc, pollIntervalMs: 200, publishTimeoutMs: 500, retryMaxMs: 300 });
  t.teardown(() => relay.stop());
  const consumer = await startConsumer({
    name: "restart-effects",
    event: OrderPlacedSchema,
    db: env.db,
    inbox: s.inbox,
    js,
    prefix: env.prefix,
    handler: async (tx, ev) => void (await tx.execute(sql`insert into restart.effects values (${ev.orderId})`)),
  });
  t.teardown(() => consumer.stop());

  const total = 60;
  let written = 0;
  const burst = (async () => {
    while (written < total) {
      const orderId = `r-${written++}`;
      await transactionWithEvents(env.db, (tx) =>
        enqueueEvent(tx, s.outbox, OrderPlacedSchema, create(OrderPlacedSchema, { orderId }), { aggregateId: orderId, prefix: env.prefix }),
      );
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  await eventually("some events through before the restart", () => consumer.stats().handled >= 5);
  await server.stop();
  await new Promise((r) => setTimeout(r, 300));
  await server.start();
  await burst;

  await eventually("every event applied", () => consumer.stats().handled >= total, 30_000);
  const rows = rowsOf<{ order_id: string }>(await env.db.execute(sql`select order_id from restart.effects`));
  const distinct = new Set(rows.map((r) => r.order_id));
  t.is(distinct.size, total, "none lost");
  t.is(rows.length, total, "none applied twice");
  t.log(`relay: ${JSON.stringify(relay.stats())}; consumer: ${JSON.stringify(consumer.stats())}`);
});
