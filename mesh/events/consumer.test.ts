import test from "ava";
import { create } from "@bufbuild/protobuf";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import type { ExecutionContext } from "ava";
import { OrderConfirmedSchema, OrderPlacedSchema } from "../../gen/shop/order/v1/order_pb.js";
import { PermanentEventError, startConsumer, type ConsumerOptions } from "./consumer.js";
import { listDeadLetters, replayDeadLetter } from "./dead-letter.js";
import { inboxRetentionFloorMs, pruneInbox } from "./inbox.js";
import { rowsOf, type EventsDb, type EventsTx } from "./db.js";
import { EVENT_ID, EVENT_TYPE, toMsgHdrs } from "./headers.js";
import { eventSubject, packageStream } from "./naming.js";
import { publishEvent, publishRawEvent } from "./publisher.js";
import { ensureStreams } from "./streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually, type EventsSchema, type EventsTestEnv } from "./test-support.js";

let env: EventsTestEnv;
let s: EventsSchema;
test.before(async () => {
  env = await createEventsTestEnv();
  await ensureStreams(env.jsm, [packageStream("shop.order.v1", env.prefix)], { prefix: env.prefix, storage: "memory" });
  s = eventsSchema("consumer_test");
  await createEventsTables(env.db, s);
  // The handlers' own table: no unique key, so a handler that ran twice shows as two rows.
  await env.db.execute(sql.raw(`create table consumer_test.effects (id serial primary key, consumer text not null, order_id text not null)`));
});
test.after.always(() => env?.close());

async function recordEffect(tx: EventsTx, consumer: string, orderId: string) {
  await tx.execute(sql`insert into consumer_test.effects (consumer, order_id) values (${consumer}, ${orderId})`);
}

async function effects(consumer: string): Promise<string[]> {
  const rows = rowsOf<{ order_id: string }>(
    await env.db.execute(sql`select order_id from consumer_test.effects where consumer = ${consumer} order by id`),
  );
  return rows.map((r) => r.order_id);
}

function consumerOf(name: string, handler: ConsumerOptions<typeof OrderConfirmedSchema>["handler"], extra: Partial<ConsumerOptions<typeof OrderConfirmedSchema>> = {}) {
  return startConsumer({
    name,
    event: OrderConfirmedSchema,
    handler,
    db: env.db,
    inbox: s.inbox,
    js: env.js,
    prefix: env.prefix,
    backoff: { initialMs: 20, maxMs: 100 },
    // Every test shares the subject; each consumer sees only what is published after it starts.
    deliverPolicy: "new",
    ...extra,
  });
}

const confirmed = (orderId: string) => create(OrderConfirmedSchema, { orderId, userId: "u1" });

test.serial("the same event delivered twice has one effect", async (t) => {
  const c = await consumerOf("dedupe", async (tx, ev, meta) => {
    t.is(meta.eventType, OrderConfirmedSchema.typeName);
    await recordEffect(tx, "dedupe", ev.orderId);
  });
  t.teardown(() => c.stop());
  const eventId = "0d1e6c2a-8f3b-4d7e-9a10-5b6c7d8e9f01";
  // Two copies of one event with different Nats-Msg-Ids (as after a replay, or a republish
  // outside the duplicate window): the stream keeps both, the inbox keeps one effect.
  await publishEvent(env.js, OrderConfirmedSchema, confirmed("dd-1"), { eventId, prefix: env.prefix });
  await publishRawEvent(env.js, {
    subject: eventSubject(OrderConfirmedSchema.typeName, env.prefix),
    payload: (await import("@bufbuild/protobuf")).toBinary(OrderConfirmedSchema, confirmed("dd-1")),
    eventId,
    eventType: OrderConfirmedSchema.typeName,
    msgId: `${eventId}:again`,
  });
  await publishEvent(env.js, OrderConfirmedSchema, confirmed("dd-2"), { prefix: env.prefix });
  await eventually("both copies and the next event seen", () => c.stats().handled + c.stats().duplicates === 3);
  t.deepEqual(await effects("dedupe"), ["dd-1", "dd-2"]);
  t.like(c.stats(), { handled: 2, duplicates: 1, deadLettered: 0 });
});

