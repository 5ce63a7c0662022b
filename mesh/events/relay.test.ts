import test from "ava";
import { randomUUID } from "node:crypto";
import { create, fromBinary } from "@bufbuild/protobuf";
import { isNull, sql } from "drizzle-orm";
import { connect, Events, type JetStreamManager } from "nats";
import { OrderPlacedSchema } from "../../gen/shop/order/v1/order_pb.js";
import { EVENT_ID, EVENT_TYPE, MSG_ID, msgHdrsToRecord, TRACEPARENT } from "./headers.js";
import { streamForType } from "./naming.js";
import { transactionWithEvents, withEventSignals } from "./commit-signal.js";
import { enqueueEvent, prunePublished } from "./outbox.js";
import { publishRawEvent } from "./publisher.js";
import { OutboxRelay, startRelay } from "./relay.js";
import { ensureStreams } from "./streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually, natsChild, type EventsTestEnv } from "./test-support.js";

const placed = (orderId: string) => create(OrderPlacedSchema, { orderId, userId: "u1" });

let env: EventsTestEnv;
test.before(async () => {
  env = await createEventsTestEnv();
  await ensureStreams(env.jsm, [streamForType(OrderPlacedSchema.typeName, env.prefix)], { prefix: env.prefix, storage: "memory" });
});
test.after.always(() => env?.close());

/** A schema of its own per test, so tests in this file do not see each other's rows. */
async function freshSchema(name: string) {
  const s = eventsSchema(name);
  await createEventsTables(env.db, s);
  return s;
}

/** Every message of the order stream on the given aggregate ids, in stream order. */
async function streamMessages(jsm: JetStreamManager, prefix: string, orderIds: Set<string>) {
  const stream = streamForType(OrderPlacedSchema.typeName, prefix).name;
  const info = await jsm.streams.info(stream);
  const out: { seq: number; orderId: string; headers: Record<string, string> }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    const ev = fromBinary(OrderPlacedSchema, m.data);
    if (orderIds.has(ev.orderId)) out.push({ seq, orderId: ev.orderId, headers: msgHdrsToRecord(m.header) });
  }
  return out;
}

test.serial("relay publishes rows in seq order with event headers and marks them published", async (t) => {
  const s = await freshSchema("relay_order");
  const ids: string[] = [];
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  await env.db.transaction(async (tx) => {
    for (let i = 0; i < 3; i++) ids.push(await enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed(`o1-${i}`), { aggregateId: "o1", prefix: env.prefix, traceparent }));
  });
  await env.db.transaction(async (tx) => {
    for (let i = 3; i < 5; i++) ids.push(await enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed(`o1-${i}`), { aggregateId: "o1", prefix: env.prefix }));
  });

  const relay = new OutboxRelay({ db: env.db, outbox: s.outbox, js: env.js, listen: false });
  const r = await relay.drainOnce();
  t.like(r, { locked: true, published: 5, duplicates: 0, backlog: 0 });

  const rows = await env.db.select().from(s.outbox).orderBy(s.outbox.seq);
  t.deepEqual(rows.map((row) => row.id), ids);
  t.true(rows.every((row) => row.publishedAt instanceof Date));

  const msgs = await streamMessages(env.jsm, env.prefix, new Set(ids.map((_, i) => `o1-${i}`)));
  t.deepEqual(msgs.map((m) => m.orderId), ["o1-0", "o1-1", "o1-2", "o1-3", "o1-4"]);
  t.deepEqual(msgs.map((m) => m.headers[MSG_ID]), ids);
  t.deepEqual(msgs.map((m) => m.headers[EVENT_ID]), ids);
  t.true(msgs.every((m) => m.headers[EVENT_TYPE] === "shop.order.v1.OrderPlaced"));
  t.is(msgs[0].headers[TRACEPARENT], traceparent);
  t.false(TRACEPARENT in msgs[4].headers);
  t.is(relay.stats().published, 5);
});

test.serial("an event written in a rolled-back transaction is never published", async (t) => {
  const s = await freshSchema("relay_rollback");
  await t.throwsAsync(
    env.db.transaction(async (tx) => {
      await enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("rb-lost"), { aggregateId: "rb", prefix: env.prefix });
      throw new Error("state change failed");
    }),
    { message: "state change failed" },
  );
  await env.db.transaction(async (tx) => {
    await enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("rb-kept"), { aggregateId: "rb", prefix: env.prefix });
  });
  const relay = new OutboxRelay({ db: env.db, outbox: s.outbox, js: env.js, listen: false });
  t.like(await relay.drainOnce(), { published: 1, backlog: 0 });
  const msgs = await streamMessages(env.jsm, env.prefix, new Set(["rb-lost", "rb-kept"]));
  t.deepEqual(msgs.map((m) => m.orderId), ["rb-kept"]);
});

