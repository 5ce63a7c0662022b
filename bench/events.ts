/**
 * Event backbone throughput and latency, in three phases on real Postgres and NATS:
 *   1. relay: writers enqueue OrderPlaced events (each its own transaction through
 *      transactionWithEvents), the relay publishes them; no consumer yet.
 *   2. consumer drain: a durable consumer applies the backlog through its inbox.
 *   3. end to end: writers, relay and consumer together; commit -> handled latency.
 * Prints events per second of each phase, p50/p99 latencies, and the count of events lost
 * or handled twice (must both be 0).
 *
 *   npx tsx bench/events.ts [--events 3000] [--writers 16] [--concurrency 2] [--batch 32] [--relays 1] [--notify-in-tx] [--rate 300]
 *
 * DATABASE_URL (default 127.0.0.1) gets a throwaway database, NATS_URL (default
 * 127.0.0.1:4222) a throwaway prefix. Writers, relay and consumer share this one process.
 */
import { parseArgs } from "node:util";
import { loadavg } from "node:os";
import { create } from "@bufbuild/protobuf";
import { isNull, sql } from "drizzle-orm";
import { OrderPlacedSchema } from "../gen/shop/order/v1/order_pb.js";
import { transactionWithEvents } from "../mesh/events/commit-signal.js";
import { startConsumer } from "../mesh/events/consumer.js";
import { rowsOf, type EventsTx } from "../mesh/events/db.js";
import { packageStream } from "../mesh/events/naming.js";
import { enqueueEvent } from "../mesh/events/outbox.js";
import { startRelay, type OutboxRelay } from "../mesh/events/relay.js";
import { ensureStreams } from "../mesh/events/streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually } from "../mesh/events/test-support.js";

const { values } = parseArgs({
  options: {
    events: { type: "string", default: "3000" },
    writers: { type: "string", default: "16" },
    concurrency: { type: "string", default: "2" },
    batch: { type: "string", default: "32" },
    relays: { type: "string", default: "1" },
    // Plain db.transaction: enqueueEvent NOTIFYs inside the writer's transaction.
    "notify-in-tx": { type: "boolean", default: false },
    // Phase 3 offered load in events/s (0: as fast as the writers go). Latency means something only below capacity.
    rate: { type: "string", default: "300" },
  },
});
const perPhase = Number(values.events);
const writers = Number(values.writers);
const concurrency = Number(values.concurrency);
const batchSize = Number(values.batch);
const relayCount = Number(values.relays);

const now = () => performance.timeOrigin + performance.now();
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))] ?? NaN;
};
const rate = (n: number, ms: number) => `${((n * 1000) / ms).toFixed(0)} events/s`;