test.serial("a failing handler is retried with backoff, dead-lettered after maxDeliver, and replayed once fixed", async (t) => {
  let broken = true;
  const attempts: number[] = [];
  const c = await consumerOf(
    "flaky",
    async (tx, ev, meta) => {
      attempts.push(meta.deliveryCount);
      await recordEffect(tx, "flaky", ev.orderId); // rolled back with the failure
      if (broken) throw new Error(`points service says no to ${ev.orderId}`);
    },
    { maxDeliver: 3 },
  );
  t.teardown(() => c.stop());
  // A second consumer of the same subject that always succeeds: replay must not make it act twice.
  const bystander = await consumerOf("bystander", async (tx, ev) => recordEffect(tx, "bystander", ev.orderId));
  t.teardown(() => bystander.stop());

  const { eventId } = await publishEvent(env.js, OrderConfirmedSchema, confirmed("poison-1"), { prefix: env.prefix, aggregateId: "poison-1" });
  await eventually("a dead letter", () => c.stats().deadLettered === 1);
  t.deepEqual(attempts, [1, 2, 3]);
  t.deepEqual(await effects("flaky"), [], "failed attempts left nothing behind");
  t.like(c.stats(), { retries: 2, handled: 0 });

  const [dl, ...more] = await listDeadLetters(env.js, { prefix: env.prefix, consumer: "flaky" });
  t.is(more.length, 0);
  t.like(dl, {
    consumer: "flaky",
    subject: eventSubject(OrderConfirmedSchema.typeName, env.prefix),
    eventId,
    eventType: OrderConfirmedSchema.typeName,
    deliveries: 3,
  });
  t.regex(dl.error, /3 deliveries: points service says no to poison-1/);
  t.is(dl.headers[EVENT_ID], eventId);
  t.is(dl.headers["pm-aggregate-id"], "poison-1");
  t.deepEqual(await listDeadLetters(env.js, { prefix: env.prefix, consumer: "bystander" }), []);

  broken = false;
  await replayDeadLetter(env.js, dl.seq, { prefix: env.prefix });
  await eventually("the replay handled", () => c.stats().handled === 1);
  await eventually("the bystander saw the replay", () => bystander.stats().duplicates === 1);
  t.deepEqual(await effects("flaky"), ["poison-1"]);
  t.deepEqual(await effects("bystander"), ["poison-1"], "the bystander's inbox absorbed the replay");
  t.deepEqual(await listDeadLetters(env.js, { prefix: env.prefix, consumer: "flaky" }), [], "replayed dead letter removed");
  await t.throwsAsync(replayDeadLetter(env.js, dl.seq, { prefix: env.prefix }), { message: /not found/ });
});

test.serial("a payload that does not decode goes to the dead letters on its first delivery", async (t) => {
  let calls = 0;
  const c = await consumerOf("garbage", async () => void calls++, { maxDeliver: 5 });
  t.teardown(() => c.stop());
  await env.js.publish(eventSubject(OrderConfirmedSchema.typeName, env.prefix), new Uint8Array([0xff, 0xff, 0xff]), {
    msgID: "garbage-1",
    headers: toMsgHdrs({ [EVENT_ID]: "garbage-1", [EVENT_TYPE]: OrderConfirmedSchema.typeName }),
  });
  await eventually("a dead letter", () => c.stats().deadLettered === 1);
  const [dl] = await listDeadLetters(env.js, { prefix: env.prefix, consumer: "garbage" });
  t.is(calls, 0);
  t.is(dl.deliveries, 1);
  t.regex(dl.error, /cannot decode shop\.order\.v1\.OrderConfirmed/);
});