test.serial("a second publish of the same event id is dropped by the stream (Nats-Msg-Id)", async (t) => {
  const s = await freshSchema("relay_dupe");
  const ev = { subject: `${env.prefix}shop.order.v1.OrderPlaced`, eventId: "7b0c1f7e-3f0a-4b8e-9d51-2f7e0f6b1a01", eventType: OrderPlacedSchema.typeName };
  const first = await publishRawEvent(env.js, { ...ev, payload: new Uint8Array([10, 4, 100, 117, 112, 49]) });
  const second = await publishRawEvent(env.js, { ...ev, payload: new Uint8Array([10, 4, 100, 117, 112, 49]) });
  t.false(first.duplicate);
  t.true(second.duplicate);
  t.is(second.seq, first.seq);

  // The relay crashing after the PubAck but before its commit republishes: same outcome.
  await env.db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("dupe-1"), { aggregateId: "d", prefix: env.prefix }));
  const relay = new OutboxRelay({ db: env.db, outbox: s.outbox, js: env.js, listen: false });
  t.like(await relay.drainOnce(), { published: 1, duplicates: 0 });
  await env.db.update(s.outbox).set({ publishedAt: null });
  t.like(await relay.drainOnce(), { published: 1, duplicates: 1 });
  t.is((await streamMessages(env.jsm, env.prefix, new Set(["dupe-1"]))).length, 1);
});

test.serial("a row the previous lock holder marked published, committed after the batch's snapshot, is not published again", async (t) => {
  const s = await freshSchema("relay_recheck");
  await env.db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("recheck-1"), { aggregateId: "r", prefix: env.prefix }));
  // Stands in for the relay that held the lock before: it has marked the row and commits
  // only once the next batch's statement (lock + read, one snapshot) is under way.
  const other = env.openDb();
  let marked!: () => void;
  let release!: () => void;
  const isMarked = new Promise<void>((r) => (marked = r));
  const released = new Promise<void>((r) => (release = r));
  t.teardown(() => release()); // a failing run must not leave the holder's transaction open
  const holder = other.db.transaction(async (tx) => {
    await tx.update(s.outbox).set({ publishedAt: sql`now()` });
    marked();
    await released;
  });
  await isMarked;
  const relay = new OutboxRelay({ db: env.db, outbox: s.outbox, js: env.js, listen: false });
  const batch = relay.drainOnce();
  // The batch's read waits for the holder's row (FOR UPDATE); without it, it would read the
  // row as unpublished in its snapshot and publish it a second time.
  await eventually("the batch to wait for the holder's row lock", async () => {
    const [w] = await env.client`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`;
    return w!.n > 0;
  });
  release();
  await holder;
  t.like(await batch, { locked: true, published: 0 });
  t.is((await streamMessages(env.jsm, env.prefix, new Set(["recheck-1"]))).length, 0);
});

test.serial("the relay wakes on NOTIFY (postgres.js), not on its poll", async (t) => {
  const s = await freshSchema("relay_notify");
  const relay = await startRelay({ db: env.db, outbox: s.outbox, js: env.js, pollIntervalMs: 3_600_000 });
  t.teardown(() => relay.stop());
  await new Promise((r) => setTimeout(r, 100)); // let the initial (empty) drain finish
  await env.db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("notify-1"), { aggregateId: "n", prefix: env.prefix }));
  await eventually("the row to be published", async () => (await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);
  t.is((await streamMessages(env.jsm, env.prefix, new Set(["notify-1"]))).length, 1);
});

test.serial("two relays on one schema publish every row exactly once, in order", async (t) => {
  const s = await freshSchema("relay_two");
  const other = env.openDb();
  const hooks = { onPublished: () => {} };
  const a = await startRelay({ db: env.db, outbox: s.outbox, js: env.js, batchSize: 7, pollIntervalMs: 50, hooks });
  const b = await startRelay({ db: other.db, outbox: s.outbox, js: env.js, batchSize: 7, pollIntervalMs: 50, hooks });
  t.teardown(async () => {
    await a.stop();
    await b.stop();
  });
  const total = 120;
  const orderIds = new Set<string>();
  // 12 writers, 10 events each: rows arrive while both relays are draining.
  await Promise.all(
    Array.from({ length: 12 }, async (_, w) => {
      for (let i = 0; i < 10; i++) {
        const id = `two-${w}-${i}`;
        orderIds.add(id);
        await env.db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed(id), { aggregateId: `agg-${w}`, prefix: env.prefix }));
      }
    }),
  );
  await eventually("all rows published", async () => (await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);
  const sa = a.stats();
  const sb = b.stats();
  t.is(sa.published + sb.published, total);
  t.is(sa.duplicates + sb.duplicates, 0);
  const msgs = await streamMessages(env.jsm, env.prefix, orderIds);
  t.is(msgs.length, total);
  // Per aggregate, stream order == write order. (Across aggregates it need not be: two
  // writers' seqs can commit in the other order, and the relay publishes what has committed.)
  const byAggregate = new Map<string, number[]>();
  for (const m of msgs) {
    const [, w, i] = m.orderId.split("-");
    byAggregate.set(w, [...(byAggregate.get(w) ?? []), Number(i)]);
  }
  t.is(byAggregate.size, 12);
  for (const [w, order] of byAggregate) t.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], `aggregate ${w}`);
  t.log(`relay A published ${sa.published}, relay B ${sb.published}`);
});