const env = await createEventsTestEnv({ poolSize: writers + 4 });
try {
  await ensureStreams(env.jsm, [packageStream("shop.order.v1", env.prefix)], { prefix: env.prefix });
  const s = eventsSchema("bench_events");
  await createEventsTables(env.db, s);
  await env.db.execute(
    sql.raw(`create table bench_events.effects (order_id text not null, committed_ms double precision not null, handled_ms double precision not null)`),
  );
  const committedAt = new Map<string, number>();
  let publishLags: number[] = [];
  const relays: OutboxRelay[] = [];
  for (let i = 0; i < relayCount; i++) {
    const { db } = i === 0 ? env : env.openDb();
    relays.push(await startRelay({ db, outbox: s.outbox, js: env.js, nc: env.nc, hooks: { onPublished: (p) => publishLags.push(p.lagMs) } }));
  }
  const backlog = async () => (await env.db.select({ id: s.outbox.id }).from(s.outbox).where(isNull(s.outbox.publishedAt))).length;

  let next = 0;
  const offered = Number(values.rate);
  const write = async (upTo: number, paced = false) => {
    const t0 = now();
    const startIndex = next;
    await Promise.all(
      Array.from({ length: writers }, async () => {
        while (next < upTo) {
          const index = next++;
          const orderId = `bench-${index}`;
          if (paced && offered > 0) {
            const due = t0 + ((index - startIndex) * 1000) / offered;
            if (due > now()) await new Promise((r) => setTimeout(r, due - now()));
          }
          const inTransaction = values["notify-in-tx"] ? (fn: (tx: EventsTx) => Promise<string>) => env.db.transaction(fn) : (fn: (tx: EventsTx) => Promise<string>) => transactionWithEvents(env.db, fn);
          await inTransaction((tx) =>
            enqueueEvent(tx, s.outbox, OrderPlacedSchema, create(OrderPlacedSchema, { orderId, userId: "u" }), { aggregateId: orderId, prefix: env.prefix }),
          );
          committedAt.set(orderId, now());
        }
      }),
    );
    return now() - t0;
  };
  console.log(`${values["notify-in-tx"] ? "NOTIFY inside each writer transaction" : "transactionWithEvents (wake after commit)"}; events per phase: ${perPhase}, writers: ${writers}, relays: ${relayCount}, consumer concurrency ${concurrency} batch ${batchSize}; load average ${loadavg()[0].toFixed(1)}`);

  // 1. relay only
  const t1 = now();
  const writeMs1 = await write(perPhase);
  await eventually("the relay to publish everything", async () => (await backlog()) === 0, 300_000, 20);
  const relayMs = now() - t1;
  console.log(`1. enqueue: ${rate(perPhase, writeMs1)}; relay: all published after ${(relayMs / 1000).toFixed(2)} s (${rate(perPhase, relayMs)}); outbox wait p50 ${pct(publishLags, 50).toFixed(0)} ms p99 ${pct(publishLags, 99).toFixed(0)} ms`);

  // 2. consumer drain
  const t2 = now();
  const consumer = await startConsumer({
    name: "bench",
    event: OrderPlacedSchema,
    db: env.db,
    inbox: s.inbox,
    js: env.js,
    prefix: env.prefix,
    concurrency,
    batchSize,
    maxAckPending: 1000,
    handler: async (tx, ev) => {
      await tx.execute(sql`insert into bench_events.effects values (${ev.orderId}, ${committedAt.get(ev.orderId) ?? 0}, ${now()})`);
    },
  });
  await eventually("the consumer to drain the backlog", () => consumer.stats().handled >= perPhase, 300_000, 20);
  const drainMs = now() - t2;
  console.log(`2. consumer drain: ${rate(perPhase, drainMs)} (${consumer.stats().transactions} transactions, ${(perPhase / consumer.stats().transactions).toFixed(1)} events each)`);

  // 3. end to end
  publishLags = [];
  const t3 = now();
  const writeMs3 = await write(2 * perPhase, true);
  await eventually("every event handled", () => consumer.stats().handled >= 2 * perPhase, 300_000, 20);
  const e2eMs = now() - t3;
  const rows = rowsOf<{ order_id: string; committed_ms: number; handled_ms: number }>(await env.db.execute(sql`select * from bench_events.effects`));
  const phase3 = rows.filter((r) => Number(r.order_id.slice(6)) >= perPhase);
  const latencies = phase3.map((r) => r.handled_ms - r.committed_ms);
  console.log(`3. end to end at ${offered > 0 ? `${offered} events/s offered` : "full speed"}: enqueue ${rate(perPhase, writeMs3)}, handled ${rate(perPhase, e2eMs)}; commit -> handled p50 ${pct(latencies, 50).toFixed(1)} ms p99 ${pct(latencies, 99).toFixed(1)} ms; outbox wait p50 ${pct(publishLags, 50).toFixed(0)} ms p99 ${pct(publishLags, 99).toFixed(0)} ms`);

  const distinct = new Set(rows.map((r) => r.order_id));
  console.log(`lost: ${2 * perPhase - distinct.size}, handled twice: ${rows.length - distinct.size}, relay duplicates: ${relays.reduce((n, r) => n + r.stats().duplicates, 0)}; load average ${loadavg()[0].toFixed(1)}`);
  await consumer.stop();
  for (const r of relays) await r.stop();
} finally {
  await env.close();
}