test.serial("a PermanentEventError skips the retries", async (t) => {
  const c = await consumerOf("permanent", async () => {
    throw new PermanentEventError("user u1 does not exist");
  });
  t.teardown(() => c.stop());
  await publishEvent(env.js, OrderConfirmedSchema, confirmed("perm-1"), { prefix: env.prefix });
  await eventually("a dead letter", () => c.stats().deadLettered === 1);
  const [dl] = await listDeadLetters(env.js, { prefix: env.prefix, consumer: "permanent" });
  t.is(dl.deliveries, 1);
  t.regex(dl.error, /^permanent: user u1 does not exist/);
});

test.serial("stop() finishes the handler in flight; a restarted consumer picks up where it left off", async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const inHandler = new Promise<void>((r) => (entered = r));
  const first = await consumerOf("restart", async (tx, ev) => {
    entered();
    await gate;
    await recordEffect(tx, "restart", ev.orderId);
  });
  await publishEvent(env.js, OrderConfirmedSchema, confirmed("rs-1"), { prefix: env.prefix });
  await inHandler;
  const stopped = first.stop();
  release();
  await stopped;
  t.deepEqual(await effects("restart"), ["rs-1"]);
  t.is(first.stats().handled, 1);

  await publishEvent(env.js, OrderConfirmedSchema, confirmed("rs-2"), { prefix: env.prefix });
  await publishEvent(env.js, OrderConfirmedSchema, confirmed("rs-3"), { prefix: env.prefix });
  const second = await consumerOf("restart", async (tx, ev) => recordEffect(tx, "restart", ev.orderId));
  t.teardown(() => second.stop());
  await eventually("the rest handled", async () => (await effects("restart")).length === 3);
  t.deepEqual(await effects("restart"), ["rs-1", "rs-2", "rs-3"]);
});

test.serial("an event of another type on the subject is dead-lettered, not misread", async (t) => {
  const c = await consumerOf("wrongtype", async () => {});
  t.teardown(() => c.stop());
  // An OrderPlaced payload published on the OrderConfirmed subject (a publisher bug).
  await publishRawEvent(env.js, {
    subject: eventSubject(OrderConfirmedSchema.typeName, env.prefix),
    payload: (await import("@bufbuild/protobuf")).toBinary(OrderPlacedSchema, create(OrderPlacedSchema, { orderId: "x" })),
    eventId: "wrongtype-1",
    eventType: OrderPlacedSchema.typeName,
  });
  await eventually("a dead letter", () => c.stats().deadLettered >= 1);
  const dls = await listDeadLetters(env.js, { prefix: env.prefix, consumer: "wrongtype" });
  t.true(dls.some((d) => d.eventId === "wrongtype-1" && /expects shop\.order\.v1\.OrderConfirmed/.test(d.error)));
});

test.serial("in a batch, one failing event is retried alone while the others commit once", async (t) => {
  const name = "batchy";
  // Create the durable, stop it, publish a backlog: the restarted consumer gets it as one pull.
  const first = await consumerOf(name, async () => {});
  await first.stop();
  const ids = ["b-1", "b-2", "b-3", "b-4", "b-5"];
  for (const id of ids) await publishEvent(env.js, OrderConfirmedSchema, confirmed(id), { prefix: env.prefix });

  const calls: string[] = [];
  const c = await consumerOf(
    name,
    async (tx, ev, meta) => {
      calls.push(`${ev.orderId}#${meta.deliveryCount}`);
      await recordEffect(tx, name, ev.orderId);
      if (ev.orderId === "b-3" && meta.deliveryCount === 1) throw new Error("transient");
    },
    { batchSize: 32 },
  );
  t.teardown(() => c.stop());
  await eventually("all five handled", () => c.stats().handled === 5);
  t.deepEqual([...(await effects(name))].sort(), ids);
  t.like(c.stats(), { retries: 1, duplicates: 0, deadLettered: 0 });
  t.true(calls.includes("b-3#2"));
  t.log(calls.join(" "));
});