test.serial("rows written while NATS is down wait, then drain in order once it is back", async (t) => {
  const s = await freshSchema("relay_outage");
  const server = await natsChild();
  t.teardown(() => server.dispose());
  await server.start();
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, pingInterval: 1000 });
  t.teardown(() => nc.close());
  const jsm = await nc.jetstreamManager();
  await ensureStreams(jsm, [streamForType(OrderPlacedSchema.typeName, env.prefix)], { prefix: env.prefix });

  const ids: string[] = [];
  const write = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const id = `out-${ids.length}`;
      ids.push(id);
      await env.db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed(id), { aggregateId: `agg-${ids.length % 3}`, prefix: env.prefix }));
    }
  };
  await write(3); // before the outage: nobody publishes them yet

  const disconnected = (async () => {
    for await (const st of nc.status()) if (st.type === Events.Disconnect) return;
  })();
  await server.stop();
  await disconnected;

  // The relay starts while NATS is unreachable.
  const errors: unknown[] = [];
  const relay = await startRelay({
    db: env.db,
    outbox: s.outbox,
    js: nc.jetstream(),
    nc,
    pollIntervalMs: 100,
    publishTimeoutMs: 500,
    retryMaxMs: 300,
    hooks: { onError: (e) => errors.push(e) },
  });
  t.teardown(() => relay.stop());
  await write(4);
  await new Promise((r) => setTimeout(r, 500));
  t.is((await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length, 7, "nothing is marked while NATS is down");

  await server.start();
  await eventually("the backlog to drain", async () => (await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0, 20_000);
  await write(2);
  await eventually("new rows after the outage", async () => (await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);

  const msgs = await streamMessages(jsm, env.prefix, new Set(ids));
  t.deepEqual(msgs.map((m) => m.orderId), ids, "each event once, in outbox order");
  t.log(`publish errors seen during the outage: ${errors.length}`);
});


test.serial("transactionWithEvents wakes the relay in this process after the commit (no NOTIFY in the transaction)", async (t) => {
  const s = await freshSchema("relay_local_wake");
  // No LISTEN and a poll that never comes: only the commit signal can wake it.
  const relay = await startRelay({ db: env.db, outbox: s.outbox, js: env.js, listen: false, pollIntervalMs: 3_600_000 });
  t.teardown(() => relay.stop());
  await new Promise((r) => setTimeout(r, 100));
  await t.throwsAsync(
    transactionWithEvents(env.db, async (tx) => {
      await enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("lw-rolled-back"), { aggregateId: "lw", prefix: env.prefix });
      throw new Error("nope");
    }),
  );
  const eventId = await transactionWithEvents(env.db, (tx) =>
    enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("lw-1"), { aggregateId: "lw", prefix: env.prefix }),
  );
  await eventually("the row to be published", async () => (await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);
  const msgs = await streamMessages(env.jsm, env.prefix, new Set(["lw-1", "lw-rolled-back"]));
  t.deepEqual(msgs.map((m) => [m.orderId, m.headers[EVENT_ID]]), [["lw-1", eventId]]);
});

test.serial("a failed publish holds back the later events of its aggregate only, and nothing new starts after it", async (t) => {
  const s = await freshSchema("relay_chain");
  // Rows in seq order: A1 B1 A2 B2 A3.
  const plan = [["A", "A1"], ["B", "B1"], ["A", "A2"], ["B", "B2"], ["A", "A3"]] as const;
  for (const [agg, id] of plan) {
    await env.db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed(id), { aggregateId: agg, prefix: env.prefix }));
  }
  // A publisher (pure fake: this is about the relay's bookkeeping) that fails A2 once.
  const sent: string[] = [];
  let failA2 = true;
  const fakeJs = {
    async publish(_subject: string, data: Uint8Array) {
      const id = fromBinary(OrderPlacedSchema, data).orderId;
      await new Promise((r) => setTimeout(r, id.startsWith("B") ? 30 : 1)); // B is slow: A fails while B is in flight
      if (id === "A2" && failA2) {
        failA2 = false;
        throw new Error("TIMEOUT");
      }
      sent.push(id);
      return { stream: "fake", seq: sent.length, duplicate: false };
    },
  } as unknown as import("nats").JetStreamClient;
  const relay = new OutboxRelay({ db: env.db, outbox: s.outbox, js: fakeJs, listen: false });

  const first = await relay.drainOnce();
  t.is((first.error as Error)?.message, "TIMEOUT");
  t.deepEqual(sent, ["A1", "B1"], "A3 waits behind A2; B2 is not started after the failure");
  t.is(first.backlog, 3);
  const second = await relay.drainOnce();
  t.is(second.error, undefined);
  t.deepEqual(sent.slice(2).filter((x) => x.startsWith("A")), ["A2", "A3"]);
  t.deepEqual(sent.slice(2).sort(), ["A2", "A3", "B2"]);
  t.is(second.backlog, 0);
});