test.serial("with concurrency, every event still has exactly one effect", async (t) => {
  const name = "parallel";
  const c = await consumerOf(name, async (tx, ev) => recordEffect(tx, name, ev.orderId), { concurrency: 4, batchSize: 4 });
  t.teardown(() => c.stop());
  const ids = Array.from({ length: 40 }, (_, i) => `par-${i}`);
  await Promise.all(ids.map((id) => publishEvent(env.js, OrderConfirmedSchema, confirmed(id), { prefix: env.prefix })));
  await eventually("all handled", () => c.stats().handled === ids.length);
  t.deepEqual([...(await effects(name))].sort(), [...ids].sort());
});

test.serial("two copies of one event in the same batch have one effect", async (t) => {
  const name = "batchdupe";
  const first = await consumerOf(name, async () => {});
  await first.stop();
  const { toBinary } = await import("@bufbuild/protobuf");
  const eventId = "5e0f7d6c-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
  for (const msgId of [eventId, `${eventId}:replay:1`]) {
    await publishRawEvent(env.js, {
      subject: eventSubject(OrderConfirmedSchema.typeName, env.prefix),
      payload: toBinary(OrderConfirmedSchema, confirmed("bd-1")),
      eventId,
      eventType: OrderConfirmedSchema.typeName,
      msgId,
    });
  }
  await publishEvent(env.js, OrderConfirmedSchema, confirmed("bd-2"), { prefix: env.prefix });
  const c = await consumerOf(name, async (tx, ev) => recordEffect(tx, name, ev.orderId));
  t.teardown(() => c.stop());
  await eventually("three deliveries settled", () => c.stats().handled + c.stats().duplicates === 3);
  t.deepEqual(await effects(name), ["bd-1", "bd-2"]);
  t.like(c.stats(), { handled: 2, duplicates: 1 });
});

/** A database whose driver records every statement it sends (postgres.js' debug hook), begin and commit included. */
function countedDb(t: ExecutionContext): { db: EventsDb; statements: string[] } {
  const statements: string[] = [];
  const client = postgres(env.testDb.url, { max: 2, onnotice: () => {}, debug: (_connection, query) => void statements.push(query) });
  t.teardown(() => client.end({ timeout: 2 }));
  return { db: drizzle({ client }) as unknown as EventsDb, statements };
}

/** A gate a handler waits at until open(). */
function gated() {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  return { gate, open };
}

/**
 * Makes what `publish` sends one batch: the lone event `gateOrderId` goes first and its
 * handler waits at the gate, while the events published meanwhile queue up behind it; then
 * the gate opens.
 */
async function batchBehindGate(
  c: Awaited<ReturnType<typeof consumerOf>>,
  open: () => void,
  gateOrderId: string,
  publish: (gateEventId: string) => Promise<unknown>,
  queued: number,
): Promise<void> {
  const { eventId } = await publishEvent(env.js, OrderConfirmedSchema, confirmed(gateOrderId), { prefix: env.prefix });
  await eventually("the gate event in its handler", () => c.stats().inFlight === 1);
  await publish(eventId);
  await eventually(`${queued} messages queued behind the gate`, () => c.stats().queued === queued);
  open();
}

test.serial("handleBatch gets a batch's new events in one call, in stream order, copies skipped, in one statement", async (t) => {
  const name = "batchhandler";
  const { db, statements } = countedDb(t);
  const { gate, open } = gated();
  const alone: string[] = [];
  const batches: string[][] = [];
  const c = await consumerOf(
    name,
    async (tx, ev) => {
      if (ev.orderId === "bh-gate") await gate;
      alone.push(ev.orderId);
      await recordEffect(tx, name, ev.orderId);
    },
    {
      db,
      handleBatch: async (tx, events) => {
        batches.push(events.map((e) => e.event.orderId));
        t.true(events.every((e) => e.meta.eventType === OrderConfirmedSchema.typeName && e.meta.deliveryCount === 1));
        const orderIds = JSON.stringify(events.map((e) => e.event.orderId));
        await tx.execute(sql`insert into consumer_test.effects (consumer, order_id)
          select ${name}, o from jsonb_array_elements_text(${orderIds}::jsonb) with ordinality as x(o, i) order by i`);
      },
    },
  );
  t.teardown(() => c.stop());
  const { toBinary } = await import("@bufbuild/protobuf");
  const copyOf = (eventId: string, orderId: string) =>
    publishRawEvent(env.js, {
      subject: eventSubject(OrderConfirmedSchema.typeName, env.prefix),
      payload: toBinary(OrderConfirmedSchema, confirmed(orderId)),
      eventId,
      eventType: OrderConfirmedSchema.typeName,
      msgId: `${eventId}:again`,
    });
  await batchBehindGate(c, open, "bh-gate", async (gateId) => {
    await publishEvent(env.js, OrderConfirmedSchema, confirmed("bh-1"), { prefix: env.prefix });
    const { eventId: twice } = await publishEvent(env.js, OrderConfirmedSchema, confirmed("bh-2"), { prefix: env.prefix });
    await copyOf(twice, "bh-2"); // a second copy in the same batch
    await publishEvent(env.js, OrderConfirmedSchema, confirmed("bh-3"), { prefix: env.prefix });
    await copyOf(gateId, "bh-gate"); // a copy of an event an earlier transaction applied
    await publishEvent(env.js, OrderConfirmedSchema, confirmed("bh-4"), { prefix: env.prefix });
  }, 6);
  await eventually("every delivery settled", () => c.stats().handled + c.stats().duplicates === 7);
  t.deepEqual(alone, ["bh-gate"], "the lone event went to handler");
  t.deepEqual(batches, [["bh-1", "bh-2", "bh-3", "bh-4"]], "the batch's new events, once, in order");
  t.deepEqual(await effects(name), ["bh-gate", "bh-1", "bh-2", "bh-3", "bh-4"]);
  t.like(c.stats(), { handled: 5, duplicates: 2, transactions: 2, retries: 0 });
  // The batch's transaction: begin, the inbox insert, ONE effects insert for its four new
  // events (the handler would have sent four), commit.
  const batchTx = statements.slice(statements.map((q) => q.trim()).lastIndexOf("begin"));
  t.is(batchTx.length, 4, batchTx.join("\n"));
  t.is(batchTx.filter((q) => q.includes("consumer_test.effects")).length, 1);
});

test.serial("a failing batch is redone one message per transaction: the poison event dead-letters alone, the others apply once", async (t) => {
  const name = "batchpoison";
  const { gate, open } = gated();
  const alone: string[] = [];
  const batches: string[][] = [];
  const c = await consumerOf(
    name,
    async (tx, ev, meta) => {
      if (ev.orderId === "bp-gate") await gate;
      alone.push(`${ev.orderId}#${meta.deliveryCount}`);
      await recordEffect(tx, name, ev.orderId);
      if (ev.orderId === "bp-poison") throw new Error(`cannot apply ${ev.orderId}`);
    },
    {
      maxDeliver: 2,
      handleBatch: async (tx, events) => {
        batches.push(events.map((e) => e.event.orderId));
        for (const { event } of events) await recordEffect(tx, name, event.orderId); // rolled back with the failure
        if (events.some((e) => e.event.orderId === "bp-poison")) throw new Error("cannot apply bp-poison");
      },
    },
  );
  t.teardown(() => c.stop());
  const ids = ["bp-1", "bp-poison", "bp-2", "bp-3"];
  await batchBehindGate(c, open, "bp-gate", async () => {
    for (const id of ids) await publishEvent(env.js, OrderConfirmedSchema, confirmed(id), { prefix: env.prefix });
  }, ids.length);
  await eventually("the poison event dead-lettered", () => c.stats().deadLettered === 1 && c.stats().handled === 4);
  t.deepEqual(batches, [ids], "the batch went to handleBatch once");
  t.deepEqual(alone, ["bp-gate#1", "bp-1#1", "bp-poison#1", "bp-2#1", "bp-3#1", "bp-poison#2"], "then one message per transaction");
  t.deepEqual(await effects(name), ["bp-gate", "bp-1", "bp-2", "bp-3"], "each good event applied once, the poison one never");
  t.like(c.stats(), { handled: 4, retries: 1, deadLettered: 1, duplicates: 0 });
  const [dl, ...more] = await listDeadLetters(env.js, { prefix: env.prefix, consumer: name });
  t.is(more.length, 0);
  t.is(dl.deliveries, 2);
  t.regex(dl.error, /2 deliveries: cannot apply bp-poison/);
});