test.serial("withEventSignals(db): a plain db.transaction + enqueueEvent wakes the relay after the commit", async (t) => {
  const s = await freshSchema("relay_wrapped");
  const db = withEventSignals(env.db);
  const relay = await startRelay({ db, outbox: s.outbox, js: env.js, listen: false, pollIntervalMs: 3_600_000 });
  t.teardown(() => relay.stop());
  await new Promise((r) => setTimeout(r, 100));
  await db.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("wrapped-1"), { aggregateId: "w", prefix: env.prefix }));
  await eventually("the row to be published", async () => (await db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);
  t.is((await streamMessages(env.jsm, env.prefix, new Set(["wrapped-1"]))).length, 1);
});

test.serial("withEventSignals(db) hands over the driver client: the relay on it LISTENs and hears another replica's commit", async (t) => {
  const s = await freshSchema("relay_wrapped_listen");
  const relay = await startRelay({ db: withEventSignals(env.db), outbox: s.outbox, js: env.js, pollIntervalMs: 3_600_000 });
  t.teardown(() => relay.stop());
  await new Promise((r) => setTimeout(r, 100));
  // Another replica: its own pool, no relay in its process, so its commit is announced by NOTIFY only.
  const other = env.openDb().db;
  await other.transaction((tx) => enqueueEvent(tx, s.outbox, OrderPlacedSchema, placed("wrapped-listen-1"), { aggregateId: "wl", prefix: env.prefix }));
  await eventually("the row to be published", async () => (await env.db.select().from(s.outbox).where(isNull(s.outbox.publishedAt))).length === 0);
  t.is((await streamMessages(env.jsm, env.prefix, new Set(["wrapped-listen-1"]))).length, 1);
});

test.serial("prunePublished deletes rows published before the cutoff, in bounded batches; two replicas pruning at once delete each row once", async (t) => {
  const s = await freshSchema("relay_prune");
  const day = 86_400_000;
  const rows = (prefix: string, n: number, publishedAt: Date | null) =>
    Array.from({ length: n }, (_, i) => ({
      id: randomUUID(),
      aggregateId: `${prefix}-${i}`,
      eventType: "x",
      subject: "x",
      payload: new Uint8Array([1]),
      publishedAt,
    }));
  const old = new Date(Date.now() - 10 * day);
  await env.db.insert(s.outbox).values([...rows("old", 2_500, old), ...rows("recent", 3, new Date()), ...rows("unpublished", 3, null)]);
  t.is(await prunePublished(env.db, s.outbox, day, 400), 2_500, "every old row, 400 at a time");
  const kept = await env.db.select({ aggregateId: s.outbox.aggregateId }).from(s.outbox);
  t.deepEqual(kept.map((r) => r.aggregateId.split("-")[0]).sort(), ["recent", "recent", "recent", "unpublished", "unpublished", "unpublished"]);

  await env.db.insert(s.outbox).values(rows("racing", 3_000, old));
  const [a, b] = await Promise.all([prunePublished(env.db, s.outbox, day, 100), prunePublished(env.db, s.outbox, day, 100)]);
  const left = await env.db.select({ id: s.outbox.id }).from(s.outbox).where(sql`${s.outbox.publishedAt} < now() - interval '1 day'`);
  t.is(a + b + left.length, 3_000, "no row deleted twice");
  t.is(await prunePublished(env.db, s.outbox, day), left.length, "what one skipped, the next pass deletes");

  // Rows another replica's batch holds are skipped, not waited on: one DELETE per replica waited,
  // and two such scans starting at different points of a big table could deadlock.
  await env.db.insert(s.outbox).values(rows("held", 50, old));
  await env.db.transaction(async (tx) => {
    await tx.execute(sql`select id from ${s.outbox} where aggregate_id like 'held-%' order by aggregate_id limit 10 for update`);
    t.is(await prunePublished(env.db, s.outbox, day), 40, "pruned while the other transaction still holds 10 rows");
  });
  t.is(await prunePublished(env.db, s.outbox, day), 10);
});