test.serial("pruneInbox removes only entries older than the cutoff", async (t) => {
  await env.db.insert(s.inbox).values([
    { consumer: "prune", eventId: "old", eventType: "x", processedAt: new Date(Date.now() - 40 * 86_400_000) },
    { consumer: "prune", eventId: "new", eventType: "x" },
  ]);
  t.is(await pruneInbox(env.db, s.inbox, 30 * 86_400_000), 1);
  const left = await env.db.select({ id: s.inbox.eventId }).from(s.inbox).where(eq(s.inbox.consumer, "prune"));
  t.deepEqual(left.map((r) => r.id), ["new"]);
});

test.serial("pruneInbox deletes a backlog in bounded batches, and two pruners at once delete each row once", async (t) => {
  const old = new Date(Date.now() - 10 * 86_400_000);
  const rows = (consumer: string, n: number) =>
    Array.from({ length: n }, (_, i) => ({ consumer, eventId: `e-${i}`, eventType: "x", processedAt: old }));
  await env.db.insert(s.inbox).values(rows("backlog", 2_500));
  await env.db.insert(s.inbox).values({ consumer: "backlog", eventId: "fresh", eventType: "x" });
  t.is(await pruneInbox(env.db, s.inbox, 86_400_000, 400), 2_500, "every old row, 400 at a time");

  await env.db.insert(s.inbox).values(rows("racing", 3_000));
  const [a, b] = await Promise.all([pruneInbox(env.db, s.inbox, 86_400_000, 100), pruneInbox(env.db, s.inbox, 86_400_000, 100)]);
  const left = await env.db.select({ id: s.inbox.eventId }).from(s.inbox).where(sql`${s.inbox.processedAt} < now() - interval '1 day'`);
  t.is(a + b + left.length, 3_000, "no row deleted twice");
  t.is(await pruneInbox(env.db, s.inbox, 86_400_000), left.length, "what one skipped, the next pass deletes");
  const kept = await env.db.select({ id: s.inbox.eventId }).from(s.inbox).where(eq(s.inbox.consumer, "backlog"));
  t.deepEqual(kept.map((r) => r.id), ["fresh"]);
});

test("the retention floor adds the duplicate window and every delivery's ack wait and backoff", (t) => {
  t.is(inboxRetentionFloorMs({ duplicateWindowMs: 120_000, maxDeliver: 2, ackWaitMs: 30_000, backoff: () => 1_000 }), 120_000 + 2 * 31_000);
  // Default backoff at its largest: 500 ms doubling, capped at 60 s, jitter +20 %.
  const floor = inboxRetentionFloorMs({ duplicateWindowMs: 0, maxDeliver: 100, ackWaitMs: 0 });
  t.is(floor, 600 + 1_200 + 2_400 + 4_800 + 9_600 + 19_200 + 38_400 + 93 * 60_000);
});
